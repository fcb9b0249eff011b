"""`kdtui teacher` with MiniLM on real multi-domain data: test accuracy per domain, wall time,
peak memory. Runs the real CLI in a child process.

    python bench/teacher.py                                  # ../shared/data/amazon-4domains
    python bench/teacher.py --data PATH --epochs 1 --max-length 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-4domains"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"data not found: {args.data} (give --data PATH)")

    out = args.output_dir or Path(tempfile.mkdtemp(prefix="kdtui-bench-"))
    command = [
        sys.executable,
        "-m",
        "kdtui",
        "teacher",
        "--data",
        str(args.data),
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--set",
        f"data.max_length={args.max_length}",
        "--set",
        "train.eval_every=0",
        "--set",
        f"run.threads={args.threads}",
        "--output-dir",
        str(out),
        "--name",
        "teacher",
        "--quiet",
        "--force",
    ]
    command.append("--bf16" if args.bf16 else "--no-bf16")
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    metrics = json.loads((out / "teacher" / "metrics.json").read_text())
    test = metrics["test"]
    domains = [d for d in test if d != "all"]
    print(
        f"kdtui teacher: {args.model}, {args.data.name}, {args.epochs} epoch(s), length "
        f"{args.max_length}, batch {args.batch_size}, lr {args.lr}{', bf16' if args.bf16 else ''}, "
        f"threads {args.threads or 'default'}"
    )
    print("| " + " | ".join([*domains, "all", "wall time", "peak memory"]) + " |")
    print("|" + " --- |" * (len(domains) + 3))
    cells = [f"{100 * test[d]:.1f}" for d in [*domains, "all"]]
    print("| " + " | ".join([*cells, f"{wall / 60:.1f} min", f"{peak_mib / 1024:.2f} GiB"]) + " |")
    print(f"(test accuracy %, best dev checkpoint; run directory {out / 'teacher'})")


if __name__ == "__main__":
    main()
