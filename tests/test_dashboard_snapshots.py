"""SVG snapshots of the dashboard's main screens at 80x24 and 160x48 (and a pruning run at
200x60).

Deterministic: recorded fixture runs, a frozen clock, UTC, relative paths, and each screenshot
is taken only once the follower has read, folded and drawn everything. After an intended change
of the look, review and update with `pytest tests/test_dashboard_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from kdtui.dashboard.app import create_app
from kdtui.dashboard.widgets.run_browser import RunBrowser
from tests import dashboard_fixtures as fx
from tests.test_dashboard_app import settled, until

NARROW, WIDE = (80, 24), (160, 48)


@pytest.fixture(autouse=True)
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    root = Path("runs")
    fx.write_teacher(root / "teacher-a")
    fx.write_distill(root / "distill-a", teacher="runs/teacher-a")
    fx.write_prune(root / "prune-a")
    fx.write_failed(root / "teacher-b")
    return root


async def wait_settled(pilot: Pilot) -> None:
    screen = await settled(pilot)
    if screen.state.teacher_source():
        await until(pilot, lambda: bool(screen.state.teacher_accuracy))
        await settled(pilot)


def run_app(name: str):  # noqa: ANN201 - a DashboardApp
    return create_app(Path("runs") / name, clock=lambda: fx.T0 + 100, poll_interval=0.02)


@pytest.mark.parametrize("size", [NARROW, WIDE], ids=["80x24", "160x48"])
@pytest.mark.parametrize("run", ["teacher-a", "distill-a", "prune-a", "teacher-b"])
def test_run_screen(snap_compare: Callable[..., bool], run: str, size: tuple[int, int]) -> None:
    assert snap_compare(run_app(run), terminal_size=size, run_before=wait_settled)


def test_cap_prune_run_at_80x24(snap_compare: Callable[..., bool]) -> None:
    """Nine loss terms with gradient norms: the legend stays one line, the chart keeps its rows,
    the sparsity panel keeps its title."""
    fx.write_cap_prune(Path("runs") / "cap-a")
    assert snap_compare(run_app("cap-a"), terminal_size=NARROW, run_before=wait_settled)


def test_run_screen_at_200x60(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(run_app("prune-a"), terminal_size=(200, 60), run_before=wait_settled)


@pytest.mark.parametrize("size", [NARROW, WIDE], ids=["80x24", "160x48"])
def test_run_browser(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    app = create_app(None, runs_root=Path("runs"), clock=lambda: fx.T0 + 100)

    async def scanned(pilot: Pilot) -> None:
        await until(pilot, lambda: isinstance(app.screen, RunBrowser) and app.screen.scans > 0)

    assert snap_compare(app, terminal_size=size, run_before=scanned)


def test_help(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(
        run_app("prune-a"), terminal_size=NARROW, press=["question_mark"], run_before=wait_settled
    )


def test_browser_help(snap_compare: Callable[..., bool]) -> None:
    app = create_app(None, runs_root=Path("runs"), clock=lambda: fx.T0 + 100)

    async def scanned(pilot: Pilot) -> None:
        await until(pilot, lambda: isinstance(app.screen, RunBrowser) and app.screen.scans > 0)
        await pilot.press("question_mark")

    assert snap_compare(app, terminal_size=NARROW, run_before=scanned)
