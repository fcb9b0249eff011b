"""Every named loss term over steps, one line each (plotext through textual-plotext)."""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from kdtui.dashboard import fmt
from kdtui.dashboard.state import ema

SMOOTHING = 0.8  # EMA weight of the smoothed view (over the decimated points)


class LossChart(PlotextPlot):
    """Draws what `show()` hands it; toggles only change how the same data is drawn."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.series_lines: dict[str, tuple[list[float], list[float]]] = {}
        self.term_colors: dict[str, tuple[int, int, int]] = {}
        self.hidden: set[str] = set()
        self.marks: list[int] = []
        self.smooth = False
        self.log_scale = False

    def show(
        self,
        lines: dict[str, tuple[list[float], list[float]]],
        marks: list[int],
        *,
        hidden: set[str],
        smooth: bool,
        log_scale: bool,
    ) -> None:
        self.series_lines, self.marks = lines, marks
        self.term_colors = {name: fmt.color_of(i) for i, name in enumerate(lines)}
        self.hidden, self.smooth, self.log_scale = hidden, smooth, log_scale
        self._draw()
        self.refresh()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_figure()
        drawn = False
        lo, hi = math.inf, -math.inf
        for name, (xs, ys) in self.series_lines.items():
            if name in self.hidden or not xs:
                continue
            if self.smooth:
                ys = ema(ys, SMOOTHING)
            if self.log_scale:
                kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
                if not kept:
                    continue
                xs, ys = [k[0] for k in kept], [k[1] for k in kept]
            plt.plot(xs, ys, color=self.term_colors[name], marker="braille")
            lo, hi = min(lo, xs[0]), max(hi, xs[-1])
            drawn = True
        if not drawn:
            plt.title("no loss to show yet" if not self.series_lines else "every term is hidden")
            return
        for mark in self.marks:
            if lo < mark < hi:
                plt.vline(mark, "gray")
        if self.log_scale:
            plt.yscale("log")
        ticks = fmt.int_ticks(lo, hi, count=max(2, self.size.width // 12))
        plt.xticks(ticks, [f"{t:,}" for t in ticks])

    def on_resize(self) -> None:
        # Tick density follows the width.
        if self.series_lines:
            self._draw()
