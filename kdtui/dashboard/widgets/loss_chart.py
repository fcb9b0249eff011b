"""Every named loss term over steps, one line each (plotext through textual-plotext)."""

from __future__ import annotations

import math

from textual_plotext.plot import Plot

from kdtui.dashboard import fmt
from kdtui.dashboard.state import ema, thin
from kdtui.dashboard.widgets.threaded_plot import Draw, ThreadedPlot

SMOOTHING = 0.8  # EMA weight of the smoothed view (over the decimated points)
Lines = dict[str, tuple[list[float], list[float]]]


class LossChart(ThreadedPlot):
    """Draws what `show()` hands it; toggles only change how the same data is drawn."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.series_lines: Lines = {}
        self.hidden: set[str] = set()
        self.marks: list[int] = []
        self.smooth = False
        self.log_scale = False

    def show(
        self, lines: Lines, marks: list[int], *, hidden: set[str], smooth: bool, log_scale: bool
    ) -> None:
        self.series_lines, self.marks = lines, marks
        self.hidden, self.smooth, self.log_scale = hidden, smooth, log_scale
        self.request()

    placeholder = "no loss logged yet"

    def prepare(self) -> Draw | None:
        if not any(xs for xs, _ in self.series_lines.values()):
            return None
        lines, marks = self.series_lines, list(self.marks)
        hidden, smooth, log_scale = set(self.hidden), self.smooth, self.log_scale

        def draw(plt: Plot, width: int, height: int) -> None:
            drawn = False
            lo, hi = math.inf, -math.inf
            y_lo, y_hi = math.inf, -math.inf
            for i, (name, (xs, ys)) in enumerate(lines.items()):
                if name in hidden or not xs:
                    continue
                if smooth:
                    ys = ema(ys, SMOOTHING)
                # Braille cells are two dots wide: more points than that cannot show.
                xs, ys = thin(xs, ys, max(64, 2 * width))
                if log_scale:
                    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
                    if not kept:
                        continue
                    xs, ys = [k[0] for k in kept], [k[1] for k in kept]
                plt.plot(xs, ys, color=fmt.color_of(i), marker="braille")
                lo, hi = min(lo, xs[0]), max(hi, xs[-1])
                y_lo, y_hi = min(y_lo, min(ys)), max(y_hi, max(ys))
                drawn = True
            if not drawn:
                plt.title("every term is hidden")
                return
            for mark in marks:
                if lo < mark < hi:
                    plt.vline(mark, "gray")
            if log_scale:
                plt.yscale("log")
                # plotext labels log axes with long decimals; powers of ten read better.
                powers = range(math.floor(math.log10(y_lo)), math.ceil(math.log10(y_hi)) + 1)
                every = max(1, math.ceil(len(powers) / max(2, height // 3)))
                ticks = [10.0**p for p in powers[::every]]
                plt.yticks(ticks, [f"{t:g}" for t in ticks])
            ticks = fmt.int_ticks(lo, hi, count=max(2, width // 12))
            plt.xticks(ticks, [f"{t:,}" for t in ticks])

        return draw
