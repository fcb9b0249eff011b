"""Small text formatters shared by the widgets (pure functions, easy to test)."""

from __future__ import annotations

import math
import time

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"

# Line colours, in the order terms first appear; rich colour names work in plotext and Textual.
PALETTE = [
    (230, 230, 230),
    (97, 175, 239),
    (229, 192, 123),
    (152, 195, 121),
    (224, 108, 117),
    (198, 120, 221),
    (86, 182, 194),
    (209, 154, 102),
    (171, 178, 191),
    (255, 121, 198),
]

STATUS_STYLES = {
    "waiting": "dim",
    "running": "bold green",
    "stalled": "bold yellow",
    "finished": "bold cyan",
    "failed": "bold red",
    "stopped": "bold magenta",
}


def color_of(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def rgb(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def duration(seconds: float | None) -> str:
    """1:02:03 / 2:03 style; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def number(value: float | None) -> str:
    """A loss or rate in 5 characters or so: 0.4123, 12.31, 1.2e-05."""
    if value is None or not math.isfinite(value):
        return "-"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e4):
        return f"{value:.1e}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.4f}"


def short(value: float | None) -> str:
    """Three significant digits: 55.4, 0.689, 5.6e-06 (legend values)."""
    if value is None or not math.isfinite(value):
        return "-"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e5):
        return f"{value:.1e}"
    return f"{value:.3g}" if magnitude < 1000 else f"{value:.0f}"


def sparkline(values: list[float], width: int, low: float | None = None) -> str:
    """The last `width` values as block characters, scaled between their min (or `low`) and
    max; a flat series is drawn at mid height."""
    values = values[-width:] if width > 0 else []
    if not values:
        return ""
    lo = min(values) if low is None else min(low, min(values))
    hi = max(values)
    if hi - lo < 1e-12:
        return SPARK_BLOCKS[3] * len(values)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((v - lo) / (hi - lo) * top)] for v in values)


def clock(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def date_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def int_ticks(lo: float, hi: float, count: int = 5) -> list[int]:
    """About `count` round integer ticks between lo and hi (step numbers on an x axis)."""
    if hi <= lo:
        return [int(lo)]
    raw = (hi - lo) / max(1, count - 1)
    base = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = min((m * base for m in (1, 2, 5, 10)), key=lambda c: abs(math.log(c / raw)))
    step = max(1, int(step))
    first = math.ceil(lo / step) * step
    return list(range(int(first), int(hi) + 1, step))
