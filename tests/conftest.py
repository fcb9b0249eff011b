"""Shared fixtures: the smoke profile's options pointed at a temporary runs folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdtui.cli import app
from kdtui.events import Event
from kdtui.runlog import read_events

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def torch_threads_unchanged() -> object:
    """A test that leaves torch on another thread count fails: later tests compare runs made
    in this process with runs made in child processes (on torch's default count), and a
    changed count changes their sums' order (a bench helper once left it at 1, and 23 resume
    tests found the resumed run 'different')."""
    import torch

    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    torch.set_num_threads(before)
    assert after == before, f"the test left torch on {after} threads (it found {before})"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def invoke(*args: str) -> object:
    """Run the real CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def events_of(run: Path) -> list[Event]:
    return list(read_events(run / "events.jsonl"))


def metrics_of(run: Path) -> dict:
    """RUN's metrics.json without its wall-clock `timings` (no two runs share them), so runs
    that must compute the same compare equal."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("timings", None)
    return metrics


def kill_when(argv: list[str], path: Path, timeout: float = 300) -> None:
    """Run the CLI in a child process and SIGKILL it as soon as `path` exists (e.g. a checkpoint
    folder): a crash at a moment the test does not choose exactly, as in real life."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdtui", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
