"""The dashboard app and its factory, shared by the CLI (`kdtui dashboard`) and the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from kdtui.dashboard.state import STALL_AFTER
from kdtui.dashboard.widgets.frontier_screen import FrontierScreen
from kdtui.dashboard.widgets.help_screen import HelpScreen
from kdtui.dashboard.widgets.run_browser import RunBrowser
from kdtui.dashboard.widgets.run_screen import RunProcess, RunScreen
from kdtui.dashboard.widgets.stop_run_screen import KEEP, STOP, StopRunScreen


class DashboardApp(App[str | None]):
    """Exits with "stop" or "keep" when the user decided about a launched run, else None."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "kdtui dashboard"
    BINDINGS = [Binding("ctrl+c", "quit_dashboard", "Quit", show=False, priority=True)]

    def __init__(
        self,
        run_dir: Path | None,
        *,
        runs_root: Path,
        clock: Callable[[], float],
        process: RunProcess | None,
        poll_interval: float,
        stall_after: float,
    ) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.runs_root = runs_root
        self.clock = clock
        self.process = process
        self.poll_interval = poll_interval
        self.stall_after = stall_after

    def on_mount(self) -> None:
        if self.run_dir is None:
            self.push_screen(RunBrowser(self.runs_root, clock=self.clock))
        else:
            self.push_screen(self._run_screen(self.run_dir, from_browser=False))

    def on_run_browser_open_run(self, message: RunBrowser.OpenRun) -> None:
        self.push_screen(self._run_screen(message.path, from_browser=True))

    def on_run_browser_show_frontier(self, message: RunBrowser.ShowFrontier) -> None:
        self.push_screen(FrontierScreen(message.runs, message.root))

    def _run_screen(self, path: Path, *, from_browser: bool) -> RunScreen:
        return RunScreen(
            path,
            clock=self.clock,
            process=self.process,
            poll_interval=self.poll_interval,
            stall_after=self.stall_after,
            from_browser=from_browser,
        )

    def action_help(self) -> None:
        # Each screen explains its own keys: the run list's are not the run screen's.
        if isinstance(self.screen, RunScreen | RunBrowser | FrontierScreen):
            self.push_screen(HelpScreen(self.screen.HELP))

    def action_quit_dashboard(self) -> None:
        if isinstance(self.screen, StopRunScreen):
            return
        process = self.process
        if process is None or process.poll() is not None:
            self.exit(None)
            return

        def decided(choice: str | None) -> None:
            if choice == STOP:
                process.stop()
                self.exit(STOP)
            elif choice == KEEP:
                self.exit(KEEP)

        self.push_screen(StopRunScreen(process.name), decided)


def create_app(
    run_dir: Path | None,
    *,
    runs_root: Path = Path("runs"),
    clock: Callable[[], float] = time.time,
    process: RunProcess | None = None,
    poll_interval: float = 0.1,
    stall_after: float = STALL_AFTER,
) -> DashboardApp:
    """A dashboard on one run (`run_dir`), or a run browser over `runs_root` when it is None.

    `clock` is the wall clock for elapsed time, ETA and stall detection (tests freeze it);
    `process` is the training process when the dashboard started the run itself."""
    return DashboardApp(
        run_dir,
        runs_root=runs_root,
        clock=clock,
        process=process,
        poll_interval=poll_interval,
        stall_after=stall_after,
    )
