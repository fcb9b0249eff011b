"""Kernels for unstructured sparsity on this CPU, one encoder Linear at a time (issue 24).

The question: does int8 with sparse kernels, or torch.ao's block-sparse int8 Linear, beat the
CSR product kdtui uses today (kdtui.sparse_kernels.SparseLinear) for a 90% or 97% sparse
model? Each of MiniLM's three Linear shapes (384->384 for attention, 384->1536 and 1536->384
for the feed-forward block) gets a random weight with the given share of zeros at random places
(what unstructured pruning leaves) and is timed on random activations of batch x 128 tokens:

    dense fp32           torch.nn.functional.linear (the 1.00x)
    CSR fp32             kdtui's SparseLinear (torch.sparse_csr x dense)
    dense int8 (x86)     torch.ao.nn.quantized.dynamic.Linear on the default x86 engine
    dense int8 (qnnpack) the same on QNNPACK
    block-sparse int8    torch.ao.nn.sparse.quantized.dynamic.Linear, 1x4 blocks, on QNNPACK
                         (its kernel exists in QNNPACK only; FBGEMM's asserts "not yet
                         supported"), a block skipped only when all four weights are zero

Each cell is the median of --repeats forwards (kdtui.timing.median_seconds: blocks per
callable, order rotated), on --threads threads. The int8 rows' largest output difference to
dense fp32 is printed beside them, so a fast kernel that computes something else shows.

    python bench/sparse_int8.py                      # 90% and 97%, batch 1 and 32
    python bench/sparse_int8.py --sparsity 0.97 --batches 32

The table is written to --record (JSON) with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import claim_cores, cores  # noqa: E402
from kdtui.sparse_kernels import SparseLinear  # noqa: E402
from kdtui.timing import median_seconds  # noqa: E402

SHAPES = ((384, 384), (384, 1536), (1536, 384))
LENGTH = 128
BLOCK = (1, 4)


def random_sparse_linear(n_in: int, n_out: int, sparsity: float, gen: torch.Generator) -> nn.Linear:
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.05, generator=gen)
        keep = torch.rand(linear.weight.shape, generator=gen) >= sparsity
        linear.weight.mul_(keep)
        linear.bias.normal_(0.0, 0.02, generator=gen)
    return linear.eval()


def dense_int8(linear: nn.Linear, engine: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A dynamic int8 Linear packed for ENGINE."""
    torch.backends.quantized.engine = engine
    qlinear = torch.ao.nn.quantized.dynamic.Linear(linear.in_features, linear.out_features)
    qlinear.set_weight_bias(quantize_weight(linear.weight), linear.bias.detach())
    return on_engine(engine, qlinear)


def block_sparse_int8(linear: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.ao's block-sparse dynamic int8 Linear (1x4 blocks), on QNNPACK: its only kernel."""
    torch.backends.quantized.engine = "qnnpack"
    qlinear = torch.ao.nn.sparse.quantized.dynamic.Linear(
        linear.in_features, linear.out_features, *BLOCK
    )
    qlinear._packed_params.set_weight_bias(
        quantize_weight(linear.weight), linear.bias.detach(), *BLOCK
    )
    return on_engine("qnnpack", qlinear)


def on_engine(engine: str, qlinear: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """QLINEAR's forward with ENGINE selected first: the engine is process-wide, and a layer
    packed for one engine must run on it while the other kernels take their turns."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        torch.backends.quantized.engine = engine
        return qlinear(x)

    return forward


# The kernels of the table, in its column order: each makes the callable from the float Linear.
KERNELS: dict[str, Callable[[nn.Linear], Callable[[torch.Tensor], torch.Tensor]]] = {
    "dense fp32": lambda linear: linear,
    "CSR fp32": SparseLinear,
    "dense int8 (x86)": lambda linear: dense_int8(linear, "x86"),
    "dense int8 (qnnpack)": lambda linear: dense_int8(linear, "qnnpack"),
    "block-sparse int8 (qnnpack)": block_sparse_int8,
}


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor int8, zero point 0 (what the sparse kernel requires)."""
    w = weight.detach().float()
    scale = max(float(w.abs().max()) / 127.0, 1e-8)
    return torch.quantize_per_tensor(w, scale, 0, torch.qint8)


def block_zero_share(weight: torch.Tensor) -> float:
    """The share of 1x4 blocks whose four weights are all zero (what the block kernel skips)."""
    rows, cols = weight.shape
    blocks = weight[:, : cols - cols % 4].reshape(rows, -1, 4)
    return float((blocks == 0).all(dim=-1).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.97])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--record", type=Path, default=REPO / "bench" / "results" / "sparse-int8.json"
    )
    args = parser.parse_args(argv)
    threads = args.threads or cores()
    claim_cores(1, threads)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(args.seed)
    # torch 2.13 deprecates quantised tensors, and QNNPACK notes that it ignores reduce_range:
    # both are printed once per layer and say nothing about the measurement.
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")

    rows: list[dict[str, object]] = []
    print(
        f"ms per forward (median of {args.repeats}), {threads} thread(s), length {LENGTH}; "
        "speed-up against dense fp32 in brackets; max |diff| to dense fp32 for int8"
    )
    columns = ["sparsity", "batch", "shape", *KERNELS, "1x4 blocks all zero"]
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|")
    with torch.inference_mode():
        for sparsity in args.sparsity:
            for batch in args.batches:
                for n_in, n_out in SHAPES:
                    linear = random_sparse_linear(n_in, n_out, sparsity, gen)
                    x = torch.randn(batch * LENGTH, n_in, generator=gen)
                    kernels = {name: make(linear) for name, make in KERNELS.items()}
                    reference = linear(x)
                    diffs = {
                        name: float((f(x) - reference).abs().max()) for name, f in kernels.items()
                    }
                    times = median_seconds(
                        [lambda f=f, x=x: f(x) for f in kernels.values()], args.repeats
                    )
                    ms = dict(zip(kernels, (t * 1000 for t in times), strict=True))
                    zero_blocks = block_zero_share(linear.weight)
                    rows.append(
                        {
                            "sparsity": sparsity,
                            "batch": batch,
                            "shape": [n_in, n_out],
                            "ms": ms,
                            "max_abs_diff": diffs,
                            "zero_blocks": zero_blocks,
                        }
                    )
                    base = ms["dense fp32"]
                    cells = [f"{base:.2f}"] + [
                        f"{ms[name]:.2f} ({base / ms[name]:.2f}x"
                        + (f", {diffs[name]:.3f})" if "int8" in name else ")")
                        for name in list(kernels)[1:]
                    ]
                    print(
                        f"| {sparsity:.0%} | {batch} | {n_in}->{n_out} | "
                        + " | ".join(cells)
                        + f" | {zero_blocks:.0%} |",
                        flush=True,
                    )
    args.record.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": ["python", "bench/sparse_int8.py", *(sys.argv[1:] if argv is None else argv)],
        "threads": threads,
        "torch": torch.__version__,
        "rows": rows,
    }
    args.record.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
