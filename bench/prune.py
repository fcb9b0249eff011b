"""`kdtui prune` benchmark: can it tell pruning methods apart?

Protocol (fixed before any test number was looked at; the README's pruning section is this
script's output):

* Teacher: --model (MiniLM) fine-tuned on the data for --teacher-epochs at length
  --max-length, seed 42. It is the dense reference, the start of every pruning run, the KD
  teacher and FiC's model; one teacher is shared by every run (it is the costly upstream run).
* Every pruning run: --steps optimiser steps of batch --batch-size at --prune-lr, fp32 (--bf16
  for autocast where the CPU has native bf16) (the schedule's
  default shares: 10% warm-up, 20% cool-down at the final sparsity), dev evaluated every
  20% / (--evals − 1) of the steps; the checkpoint is the best dev one among the --evals
  evaluations at the final sparsity, so every row has the same dev checkpoints to choose from.
* Rows at each of --sparsities (unstructured): magnitude, movement, soft movement (baselines,
  no CAP), CAP on soft movement (the paper's pairing), and CAP on the best baseline: the
  criterion with the highest *mean dev* accuracy over the seeds at that sparsity (when that is
  soft movement, the row is the CAP-on-soft-movement runs; a tie goes to soft movement). Plus
  CAP heads-ffn at each --heads-sparsity with its speed-up. --baselines keeps fewer baseline
  rows and --no-cap-best drops the last row (the second table: magnitude and soft movement
  only, for time). Every setting is kdtui's default unless named here.
* Seeds --seeds (pruning-run seeds: data order, dropout, CAP's negatives); every row runs every
  seed. A row reports its mean test accuracy with a 95% t-interval over seeds; CAP against its
  own criterion and against the best baseline as paired differences: a bootstrap over seeds and
  test examples of the same seeds' predictions on the same examples (bench/stats.py).

Each finished run leaves a small record (metrics, wall time, per-example test correctness) in
--results (bench/results/prune by default, kept in git): a rerun skips every run that has a
record, resumes an interrupted run from its checkpoints, and prints the table from the records.
Runs themselves go to --output-dir. --jobs runs that many pruning runs at once (one thread
each is fastest on a shared CPU); the teacher trains first, alone, on every core they claim.
When the teacher's run is gone but its record is kept (a table split over machines), the
teacher is trained again and the table goes on only if it makes the same test predictions.

    python bench/prune.py --jobs 2                                  # ../shared/data/amazon-4domains
    python bench/prune.py --model tiny --data synthetic --steps 12 --teacher-epochs 1 \\
        --results /tmp/kdtui-bench-check --output-dir /tmp/kdtui-bench-check/runs  # a check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO)]
from machine import add_cpu_seconds, claim_cores, cpu_seconds, cpu_share, run_timed  # noqa: E402
from stats import fmt_diff, fmt_mean_ci, mean_ci, paired_bootstrap  # noqa: E402

from kdtui.events import Message, Step  # noqa: E402
from kdtui.rundir import RunInfo  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazon-4domains"
BASELINES = ("magnitude", "movement", "soft-movement")
LATER_OPTIONS = {
    "epochs": 0.0,
    "warmup": 0.1,
    "cooldown": 0.2,
    "teacher_run": "",
    "baselines": list(BASELINES),
    "cap_best": True,
}
LABELS = {
    "magnitude": "magnitude",
    "movement": "movement",
    "soft-movement": "soft movement",
    "cap-soft": "CAP on soft movement",
    "cap-best": "CAP on the best baseline",
}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder, file or 'synthetic'")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5, help="teacher learning rate")
    parser.add_argument("--prune-lr", type=float, default=1e-4, help="pruning learning rate")
    parser.add_argument("--steps", type=int, default=150, help="pruning steps per run")
    parser.add_argument(
        "--epochs", type=float, default=0.0, help="pruning budget in epochs (replaces --steps)"
    )
    parser.add_argument("--warmup", type=float, default=0.1, help="share of steps before cutting")
    parser.add_argument("--cooldown", type=float, default=0.2, help="share at final sparsity")
    parser.add_argument(
        "--teacher-run", default="", help="a finished teacher run to start from (none: train one)"
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast for the pruning runs (1.4x on CPUs with AVX512-BF16, several times "
        "slower on CPUs without)",
    )
    parser.add_argument("--evals", type=int, default=2, help="dev evaluations in the cool-down")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.97])
    parser.add_argument(
        "--baselines", nargs="+", default=list(BASELINES), choices=BASELINES, help="rows, no CAP"
    )
    parser.add_argument(
        "--cap-best",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the CAP-on-the-best-baseline row (more runs when that is not soft movement)",
    )
    parser.add_argument(
        "--heads-sparsity",
        type=float,
        nargs="+",
        default=[0.5],
        help="heads-ffn rows, one per value (0 = none)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=1, help="pruning runs at once")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--set", action="append", default=[], help="extra --set for prune runs")
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/kdtui-bench-prune"))
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "prune")
    parser.add_argument(
        "--report", action="store_true", help="print the table from the records; run nothing"
    )
    return parser


def main() -> None:
    args = parser().parse_args()
    if args.data != "synthetic" and not Path(args.data).exists():
        sys.exit(f"data not found: {args.data} (give --data PATH, or --data synthetic)")
    bench = Bench(args)
    started = time.perf_counter()
    if not args.report:
        claim_cores(args.jobs, args.threads)
        bench.run_all()
    print(render(bench, time.perf_counter() - started))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.output_dir.resolve()
        self.results = args.results.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        # Options added after the first table count only where they differ from their default,
        # so the records of that table still match their protocol.
        self.protocol = {
            k: v
            for k, v in vars(args).items()
            if k not in ("jobs", "threads", "output_dir", "results", "report")
            and not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])
        }
        if len(args.heads_sparsity) == 1:  # the first tables recorded one value, not a list
            self.protocol["heads_sparsity"] = args.heads_sparsity[0]
        self.protocol = json.loads(json.dumps(self.protocol, default=str))
        self._check_protocol()

    def _check_protocol(self) -> None:
        """Records made under another protocol must not mix into this table."""
        path = self.results / "protocol.json"
        if path.is_file():
            recorded = json.loads(path.read_text())
            if recorded != self.protocol:
                changed = sorted(k for k in self.protocol if recorded.get(k) != self.protocol[k])
                sys.exit(
                    f"{self.results} holds records of another protocol (differs in: "
                    f"{', '.join(changed)}); give another --results folder"
                )
        else:
            path.write_text(json.dumps(self.protocol, indent=2) + "\n")

    # -- runs --------------------------------------------------------------------------------

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.results / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def teacher_dir(self) -> Path:
        given = self.args.teacher_run
        return Path(given).resolve() if given else self.out / "teacher"

    def teacher(self) -> Path:
        """The dense teacher's run folder, trained once (the record keeps its test results), or
        the finished run --teacher-run names."""
        a = self.args
        if a.teacher_run:
            if not RunInfo(self.teacher_dir).finished():
                sys.exit(f"--teacher-run {a.teacher_run} is not a finished run")
            self.run("teacher", ["--teacher-run", str(self.teacher_dir)], {"row": "dense"})
            return self.teacher_dir
        options = [
            "teacher",
            "--data",
            a.data,
            "--model",
            a.model,
            "--epochs",
            str(a.teacher_epochs),
            "--batch-size",
            str(a.batch_size),
            "--lr",
            str(a.lr),
            "--seed",
            "42",
            "--set",
            f"data.max_length={a.max_length}",
            "--set",
            # It runs alone, before the pruning runs: every core the table claimed.
            f"run.threads={a.jobs * a.threads}",
            "--bf16" if a.bf16 else "--no-bf16",
        ]
        recorded = self.record("teacher")
        if recorded is not None and not RunInfo(self.teacher_dir).finished():
            self.reproduce_teacher(recorded)
        self.run("teacher", options, {"row": "dense"})
        return self.out / "teacher"

    def reproduce_teacher(self, recorded: dict[str, Any]) -> None:
        """The table's teacher run is gone (another machine, a cleaned --output-dir) but its
        record is kept: train it again with the recorded command and go on only if it is the
        same teacher, i.e. it makes the same test predictions (CPU training with a fixed seed
        and thread count is repeatable). Every run of a table must start from one teacher."""
        if recorded["command"][0] != "teacher":
            sys.exit(
                f"{self.results}: its teacher was {' '.join(recorded['command'])}, which is "
                "gone; give a new --results folder"
            )
        print("The teacher's record is kept but its run is gone: training it again", flush=True)
        self.execute("teacher", recorded["command"])
        again, before = RunInfo(self.teacher_dir).correct(), recorded["correct"]
        if again != before:
            differ = sum(x != y for x, y in zip(again, before, strict=True))
            sys.exit(
                f"the teacher trained again differs from the recorded one ({differ} of "
                f"{len(before)} test predictions); this table's runs must share one teacher: "
                "give a new --results folder"
            )

    def prune_options(self, sparsity: float, seed: int, method: list[str]) -> list[str]:
        a = self.args
        steps = self.steps()
        # Evaluations every cool-down / (evals - 1) of the steps: `evals` of them fall at the
        # final sparsity (the cool-down's first step and its end), the earlier ones show the way
        # there (and whether the model collapsed).
        eval_every = steps if a.evals < 2 else max(1, round(a.cooldown * steps / (a.evals - 1)))
        budget = ["--epochs", str(a.epochs)] if a.epochs else ["--max-steps", str(a.steps)]
        shape = [
            x
            for key, value in (("warmup_ratio", a.warmup), ("cooldown_ratio", a.cooldown))
            if value != LATER_OPTIONS[key.split("_")[0]]
            for x in ("--set", f"prune.{key}={value}")
        ]
        return [
            "prune",
            "--model",
            str(self.teacher_dir),
            "--sparsity",
            str(sparsity),
            *budget,
            *shape,
            "--batch-size",
            str(a.batch_size),
            "--lr",
            str(a.prune_lr),
            "--seed",
            str(seed),
            "--set",
            f"train.eval_every={eval_every}",
            "--set",
            f"run.threads={a.threads}",
            "--bf16" if a.bf16 else "--no-bf16",
            *(x for s in a.set for x in ("--set", s)),
            *method,
        ]

    def steps(self) -> int:
        """Optimiser steps of a pruning run: --steps, or --epochs of the teacher's steps per
        epoch (the teacher trains on the same data at the same batch size)."""
        a = self.args
        if not a.epochs:
            return a.steps
        if a.teacher_run:
            teacher = RunInfo(self.teacher_dir)
            train = teacher.config_dict()["train"]
            if train["batch_size"] != a.batch_size:
                sys.exit(f"the teacher trained at batch {train['batch_size']}, not {a.batch_size}")
            per_epoch = teacher.metrics()["steps"] / train["epochs"]
        else:
            # The record outlives the run folder (a table resumed on a fresh machine), and a
            # table that has no teacher yet trains it here, before any run can be planned.
            recorded = self.record("teacher")
            if recorded is None:
                self.teacher()
                recorded = self.record("teacher")
            assert recorded is not None
            per_epoch = recorded["metrics"]["steps"] / a.teacher_epochs
        return max(1, math.ceil(per_epoch * a.epochs))

    def run(self, name: str, options: list[str], info: dict[str, Any]) -> dict[str, Any]:
        """Run one kdtui command into OUTPUT/NAME unless its record exists; resume an
        interrupted run; write the record. Returns the record."""
        found = self.record(name)
        if found is not None:
            return found
        run = self.execute(name, options)
        written = RunInfo(run)
        metrics = written.metrics()
        keep = ("test", "best_dev", "best_step", "steps", "sparsity", "criterion", "cap_modules")
        record = {
            "name": name,
            **info,
            "command": options,
            "metrics": {k: metrics[k] for k in keep if k in metrics},
            "warnings": warnings_of(run),
            "diagnostics": last_diagnostics(run),
            "wall_s": RunInfo(run).active_seconds(),
            "cpu_s": cpu_seconds(run),
            "correct": written.correct(),
        }
        for key in ("kept_heads", "intermediate_sizes", "sparse_model", "model_bytes"):
            if key in metrics:
                record["metrics"][key] = metrics[key]
        if info.get("row") == "heads-ffn":
            record["speed"] = speed_up(self.teacher_dir, run, threads=self.args.threads)
        from kdtui.checkpoint import write_json_atomic  # torch: only once a run has a record

        write_json_atomic(self.results / f"{name}.json", record)
        report(record, self.dense_accuracy())
        return record

    def execute(self, name: str, options: list[str]) -> Path:
        """Run (or resume) one kdtui command into its folder unless it has finished there."""
        run = self.teacher_dir if name == "teacher" else self.out / name
        written = RunInfo(run)
        if not written.finished():
            if written.config_file.is_file():
                command = [options[0], "--resume", str(run)]
            else:
                command = [*options, "--output-dir", str(self.out), "--name", name, "--force"]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            log = self.out / f"{name}.log"
            done = run_timed([sys.executable, "-m", "kdtui", *command, "--quiet"], log=log, env=env)
            add_cpu_seconds(run, done.cpu_s)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed (exit {done.returncode}); see {log}")
        return run

    def dense_accuracy(self) -> float | None:
        dense = self.record("teacher")
        return dense["metrics"]["test"]["all"] if dense else None

    def plan(self) -> list[tuple[str, list[str], dict[str, Any]]]:
        """Every run that does not depend on another's result: (name, options, info)."""
        # Seed by seed, so an interrupted table has whole seeds of every row; CAP first, so the
        # first finished runs show whether every part of it acts.
        runs = []
        for seed in self.args.seeds:
            for sparsity in sorted(self.args.sparsities, reverse=True):
                pct = round(sparsity * 100)
                method = ["--criterion", "soft-movement", "--cap"]
                info = {"row": "cap-soft", "criterion": "soft-movement", "sparsity": sparsity}
                runs.append((f"cap-soft-movement-{pct}-s{seed}", method, info | {"seed": seed}))
                for criterion in self.args.baselines:
                    method = ["--criterion", criterion, "--no-cap"]
                    info = {"row": criterion, "criterion": criterion, "sparsity": sparsity}
                    runs.append((f"{criterion}-{pct}-s{seed}", method, info | {"seed": seed}))
            for heads in (h for h in self.args.heads_sparsity if h > 0):
                method = ["--structure", "heads-ffn", "--cap"]
                info = {"row": "heads-ffn", "sparsity": heads, "seed": seed}
                runs.append((f"heads-ffn-{round(heads * 100)}-s{seed}", method, info))
        return [
            (name, self.prune_options(info["sparsity"], info["seed"], method), info)
            for name, method, info in runs
        ]

    def best_baseline(self, sparsity: float) -> str | None:
        """The baseline with the highest mean dev accuracy over seeds: None until every
        baseline run has a record (with --report: over the seeds every baseline has so far,
        a provisional choice the table marks)."""
        pct = round(sparsity * 100)
        seeds = [
            s
            for s in self.args.seeds
            if all(self.record(f"{c}-{pct}-s{s}") is not None for c in self.args.baselines)
        ]
        if not seeds or (len(seeds) < len(self.args.seeds) and not self.args.report):
            return None
        dev = {
            c: statistics.mean(
                self.record(f"{c}-{pct}-s{s}")["metrics"]["best_dev"]  # type: ignore[index]
                for s in seeds
            )
            for c in self.args.baselines
        }
        # A tie goes to soft movement: CAP on it is already a row (the paper's pairing), so the
        # tie costs no runs. (Rule added when seed 1 tied movement and soft movement at 90%.)
        return max(reversed(self.args.baselines), key=lambda c: dev[c])

    def cap_best_runs(self) -> list[tuple[str, list[str], dict[str, Any]]]:
        runs = []
        for sparsity in self.args.sparsities if self.args.cap_best else []:
            best = self.best_baseline(sparsity)
            if best is None or best == "soft-movement":
                continue  # not decided yet, or the CAP-on-soft-movement runs are the row
            pct = round(sparsity * 100)
            for seed in self.args.seeds:
                info = {"row": "cap-best", "criterion": best, "sparsity": sparsity, "seed": seed}
                method = ["--criterion", best, "--cap"]
                options = self.prune_options(sparsity, seed, method)
                runs.append((f"cap-{best}-{pct}-s{seed}", options, info))
        return runs

    def run_all(self) -> None:
        pending = [p for p in self.plan() if self.record(p[0]) is None]
        pending += [p for p in self.cap_best_runs() if self.record(p[0]) is None]
        if pending:
            self.teacher()
        self._parallel(pending)
        # CAP on the best baseline can only be planned once every baseline run has a record.
        self._parallel([p for p in self.cap_best_runs() if self.record(p[0]) is None])

    def _parallel(self, runs: list[tuple[str, list[str], dict[str, Any]]]) -> None:
        def one(item: tuple[str, list[str], dict[str, Any]]) -> None:
            self.run(*item)

        with ThreadPoolExecutor(max_workers=max(1, self.args.jobs)) as pool:
            for future in [pool.submit(one, item) for item in runs]:
                future.result()


# ---------------------------------------------------------------------------------------------
# Reading runs


def warnings_of(run: Path) -> list[str]:
    return [
        e.text for e in RunInfo(run).events() if isinstance(e, Message) and e.level == "warning"
    ]


def last_diagnostics(run: Path) -> dict[str, float]:
    """The pruner's last diagnostics (prune/* step metrics) of the run."""
    latest: dict[str, float] = {}
    for event in RunInfo(run).events():
        if isinstance(event, Step):
            for key, value in (event.metrics or {}).items():
                if key.startswith("prune/") and value is not None:
                    latest[key.removeprefix("prune/")] = value
    return latest


def report(record: dict[str, Any], dense: float | None) -> None:
    acc = record["metrics"]["test"]["all"]
    retention = f" (retention {acc / dense:.1%})" if dense else ""
    print(
        f"{record['name']}: test {100 * acc:.1f}{retention}, dev "
        f"{100 * (record['metrics'].get('best_dev') or 0):.1f}, "
        f"{record['wall_s'] / 60:.1f} min",
        flush=True,
    )


def speed_up(teacher: Path, pruned: Path, *, threads: int) -> dict[str, float]:
    """Median CPU forward time at batch 32, length 128 of the dense teacher and the compact
    model, measured alternately so that load from other processes hits both alike."""
    import torch

    from kdtui.models import load_any
    from kdtui.timing import median_seconds

    torch.set_num_threads(threads)
    dense, compact = load_any(teacher / "model").eval(), load_any(pruned / "model").eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 128), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        dense_s, pruned_s = median_seconds(
            [lambda: dense(**inputs), lambda: compact(**inputs)], repeats=7
        )
    dense_ms, pruned_ms = dense_s * 1000, pruned_s * 1000
    return {"dense_ms": dense_ms, "pruned_ms": pruned_ms, "speed_up": dense_ms / pruned_ms}


# ---------------------------------------------------------------------------------------------
# The tables


def render(bench: Bench, invocation_s: float) -> str:
    a = bench.args
    dense = bench.record("teacher")
    if dense is None:
        return "no teacher record yet"
    dense_acc = dense["metrics"]["test"]["all"]
    source = Path(a.data).name if a.data != "synthetic" else "synthetic"
    budget = f"{a.epochs:g} epochs ({bench.steps()} steps)" if a.epochs else f"{a.steps} steps"
    shape = (
        f", {a.warmup:.0%} warm-up and {a.cooldown:.0%} cool-down"
        if (a.warmup, a.cooldown) != (0.1, 0.2)
        else ""
    )
    lines = [
        f"Unstructured pruning of {a.model} fine-tuned on {source} (dense test "
        f"{100 * dense_acc:.1f}): test accuracy %, mean ± 95% interval over seeds "
        f"{', '.join(map(str, a.seeds))}; retention = mean / dense. Every run: {budget} x "
        f"batch {a.batch_size}, length {a.max_length}, lr {a.prune_lr}{shape}; the best of "
        f"{a.evals} dev evaluations at the final sparsity.",
        "",
        "| method | " + " | ".join(f"{s:.0%} sparsity" for s in a.sparsities) + " |",
        "| --- |" + " --- |" * len(a.sparsities),
    ]
    rows = [*a.baselines, "cap-soft", *(["cap-best"] if a.cap_best else [])]
    cells_by_row: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for row in rows:
        cells = []
        cells_by_row[row] = {}
        for s in a.sparsities:
            records = row_records(bench, row, s)
            cells_by_row[row][s] = records
            if not records:
                cells.append("-")
                continue
            accs = [r["metrics"]["test"]["all"] for r in records]
            mean, _ = mean_ci(accs)
            note = ""
            if row == "cap-best":
                note = f" [{LABELS[records[0]['criterion']]}]"
            partial = f" (n={len(records)})" if len(records) < len(a.seeds) else ""
            cells.append(f"{fmt_mean_ci(accs)} ({mean / dense_acc:.1%}){partial}{note}")
        lines.append(f"| {LABELS[row]} | " + " | ".join(cells) + " |")
    lines += ["", "Dev accuracy % (mean over seeds; what the best baseline is chosen by):", ""]
    lines += ["| method | " + " | ".join(f"{s:.0%}" for s in a.sparsities) + " |"]
    lines += ["| --- |" + " --- |" * len(a.sparsities)]
    for row in rows:
        cells = []
        for s in a.sparsities:
            records = cells_by_row[row][s]
            devs = [r["metrics"]["best_dev"] for r in records]
            cells.append(f"{100 * statistics.mean(devs):.1f}" if devs else "-")
        lines.append(f"| {LABELS[row]} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "Paired differences in test accuracy points, mean [95% interval] (bootstrap over seeds "
        "and test examples; an interval that holds 0 means no difference shown):",
        "",
        "| comparison | " + " | ".join(f"{s:.0%}" for s in a.sparsities) + " |",
        "| --- |" + " --- |" * len(a.sparsities),
    ]
    comparisons: list[tuple[str, Callable[[float], tuple[str, str] | None]]] = [
        ("CAP on soft movement − soft movement", lambda s: ("cap-soft", "soft-movement")),
        (
            "CAP on the best baseline − that baseline",
            lambda s: ("cap-best", best) if (best := bench.best_baseline(s)) else None,
        ),
        (
            "CAP on soft movement − the best baseline",
            lambda s: ("cap-soft", best) if (best := bench.best_baseline(s)) else None,
        ),
    ]
    if not a.cap_best:
        del comparisons[1]
    for label, pair_of in comparisons:
        cells = []
        for s in a.sparsities:
            pair = pair_of(s)
            if pair is None:
                cells.append("-")
                continue
            cells.append(paired_cell(cells_by_row[pair[0]][s], row_records(bench, pair[1], s)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best = [f"{s:.0%}: {LABELS[b]}" for s in a.sparsities if (b := bench.best_baseline(s))]
    if best:
        complete = all(
            len(cells_by_row[c][s]) == len(a.seeds) for c in a.baselines for s in a.sparsities
        )
        note = "" if complete else " (provisional: over the seeds every baseline has so far)"
        lines.append(f"\nBest baseline by mean dev accuracy{note}: {', '.join(best)}.")

    flagged = [
        f"{r['name']}: {w[:120]}"
        for row in rows
        for s in a.sparsities
        for r in cells_by_row[row][s]
        for w in r["warnings"]
        if "collapsed" in w or "no signal" in w
    ]
    if flagged:
        lines += ["", "Warnings raised by runs:", *(f"- {f}" for f in flagged)]

    for heads_sparsity in (h for h in a.heads_sparsity if h > 0):
        pct = round(heads_sparsity * 100)
        heads = [r for s in a.seeds if (r := bench.record(f"heads-ffn-{pct}-s{s}"))]
        if not heads:
            continue
        accs = [r["metrics"]["test"]["all"] for r in heads]
        mean, _ = mean_ci(accs)
        speed = heads[0]["speed"]
        lines += [
            "",
            f"Structured (heads-ffn, CAP) to {heads_sparsity:.0%} of the encoder's parameters, "
            f"same budget: test {fmt_mean_ci(accs)} ({mean / dense_acc:.1%} retention, "
            f"{len(heads)} seeds); heads kept per layer (seed {heads[0]['seed']}) "
            f"{heads[0]['metrics']['kept_heads']}; forward at batch 32, length 128, "
            f"{a.threads} thread(s): {speed['pruned_ms']:.0f} ms against {speed['dense_ms']:.0f} "
            f"ms dense, {speed['speed_up']:.2f}x.",
        ]
    all_records = [
        r for p in bench.results.glob("*.json") if (r := json.loads(p.read_text())).get("wall_s")
    ]
    total = sum(r["wall_s"] for r in all_records)
    lines += [
        "",
        f"Run time: {total / 3600:.2f} h summed over {len(all_records)} runs (teacher included); "
        f"this invocation {invocation_s / 60:.1f} min with {a.jobs} run(s) at a time.",
    ]
    if timed := [r for r in all_records if r.get("cpu_s")]:
        lines[-1] += " " + cpu_share(timed, a.threads)
    return "\n".join(lines)


def row_records(bench: Bench, row: str, sparsity: float) -> list[dict[str, Any]]:
    pct = round(sparsity * 100)
    if row in BASELINES:
        names = [f"{row}-{pct}-s{s}" for s in bench.args.seeds]
    elif row == "cap-soft":
        names = [f"cap-soft-movement-{pct}-s{s}" for s in bench.args.seeds]
    else:  # cap-best
        best = bench.best_baseline(sparsity)
        if best is None:
            return []
        names = [f"cap-{best}-{pct}-s{s}" for s in bench.args.seeds]
    return [r for n in names if (r := bench.record(n)) is not None]


def paired_cell(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """The paired difference a − b over the seeds both rows have."""
    by_seed = {r["seed"]: r for r in b}
    pairs = [(r, by_seed[r["seed"]]) for r in a if r["seed"] in by_seed]
    if not pairs:
        return "-"
    x = [[int(c) for c in r["correct"]] for r, _ in pairs]
    y = [[int(c) for c in q["correct"]] for _, q in pairs]
    partial = f" (n={len(pairs)})" if len(pairs) < 3 else ""
    return fmt_diff(paired_bootstrap(x, y)) + partial


if __name__ == "__main__":
    main()
