"""One run: the follower thread folds events into a `RunState`; the panels show it.

Data flows one way. A thread worker polls RUN/events.jsonl (an `EventFollower`), folds each batch
into the state under a lock and posts `RunScreen.Updated`. Updates coalesce: a pending Updated
replaces the one before it, and panels are redrawn at most every `REFRESH_SECONDS`, so a file
growing by hundreds of events per second costs a few redraws per second and keys stay
responsive. Live view and replay are the same path: a finished run is a file that stops growing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from kdtui.dashboard.runs import teacher_accuracy
from kdtui.dashboard.state import (
    DOMAIN_PREFIX,
    GRAD_PREFIX,
    RunState,
    diagnostics_line,
    domain_line,
)
from kdtui.dashboard.widgets.domain_table import DomainTable
from kdtui.dashboard.widgets.event_log import EventLog
from kdtui.dashboard.widgets.help_screen import RUN_HELP
from kdtui.dashboard.widgets.layer_heatmap import LayerHeatmap
from kdtui.dashboard.widgets.loss_chart import LossChart
from kdtui.dashboard.widgets.loss_legend import LossLegend
from kdtui.dashboard.widgets.run_header import RunHeader
from kdtui.dashboard.widgets.sparsity_chart import SparsityChart
from kdtui.dashboard.widgets.threaded_plot import ThreadedPlot
from kdtui.rundir import EVENTS_FILE
from kdtui.runlog import MAX_LINE, EventFollower, FollowBatch

REFRESH_SECONDS = 0.2  # at most five redraws a second, however fast events arrive
TICK_SECONDS = 1.0  # elapsed time, ETA and the stalled status move even without events
WIDE = 140  # columns from which the side column takes a share of the width


class RunProcess(Protocol):
    """A training process this dashboard started (see launch.py)."""

    name: str

    def poll(self) -> int | None:
        """Its exit code, or None while it runs."""
        ...

    def stop(self) -> None:
        """Ask it to checkpoint and stop (SIGINT, as Ctrl-C would)."""
        ...

    def last_line(self) -> str:
        """The last line it printed (its error, when it failed before writing events)."""
        ...


class RunScreen(Screen[None]):
    HELP = RUN_HELP
    BINDINGS = [
        Binding("q", "app.quit_dashboard", "Quit"),
        Binding("question_mark", "app.help", "Help", key_display="?"),
        Binding("s", "toggle_smooth", "Smooth"),
        Binding("l", "toggle_log", "Log y"),
        Binding("1", "toggle_term(0)", "Term", key_display="1-0"),
        *(Binding(str((i + 1) % 10), f"toggle_term({i})", show=False) for i in range(1, 10)),
        Binding("a", "show_all_terms", "All terms"),
        Binding("b,escape", "back", "Runs"),
    ]

    class Updated(Message):
        """New data was folded into the state (posted from the follower thread)."""

        def __init__(self, caught_up: bool) -> None:
            super().__init__()
            self.caught_up = caught_up

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, RunScreen.Updated)

    def __init__(
        self,
        run_dir: Path,
        *,
        clock: Callable[[], float],
        process: RunProcess | None,
        poll_interval: float,
        stall_after: float,
        from_browser: bool = False,
    ) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.from_browser = from_browser
        # Given, not read off the app: the follower thread must not reach for the app through
        # Textual's context, and a screen depends on no particular app.
        self.clock = clock
        self.process = process
        self.poll_interval = poll_interval
        self.stall_after = stall_after
        self.max_line = MAX_LINE
        self.state = RunState(stall_after=self.stall_after)
        self.exists = False
        self.caught_up = False  # the follower has read everything written so far
        self.hidden: set[str] = set()
        self.smooth = False
        self.log_scale = False
        self.refreshes = 0  # panel redraws (the benchmark and tests read it)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dirty = False
        self._last_refresh = 0.0
        self._teacher_source: str | None = None

    @property
    def settled(self) -> bool:
        """Everything written so far is read, folded and drawn (tests wait for this)."""
        # A widget that changed height (the header's error line) is placed by a layout pass
        # that runs on a later timer tick: until then the screen still shows the old layout.
        return (
            self.caught_up
            and not self._dirty
            and not any(chart.drawing for chart in self.query(ThreadedPlot))
            and not self._layout_required
            and not any(widget._layout_required for widget in self.walk_children())
        )

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        # The legend spans the screen, above the panels: inside the loss panel it had half the
        # width and wrapped onto rows the chart needs (80×24).
        yield LossLegend(id="loss-legend")
        with Horizontal(id="top"):
            with Vertical(id="losses-panel"):
                yield LossChart(id="loss-chart")
            with Vertical(id="side"):
                yield DomainTable(id="domains")
                yield EventLog(id="events")
        with Horizontal(id="sparsity-row"):
            yield SparsityChart(id="sparsity-chart")
            yield LayerHeatmap(id="layers")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#losses-panel").border_title = "losses"
        self.query_one("#sparsity-row").display = False
        self.refresh_panels()
        self.set_interval(TICK_SECONDS, self._tick)
        self.set_interval(REFRESH_SECONDS / 2, self._refresh_if_due)
        self._follow()

    def on_unmount(self) -> None:
        self._stop.set()

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width >= WIDE, "-wide")

    # -- the follower thread ---------------------------------------------------------------

    @work(thread=True, exclusive=True, group="follow")
    def _follow(self) -> None:
        follower = EventFollower(self.run_dir / EVENTS_FILE, max_line=self.max_line)
        process = self.process
        exited = False
        try:
            while not self._stop.is_set():
                # Ask before reading: whatever the process wrote before it ended is then read.
                code = None if exited or process is None else process.poll()
                batch = follower.poll()
                changed = self.fold_batch(batch)
                if code is not None and batch.at_end:
                    with self._lock:
                        self.state.process_exited(code, process.last_line(), self.clock())
                    exited = changed = True
                changed |= self._look_up_teacher()
                if changed or (batch.at_end and not self.caught_up):
                    self.post_message(self.Updated(caught_up=batch.at_end))
                if batch.at_end:
                    self._stop.wait(self.poll_interval)
        finally:
            follower.close()

    def fold_batch(self, batch: FollowBatch) -> bool:
        """Fold one batch into the state (follower thread); True when anything changed."""
        changed = batch.reset or batch.exists != self.exists
        with self._lock:
            if batch.reset:
                self.state = RunState(stall_after=self.stall_after)
                self._teacher_source = None
            self.exists = batch.exists
            changed |= self.state.apply_batch(batch, self.max_line)
        return changed

    def _look_up_teacher(self) -> bool:
        """Find the teacher's dev accuracy once the run names its teacher (reads a file, so it
        happens here and not on the UI thread)."""
        with self._lock:
            source = self.state.teacher_source()
            if source is None or source == self._teacher_source or self.state.teacher_accuracy:
                return False
            self._teacher_source = source
        found = teacher_accuracy(source, self.run_dir)
        with self._lock:
            if found and not self.state.teacher_accuracy:
                self.state.teacher_accuracy = found
                return True
        return False

    # -- the UI side -----------------------------------------------------------------------

    def on_run_screen_updated(self, message: Updated) -> None:
        self.caught_up = message.caught_up
        self._dirty = True
        self._refresh_if_due()

    def _refresh_if_due(self) -> None:
        # Driven by Updated and by an interval timer, not by one-shot timers: Textual skips a
        # one-shot timer altogether when the loop is late for it, which a busy machine causes.
        if self._dirty and time.monotonic() - self._last_refresh >= REFRESH_SECONDS:
            self.refresh_panels()

    def _tick(self) -> None:
        with self._lock:
            self._show_header()

    def refresh_panels(self) -> None:
        """Hand every panel what it shows. The state is read under the lock; the widgets keep
        copies, so drawing happens after the lock is released."""
        self._dirty = False
        self._last_refresh = time.monotonic()
        self.refreshes += 1
        with self._lock:
            state = self.state
            self._show_header()
            lines = {name: s.points() for name, s in state.losses.items()}
            self.query_one(LossLegend).show(
                {name: s.last for name, s in state.losses.items()},
                self.hidden,
                state.latest(GRAD_PREFIX),
            )
            self.query_one(LossChart).show(
                lines,
                list(state.stage_marks),
                hidden=set(self.hidden),
                smooth=self.smooth,
                log_scale=self.log_scale,
            )
            self.query_one("#losses-panel").border_subtitle = " · ".join(
                [
                    *(f for f, on in (("smoothed", self.smooth), ("log y", self.log_scale)) if on),
                    *filter(None, [domain_line(state.latest(DOMAIN_PREFIX))]),
                ]
            )
            self.query_one(DomainTable).show(state.domains, state.teacher_accuracy, state.evals)
            self.query_one(EventLog).show(
                list(state.log)[-200:],
                checkpoints=state.checkpoints,
                warnings=state.warnings,
                unknown=dict(state.unknown),
                malformed=state.malformed,
                oversized=state.oversized,
            )
            row = self.query_one("#sparsity-row")
            row.display = state.has_sparsity
            if state.has_sparsity:
                chart = self.query_one(SparsityChart)
                chart.display = bool(state.sparsity_series())
                chart.show({k: s.points() for k, s in state.sparsity_series().items()})
                chart.border_subtitle = diagnostics_line(state.prune_diagnostics())
                heatmap = self.query_one(LayerHeatmap)
                heatmap.display = bool(state.layer_sparsity)
                heatmap.show(state.layer_sparsity, state.layer_sparsity_step)

    def _show_header(self) -> None:
        self.query_one(RunHeader).show(
            self.state, self.clock(), source=str(self.run_dir), exists=self.exists
        )

    # -- keys ------------------------------------------------------------------------------

    def action_toggle_smooth(self) -> None:
        self.smooth = not self.smooth
        self._redraw_losses()

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self._redraw_losses()

    def action_toggle_term(self, index: int) -> None:
        with self._lock:
            terms = self.state.loss_terms()
        if index < len(terms):
            self.hidden ^= {terms[index]}
            self._redraw_losses()

    def action_show_all_terms(self) -> None:
        self.hidden.clear()
        self._redraw_losses()

    def _redraw_losses(self) -> None:
        """A key was pressed: answer it now, not at the next data-driven redraw."""
        self.refresh_panels()
        self.query_one(LossChart).request(now=True)

    def action_back(self) -> None:
        if self.from_browser:
            self.dismiss(None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return self.from_browser
        return True
