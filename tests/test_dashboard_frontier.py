"""The run browser's frontier screen (`f`), headless at 80x24: it pictures the results
`kdtui evaluate` cached in the runs listed, and without any it names the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtui.dashboard.widgets.frontier_screen import FrontierPlot, FrontierScreen
from kdtui.dashboard.widgets.help_screen import HelpScreen
from kdtui.dashboard.widgets.run_browser import RunBrowser
from tests import dashboard_fixtures as fx
from tests.test_dashboard_app import app_for, screen_text, sync, until
from tests.test_frontier import write_cached


@sync
async def test_f_opens_the_frontier_of_the_cached_results(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fx.write_teacher(root / "teacher-a")
    fx.write_prune(root / "prune-a")
    fx.write_failed(root / "teacher-b")  # no cached result: not on the picture
    write_cached(root / "teacher-a", accuracy=0.88, latency_ms=12.0)
    write_cached(root / "prune-a", accuracy=0.85, latency_ms=5.0)
    app = app_for(None, now=fx.T0 + 1000, runs_root=root)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunBrowser) and app.screen.scans > 0)
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, FrontierScreen))
        screen = app.screen
        assert isinstance(screen, FrontierScreen)
        plot = screen.query_one(FrontierPlot)
        await until(pilot, lambda: screen.found is not None and not plot.drawing)
        assert screen.found is not None and screen.found.report is not None
        assert screen.found.runs == 2
        assert {p.label for p in plot.points} == {"teacher-a", "prune-a"}
        assert all(p.on_frontier for p in plot.points)  # one more accurate, one faster
        text = screen_text(app)
        assert "Pareto frontier" in text and "◆" in text
        assert "teacher-a" in text and "prune-a" in text  # the points' labels
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "the Pareto frontier of the runs in the list" in screen_text(app)
        await pilot.press("escape")
        assert isinstance(app.screen, FrontierScreen)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, RunBrowser))


@sync
async def test_the_frontier_screen_without_cached_results_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a short runs folder: the command fits on one line
    root = Path("runs")
    fx.write_teacher(root / "teacher-a")
    app = app_for(None, now=fx.T0 + 1000, runs_root=root)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunBrowser) and app.screen.scans > 0)
        await pilot.press("f")
        await until(
            pilot,
            lambda: isinstance(app.screen, FrontierScreen) and app.screen.found is not None,
        )
        assert app.screen.found.report is None
        assert not app.screen.query_one(FrontierPlot).display
        text = screen_text(app)
        assert "No evaluation of the runs" in text and "kdtui evaluate runs" in text
