"""Accuracy per domain: latest, best, the teacher's (when known) and a sparkline over evals."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from kdtui.dashboard import fmt
from kdtui.dashboard.state import DomainStats

Row = tuple[str, float, float, list[float]]


class DomainTable(Widget):
    DEFAULT_CSS = "DomainTable { height: auto; }"

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.rows: list[Row] = []
        self.teacher: dict[str, float] = {}
        self.evals = 0

    def show(self, domains: dict[str, DomainStats], teacher: dict[str, float], evals: int) -> None:
        # "all" (the average the run selects on) goes last, as a total row.
        names = sorted(domains, key=lambda d: (d == "all", d))
        grew = len(names) != len(self.rows)
        self.rows = [
            (d, domains[d].latest, domains[d].best, domains[d].history.points()[1]) for d in names
        ]
        self.teacher, self.evals = dict(teacher), evals
        self.border_title = f"dev accuracy % ({evals} evals)" if evals else "dev accuracy %"
        self.refresh(layout=grew)  # a new row changes the height; new numbers do not

    def get_content_height(self, container, viewport, width: int) -> int:  # noqa: ANN001
        return len(self.rows) + 1 if self.rows else 1

    def render(self) -> Table | Text:
        if not self.rows:
            return Text("no evaluation yet", style="dim")
        name_width = min(14, max(len(name) for name, *_ in self.rows))
        with_teacher = bool(self.teacher)
        numbers = 3 if with_teacher else 2
        spark_width = max(1, self.size.width - name_width - numbers * 6 - 1)
        table = Table(box=None, expand=True, padding=(0, 1), pad_edge=False, show_edge=False)
        table.add_column("domain", no_wrap=True, overflow="ellipsis", width=name_width)
        table.add_column("last", justify="right", no_wrap=True, width=5)
        table.add_column("best", justify="right", no_wrap=True, width=5)
        if with_teacher:
            table.add_column("teach", justify="right", no_wrap=True, width=5)
        table.add_column("trend", ratio=1, no_wrap=True, overflow="crop")
        for name, latest, best, history in self.rows:
            style = "bold" if name == "all" else ""
            cells = [
                Text(name, style=style),
                Text(fmt.percent(latest), style=style),
                Text(fmt.percent(best), style=style),
            ]
            if with_teacher:
                cells.append(Text(fmt.percent(self.teacher.get(name)), style="dim"))
            cells.append(Text(fmt.sparkline(history, spark_width), style="cyan"))
            table.add_row(*cells)
        return table
