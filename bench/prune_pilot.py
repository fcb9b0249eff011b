"""The pruning budget pilot: which budget and schedule shape 97% sparsity needs, chosen on dev.

Written down before any run (issue 20):

* Runs: soft movement with CAP (`kdtui prune`'s default method) and without, to 97% sparsity,
  seed 1, from one teacher (bench/prune.py's: MiniLM, 1 epoch, length 64, seed 42), bf16, at
  budgets of 1, 2 and 3 epochs of the four domains, each with two schedule shapes: A = 10%
  warm-up / 20% cool-down (the default) and B = 10% / 40%. Every other setting is bench/prune.py's
  (batch 16, lr 1e-4, the best of 3 dev evaluations at the final sparsity).
* Score of a setting (budget, shape): the mean over the two methods of their best dev accuracy at
  the final sparsity. A setting where either run ends predicting one class on dev is not eligible.
* Extension: when the best score is at the largest budget tried and exceeds the next smaller
  budget's best by more than 0.5 points, the next budget (5 epochs, then 8) is added at the best
  shape and the rule applied again.
* Choice: the smallest budget whose best shape's score is within 0.5 points of the best score
  seen; the shape is that budget's better one (a tie goes to A, the default). The chosen budget
  and shape become `kdtui prune`'s default at 97% and the protocol of the table
  (`python bench/prune.py --epochs E --cooldown C ...`).

Nothing here reads a test number. Runs go to --output-dir, records to --results (one folder per
setting, each a bench/prune.py results folder); a rerun resumes and prints the table.

    python bench/prune_pilot.py                 # ../shared/data/amazon-4domains
    python bench/prune_pilot.py --report        # the table from the records
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]
from machine import claim_cores  # noqa: E402
from prune import Bench, parser  # noqa: E402

SHAPES = {"A": (0.1, 0.2), "B": (0.1, 0.4)}
FIRST_BUDGETS = (1.0, 2.0, 3.0)
LATER_BUDGETS = (5.0, 8.0)
ROWS = ("cap-soft", "soft-movement")
WITHIN = 0.005  # 0.5 points of dev accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(BENCH.parents[1] / "shared" / "data" / "amazon-4domains"))
    p.add_argument("--model", default="minilm")
    p.add_argument("--sparsity", type=float, default=0.97)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-dir", type=Path, default=Path("/tmp/kdtui-prune-pilot"))
    p.add_argument("--results", type=Path, default=BENCH / "results" / "prune-pilot")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()
    if not args.report:
        claim_cores(args.jobs, args.threads)
        setting_bench(args, None, "A").teacher()
        budgets = list(FIRST_BUDGETS)
        run_settings(args, [(b, s) for b in budgets for s in SHAPES])
        while (extra := extension(args, budgets)) is not None:
            budgets.append(extra)
            run_settings(args, [(extra, best_shape(args, budgets[-2]))])
    print(render(args, time.perf_counter() - started))


def setting_bench(args: argparse.Namespace, epochs: float | None, shape: str) -> Bench:
    """The bench/prune.py bench of one setting; epochs None = the one that trains the teacher."""
    warmup, cooldown = SHAPES[shape]
    name = "teacher" if epochs is None else f"{epochs:g}ep-{shape}"
    # The teacher trains alone, on every core the pruning runs share.
    threads = args.threads if epochs is not None else args.jobs * args.threads
    options = [
        "--data", args.data, "--model", args.model, "--sparsities", str(args.sparsity),
        "--seeds", "1", "--heads-sparsity", "0", "--bf16", "--evals", "3",
        "--warmup", str(warmup), "--cooldown", str(cooldown), "--jobs", str(args.jobs),
        "--threads", str(threads),
        "--output-dir", str(args.output_dir / name), "--results", str(args.results / name),
    ]  # fmt: skip
    if epochs is not None:
        teacher = args.output_dir / "teacher" / "teacher"
        options += ["--epochs", str(epochs), "--teacher-run", str(teacher)]
    return Bench(parser().parse_args(options))


def setting_runs(bench: Bench) -> list[tuple[str, list[str], dict[str, Any]]]:
    return [p for p in bench.plan() if p[2]["row"] in ROWS]


def run_settings(args: argparse.Namespace, settings: list[tuple[float, str]]) -> None:
    """Every run of SETTINGS, --jobs at a time, smallest budget first."""
    work = [
        (bench, item)
        for epochs, shape in settings
        for bench in [setting_bench(args, epochs, shape)]
        for item in setting_runs(bench)
        if bench.record(item[0]) is None
    ]
    for bench, _item in work:
        bench.teacher()  # its record in the setting's folder (the run exists: nothing trains)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(bench.run, *item) for bench, item in work]:
            future.result()


def score(args: argparse.Namespace, epochs: float, shape: str) -> float | None:
    """Mean best dev accuracy of the setting's two runs; None while one is missing or when one
    ended predicting one class on dev (not eligible)."""
    bench = setting_bench(args, epochs, shape)
    records = [bench.record(name) for name, _, _ in setting_runs(bench)]
    if any(r is None for r in records):
        return None
    if any(one_class(r) for r in records):  # type: ignore[arg-type]
        return None
    return statistics.mean(r["metrics"]["best_dev"] for r in records)  # type: ignore[index]


def one_class(record: dict[str, Any]) -> bool:
    return any("predicts one class" in w for w in record["warnings"])


def best_shape(args: argparse.Namespace, epochs: float) -> str:
    scored = {s: v for s in SHAPES if (v := score(args, epochs, s)) is not None}
    return max(scored, key=lambda s: (scored[s], s == "A")) if scored else "A"


def budget_score(args: argparse.Namespace, epochs: float) -> float | None:
    return score(args, epochs, best_shape(args, epochs))


def extension(args: argparse.Namespace, budgets: list[float]) -> float | None:
    """The next budget to try, or None (see the rule in the docstring)."""
    scores = [budget_score(args, b) for b in budgets]
    if any(s is None for s in scores) or len(budgets) < 2:
        return None
    if scores[-1] != max(scores) or scores[-1] - scores[-2] <= WITHIN:  # type: ignore[operator]
        return None
    later = [b for b in LATER_BUDGETS if b > budgets[-1]]
    return later[0] if later else None


def choice(args: argparse.Namespace, budgets: list[float]) -> tuple[float, str] | None:
    scored = {b: v for b in budgets if (v := budget_score(args, b)) is not None}
    if not scored:
        return None
    best = max(scored.values())
    chosen = min(b for b, v in scored.items() if v >= best - WITHIN)
    return chosen, best_shape(args, chosen)


def render(args: argparse.Namespace, invocation_s: float) -> str:
    budgets = sorted(
        {float(p.name.split("ep-")[0]) for p in args.results.glob("*ep-*") if p.is_dir()}
    )
    lines = [
        f"Pruning budget pilot at {args.sparsity:.0%} sparsity, seed 1: best dev accuracy % at "
        "the final sparsity (CAP on soft movement / soft movement; score = their mean).",
        "",
        "| budget | "
        + " | ".join(f"shape {s} ({w:.0%} / {c:.0%})" for s, (w, c) in SHAPES.items())
        + " |",
        "| --- |" + " --- |" * len(SHAPES),
    ]
    total = 0.0
    for epochs in budgets:
        cells = []
        for shape in SHAPES:
            bench = setting_bench(args, epochs, shape)
            records = [bench.record(name) for name, _, _ in setting_runs(bench)]
            total += sum(r["wall_s"] for r in records if r)
            if not any(records):
                cells.append("-")
                continue
            devs = [f"{100 * r['metrics']['best_dev']:.1f}" if r else "..." for r in records]
            value = score(args, epochs, shape)
            flag = "" if value is not None or None in records else " (one class: not eligible)"
            mean = f"{100 * value:.1f}" if value is not None else "-"
            cells.append(f"{' / '.join(devs)}; {mean}{flag}")
        lines.append(f"| {epochs:g} epoch{'s' * (epochs != 1)} | " + " | ".join(cells) + " |")
    chosen = choice(args, budgets)
    lines += [
        "",
        f"Chosen by the rule: {chosen[0]:g} epochs, shape {chosen[1]}." if chosen else "No choice.",
        f"Pruning runs: {total / 3600:.2f} h summed; this invocation {invocation_s / 60:.1f} min.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
