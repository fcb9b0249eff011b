"""`kdtui prune` under `torchrun --nproc-per-node 2` (gloo on CPU) matches one process.

CAP's banks and losses are where multi-process training usually goes wrong: in-batch candidates
must be the whole batch, snapshot banks must receive every process's vectors, the contrastive
denominators must count every process's positives. With dropout off, a 2-process run and a
single-process run with the same global batch must log the same losses and end with the same
metrics: only the order of floating-point sums differs (and, through the fp16 banks, the
rounding of a stored vector now and then). Masks and weights agree except where a weight sits
at the pruning threshold: a ~1e-7 difference can put it on the other side (measured: one pair
of the 4,096 weights of one matrix swapped in 30 steps), so at most 0.1% of a matrix may differ."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kdtui.events import Step
from tests.conftest import events_of, invoke, metrics_of
from tests.test_multiprocess import assert_written_once, torchrun

pytestmark = [
    pytest.mark.skipif(shutil.which("torchrun") is None, reason="needs torchrun"),
    pytest.mark.slow,  # two torchrun launches and two single-process runs: over a minute
]


@pytest.mark.parametrize("structure", ["weights", "heads-ffn"])
def test_prune_two_processes_match_one(runs: Path, structure: str) -> None:
    result = invoke(
        "teacher", "--profile", "smoke", "-o", str(runs), "--name", "t", "--quiet", "--no-bf16"
    )
    assert result.exit_code == 0, result.stderr
    common = ["prune", "--profile", "smoke", "--model", str(runs / "t"), "-o", str(runs)]
    # Magnitude masks: learned scores would amplify float noise (Adam scales every score's
    # step to ~lr however small its gradient), so near-ties could flip.
    common += ["--structure", structure, "--criterion", "magnitude", "--sparsity", "0.5"]
    # fp32: under bf16 autocast (the default where the CPU has it) the summation order moves
    # results by bf16's rounding, beyond these tolerances.
    common += ["--quiet", "--no-bf16"]
    # Longer than one epoch of the smoke data, so snapshot views come back as positives.
    common += ["--max-steps", "30", "--set", "model.dropout=0.0", "--set", "train.eval_every=10"]
    multi = torchrun(*common, "--name", "multi", timeout=400)
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = invoke(*common, "--name", "single")
    assert single.exit_code == 0, single.stderr

    assert_written_once(runs / "multi")
    steps = [[e for e in events_of(runs / n) if isinstance(e, Step)] for n in ("single", "multi")]
    assert len(steps[0]) == len(steps[1]) == 30
    for a, b in zip(*steps, strict=True):
        assert a.losses.keys() == b.losses.keys()
        for name in a.losses:
            # fp16 bank storage can round a 1e-7 difference to one fp16 step (~1e-3 relative).
            tolerance = 1e-3 * max(1.0, abs(a.losses[name]))
            assert abs(a.losses[name] - b.losses[name]) < tolerance, (a.step, name)
        # Gradient norms are summed over processes before the norm, so they agree like the
        # losses do; every other metric (the pruner's) is computed from identical masks.
        grads = {k for k in a.metrics if k.startswith("grad/")}
        assert grads == {k for k in b.metrics if k.startswith("grad/")}
        assert {k: a.metrics[k] for k in grads} == pytest.approx(
            {k: b.metrics[k] for k in grads}, rel=1e-3, abs=1e-7
        )
        rest = {k: v for k, v in a.metrics.items() if k not in grads}
        assert rest == pytest.approx(
            {k: v for k, v in b.metrics.items() if k not in grads}, abs=1e-9
        )
    assert steps[0][-1].losses["snc_unsup"] > 0  # snapshots were positives
    assert sum("grad/kd" in s.metrics for s in steps[1]) == 3  # norms on each eval step
    one, two = metrics_of(runs / "single"), metrics_of(runs / "multi")
    assert one["sparsity"] == two["sparsity"]
    assert one["test"] == two["test"]
    a = load_file(runs / "single" / "model" / "model.safetensors")
    b = load_file(runs / "multi" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert float(((a[k] - b[k]).abs() > 1e-4).float().mean()) <= 1e-3, k
        assert float(((a[k] == 0) != (b[k] == 0)).float().mean()) <= 1e-3, k
