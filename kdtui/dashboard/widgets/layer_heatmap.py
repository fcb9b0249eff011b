"""Per-layer sparsity as a heat map: one row per weight matrix, one column per layer."""

from __future__ import annotations

from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from kdtui.dashboard.state import layer_grid

_LOW = (40, 44, 52)  # 0% zeros
_HIGH = (224, 108, 117)  # 100% zeros


def _shade(value: float) -> Style:
    v = min(max(value, 0.0), 1.0)
    r, g, b = (round(lo + (hi - lo) * v) for lo, hi in zip(_LOW, _HIGH, strict=True))
    text = "black" if v > 0.6 else "white"
    return Style(color=text, bgcolor=Color.from_rgb(r, g, b))


class LayerHeatmap(Widget):
    """Cells show the share of zero weights in %; with too little room, colour alone."""

    DEFAULT_CSS = "LayerHeatmap { height: auto; }"

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.zeros: dict[str, float] = {}
        self.step: int | None = None

    def show(self, layers: dict[str, float], step: int | None) -> None:
        if layers != self.zeros or step != self.step:
            self.zeros, self.step = dict(layers), step
            self.border_title = "per-layer sparsity" + (f" @ step {step:,}" if step else "")
            self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:  # noqa: ANN001
        _, matrices, _ = layer_grid(self.zeros)
        return len(matrices) + 1 if matrices else 1

    def render(self) -> Text:
        numbers, matrices, grid = layer_grid(self.zeros)
        if not matrices:
            return Text("no per-layer sparsity yet", style="dim")
        label = max(len(m) for m in matrices) + 1
        room = max(1, (self.size.width - label) // max(1, len(numbers)))
        cell = min(4, room)
        out = Text(no_wrap=True, overflow="crop")
        out.append(" " * label)
        out.append(_layer_labels(numbers, cell), style="dim")
        for matrix in matrices:
            out.append("\n" + matrix.ljust(label))
            for n in numbers:
                value = grid.get((matrix, n))
                if value is None:
                    out.append(" " * cell)
                elif cell >= 3:
                    out.append(f"{100 * value:.0f}".rjust(cell - 1) + " ", style=_shade(value))
                else:
                    out.append(" " * cell, style=_shade(value))
        return out


def _layer_labels(numbers: list[int], cell: int) -> str:
    """Layer numbers over their columns, right-aligned. When cells are narrower than a number
    (colour-only cells, 12+ layers at 80 columns), only every 2nd, 5th or 10th layer is
    labelled, so that numbers never run into each other (`91011`)."""
    labels = ["*" if n < 0 else str(n) for n in numbers]
    widest = max(len(text) for text in labels)
    step = next((s for s in (1, 2, 5, 10) if widest < s * cell), 100)
    row = [" "] * (cell * len(numbers))
    end = -2  # where the last placed label ends
    for j, (n, text) in enumerate(zip(numbers, labels, strict=True)):
        start = (j + 1) * cell - len(text)
        if (n >= 0 and n % step) or start < 0 or start <= end + 1:
            continue
        row[start : start + len(text)] = text
        end = start + len(text) - 1
    return "".join(row)
