"""`torchrun --nproc-per-node 2 -m kdtui ...` (gloo on CPU) matches a single-process run with the
same global batch.

Tolerance: with dropout off the only difference is the order in which gradients are summed, so
logged losses and final weights agree to 1e-5 and the metrics are identical, but for a teacher's
statistics as a source (source/...), continuous functions of the weights, which agree to 1e-4.
(With dropout on, each process draws its own masks and runs differ the way two seeds do.) The
runs are fp32: under bf16 autocast (the default where the CPU has it) a different summation
order moves the results by bf16's rounding, ~1e-4, which would hide a real fault at this
tolerance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdtui.events import Checkpoint, RunStarted, Step
from tests.conftest import REPO, events_of, invoke, metrics_of

TOLERANCE = 1e-5
NO_DROPOUT = ["--set", "model.dropout=0.0", "--no-bf16", "--quiet"]

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="needs torchrun")


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # --standalone picks a free port, so parallel test runs do not collide.
    command = ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "kdtui", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def assert_written_once(run: Path) -> None:
    """Rank 0 alone writes events and checkpoints (and locks the run): nothing appears twice."""
    assert not (run / ".lock").exists()  # released when the run ended
    events = events_of(run)
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    steps = [e.step for e in events if isinstance(e, Step)]
    assert steps == sorted(set(steps))
    checkpoints = [e.path for e in events if isinstance(e, Checkpoint)]
    assert len(checkpoints) == len(set(checkpoints))


def assert_same_run(single: Path, multi: Path) -> None:
    assert_written_once(multi)
    metrics = [metrics_of(run) for run in (single, multi)]
    sources = [{k: m.pop(k) for k in list(m) if k.startswith("source/")} for m in metrics]
    assert metrics[0] == metrics[1]
    assert sources[0] == pytest.approx(sources[1], rel=1e-4)
    losses = [[e.loss for e in events_of(run) if isinstance(e, Step)] for run in (single, multi)]
    assert len(losses[0]) == len(losses[1])
    assert max(abs(a - b) for a, b in zip(*losses, strict=True)) < TOLERANCE
    a = load_file(single / "model" / "model.safetensors")
    b = load_file(multi / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOLERANCE


def test_teacher_two_processes_match_one(runs: Path) -> None:
    common = ["teacher", "--profile", "smoke", "--output-dir", str(runs), *NO_DROPOUT]
    result = torchrun(*common, "--name", "multi")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run: ") == 1  # only rank 0 talks
    single = invoke(*common, "--name", "single")
    assert single.exit_code == 0, single.stderr
    assert_same_run(runs / "single", runs / "multi")

    assert json.loads((runs / "multi" / "metrics.json").read_text())["steps"] == 12


def test_the_same_cli_runs_under_python_dash_m(runs: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kdtui", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("kdtui ")
    assert torch.distributed.is_gloo_available()


def test_meta_teacher_and_distill_two_processes_match_one(runs: Path) -> None:
    teacher = ["teacher", "--profile", "smoke", "--method", "meta", "--output-dir", str(runs)]
    result = torchrun(*teacher, *NO_DROPOUT, "--name", "meta-multi")
    assert result.returncode == 0, result.stderr[-3000:]
    single = invoke(*teacher, *NO_DROPOUT, "--name", "meta-single")
    assert single.exit_code == 0, single.stderr
    assert_same_run(runs / "meta-single", runs / "meta-multi")

    # Both students distil from the same teacher, so only the student's run can differ.
    distill = ["distill", "--profile", "smoke", "--teacher", str(runs / "meta-single")]
    distill += ["--domain", "books", "--output-dir", str(runs), *NO_DROPOUT]
    result = torchrun(*distill, "--name", "student-multi")
    assert result.returncode == 0, result.stderr[-3000:]
    single = invoke(*distill, "--name", "student-single")
    assert single.exit_code == 0, single.stderr
    assert_same_run(runs / "student-single", runs / "student-multi")
