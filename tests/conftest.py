"""Shared fixtures: the smoke profile's options pointed at a temporary runs folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdtui.cli import app
from kdtui.events import Event
from kdtui.runlog import read_events

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


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
    return json.loads((run / "metrics.json").read_text())
