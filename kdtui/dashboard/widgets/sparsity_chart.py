"""Target and actual sparsity over steps (every `sparsity/*` metric a step reports), in %."""

from __future__ import annotations

from textual_plotext.plot import Plot

from kdtui.dashboard import fmt
from kdtui.dashboard.state import thin
from kdtui.dashboard.widgets.threaded_plot import Draw, ThreadedPlot

# target in the palette's blue, actual in its green, others after
_COLORS = {"sparsity/target": 1, "sparsity/actual": 3}
_SHORT = {"target": "tgt", "actual": "act"}  # names when the border is short (80 columns)


class SparsityChart(ThreadedPlot):
    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.series_lines: dict[str, tuple[list[float], list[float]]] = {}

    def show(self, lines: dict[str, tuple[list[float], list[float]]]) -> None:
        self.series_lines = lines
        self._title()
        self.request()

    def _title(self) -> None:
        """`sparsity` and each series' colour and latest value, in full when the border has room
        (`target 90.0%`), else with short names (`tgt 90.0%`), else as many as fit: the title
        itself always stays, so the panel says what it is at 80 columns."""
        room = self.size.width - 4  # the border's corners and the spaces around the title
        items = [
            (fmt.rgb(fmt.color_of(_COLORS.get(name, 4 + i))), name.removeprefix("sparsity/"), ys)
            for i, (name, (_, ys)) in enumerate(self.series_lines.items())
        ]
        for short in (False, True):
            title, length = "sparsity", len("sparsity")
            for color, label, ys in items:
                label = _SHORT.get(label, label) if short else label
                item = f"{label} {100 * ys[-1]:.1f}%" if ys else label
                if length + len(item) + 2 > room:
                    break
                title += f" [{color}]━[/]{item}"
                length += len(item) + 2
            else:
                break
        self.border_title = title

    def on_resize(self) -> None:
        super().on_resize()
        self._title()

    def prepare(self) -> Draw | None:
        lines = self.series_lines
        if not any(xs for xs, _ in lines.values()):
            return None

        def draw(plt: Plot, width: int, height: int) -> None:
            lo, hi = None, None
            for i, (name, (xs, ys)) in enumerate(lines.items()):
                if not xs:
                    continue
                color = fmt.color_of(_COLORS.get(name, 4 + i))
                xs, ys = thin(xs, ys, max(64, 2 * width))
                plt.plot(xs, [100 * y for y in ys], color=color, marker="braille")
                lo = xs[0] if lo is None else min(lo, xs[0])
                hi = xs[-1] if hi is None else max(hi, xs[-1])
            plt.ylim(0, 100)
            # Ticks that share a row would be placed in an arbitrary order by plotext: keep
            # only as many as there are rows for.
            ticks = [0, 25, 50, 75, 100] if height >= 12 else [0, 50, 100]
            plt.yticks(ticks, [f"{t}%" for t in ticks])
            if lo is not None and hi is not None:
                xticks = fmt.int_ticks(lo, hi, count=max(2, width // 12))
                plt.xticks(xticks, [f"{t:,}" for t in xticks])

        return draw
