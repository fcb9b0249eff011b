"""The Pareto frontier as a picture: accuracy against latency, one point per model labelled
with its run's name, the frontier's points joined by a line (kdtui/frontier.py decides which).

One drawing for two places: `kdtui evaluate` prints it as text under its table
(`frontier_text`, plotext's own figure), and the dashboard's frontier screen draws it into a
textual-plotext widget (`draw_frontier` on the widget's figure: the same calls). No Textual here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kdtui.dashboard import fmt
from kdtui.frontier import PlotPoint

FRONTIER_COLOR = fmt.color_of(3)  # green
OTHER_COLOR = fmt.color_of(8)  # grey
FRONTIER_MARKER = "◆"
OTHER_MARKER = "•"
# Rows of a figure that are not canvas: the title, the frame's two lines, the x ticks and the
# x label (plotext's layout; one fewer without a title). Used to place labels above points.
NON_CANVAS_ROWS = 5
# A label's height above its point, in rows. plotext rounds positions down to a row, and the
# row height here is an estimate, so a whole row could round onto the point's own row and hide
# it; one and a half lands one or two rows above, never on it.
LABEL_ROWS = 1.5
# Columns of a figure that are not canvas: the y ticks (about five characters) and the frame.
CANVAS_MARGIN_COLUMNS = 7


def draw_frontier(
    plt: Any, points: Sequence[PlotPoint], *, width: int, height: int, xlabel: str
) -> None:
    """Draw POINTS on PLT (the plotext module or a textual-plotext Plot, cleared and sized) for
    a figure WIDTH x HEIGHT characters. Each label sits a row or two above its point, starting
    at the point in the left third of the picture, ending at it in the right third and centred
    between, so labels at the edges stay inside the canvas (plotext drops what falls outside).
    A label that would overwrite one placed before it, or a point, moves to the nearest free
    row (`label_rows`)."""
    shown = [p for p in points if math.isfinite(p.accuracy) and math.isfinite(p.latency_ms)]
    if not shown:
        plt.title("no model has both an accuracy and a latency to show")
        return
    xs = [p.latency_ms for p in shown]
    ys = [100 * p.accuracy for p in shown]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    x_span = x_hi - x_lo or max(abs(x_lo), 1.0)
    y_span = y_hi - y_lo or 1.0
    canvas_rows = max(height - NON_CANVAS_ROWS, 5)
    # One row, in accuracy points: the points take all rows but one below and three above.
    row = y_span / max(canvas_rows - 4, 1)
    plt.ylim(y_lo - row, y_hi + 3 * row)
    plt.xlim(x_lo - 0.05 * x_span, x_hi + 0.05 * x_span)

    front = sorted((p for p in shown if p.on_frontier), key=lambda p: (p.latency_ms, p.accuracy))
    others = [p for p in shown if not p.on_frontier]
    if len(front) > 1:
        plt.plot(
            [p.latency_ms for p in front],
            [100 * p.accuracy for p in front],
            marker="braille",
            color=FRONTIER_COLOR,
        )
    # The frontier's markers last, over the line and the others.
    for group, marker, color in (
        (others, OTHER_MARKER, OTHER_COLOR),
        (front, FRONTIER_MARKER, FRONTIER_COLOR),
    ):
        if group:
            plt.scatter(
                [p.latency_ms for p in group],
                [100 * p.accuracy for p in group],
                marker=marker,
                color=color,
            )
    wheres = [(p.latency_ms - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5 for p in shown]
    alignments = ["left" if w < 1 / 3 else "right" if w > 2 / 3 else "center" for w in wheres]
    # Label columns on a canvas of about WIDTH less the y ticks and the frame, whose x range
    # (xlim) is the points' span plus 5% a side: a point at share w of the span sits at
    # (w + 0.05) / 1.1 of the canvas.
    columns = [(w + 0.05) / 1.1 * max(width - CANVAS_MARGIN_COLUMNS, 1) for w in wheres]
    spans = [label_span(p.label, c, a) for p, c, a in zip(shown, columns, alignments, strict=True)]
    rows = [int((100 * p.accuracy - y_lo) / row) for p in shown]
    offsets = label_rows(rows, spans, list(zip(rows, columns, strict=True)))
    for p, alignment, offset in zip(shown, alignments, offsets, strict=True):
        plt.text(
            p.label,
            p.latency_ms,
            100 * p.accuracy + offset * row,
            color=FRONTIER_COLOR if p.on_frontier else "default",
            alignment=alignment,
        )
    plt.xlabel(xlabel)


def label_span(label: str, column: float, alignment: str) -> tuple[float, float]:
    """The columns LABEL covers when plotext places it at COLUMN with ALIGNMENT."""
    start = {"left": column, "center": column - len(label) / 2, "right": column - len(label)}
    return start[alignment], start[alignment] + len(label)


def label_rows(
    rows: Sequence[int],
    spans: Sequence[tuple[float, float]],
    marks: Sequence[tuple[int, float]] = (),
) -> list[float]:
    """Each label's height above its point, in rows: LABEL_ROWS, or where that row is taken by
    an earlier label whose columns overlap (a column of space between them) or by a point's
    marker (MARKS: row and column), the nearest of a row higher, a row below the point, two rows
    higher, ... (the last if all are taken). Pure, for the tests."""
    taken: list[tuple[int, float, float]] = [(r, c - 0.5, c + 0.5) for r, c in marks]
    offsets: list[float] = []
    for point_row, (start, end) in zip(rows, spans, strict=True):
        for offset in (LABEL_ROWS, LABEL_ROWS + 1, -LABEL_ROWS, LABEL_ROWS + 2, -LABEL_ROWS - 1):
            at = point_row + math.floor(offset)
            if all(r != at or end + 1 <= s or e + 1 <= start for r, s, e in taken):
                break
        taken.append((at, start, end))
        offsets.append(offset)
    return offsets


def frontier_text(
    points: Sequence[PlotPoint], *, width: int, height: int, title: str, xlabel: str
) -> str:
    """The picture as text (with ANSI colours), WIDTH x HEIGHT characters. Uses plotext's global
    figure, cleared before and after: one caller at a time (the CLI)."""
    import plotext as plt

    plt.clear_figure()
    plt.limit_size(False, False)  # WIDTH x HEIGHT even where it exceeds the terminal (a pipe)
    plt.plot_size(width, height)
    plt.theme("pro")  # no background colours: the terminal's own
    plt.title(title)
    draw_frontier(plt, points, height=height, xlabel=xlabel, width=width)
    text = plt.build()
    plt.clear_figure()
    return text


def describe_shape(shape: dict[str, int]) -> str:
    """'batch 1, length 128' for a report's frontier latency shape."""
    return f"batch {shape['batch']}, length {shape['length']}"
