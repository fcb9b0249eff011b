"""bench/sparse_int8.py's kernels compute the Linear they replace, and its block count is right.

Speed is not asserted (benchmarks print tables); what is checked is that every kernel the table
times multiplies the same weights, so a fast row cannot be a wrong one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sparse_int8  # noqa: E402


def test_block_zero_share_counts_blocks_of_four_that_are_all_zero() -> None:
    weight = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.0] * 8])
    assert sparse_int8.block_zero_share(weight) == pytest.approx(3 / 4)


@pytest.mark.parametrize("make", ["dense_x86", "dense_qnnpack", "block_sparse"])
def test_each_int8_kernel_matches_the_float_linear_within_quantisation(make: str) -> None:
    if "qnnpack" not in torch.backends.quantized.supported_engines and make != "dense_x86":
        pytest.skip("this torch build has no QNNPACK")
    engine = torch.backends.quantized.engine
    gen = torch.Generator().manual_seed(0)
    linear = sparse_int8.random_sparse_linear(64, 32, 0.9, gen)
    x = torch.randn(16, 64, generator=gen)
    kernel = {
        "dense_x86": lambda: sparse_int8.dense_int8(linear, "x86"),
        "dense_qnnpack": lambda: sparse_int8.dense_int8(linear, "qnnpack"),
        "block_sparse": lambda: sparse_int8.block_sparse_int8(linear),
    }[make]()
    try:
        with torch.inference_mode():
            expected, got = linear(x), kernel(x)
    finally:
        torch.backends.quantized.engine = engine
    assert got.shape == expected.shape
    # int8 weights and activations: a few hundredths on outputs of about 0.1-0.5.
    assert float((got - expected).abs().max()) < 0.05
    assert float((got - expected).abs().max()) > 0.0  # it really ran in int8
