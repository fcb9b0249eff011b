"""A plotext chart drawn off the UI thread.

plotext is pure Python and slow: drawing five lines on a 160-column terminal takes tens of
milliseconds, which would stall key presses if done in `render()`. Here `render()` only returns
the last finished picture; pictures are built in a worker thread, one at a time, and requests
that arrive meanwhile collapse into one more build of the newest data. A new picture also
costs the compositor a full repaint of the chart (thousands of styled cells), so pictures
follow data at most every `MIN_INTERVAL` seconds; toggles and resizes redraw at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from rich.text import Text
from textual import work
from textual.app import App
from textual.timer import Timer
from textual_plotext import PlotextPlot
from textual_plotext.plot import Plot

Draw = Callable[[Plot, int, int], None]  # draws onto a cleared figure of width x height
MIN_INTERVAL = 0.5


class ThreadedPlot(PlotextPlot):
    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self._picture: Text | None = None
        self._building = False
        self._wanted = False
        self._started_at = -MIN_INTERVAL
        self._timer: Timer | None = None

    @property
    def drawing(self) -> bool:
        """A picture is being built or still has to be (tests wait for this to end)."""
        return self._building or self._wanted

    def prepare(self) -> Draw:
        """The drawing of the current data, as a function that may run in another thread."""
        raise NotImplementedError

    def request(self, *, now: bool = False) -> None:
        """Redraw with the current data (UI thread): within MIN_INTERVAL, or `now`."""
        if self._building:
            self._wanted = True
            return
        wait = MIN_INTERVAL - (time.monotonic() - self._started_at)
        if now or wait <= 0:
            self._start()
        elif self._timer is None:
            self._wanted = True
            self._timer = self.set_timer(wait, self._timed_start)

    def _timed_start(self) -> None:
        self._timer = None
        if not self._building:
            self._start()

    def _start(self) -> None:
        width, height = self.size.width, self.size.height
        if width <= 0 or height <= 0 or not self.is_mounted:
            self._wanted = True  # drawn once laid out (on_resize)
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._building, self._wanted = True, False
        self._started_at = time.monotonic()
        theme = self._get_plotext_theme_name(self.app.theme)
        self._build(self.app, self.prepare(), width, height, theme)

    @work(thread=True, group="plot")
    def _build(self, app: App[object], draw: Draw, width: int, height: int, theme: str) -> None:
        plt = self.plt  # only ever touched from this one build thread at a time
        plt.clear_figure()
        plt.plotsize(width, height)
        plt._set_size(width, height)  # see PlotextPlot.render: resizing needs both
        plt.theme(theme)
        draw(plt, width, height)
        picture = Text.from_ansi(plt.build())
        with contextlib.suppress(RuntimeError):  # the app is closing
            app.call_from_thread(self._built, picture)

    def _built(self, picture: Text) -> None:
        self._picture = picture
        self._building = False
        self.refresh()
        if self._wanted:
            self._wanted = False
            self.request()

    def render(self) -> Text:
        return self._picture if self._picture is not None else Text("")

    def on_resize(self) -> None:
        self.request(now=True)
