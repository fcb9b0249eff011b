"""The header: which run this is, how it is doing, and how far it has come."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from kdtui.dashboard import fmt
from kdtui.dashboard.state import RunState


class RunHeader(Static):
    """Run name, command, profile, status, step/total with a bar, elapsed, ETA (2-3 lines)."""

    _shape: tuple[object, ...] = ()
    _renderable: RenderableType = ""

    def show(self, state: RunState, now: float, *, source: str, exists: bool) -> None:
        self._renderable = header_renderable(state, now, source=source, exists=exists)
        self.update(self._renderable, layout=False)
        # A layout pass re-renders the whole screen: only when the height can change.
        shape = (state.started, state.status(now), state.error)
        if shape != self._shape:
            self._shape = shape
            self._fit_height()

    def on_resize(self) -> None:
        self._fit_height()  # the error line folds differently at another width

    def _fit_height(self) -> None:
        # An explicit height, not `auto`: Textual can keep a stale auto height when the content
        # grows while a layout pass is already pending (the error line then stays hidden).
        width = self.content_size.width
        if width <= 0:
            return
        console = self.app.console
        lines = console.render_lines(
            self._renderable, console.options.update_width(width), pad=False
        )
        self.styles.height = len(lines)


def header_renderable(state: RunState, now: float, *, source: str, exists: bool) -> RenderableType:
    status = state.status(now)
    title = Text(no_wrap=True, overflow="ellipsis")
    title.append(state.run or source, style="bold")
    if state.command:
        title.append(f"  {state.command}")
    if state.profile:
        title.append(f"  profile {state.profile}", style="dim")
    if state.precision:
        title.append(f"  {state.precision}", style="dim")
    badge = Text(f" {status.upper()} ", style=f"reverse {fmt.STATUS_STYLES.get(status, '')}")
    top = Table.grid(expand=True)
    top.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    top.add_column(justify="right", no_wrap=True)
    top.add_row(title, badge)

    if not state.started:
        if state.error:  # the process ended before it wrote anything
            return Group(top, _ending(status, state.error))
        what = "the run to start" if exists else "events.jsonl to appear"
        waiting = Text(f"waiting for {what} …", style="dim", no_wrap=True, overflow="ellipsis")
        skipped = state.malformed + state.oversized
        if skipped:  # a file that is not an event log would otherwise wait in silence
            what = "line that is not an event" if skipped == 1 else "lines that are not events"
            waiting.append(f"  skipped {skipped:,} {what}", style="yellow")
        return Group(top, waiting)

    total = max(state.total_steps, 1)
    steps = Text(f"step {state.step:,}/{state.total_steps:,} ", no_wrap=True)
    tail = Text(no_wrap=True, overflow="ellipsis")
    tail.append(f" {100 * min(state.step / total, 1.0):5.1f}%")
    tail.append(f"  elapsed {fmt.duration(state.elapsed(now))}")
    eta = state.eta(now)
    if eta is not None:
        tail.append(f"  eta {fmt.duration(eta)}")
    if state.lr is not None:
        tail.append(f"  lr {state.lr:.1e}", style="dim")
    if status == "stalled" and state.last_event_at is not None:
        tail.append(f"  no event for {fmt.duration(now - state.last_event_at)}", style="yellow")
    second = Table.grid(expand=True)
    second.add_column(no_wrap=True)
    second.add_column(ratio=1, min_width=5)
    second.add_column(no_wrap=True, overflow="ellipsis")
    second.add_row(steps, ProgressBar(total=total, completed=min(state.step, total)), tail)
    lines: list[RenderableType] = [top, second]
    if status in ("failed", "stopped") and state.error:
        lines.append(_ending(status, state.error))
    return Group(*lines)


def _ending(status: str, error: str) -> Text:
    # A stop the user asked for is not shown in the red of a failure.
    style = "magenta" if status == "stopped" else "red"
    return Text(f"{status}: {error}", style=style, overflow="fold")
