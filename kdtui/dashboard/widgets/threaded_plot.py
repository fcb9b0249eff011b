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

    @property
    def drawing(self) -> bool:
        """A picture is being built or still has to be (tests wait for this to end)."""
        return self._building or self._wanted

    def prepare(self) -> Draw | None:
        """The drawing of the current data, as a function that may run in another thread;
        None when there is nothing to draw yet (then `placeholder` is shown at once)."""
        raise NotImplementedError

    placeholder = ""

    def on_mount(self) -> None:
        super().on_mount()
        # An interval, not one-shot timers: Textual drops a one-shot timer whose time has
        # passed before the loop got to it, which happens on a busy machine.
        self.set_interval(MIN_INTERVAL / 4, self._start_if_due)

    def request(self, *, now: bool = False) -> None:
        """Redraw with the current data (UI thread): within MIN_INTERVAL, or `now`."""
        self._wanted = True
        if now and not self._building:
            self._start()
        else:
            self._start_if_due()

    def _start_if_due(self) -> None:
        due = time.monotonic() - self._started_at >= MIN_INTERVAL
        if self._wanted and not self._building and due:
            self._start()

    def _start(self) -> None:
        width, height = self.size.width, self.size.height
        if width <= 0 or height <= 0 or not self.is_mounted:
            self._wanted = True  # drawn once laid out (on_resize)
            return
        draw = self.prepare()
        if draw is None:
            self._wanted = False
            self._picture = Text(self.placeholder, style="dim", justify="center")
            self.refresh()
            return
        self._building, self._wanted = True, False
        self._started_at = time.monotonic()
        theme = self._get_plotext_theme_name(self.app.theme)
        self._build(self.app, draw, width, height, theme)

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
        self._start_if_due()

    def render(self) -> Text:
        return self._picture if self._picture is not None else Text("")

    def on_resize(self) -> None:
        self.request(now=True)
