"""Faster exports (issue 24, part 3): each ONNX export of a model against PyTorch, measured.

For every model given (a run directory or model folder), `kdtui export`'s four graphs are
written (kdtui.export.export_model with --int8 and export.optimize = "transformer"):

    model.onnx            plain (the default export)
    model.int8.onnx       int8 weights (ONNX Runtime dynamic quantisation)
    model.opt.onnx        after ONNX Runtime's transformer optimiser (fused attention,
                          LayerNorm, GELU; see kdtui/export.py's docstring for what fuses)
    model.opt.int8.onnx   the optimised graph, quantised

and each is timed under ONNX Runtime beside the model in PyTorch fp32 and the dense teacher
given by --baseline (PyTorch fp32, the 1.00x of every speed-up): batch 1 and 32, length 128 and
the length the model was trained at, random token ids, no padding, on --threads threads (all
cores by default) for PyTorch and ONNX Runtime alike. A cell is the median of --repeats timed
forwards after --warmup untimed ones. Each model and each session is timed in a process of its
own (one process loads it, times its share of the repeats on every cell, and exits), over three
rounds whose order of processes rotates, so slow spells from elsewhere hit every row alike
(`time_isolated`). At batch 1 each ONNX graph is also timed in a session whose batch and
sequence axes are fixed to the cell's shape ("static": ONNX Runtime's
add_free_dimension_override_by_name, `kdtui.export.session(dims=...)`); kdtui's own sessions
keep them free. `--no-isolate` times everything in this one process instead, rotated per cell
(kdtui.timing.median_seconds): the measurement before isolation, kept to compare.

Accuracy is that of the export's own check (kdtui.export.check_export, which `kdtui export`
records in kdtui_export.json) on the --split split (dev by default) of the model's run data:
each graph's accuracy, its difference to the same model in PyTorch, and the largest logit
difference to it.

A graph the optimiser cannot handle (the export refuses an optimised graph whose logits moved,
or the optimiser fails) is noted, and the model is timed with the plain and int8 graphs alone.

Block-sparse int8 in PyTorch (torch.ao) for unstructured models is measured by
bench/sparse_int8.py, one Linear at a time: its kernel exists in QNNPACK only (FBGEMM's asserts
"not yet supported"), and on this CPU it never beat FBGEMM's dense int8 (2026-12-06, 2 threads:
at 97% zeros and batch 32, 0.75-0.96x dense fp32 against dense int8's 2.9-3.6x), so it is not
one of the graphs here.

    python bench/export_speed.py runs/heads-ffn-50-s1 runs/movement-90-s1 --baseline runs/teacher
    python bench/export_speed.py --report bench/results/export-speed/NAME.json   # the table again

Each measurement is written to --records (bench/results/export-speed/ by default) as NAME.json:
the command, the machine, every row and each export's kdtui_export.json (what the optimiser
fused). Needs the export extra.

Checked (2026-12-07, 2 threads, MiniLM-L6 models; records minilm-isolated.json and
minilm-rotation.json): the teacher given as a model too timed 0.91-1.11x its baseline, so read
a speed-up as +-10%. In one process (--no-isolate) ONNX Runtime's batch-1 cells ran up to 2.5x
slower than isolated (heads-ffn 70% int8, batch 1, length 64: 6.5 against 2.6 ms) and static
cells up to 2.7x; at batch 32 both ways agreed on speed-ups within 12%, though every batch-32
cell, PyTorch's too, timed 4-19% faster in the one long-lived process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import claim_cores, cores  # noqa: E402

LENGTH = 128
BATCHES = (1, 32)
# The graphs of one export, in the order they are timed and shown, with their rows' names.
GRAPHS = (
    ("model.onnx", "ONNX Runtime fp32"),
    ("model.int8.onnx", "ONNX Runtime int8"),
    ("model.opt.onnx", "ONNX Runtime optimised fp32"),
    ("model.opt.int8.onnx", "ONNX Runtime optimised int8"),
)
BASELINE = "dense baseline, PyTorch fp32"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("models", nargs="*", help="run directories or model folders to export and time")
    p.add_argument("--baseline", help="the dense teacher (run or model folder): 1.00x")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per cell (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards per cell first")
    p.add_argument(
        "--batches", default=",".join(map(str, BATCHES)), help="batch sizes, comma-separated"
    )
    p.add_argument(
        "--lengths",
        default=str(LENGTH),
        help="lengths, comma-separated; the model's own (data.max_length) is added",
    )
    p.add_argument("--split", default="dev", help="the split accuracy is measured on")
    p.add_argument("--data", help="data source, for model folders without a run")
    p.add_argument(
        "--static-batch1",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time batch 1 with the ONNX sessions' axes fixed to the cell's shape",
    )
    p.add_argument("--exports", type=Path, help="write the exports here (default: a temp folder)")
    p.add_argument("--records", type=Path, default=REPO / "bench" / "results" / "export-speed")
    p.add_argument("--name", default="", help="the record's name (default: the time)")
    p.add_argument("--report", type=Path, help="print the table of a record and stop")
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each model or session in a process of its own (--no-isolate: all in this "
        "process, rotated per cell, as measured before 2026-12-07)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one isolated timing process's order
    return p


def main() -> None:
    args = parser().parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    if args.report is not None:
        record = json.loads(args.report.read_text(encoding="utf-8"))
        print("\n".join(table(record["rows"], record["cells"])))
        return
    if not args.models or not args.baseline:
        sys.exit("give the models to export and time, and --baseline DENSE_TEACHER")
    threads = args.threads or cores()
    claim_cores(1, threads)
    record = measure(args, threads)
    args.records.mkdir(parents=True, exist_ok=True)
    path = args.records / f"{args.name or time.strftime('%Y%m%d-%H%M%S')}.json"
    from kdtui.checkpoint import write_text_atomic

    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    print("\n".join(table(record["rows"], record["cells"])))
    print(f"\nrecord: {path}")


def cell(batch: int, length: int) -> str:
    """A cell's key in a row's timings (JSON keys are strings)."""
    return f"{batch}x{length}"


def measure(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    import onnxruntime
    import torch

    from kdtui.models import load_any, resolve_model_path

    torch.set_num_threads(threads)
    batches = [int(b) for b in args.batches.split(",")]
    asked = [int(n) for n in args.lengths.split(",")]
    rows: list[dict[str, Any]] = []
    exports: dict[str, Any] = {}
    cells: list[str] = []
    labels = unique_labels(args.models)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.exports or Path(tmp)
        for path, label in zip(args.models, labels, strict=True):
            config, info, folder = export_all(path, root / label, args, threads)
            exports[label] = info
            model = load_any(resolve_model_path(path)).eval()
            lengths = sorted({*asked, config.data.max_length})
            limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
            too_long = [n for n in lengths if limit and n > limit]
            lengths = [n for n in lengths if n not in too_long]
            sources = [(BASELINE, None), ("PyTorch fp32", None)]
            sources += [(runtime, name) for name, runtime in GRAPHS if name in info["check"]]
            grid = [(b, n) for b in batches for n in lengths]
            for key in (cell(b, n) for b, n in grid):
                if key not in cells:
                    cells.append(key)
            jobs = timing_jobs(
                sources,
                grid,
                model_paths={BASELINE: args.baseline, "PyTorch fp32": path},
                folder=folder,
                vocab=int(model.config.vocab_size),
                threads=threads,
                static_batch1=args.static_batch1,
            )
            time_jobs = time_isolated if args.isolate else time_in_process
            seconds = time_jobs(jobs, args.warmup, args.repeats)
            timings: dict[str, dict[str, float]] = {r: {} for r, _ in sources}
            static: dict[str, dict[str, float]] = {r: {} for r, _ in sources}
            for job, per_cell in zip(jobs, seconds, strict=True):
                into = static if job["dims"] else timings
                for key, s in per_cell.items():
                    into[job["runtime"]][key] = 1000 * s
            rows += rows_of(label, sources, timings, static, info, too_long, model)
            print(f"measured {label}", file=sys.stderr)
    return {
        "command": sys.argv,
        "threads": threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timing": "isolated" if args.isolate else "rotation",
        "split": args.split,
        "cells": cells,
        "baseline": args.baseline,
        "models": args.models,
        "torch": str(torch.__version__),
        "onnxruntime": onnxruntime.__version__,
        "cpu": getattr(torch.cpu, "get_capabilities", dict)().get("cpu_name", "?"),
        "cores": cores(),
        "rows": rows,
        "exports": exports,
    }


def unique_labels(paths: Sequence[str]) -> list[str]:
    """Each model's name in the table: its folder's name as given (a link's own name, not its
    target's), numbered where two share one."""
    import os

    labels: list[str] = []
    for path in paths:
        name = Path(os.path.abspath(Path(path).expanduser())).name or "model"
        label, n = name, 2
        while label in labels:
            label, n = f"{name}-{n}", n + 1
        labels.append(label)
    return labels


def export_all(
    path: str, folder: Path, args: argparse.Namespace, threads: int
) -> tuple[Any, dict[str, Any], Path]:
    """Export PATH's four graphs into FOLDER (plain and int8 only, with a note, when the
    optimised graph is refused); its config, kdtui_export.json and the folder."""
    from dataclasses import replace

    from kdtui.errors import KdtuiError
    from kdtui.export import export_model
    from kdtui.resolver import resolve_for_models

    overrides = [
        f"run.threads={threads}",
        f"evaluate.split={args.split}",
        "export.optimize=transformer",
    ]
    options = {"data.source": args.data} if args.data else {}
    config = resolve_for_models([path], None, overrides, options)
    try:
        info = export_model(path, folder, config, int8=True, force=True)
    except KdtuiError as e:
        print(f"{path}: optimised export refused: {e}", file=sys.stderr)
        plain = replace(config, export=replace(config.export, optimize="none"))
        info = export_model(path, folder, plain, int8=True, force=True)
        info["optimize_refused"] = str(e)
    return config, info, folder


def timing_jobs(
    sources: Sequence[tuple[str, str | None]],
    grid: Sequence[tuple[int, int]],
    *,
    model_paths: dict[str, str],
    folder: Path,
    vocab: int,
    threads: int,
    static_batch1: bool,
) -> list[dict[str, Any]]:
    """What to time, as JSON-able jobs: each source (a row's runtime and its ONNX file, None for
    PyTorch) over every (batch, length) of GRID; with STATIC_BATCH1 also each ONNX graph once per
    batch-1 cell in a session whose axes are fixed to that shape (one job per shape: a static
    session serves one shape only). Pure."""
    from kdtui.export import BATCH_AXIS, SEQUENCE_AXIS

    jobs = [
        {
            "runtime": runtime,
            "kind": "torch" if name is None else "onnx",
            "path": model_paths[runtime] if name is None else str(folder / name),
            "dims": None,
            "grid": list(grid),
        }
        for runtime, name in sources
    ]
    if static_batch1:
        jobs += [
            {
                "runtime": runtime,
                "kind": "onnx",
                "path": str(folder / name),
                "dims": {BATCH_AXIS: 1, SEQUENCE_AXIS: length},
                "grid": [(1, length)],
            }
            for runtime, name in sources
            if name is not None
            for batch, length in grid
            if batch == 1
        ]
    return [{**job, "vocab": vocab, "threads": threads} for job in jobs]


def job_forward(job: dict[str, Any]) -> tuple[Callable[[Any], Any], int]:
    """The forward a job times (the model in PyTorch fp32, or an ONNX Runtime session) and
    the vocabulary its random ids come from (a PyTorch model's own; an export's: the job's)."""
    if job["kind"] == "torch":
        from kdtui.models import load_any, resolve_model_path
        from kdtui.recipes.evaluate import torch_forward

        model = load_any(resolve_model_path(job["path"])).eval()
        return torch_forward(model), int(model.config.vocab_size)
    from kdtui.export import session, session_forward

    sess = session(Path(job["path"]), job["threads"], job["dims"])
    return session_forward(sess), job["vocab"]


def time_isolated(
    jobs: Sequence[dict[str, Any]], warmup: int, repeats: int, rounds: int = 3
) -> list[dict[str, float]]:
    """Each job's median seconds per cell, each job timed in a process of its own.

    ONNX Runtime sessions timed in one process beside other sessions ran up to twice as slow
    as alone (module docstring), so here a process loads one model or session, times its share
    of REPEATS on every cell after WARMUP untimed calls, and exits. Over ROUNDS rounds every job
    gets a process per round, in an order rotated from round to round, so slow spells from
    elsewhere hit every job alike (kdtui.timing.rotated_blocks, as median_seconds within a
    process)."""
    import statistics
    import subprocess

    from kdtui.timing import rotated_blocks

    times: list[dict[str, list[float]]] = [{} for _ in jobs]
    for k, share in rotated_blocks(len(jobs), repeats, rounds):
        order = json.dumps({**jobs[k], "warmup": warmup, "repeats": share})
        done = subprocess.run(
            [sys.executable, __file__, "--worker", order],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            sys.exit(f"timing {jobs[k]['path']} failed:\n{done.stderr[-2000:]}")
        for key, spent in json.loads(done.stdout.splitlines()[-1]).items():
            times[k].setdefault(key, []).extend(spent)
    return [{key: statistics.median(s) for key, s in t.items()} for t in times]


def time_in_process(
    jobs: Sequence[dict[str, Any]], warmup: int, repeats: int
) -> list[dict[str, float]]:
    """Each job's median seconds per cell, all jobs in this process: per cell, the jobs that
    time it are rotated over rounds (kdtui.timing.median_seconds). The measurement of
    2026-12-06 (`--no-isolate`); ONNX sessions run slower here than alone."""
    forwards = [job_forward(job) for job in jobs]  # on the threads `measure` set
    result: list[dict[str, float]] = [{} for _ in jobs]
    for batch, length in sorted({tuple(c) for job in jobs for c in job["grid"]}):
        timed = [k for k, job in enumerate(jobs) if [batch, length] in map(list, job["grid"])]
        calls = [timed_call(*forwards[k], batch, length) for k in timed]
        for k, s in zip(timed, time_calls(calls, warmup, repeats), strict=True):
            result[k][cell(batch, length)] = s
    return result


def worker(order: dict[str, Any]) -> None:
    """One isolated timing process (time_isolated): every cell of the order's grid, its
    warm-up, then its repeats; prints {cell: [seconds, ...]} as JSON."""
    import torch

    torch.set_num_threads(order["threads"])
    forward, vocab = job_forward(order)
    spent: dict[str, list[float]] = {}
    for batch, length in order["grid"]:
        call = timed_call(forward, vocab, batch, length)
        for _ in range(order["warmup"]):
            call()
        key = cell(batch, length)
        spent[key] = []
        for _ in range(order["repeats"]):
            start = time.perf_counter()
            call()
            spent[key].append(time.perf_counter() - start)
    print(json.dumps(spent))


def timed_call(forward: Callable[[Any], Any], vocab: int, batch: int, length: int) -> Any:
    """FORWARD on random ids of BATCH x LENGTH from a vocabulary of VOCAB, no padding (as
    kdtui.recipes.evaluate.latency_grid times models)."""
    import functools

    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(
        min(1000, vocab - 1), min(vocab, 20000), (batch, length), generator=generator
    )
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def call(inputs: dict[str, Any]) -> Any:
        with torch.no_grad():
            return forward(inputs)

    return functools.partial(call, inputs)


def time_calls(calls: Sequence[Callable[[], Any]], warmup: int, repeats: int) -> list[float]:
    from kdtui.timing import median_seconds

    for _ in range(warmup):
        for call in calls:
            call()
    return median_seconds(calls, repeats)


def rows_of(
    label: str,
    sources: Sequence[tuple[str, str | None]],
    timings: dict[str, dict[str, float]],
    static: dict[str, dict[str, float]],
    info: dict[str, Any],
    too_long: list[int],
    model: Any,
) -> list[dict[str, Any]]:
    """One model's rows: the baseline timed with it, PyTorch fp32, each ONNX graph."""
    from kdtui.recipes.evaluate import encoder_sparsity

    check = info["check"]
    pytorch_accuracy = next((c["pytorch_accuracy"] for c in check.values() if _is_check(c)), None)
    baseline_ms = timings[BASELINE]
    notes = []
    if too_long:
        notes.append(f"lengths {too_long} beyond its positions: not timed")
    if "optimize_refused" in info:
        notes.append(f"optimised graph refused: {info['optimize_refused']}")
    sparsity = encoder_sparsity(model)
    if sparsity is not None and sparsity > 0.1:
        notes.append(f"{sparsity:.0%} zeros in the encoder (ONNX Runtime multiplies them)")
    rows = [
        {
            "model": label,
            "runtime": BASELINE,
            "ms": baseline_ms,
            "baseline_ms": baseline_ms,
        },
        {
            "model": label,
            "runtime": "PyTorch fp32",
            "ms": timings["PyTorch fp32"],
            "baseline_ms": baseline_ms,
            "accuracy": pytorch_accuracy,
            "pytorch_accuracy": pytorch_accuracy,
            "note": "; ".join(notes),
        },
    ]
    for runtime, name in sources:
        if name is None:
            continue
        row = {
            "model": label,
            "runtime": runtime,
            "file": name,
            "ms": timings[runtime],
            "static_ms": static.get(runtime, {}),
            "baseline_ms": baseline_ms,
            "accuracy": check[name]["accuracy"],
            "pytorch_accuracy": check[name]["pytorch_accuracy"],
            "max_logit_diff": check[name]["max_logit_diff"],
            "bytes": check[name]["bytes"],
        }
        if name == "model.opt.onnx" and "optimize" in info:
            row["note"] = info["optimize"]["attention"]
        rows.append(row)
    return rows


def _is_check(value: Any) -> bool:
    return isinstance(value, dict) and "pytorch_accuracy" in value


def table(rows: Sequence[dict[str, Any]], cells: Sequence[str]) -> list[str]:
    """The markdown table of ROWS (as `measure` records them) over CELLS ("1x128", ...): per
    cell the row's ms and its speed-up over the dense baseline timed with it, at batch 1 also
    the ONNX graphs' ms with static shapes. Pure: no timing, no imports."""
    static_cells = [c for c in cells if c.startswith("1x")]
    head = ["model", "runtime", "acc", "vs its PyTorch", "max abs logit diff"]
    for c in cells:
        batch, length = c.split("x")
        head += [f"b{batch} L{length} ms", "vs dense"]
        if c in static_cells:
            head.append(f"b{batch} L{length} static ms")
    head += ["MiB", "notes"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        accuracy, own = r.get("accuracy"), r.get("pytorch_accuracy")
        diff = r.get("max_logit_diff")
        cols = [
            r["model"],
            r["runtime"],
            "-" if accuracy is None else f"{100 * accuracy:.1f}",
            "-" if accuracy is None or own is None else f"{100 * (accuracy - own):+.1f}",
            "-" if diff is None else f"{diff:.1e}",
        ]
        for c in cells:
            ms, base = r["ms"].get(c), r.get("baseline_ms", {}).get(c)
            cols.append(_ms(ms))
            cols.append("-" if ms is None or base is None else f"{base / ms:.2f}x")
            if c in static_cells:
                cols.append(_ms(r.get("static_ms", {}).get(c)))
        size = r.get("bytes")
        cols.append("-" if size is None else f"{size / 2**20:.1f}")
        cols.append(r.get("note", ""))
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def _ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


if __name__ == "__main__":
    main()
