"""Checkpoints, messages, warnings and errors, newest at the bottom."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text
from textual.widget import Widget

from kdtui.dashboard import fmt
from kdtui.dashboard.state import LogEntry

_TAGS = {
    "checkpoint": ("ckpt", "cyan"),
    "info": ("info", "dim"),
    "warning": ("warn", "yellow"),
    "error": ("ERR ", "bold red"),
    "run": ("run ", "green"),
    "stopped": ("stop", "magenta"),
}
# Lines that end a run wrap, so the whole message (and how to resume) can be read.
_WRAPPED = ("error", "stopped")


class EventLog(Widget):
    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.entries: list[LogEntry] = []

    def show(
        self,
        entries: list[LogEntry],
        *,
        checkpoints: int,
        warnings: int,
        unknown: dict[str, int],
        malformed: int,
        oversized: int = 0,
    ) -> None:
        self.entries = entries
        counts = [f"{checkpoints} ckpt", f"{warnings} warn"]
        self.border_title = "events  " + " · ".join(counts)
        skipped = []
        if unknown:
            skipped.append(f"{sum(unknown.values())} unknown")
        if malformed:
            skipped.append(f"{malformed} malformed")
        if oversized:
            skipped.append(f"{oversized} too long")
        self.border_subtitle = ("skipped " + ", ".join(skipped)) if skipped else ""
        self.refresh()

    def render(self) -> RenderableType:
        if not self.entries:
            return Text("nothing yet", style="dim")
        width = max(10, self.size.width)
        height = max(1, self.size.height)
        picked: list[Text] = []
        used = 0
        for entry in reversed(self.entries):
            line = _line(entry)
            rows = max(1, -(-line.cell_len // width)) if entry.level in _WRAPPED else 1
            if used + rows > height and picked:
                break
            used += rows
            picked.append(line)
        return Group(*reversed(picked))


def _line(entry: LogEntry) -> Text:
    tag, style = _TAGS.get(entry.level, (entry.level[:4], ""))
    text = Text(no_wrap=entry.level not in _WRAPPED, overflow="ellipsis")
    text.append(fmt.clock(entry.time) + " ", style="dim")
    text.append(tag + " ", style=style)
    if entry.step is not None and entry.level == "checkpoint":
        text.append(f"step {entry.step:,} ")
    text.append(entry.text, style="red" if entry.level == "error" else "")
    return text
