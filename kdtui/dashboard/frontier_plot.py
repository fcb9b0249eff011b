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
# Rows of a figure that are not canvas: the frame's two lines, the x ticks and the x label, and
# the title when there is one (plotext's layout).
NON_CANVAS_ROWS = 4
# Columns that are not canvas besides the y tick labels: the frame's two lines.
FRAME_COLUMNS = 2
# A y tick on every this many canvas rows.
TICK_EVERY_ROWS = 3
# How many rows a label may sit from its point; further, it would read as another point's.
LABEL_REACH = 3


def draw_frontier(
    plt: Any,
    points: Sequence[PlotPoint],
    *,
    width: int,
    height: int,
    xlabel: str,
    title: str = "",
) -> None:
    """Draw POINTS on PLT (the plotext module or a textual-plotext Plot, cleared and sized) for
    a figure WIDTH x HEIGHT characters. Each label sits on a row near its point, starting at the
    point in the left third of the picture, ending at it in the right third and centred between,
    so labels at the edges stay inside the canvas (plotext drops what falls outside). Positions
    are worked out in plotext's own character cells (the y ticks are set here, so the canvas's
    width is known): a label never overwrites a point or a label placed before it; it moves to
    a free row near its point, or aligns another way, and is left out where there is no room
    at all (`place_labels`; the table beside the picture names every model)."""
    shown = [p for p in points if math.isfinite(p.accuracy) and math.isfinite(p.latency_ms)]
    if title:
        plt.title(title)
    if not shown:
        plt.title("no model has both an accuracy and a latency to show")
        return
    xs = [p.latency_ms for p in shown]
    ys = [100 * p.accuracy for p in shown]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    x_span = x_hi - x_lo or max(abs(x_lo), 1.0)
    canvas_rows = max(height - NON_CANVAS_ROWS - (1 if title else 0), 6)
    # One row, in accuracy points: the points take the rows from the second from the bottom to
    # the fourth from the top, leaving a row below them and three above for labels.
    unit = (y_hi - y_lo) / (canvas_rows - 5) if y_hi > y_lo else 1.0
    y_bottom = y_lo - unit
    plt.ylim(y_bottom, y_bottom + (canvas_rows - 1) * unit)
    tick_rows = range(0, canvas_rows, TICK_EVERY_ROWS)
    tick_labels = [f"{y_bottom + r * unit:.1f}" for r in tick_rows]
    plt.yticks([y_bottom + r * unit for r in tick_rows], tick_labels)
    x_left, x_right = x_lo - 0.05 * x_span, x_hi + 0.05 * x_span
    plt.xlim(x_left, x_right)
    canvas_columns = max(width - FRAME_COLUMNS - max(map(len, tick_labels)), 2)

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
    cells = [
        (
            cell_of(100 * p.accuracy, y_bottom, y_bottom + (canvas_rows - 1) * unit, canvas_rows),
            cell_of(p.latency_ms, x_left, x_right, canvas_columns),
        )
        for p in shown
    ]
    wheres = [(p.latency_ms - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5 for p in shown]
    alignments = ["left" if w < 1 / 3 else "right" if w > 2 / 3 else "center" for w in wheres]
    places = place_labels(
        cells, [len(p.label) for p in shown], alignments, canvas_rows, canvas_columns
    )
    for p, place in zip(shown, places, strict=True):
        if place is None:
            continue  # no free place near its point: left out rather than written over another
        row, alignment = place
        plt.text(
            p.label,
            p.latency_ms,
            y_bottom + row * unit,  # the middle of that row: plotext puts it on that row
            color=FRONTIER_COLOR if p.on_frontier else "default",
            alignment=alignment,
        )
    plt.xlabel(xlabel)


def cell_of(value: float, low: float, high: float, cells: int) -> int:
    """The canvas row or column plotext draws VALUE in, on an axis from LOW to HIGH over CELLS
    character cells (plotext's own rounding, `_utility.get_matrix_data`)."""
    return math.floor(round(0.5 + (cells - 1) * (value - low) / (high - low), 8))


def label_span(length: int, column: int, alignment: str) -> tuple[int, int]:
    """The first and last column a label of LENGTH covers when plotext places it at COLUMN
    with ALIGNMENT (`_matrix.add_horizontal_string`)."""
    start = {"left": column, "center": column - length // 2, "right": column - length + 1}
    return start[alignment], start[alignment] + length - 1


def place_labels(
    cells: Sequence[tuple[int, int]],
    lengths: Sequence[int],
    alignments: Sequence[str],
    canvas_rows: int,
    canvas_columns: int,
) -> list[tuple[int, str] | None]:
    """Each label's row and alignment, or None where there is no room for it: the first of a
    row above its point, two above, one below, three above, two below and three below
    (LABEL_REACH) on which the label, aligned as ALIGNMENTS prefer or else another way that
    keeps it on the canvas, touches no point's marker (CELLS: each point's row and column) and
    no earlier label (a column of space between, so that a label never reads as another
    point's). Pure, for the tests."""
    markers = set(cells)
    labels: list[tuple[int, int, int]] = []  # row, first and last column
    places: list[tuple[int, str] | None] = []
    offsets = [1] + [k for d in range(2, LABEL_REACH + 1) for k in (d, -(d - 1))] + [-LABEL_REACH]
    for (point_row, column), length, preferred in zip(cells, lengths, alignments, strict=True):
        rows = [point_row + k for k in offsets if 0 <= point_row + k < canvas_rows]
        ways = [preferred] + [a for a in ("left", "center", "right") if a != preferred]
        place = None
        for row in rows:
            for alignment in ways:
                start, end = label_span(length, column, alignment)
                free = (
                    start >= 0
                    and end < canvas_columns
                    and not any((row, c) in markers for c in range(start - 1, end + 2))
                    and all(r != row or end + 1 < s or e + 1 < start for r, s, e in labels)
                )
                if free:
                    place = (row, alignment)
                    labels.append((row, start, end))
                    break
            if place is not None:
                break
        places.append(place)
    return places


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
    draw_frontier(plt, points, height=height, xlabel=xlabel, width=width, title=title)
    text = plt.build()
    plt.clear_figure()
    return text


def describe_shape(shape: dict[str, int]) -> str:
    """'batch 1, length 128' for a report's frontier latency shape."""
    return f"batch {shape['batch']}, length {shape['length']}"
