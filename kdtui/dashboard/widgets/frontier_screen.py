"""`f` in the run browser: accuracy against latency of the runs listed, their Pareto frontier
joined by a line, from the results `kdtui evaluate` cached in the runs. Nothing is evaluated
here (that needs torch and minutes of CPU): without cached results the screen names the command
that makes them."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plotext.plot import Plot

from kdtui.dashboard.frontier_plot import FRONTIER_MARKER, describe_shape, draw_frontier
from kdtui.dashboard.runs import CachedFrontier, cached_frontier
from kdtui.dashboard.widgets.help_screen import FRONTIER_HELP
from kdtui.dashboard.widgets.threaded_plot import Draw, ThreadedPlot
from kdtui.frontier import PlotPoint, latency_points


class FrontierPlot(ThreadedPlot):
    """Draws the points `show()` hands it (kdtui/dashboard/frontier_plot.py)."""

    placeholder = "no model to show"

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.points: list[PlotPoint] = []
        self.xlabel = ""

    def show(self, points: list[PlotPoint], *, xlabel: str) -> None:
        self.points, self.xlabel = points, xlabel
        self.request(now=True)

    def prepare(self) -> Draw | None:
        if not self.points:
            return None
        points, xlabel = list(self.points), self.xlabel

        def draw(plt: Plot, width: int, height: int) -> None:
            draw_frontier(plt, points, height=height, xlabel=xlabel, width=width)

        return draw


class FrontierScreen(Screen[None]):
    HELP = FRONTIER_HELP
    BINDINGS = [
        Binding("q", "app.quit_dashboard", "Quit"),
        Binding("b,escape", "back", "Runs"),
        Binding("r", "reload", "Reload"),
        Binding("question_mark", "app.help", "Help", key_display="?"),
    ]

    def __init__(self, runs: list[Path], root: Path) -> None:
        super().__init__()
        self.runs = runs  # the runs the browser lists, newest first
        self.root = root
        self.found: CachedFrontier | None = None  # the last reading (tests wait for it)

    def compose(self) -> ComposeResult:
        yield Static(id="frontier-title")
        yield FrontierPlot(id="frontier-plot")
        yield Static(id="frontier-empty")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    @work(thread=True, exclusive=True, group="frontier")
    def action_reload(self) -> None:
        found = cached_frontier(self.runs)  # small JSON files, but still off the UI thread
        self.app.call_from_thread(self._show, found)

    def _show(self, found: CachedFrontier) -> None:
        if not self.is_mounted:  # closed (b) before the results were read
            return
        self.found = found
        title = self.query_one("#frontier-title", Static)
        plot = self.query_one(FrontierPlot)
        empty = self.query_one("#frontier-empty", Static)
        report = found.report
        points = latency_points(report) if report is not None else []
        plot.display = bool(points)
        empty.display = not points
        if report is None or not points:
            title.update(
                Text.assemble(
                    ("Pareto frontier", "bold"), f"  of the {len(self.runs)} runs in {self.root}/"
                )
            )
            empty.update(
                f"No evaluation of the runs in {self.root}/ is cached yet.\n"
                f"[b]kdtui evaluate {self.root}[/b] evaluates every run with a model and keeps "
                "the results in each run (.kdtui-eval-cache/), where this screen reads them "
                "(r reloads)."
            )
            return
        shape = describe_shape(report["frontier"]["latency"])
        models = f"{len(points)} model{'s' if len(points) != 1 else ''}"
        other = (
            f"; {found.other_settings} results under other settings not shown"
            if found.other_settings
            else ""
        )
        title.update(
            Text.assemble(
                ("Pareto frontier", "bold"),
                f"  accuracy ({report['split']} split of {report['data']}) against latency "
                f"({shape}): {models} of {found.runs} runs{other}",
                (f"  {FRONTIER_MARKER} on the frontier", "dim"),
            )
        )
        plot.show(points, xlabel=f"latency ms, {shape}")

    def action_back(self) -> None:
        self.dismiss(None)
