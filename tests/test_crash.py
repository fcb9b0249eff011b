"""Crash safety: a run SIGKILLed during a step, an evaluation or a checkpoint write, then
`--resume`d, ends exactly like an uninterrupted run; a damaged newest checkpoint is reported and
the previous one used; a full disk is a clear error that leaves no half-written checkpoint."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdtui.checkpoint import list_checkpoints
from kdtui.events import Message, RunFailed
from kdtui.faults import CRASH_ENV
from tests.conftest import REPO, events_of, invoke, metrics_of

TEACHER = ["teacher", "--profile", "smoke", "--quiet"]


def run_until_crash(args: list[str], crash_at: str) -> None:
    """Run the CLI in a child process that kills itself at `crash_at` ("point:step")."""
    env = {**os.environ, "PYTHONPATH": str(REPO), CRASH_ENV: crash_at}
    result = subprocess.run(
        [sys.executable, "-m", "kdtui", *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == -signal.SIGKILL, f"did not crash at {crash_at}: {result.stderr}"


def assert_same_result(expected: Path, actual: Path, model: str = "model") -> None:
    assert metrics_of(actual) == metrics_of(expected)
    a = load_file(expected / model / "model.safetensors")
    b = load_file(actual / model / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    result = invoke(*TEACHER, "--output-dir", str(runs), "--name", "full")
    assert result.exit_code == 0, result.stderr
    return runs / "full"


@pytest.mark.parametrize("crash_at", ["step:6", "eval:8", "checkpoint:8"])
def test_teacher_killed_then_resumed_equals_uninterrupted(
    uninterrupted: Path, runs: Path, crash_at: str
) -> None:
    run = runs / "killed"
    run_until_crash([*TEACHER, "--output-dir", str(runs), "--name", "killed"], crash_at)
    assert not (run / "metrics.json").exists()
    if crash_at.startswith("checkpoint"):
        # The half-written folder never took the place of a checkpoint.
        assert (run / "checkpoints" / "step-00000008.tmp").is_dir()
        assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000004"]
    resumed = invoke("teacher", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_result(uninterrupted, run)
    assert not (run / "checkpoints" / "step-00000008.tmp").exists()


def test_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(
    uninterrupted: Path, runs: Path
) -> None:
    run = runs / "damaged"
    run_until_crash([*TEACHER, "--output-dir", str(runs), "--name", "damaged"], "step:10")
    newest = list_checkpoints(run / "checkpoints")[-1]
    assert newest.name == "step-00000008"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as by a failing disk
    resumed = invoke("teacher", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    warnings = [e.text for e in events_of(run) if isinstance(e, Message) and e.level == "warning"]
    assert any("step-00000008 is damaged" in w and "previous checkpoint" in w for w in warnings)
    assert_same_result(uninterrupted, run)


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_written_checkpoint(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdtui.checkpoint

    real_save = kdtui.checkpoint.torch.save

    def full_disk(obj: object, path: object) -> None:
        real_save(obj, path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kdtui.checkpoint.torch, "save", full_disk)
    result = invoke(*TEACHER, "--output-dir", str(runs), "--name", "full-disk")
    assert result.exit_code == 2
    assert "could not write checkpoint" in result.stderr
    assert "No space left on device" in result.stderr
    run = runs / "full-disk"
    assert not list(run.rglob("*.tmp"))  # the temporary folder was removed
    assert not (run / "best").exists() and not list_checkpoints(run / "checkpoints")
    assert isinstance(events_of(run)[-1], RunFailed)


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdtui.engine.hooks import CrossEntropyHook

    real = CrossEntropyHook.loss_terms
    calls = []

    def explodes_at_step_6(self, batch, outputs, model):  # noqa: ANN001, ANN202
        calls.append(1)
        terms = real(self, batch, outputs, model)
        return {k: v * float("nan") for k, v in terms.items()} if len(calls) == 6 else terms

    monkeypatch.setattr(CrossEntropyHook, "loss_terms", explodes_at_step_6)
    result = invoke(*TEACHER, "--output-dir", str(runs), "--name", "nan")
    assert result.exit_code == 2
    assert "the loss became NaN/Inf at step 6 (loss, ce)" in result.stderr
    assert "the last good checkpoint is" in result.stderr and "step-00000004" in result.stderr
    run = runs / "nan"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000004"]
    failed = events_of(run)[-1]
    assert isinstance(failed, RunFailed) and "NaN" in failed.error
    monkeypatch.setattr(CrossEntropyHook, "loss_terms", real)
    resumed = invoke("teacher", "--resume", str(run), "--quiet")  # e.g. after fixing the data
    assert resumed.exit_code == 0, resumed.stderr
