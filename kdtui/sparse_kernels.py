"""Sparse kernels for unstructured models: encoder Linears that multiply only their non-zeros.

A kdtui unstructured model loads as a dense model whose pruned weights are zeros, and dense
kernels multiply the zeros too. `use_sparse_kernels(model)` replaces an encoder Linear by a
`SparseLinear` (its weight in `torch.sparse_csr` layout, `y = W x^T + b` by a CSR x dense
matrix product) where that is faster.

Which matrices go sparse is decided by a measurement, not a rule: on a CPU the crossover
depends on the matrix's shape, its sparsity, the number of tokens and the machine (MiniLM's
shapes, 4,096 tokens, one thread of a loaded 2-core machine: at 90% zeros CSR ran 0.6-1.5x
dense, at 97% 1.0-2.4x, varying from shape to shape and run to run). So each encoder Linear
with at least `min_sparsity` zeros is timed both ways on random activations of `tokens` rows
(the best of `repeats` runs each, interleaved, after a warm-up), and CSR is kept only where it
was faster. Below `min_sparsity` (80%) CSR is not timed, to keep loading quick.

The sparse product sums the same terms in another order, so outputs equal the dense model's
within float rounding (tests/test_sparse_kernels.py), not bit for bit.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from kdtui.errors import KdtuiError
from kdtui.layout import encoder_layers, encoder_linears

SPARSE_MODES: tuple[str, ...] = ("off", "auto", "all")
# Below this share of zeros CSR is not timed, to keep loading quick: at 90% it won on some
# matrices and lost on others, so the line sits below that (80% itself was not measured).
MIN_SPARSITY = 0.8
# Tokens per sparse product (see SparseLinear.forward).
CHUNK = 128
# Activations of this many tokens time each matrix. Both kernels' times grow linearly with the
# tokens from a few chunks on, so 1,024 tokens give the ratio of batch 32 x length 128 (4,096)
# at a quarter of the cost of timing it.
CALIBRATION_TOKENS = 1024


class SparseLinear(nn.Module):
    """An nn.Linear whose weight is stored and multiplied as a CSR matrix (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with warnings.catch_warnings():
            # "Sparse CSR tensor support is in beta": printed once per process, noise for users.
            warnings.simplefilter("ignore", UserWarning)
            weight = linear.weight.detach().to_sparse_csr()
        self.register_buffer("weight", weight)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.empty(flat.shape[0], self.out_features, dtype=flat.dtype, device=flat.device)
        # CSR (out, in) @ dense (in, tokens), the sparse operand on the left as torch requires,
        # over CHUNK tokens at a time: with all 4,096 tokens of batch 32 x 128 in one product,
        # the operands torch copies and zero-fills for MKL fall out of cache, and MiniLM at 97%
        # with every matrix CSR ran 0.8x dense; in chunks of 64-256 tokens, 1.2-1.8x.
        for start in range(0, flat.shape[0], CHUNK):
            part = flat[start : start + CHUNK]
            out[start : start + CHUNK] = torch.mm(self.weight, part.t()).t()
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        total = self.in_features * self.out_features
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}/{total}"
        )


@dataclass(frozen=True)
class KernelChoice:
    """What was decided for one encoder Linear ("layer.{i}.{sub}")."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    sparse: bool
    dense_ms: float | None = None  # measured times; None where the matrix was not timed
    sparse_ms: float | None = None


def weight_sparsity(linear: nn.Linear) -> float:
    weight = linear.weight
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


@torch.no_grad()
def time_linear(
    dense: nn.Linear, sparse: SparseLinear, *, tokens: int, repeats: int
) -> tuple[float, float]:
    """Best-of-`repeats` seconds of one forward of each on the same random activations."""
    x = torch.randn(tokens, dense.in_features, generator=torch.Generator().manual_seed(0))
    dense(x), sparse(x)  # warm-up: first calls allocate and pick kernels
    dense_times, sparse_times = [], []
    for _ in range(repeats):  # interleaved, so a burst of load hits both alike
        start = time.perf_counter()
        dense(x)
        dense_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        sparse(x)
        sparse_times.append(time.perf_counter() - start)
    return min(dense_times), min(sparse_times)


@torch.no_grad()
def use_sparse_kernels(
    model: nn.Module,
    mode: str = "auto",
    *,
    tokens: int = CALIBRATION_TOKENS,
    min_sparsity: float = MIN_SPARSITY,
    repeats: int = 5,
) -> list[KernelChoice]:
    """Swap encoder Linears for `SparseLinear`s in place; returns the choice for every one.

    "auto": where a measurement says CSR is faster (see the module docstring); "all": every
    encoder Linear with at least `min_sparsity` zeros, unmeasured; "off": none."""
    if mode not in SPARSE_MODES:
        raise KdtuiError(f"sparse kernels must be one of {', '.join(SPARSE_MODES)}, got '{mode}'")
    layers = encoder_layers(model)  # before any swap: it accepts only nn.Linear there
    choices = []
    for name, linear in encoder_linears(model).items():
        sparsity = weight_sparsity(linear)
        shape = (linear.out_features, linear.in_features)
        if mode == "off" or sparsity < min_sparsity:
            choices.append(KernelChoice(name, shape, sparsity, sparse=False))
            continue
        sparse = SparseLinear(linear)
        dense_s = sparse_s = None
        if mode == "auto":
            dense_s, sparse_s = time_linear(linear, sparse, tokens=tokens, repeats=repeats)
        go_sparse = mode == "all" or (
            sparse_s is not None and dense_s is not None and sparse_s < dense_s
        )
        if go_sparse:
            _, index, sub = name.split(".", 2)
            parent, _, attr = sub.rpartition(".")
            setattr(layers[int(index)].get_submodule(parent), attr, sparse)
        choices.append(
            KernelChoice(
                name,
                shape,
                sparsity,
                sparse=go_sparse,
                dense_ms=None if dense_s is None else dense_s * 1000,
                sparse_ms=None if sparse_s is None else sparse_s * 1000,
            )
        )
    return choices


def sparse_summary(choices: list[KernelChoice]) -> str:
    """One line: how many matrices went sparse, and which, per matrix kind."""
    sparse = [c for c in choices if c.sparse]
    if not sparse:
        return f"0 of {len(choices)} encoder matrices"
    by_kind: dict[str, list[str]] = {}
    for c in sparse:
        _, index, sub = c.name.split(".", 2)
        by_kind.setdefault(sub, []).append(index)
    kinds = "; ".join(f"{sub} (layers {','.join(idx)})" for sub, idx in by_kind.items())
    return f"{len(sparse)} of {len(choices)} encoder matrices: {kinds}"
