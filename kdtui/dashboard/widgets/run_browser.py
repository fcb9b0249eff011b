"""The run browser (`kdtui dashboard` with no run): every run in the runs folder; Enter opens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from kdtui.dashboard import fmt
from kdtui.dashboard.runs import RunScanner, RunSummary
from kdtui.dashboard.widgets.help_screen import BROWSER_HELP

RESCAN_SECONDS = 2.0
COLUMNS = ("run", "command", "status", "progress", "best acc", "started")


class RunBrowser(Screen[None]):
    HELP = BROWSER_HELP
    BINDINGS = [
        Binding("q", "app.quit_dashboard", "Quit"),
        Binding("enter", "open", "Open", show=True),
        Binding("r", "rescan", "Refresh"),
        Binding("f", "frontier", "Frontier"),
        Binding("question_mark", "app.help", "Help", key_display="?"),
    ]

    class OpenRun(Message):
        """The user chose a run to open (the app opens it: a screen does not push screens)."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class ShowFrontier(Message):
        """The user asked for the Pareto frontier of the runs listed."""

        def __init__(self, runs: list[Path], root: Path) -> None:
            super().__init__()
            self.runs = runs
            self.root = root

    def __init__(self, root: Path, *, clock: Callable[[], float]) -> None:
        super().__init__()
        self.root = root
        self.clock = clock  # kept here: the scan thread must not reach for the app
        self.scanner = RunScanner(root)
        self.summaries: list[RunSummary] = []
        self.scans = 0  # completed scans (tests wait on it)

    def compose(self) -> ComposeResult:
        yield Static(id="browser-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static(id="browser-empty")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#browser-title", Static).update(
            Text.assemble(("kdtui runs", "bold"), f"  in {self.root}/", ("  enter opens", "dim"))
        )
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.action_rescan()
        self.set_interval(RESCAN_SECONDS, self.action_rescan)

    def on_unmount(self) -> None:
        self.scanner.close()

    @work(thread=True, exclusive=True, group="scan")
    def action_rescan(self) -> None:
        summaries = self.scanner.scan(now=self.clock())
        self.app.call_from_thread(self._show, summaries)

    def _show(self, summaries: list[RunSummary]) -> None:
        self.summaries = summaries
        table = self.query_one(DataTable)
        selected = self._selected()
        table.clear()
        for s in summaries:
            table.add_row(*_cells(s), key=str(s.path))
        if selected is not None:
            keys = [str(s.path) for s in summaries]
            if str(selected) in keys:
                table.move_cursor(row=keys.index(str(selected)), animate=False)
        empty = self.query_one("#browser-empty", Static)
        empty.display = not summaries
        table.display = bool(summaries)
        if not summaries:
            where = self.root if self.root.is_dir() else f"{self.root} (does not exist yet)"
            empty.update(
                f"No runs in {where}.\nStart one, e.g. [b]kdtui teacher --profile smoke[/b], "
                "or [b]kdtui dashboard --profile smoke teacher[/b] to start and watch it."
            )
        self.scans += 1

    def _selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not self.summaries or table.cursor_row >= len(self.summaries):
            return None
        return self.summaries[table.cursor_row].path

    def action_open(self) -> None:
        path = self._selected()
        if path is not None:
            self.post_message(self.OpenRun(path))

    def action_frontier(self) -> None:
        self.post_message(self.ShowFrontier([s.path for s in self.summaries], self.root))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.OpenRun(Path(event.row_key.value)))


def _cells(s: RunSummary) -> tuple[Text | str, ...]:
    progress = "-"
    if s.progress is not None:
        progress = f"{s.step:,}/{s.total_steps:,} {100 * min(s.progress, 1.0):3.0f}%"
    status = Text(s.status, style=fmt.STATUS_STYLES.get(s.status, ""))
    return (
        s.name,
        s.command or "-",
        status,
        Text(progress, justify="right"),
        Text(fmt.percent(s.best_accuracy), justify="right"),
        fmt.date_time(s.started_at),
    )
