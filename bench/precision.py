"""fp32 against bf16 autocast on the benchmark data: accuracy parity and speed-up, paired by seed.

Three kinds of training, each run with and without bf16 autocast for the same seeds:

* teacher: `kdtui teacher` (MiniLM-L6, all four domains, 1 epoch, length 64, batch 16, lr 5e-5);
* distill: `kdtui distill --method vanilla --domain books` from one fixed fp32 teacher (the
  seed-1 teacher above), a 2-layer student copied from it, both stages at their default epochs,
  student lr 1e-3 (the Meta-KD benchmark's dev-chosen student rate);
* prune: `kdtui prune --sparsity 0.9` (CAP on soft movement, the defaults) from the same fixed
  teacher, --prune-steps optimiser steps.

Each precision writes its runs under its own folder, so nothing cached by one (teacher logits,
CAP's bank vectors) is read by the other. One run at a time with --threads threads (the default
2 is both cores of the development machine). Every finished run leaves a record (dev and test
accuracy, per-example test correctness, wall and CPU seconds) in --results; a second call
reads the records and runs only what is missing, so an interrupted table resumes.

The table: per kind, mean test (and dev) accuracy with a Student-t 95% interval over the seeds,
bf16 - fp32 as a paired bootstrap interval over seeds and test examples (bench/stats.py), and
the speed-up as the ratio of summed wall times (and of CPU times).

    python bench/precision.py                        # ../shared/data/amazon-4domains
    python bench/precision.py --report               # the table from the records only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from machine import claim_cores, run_timed  # noqa: E402
from stats import fmt_diff, fmt_mean_ci, paired_bootstrap  # noqa: E402

from kdtui.checkpoint import write_json_atomic  # noqa: E402
from kdtui.rundir import RunInfo  # noqa: E402

DEFAULT_DATA = BENCH.parents[1] / "shared" / "data" / "amazon-4domains"
KINDS = ("teacher", "distill", "prune")
PRECISIONS = ("fp32", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each run")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--prune-steps", type=int, default=150)
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/kdtui-bench-precision"))
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "precision")
    parser.add_argument("--report", action="store_true", help="print the table from the records")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if not args.report:
        if not args.data.exists():
            sys.exit(f"data not found: {args.data} (give --data PATH)")
        claim_cores(1, args.threads)
        start = time.perf_counter()
        for kind in args.kinds:
            for seed in args.seeds:
                for precision in PRECISIONS:
                    run_one(args, kind, seed, precision)
        print(f"\nthis invocation: {(time.perf_counter() - start) / 60:.1f} min\n")
    print_table(args)


def common(args: argparse.Namespace, precision: str) -> list[str]:
    return [
        "--bf16" if precision == "bf16" else "--no-bf16",
        "--set",
        f"data.max_length={args.max_length}",
        "--set",
        f"run.threads={args.threads}",
    ]


def fixed_teacher(args: argparse.Namespace) -> Path:
    """The teacher every distill and prune run starts from: the fp32 teacher of the first seed."""
    seed = args.seeds[0]
    record = run_one(args, "teacher", seed, "fp32")
    return Path(record["run"])


def options(args: argparse.Namespace, kind: str, seed: int, precision: str) -> list[str]:
    data = ["--data", str(args.data)]
    if kind == "teacher":
        return [
            "teacher", *data, "--model", "minilm", "--epochs", str(args.teacher_epochs),
            "--batch-size", "16", "--lr", "5e-5", "--seed", str(seed),
            *common(args, precision),
        ]  # fmt: skip
    teacher = str(fixed_teacher(args))
    if kind == "distill":
        return [
            "distill", "--teacher", teacher, "--domain", "books", "--method", "vanilla",
            "--lr", "1e-3", "--seed", str(seed), *common(args, precision),
        ]  # fmt: skip
    return [
        "prune", "--model", teacher, "--sparsity", "0.9", "--max-steps", str(args.prune_steps),
        "--seed", str(seed), *common(args, precision),
    ]  # fmt: skip


def run_one(args: argparse.Namespace, kind: str, seed: int, precision: str) -> dict[str, Any]:
    name = f"{kind}-{precision}-s{seed}"
    record_file = args.results / f"{name}.json"
    if record_file.is_file():
        return json.loads(record_file.read_text())
    out = args.output_dir / precision
    out.mkdir(parents=True, exist_ok=True)
    run = out / name
    opts = options(args, kind, seed, precision)
    if RunInfo(run).config_file.is_file():
        command = [opts[0], "--resume", str(run)]
    else:
        command = [*opts, "--output-dir", str(out), "--name", name, "--force"]
    print(f"{name}: kdtui {' '.join(command)}", flush=True)
    timed = run_timed(
        [sys.executable, "-m", "kdtui", *command, "--quiet"],
        log=out / f"{name}.log",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if timed.returncode != 0:
        sys.exit(f"{name} failed (exit {timed.returncode}); see {out / f'{name}.log'}")
    info = RunInfo(run)  # a one-domain distill run holds its student at its top level
    metrics = info.metrics()
    record = {
        "name": name,
        "kind": kind,
        "seed": seed,
        "precision": precision,
        "run": str(run),
        "command": opts,
        "test": metrics["test"]["all"],
        "best_dev": metrics.get("best_dev"),
        "wall_s": timed.wall_s,
        "cpu_s": timed.cpu_s,
        "fixed_costs": metrics.get("timings", {}),
        "correct": info.correct(),
    }
    write_json_atomic(record_file, record)
    print(
        f"  test {100 * record['test']:.1f}, wall {timed.wall_s / 60:.1f} min, "
        f"cpu {timed.cpu_s / 60:.1f} min",
        flush=True,
    )
    return record


def print_table(args: argparse.Namespace) -> None:
    records = [json.loads(f.read_text()) for f in sorted(args.results.glob("*.json"))]
    print(
        "| kind | seeds | fp32 test | bf16 test | bf16 - fp32 test (paired) | fp32 dev | bf16 dev "
        "| wall fp32 / bf16 (min, summed) | speed-up wall | speed-up CPU |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in KINDS:
        by = {p: {r["seed"]: r for r in records if r["kind"] == kind and r["precision"] == p}
              for p in PRECISIONS}  # fmt: skip
        seeds = sorted(set(by["fp32"]) & set(by["bf16"]))
        if not seeds:
            continue
        a, b = ([by[p][s] for s in seeds] for p in PRECISIONS)
        diff = paired_bootstrap(
            [[int(c) for c in r["correct"]] for r in b], [[int(c) for c in r["correct"]] for r in a]
        )

        def dev(rows: list[dict[str, Any]]) -> str:
            values = [r["best_dev"] for r in rows if r.get("best_dev") is not None]
            return fmt_mean_ci(values) if values else "-"

        wall = [sum(r["wall_s"] for r in rows) for rows in (a, b)]
        cpu = [sum(r["cpu_s"] for r in rows) for rows in (a, b)]
        print(
            f"| {kind} | {len(seeds)} | {fmt_mean_ci([r['test'] for r in a])} "
            f"| {fmt_mean_ci([r['test'] for r in b])} | {fmt_diff(diff)} | {dev(a)} | {dev(b)} "
            f"| {wall[0] / 60:.1f} / {wall[1] / 60:.1f} | {wall[0] / wall[1]:.2f}x "
            f"| {cpu[0] / cpu[1]:.2f}x |"
        )


if __name__ == "__main__":
    main()
