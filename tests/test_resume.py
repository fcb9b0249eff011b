"""A run killed with SIGKILL and resumed ends exactly like an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from kdtui.events import RunFinished
from tests.conftest import events_of, invoke, kill_when, metrics_of

# Long enough that the kill lands mid-run, short enough for the default suite.
LONGER = [
    "--max-steps",
    "120",
    "--set",
    "train.eval_every=20",
    "--set",
    "train.checkpoint_every=10",
]


def test_sigkill_then_resume_equals_uninterrupted(runs: Path) -> None:
    result = invoke(
        "teacher",
        "--profile",
        "smoke",
        "--output-dir",
        str(runs),
        "--name",
        "full",
        "--quiet",
        *LONGER,
    )
    assert result.exit_code == 0, result.stderr

    argv = ["teacher", "--profile", "smoke", "--output-dir", str(runs), "--name", "killed"]
    kill_when([*argv, "--quiet", *LONGER], runs / "killed" / "checkpoints" / "step-00000030")
    assert not any(isinstance(e, RunFinished) for e in events_of(runs / "killed")), (
        "kill came too late"
    )

    resumed = invoke("teacher", "--resume", str(runs / "killed"), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr

    assert metrics_of(runs / "killed") == metrics_of(runs / "full")
    full = load_file(runs / "full" / "model" / "model.safetensors")
    again = load_file(runs / "killed" / "model" / "model.safetensors")
    assert full.keys() == again.keys()
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_resume_refuses_new_options(runs: Path) -> None:
    result = invoke("teacher", "--resume", str(runs), "--lr", "0.1")
    assert result.exit_code == 2
    assert "--resume continues a run with the configuration it was started with" in result.stderr


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("teacher", "--resume", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "no such run directory" in result.stderr
