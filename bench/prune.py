"""`kdtui prune` benchmark: MiniLM fine-tuned on real multi-domain data, then pruned with
magnitude, movement, soft movement and CAP (plus CAP without PrC / SnC / FiC) to several
sparsities with the same step budget and seed; then heads-ffn structured pruning with its size
and CPU speed-up. Prints markdown tables of test accuracy (checkpoint chosen on dev) and
retention (pruned / dense). Runs the real CLI in child processes; a run that already finished
in the output folder is reused and an interrupted one is resumed, so the script can be rerun.

    python bench/prune.py                                   # ../shared/data/amazon-4domains
    python bench/prune.py --model tiny --data synthetic --steps 12 --teacher-epochs 1  # check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-4domains"
BASELINES = ("magnitude", "movement", "soft-movement")
# CAP runs: its modules on top of a criterion (method name -> prune options besides it).
CAP_METHODS: dict[str, list[str]] = {
    "cap": ["--cap"],
    "cap-no-prc": ["--cap", "--no-prc"],
    "cap-no-snc": ["--cap", "--no-snc"],
    "cap-no-fic": ["--cap", "--no-fic"],
}
METHODS = [*BASELINES, *CAP_METHODS]
LABELS = {
    "magnitude": "magnitude",
    "movement": "movement",
    "soft-movement": "soft movement",
    "cap": "CAP (PrC + SnC + FiC)",
    "cap-no-prc": "CAP without PrC",
    "cap-no-snc": "CAP without SnC",
    "cap-no-fic": "CAP without FiC",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder, file or 'synthetic'")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--teacher", type=Path, default=None, help="reuse this teacher run")
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5, help="teacher learning rate")
    parser.add_argument("--prune-lr", type=float, default=1e-4, help="pruning learning rate")
    parser.add_argument("--steps", type=int, default=100, help="pruning steps per run")
    parser.add_argument("--evals", type=int, default=1, help="dev evaluations per pruning run")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.97, 0.5])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument(
        "--cap-criterion",
        default="best-dev",
        choices=["best-dev", *BASELINES],
        help="criterion under CAP; best-dev: the baseline with the best dev accuracy at that "
        "sparsity (needs the baselines first)",
    )
    parser.add_argument(
        "--cap-pooling",
        nargs="+",
        default=["cls", "mean"],
        choices=["cls", "mean"],
        help="CAP's sentence vectors; each gives its own table rows",
    )
    parser.add_argument(
        "--ablation-sparsities",
        type=float,
        nargs="+",
        default=[0.9, 0.97],
        help="sparsities at which the CAP ablations run",
    )
    parser.add_argument(
        "--ablation-pooling",
        nargs="+",
        default=None,
        choices=["cls", "mean"],
        help="poolings the CAP ablations run with (default: every --cap-pooling)",
    )
    parser.add_argument("--heads-sparsity", type=float, default=0.5, help="0 = skip heads-ffn")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="1 is faster on a busy CPU")
    parser.add_argument("--set", action="append", default=[], help="extra --set for prune runs")
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/kdtui-bench-prune"))
    args = parser.parse_args()
    if args.data != "synthetic" and not Path(args.data).exists():
        sys.exit(f"data not found: {args.data} (give --data PATH, or --data synthetic)")
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    teacher = args.teacher or out / "teacher"
    if args.teacher is None:
        timings["teacher"] = run_kdtui(
            out,
            "teacher",
            [
                "teacher",
                "--data",
                args.data,
                "--model",
                args.model,
                "--epochs",
                str(args.teacher_epochs),
                "--batch-size",
                str(args.batch_size),
                "--lr",
                str(args.lr),
                "--seed",
                str(args.seed),
                "--set",
                f"data.max_length={args.max_length}",
                "--set",
                f"run.threads={args.threads}",
            ],
        )
    dense = json.loads((teacher / "metrics.json").read_text())["test"]

    results: dict[str, dict[str, Any]] = {}
    # Evaluations fall in the cool-down (the last 20% of steps) and at the end: the checkpoint
    # is chosen on dev among evaluations at the final sparsity.
    eval_every = args.steps
    if args.evals > 1:
        eval_every = max(1, round(0.2 * args.steps / (args.evals - 1)))
    common = [
        "prune",
        "--model",
        str(teacher),
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.prune_lr),
        "--seed",
        str(args.seed),
        "--set",
        f"train.eval_every={eval_every}",
        "--set",
        f"run.threads={args.threads}",
        *(x for s in args.set for x in ("--set", s)),
    ]
    for sparsity in args.sparsities:
        for prefix, method, pooling in table_rows(args):
            if method.startswith("cap-no") and sparsity not in args.ablation_sparsities:
                continue
            name = f"{prefix}-{round(sparsity * 100)}"
            if method in BASELINES:
                options = ["--criterion", method, "--no-cap"]
            else:
                criterion = cap_criterion(args.cap_criterion, results, sparsity)
                options = ["--criterion", criterion, *CAP_METHODS[method], "--pooling", pooling]
            options = [*common, "--sparsity", str(sparsity), *options]
            timings[name] = run_kdtui(out, name, options)
            results[name] = json.loads((out / name / "metrics.json").read_text())
            report_progress(name, results[name], dense, timings[name])

    heads: dict[str, Any] | None = None
    if args.heads_sparsity > 0:
        name = f"heads-ffn-{round(args.heads_sparsity * 100)}"
        options = [*common, "--structure", "heads-ffn", "--sparsity", str(args.heads_sparsity)]
        timings[name] = run_kdtui(out, name, options)
        heads = json.loads((out / name / "metrics.json").read_text())
        heads["speed"] = speed_up(teacher, out / name, threads=args.threads)
        heads["bytes"] = {
            "dense": (teacher / "model" / "model.safetensors").stat().st_size,
            "pruned": (out / name / "model" / "model.safetensors").stat().st_size,
        }
        report_progress(name, heads, dense, timings[name])

    wall = time.perf_counter() - start
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "dense": dense,
        "results": results,
        "heads": heads,
        "timings_s": timings,
        "wall_s": wall,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_tables(args, dense, results, heads, wall, out)


def table_rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(run name prefix, method, pooling) per table row; CAP rows once per --cap-pooling."""
    rows = []
    for method in args.methods:
        if method in BASELINES:
            rows.append((method, method, ""))
            continue
        poolings = args.cap_pooling
        if method.startswith("cap-no") and args.ablation_pooling:
            poolings = [p for p in poolings if p in args.ablation_pooling]
        for pooling in poolings:
            rows.append((method if pooling == "cls" else f"{method}-{pooling}", method, pooling))
    return rows


def cap_criterion(choice: str, results: dict[str, dict[str, Any]], sparsity: float) -> str:
    """CAP is a framework over a pruning criterion; with a short budget the best criterion is
    not the paper's, so by default CAP builds on the baseline with the best *dev* accuracy at
    this sparsity (the test split is never looked at)."""
    if choice != "best-dev":
        return choice
    dev = {
        c: results[f"{c}-{round(sparsity * 100)}"]["best_dev"]
        for c in BASELINES
        if f"{c}-{round(sparsity * 100)}" in results
    }
    if not dev:
        sys.exit("--cap-criterion best-dev needs the baselines in --methods")
    return max(dev, key=lambda c: dev[c])


def run_kdtui(out: Path, name: str, options: list[str]) -> float:
    """Run one kdtui command into OUT/NAME: reuse a finished run, resume an interrupted one.
    Returns the seconds the run has taken, over all its sessions (from its events)."""
    run = out / name
    if not (run / "metrics.json").is_file():
        if (run / "config.toml").is_file():
            command = [options[0], "--resume", str(run)]
        else:
            command = [*options, "--output-dir", str(out), "--name", name, "--force"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        subprocess.run([sys.executable, "-m", "kdtui", *command, "--quiet"], check=True, env=env)
    return run_seconds(run)


def run_seconds(run: Path) -> float:
    """Wall time of a run: each session from its run_started to the last event it wrote."""
    total, start, last = 0.0, None, None
    for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("type") == "run_started":
            if start is not None and last is not None:
                total += last - start
            start = event["time"]
        last = event.get("time", last)
    if start is not None and last is not None:
        total += last - start
    return total


def report_progress(name: str, metrics: dict[str, Any], dense: dict[str, float], s: float) -> None:
    acc = metrics["test"]["all"]
    print(
        f"{name}: test {100 * acc:.1f} (retention {acc / dense['all']:.1%}), "
        f"sparsity {metrics['sparsity']:.4f}, best dev {metrics['best_dev']:.4f}, {s / 60:.1f} min",
        flush=True,
    )


def speed_up(teacher: Path, pruned: Path, *, threads: int) -> dict[str, float]:
    """Median CPU forward time at batch 32, length 128 of the dense teacher and the compact
    model, measured alternately so that load from other processes hits both alike."""
    import torch

    from kdtui.models import load_any

    torch.set_num_threads(threads)
    models = {"dense": load_any(teacher / "model"), "pruned": load_any(pruned / "model")}
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 128), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for model in models.values():
            model.eval()
            model(**inputs)
        for _ in range(7):
            for key, model in models.items():
                begin = time.perf_counter()
                model(**inputs)
                times[key].append(time.perf_counter() - begin)
    medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {
        "dense_ms": medians["dense"],
        "pruned_ms": medians["pruned"],
        "speed_up": medians["dense"] / medians["pruned"],
    }


def print_tables(
    args: argparse.Namespace,
    dense: dict[str, float],
    results: dict[str, dict[str, Any]],
    heads: dict[str, Any] | None,
    wall: float,
    out: Path,
) -> None:
    source = Path(args.data).name if args.data != "synthetic" else "synthetic"
    print()
    print(
        f"Unstructured pruning of {args.model} fine-tuned on {source}: test accuracy % "
        f"(retention = pruned / dense). Budget per run: {args.steps} steps x batch "
        f"{args.batch_size}, length {args.max_length}, lr {args.prune_lr}, seed {args.seed}, "
        f"{args.threads} CPU threads; checkpoint chosen on dev among evaluations at the final "
        f"sparsity. Dense teacher ({args.teacher_epochs:g} epoch(s), lr {args.lr}): "
        f"{100 * dense['all']:.1f}. CAP runs on "
        + (
            "the baseline criterion with the best dev accuracy at each sparsity."
            if args.cap_criterion == "best-dev"
            else f"the {args.cap_criterion} criterion."
        )
    )
    print()
    print("| method | " + " | ".join(f"{s:.0%} sparsity" for s in args.sparsities) + " |")
    print("| --- |" + " --- |" * len(args.sparsities))
    for prefix, method, pooling in table_rows(args):
        cells = []
        for s in args.sparsities:
            m = results.get(f"{prefix}-{round(s * 100)}")
            if m is None:
                cells.append("-")
                continue
            acc = m["test"]["all"]
            cells.append(f"{100 * acc:.1f} ({acc / dense['all']:.1%})")
        label = LABELS[method] + (f", {pooling} pooling" if pooling else "")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print("Dev accuracy % of the same runs (what the criterion under CAP was chosen by):")
    print()
    print("| method | " + " | ".join(f"{s:.0%}" for s in args.sparsities) + " |")
    print("| --- |" + " --- |" * len(args.sparsities))
    for prefix, method, pooling in table_rows(args):
        cells = []
        for s in args.sparsities:
            m = results.get(f"{prefix}-{round(s * 100)}")
            cells.append("-" if m is None else f"{100 * m['best_dev']:.1f}")
        label = LABELS[method] + (f", {pooling} pooling" if pooling else "")
        print(f"| {label} | " + " | ".join(cells) + " |")
    chosen = [
        f"{s:.0%}: {results[f'cap-{round(s * 100)}']['criterion']}"
        for s in args.sparsities
        if f"cap-{round(s * 100)}" in results
    ]
    if chosen:
        print(f"\nCAP's criterion per sparsity: {', '.join(chosen)}.")
    if heads is not None:
        acc = heads["test"]["all"]
        speed = heads["speed"]
        print()
        print(
            f"Structured pruning (heads-ffn, CAP) to {args.heads_sparsity:.0%} of the encoder's "
            f"parameters, same budget; latency: median forward at batch 32, length 128, "
            f"{args.threads} CPU threads."
        )
        print()
        print("| model | test accuracy | weights file | latency | speed-up |")
        print("| --- | --- | --- | --- | --- |")
        b = heads["bytes"]
        print(
            f"| dense teacher | {100 * dense['all']:.1f} | {b['dense'] / 2**20:.1f} MiB | "
            f"{speed['dense_ms']:.0f} ms | 1.00x |"
        )
        print(
            f"| heads-ffn {heads['sparsity']:.1%} (heads per layer {heads['kept_heads']}) | "
            f"{100 * acc:.1f} ({acc / dense['all']:.1%}) | {b['pruned'] / 2**20:.1f} MiB | "
            f"{speed['pruned_ms']:.0f} ms | {speed['speed_up']:.2f}x |"
        )
    sizes = [(name, m["sparse_model"]) for name, m in results.items() if m.get("sparse_model")]
    if sizes:
        print()
        print("Compressed sparse files (bitmask + float32 values):")
        for name, s in sizes:
            print(
                f"  {name}: {s['bytes'] / 2**20:.1f} MiB, encoder Linear weights at "
                f"{s['encoder_linear_ratio']:.1%} of their dense size"
            )
    print(f"\nwall time {wall / 60:.1f} min; runs in {out}")


if __name__ == "__main__":
    main()
