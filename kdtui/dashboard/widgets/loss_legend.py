"""The loss chart's legend: each term's key, colour, latest value and, once an evaluation step has
logged it, its latest gradient norm (∇): a term with a tiny ∇ does not steer training whatever
its value. Hidden terms are dimmed.

Always one line, so the chart keeps its rows on a small terminal (a wrapped legend took four of
the eleven rows at 80×24, and broke values across lines). What does not fit is given up in this
order: the ∇ norms, the names of hidden terms and the double spaces, then the last terms
(counted as `+N`). A value is never cut.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from kdtui.dashboard import fmt

TERM_KEYS = "1234567890"  # the keys that toggle the first ten terms


class LossLegend(Widget):
    DEFAULT_CSS = "LossLegend { height: 1; }"

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.latest: dict[str, float | None] = {}
        self.hidden: set[str] = set()
        self.grads: dict[str, float] = {}

    def show(
        self,
        latest: dict[str, float | None],
        hidden: set[str],
        grads: dict[str, float] | None = None,
    ) -> None:
        self.latest, self.hidden, self.grads = dict(latest), set(hidden), dict(grads or {})
        self.refresh()

    def render(self) -> Text:
        return legend_line(self.latest, self.hidden, self.grads, self.size.width)


def legend_line(
    latest: dict[str, float | None], hidden: set[str], grads: dict[str, float], width: int
) -> Text:
    """The legend in at most `width` cells (see the module's docstring for what gives way)."""
    if not latest:
        return Text("no loss logged yet", style="dim")
    items: list[Text] = []
    for compact in (False, True):
        items = [
            _item(i, name, value, name in hidden, None if compact else grads.get(name), compact)
            for i, (name, value) in enumerate(latest.items())
        ]
        line = Text(" " if compact else "  ").join(items)
        if line.cell_len <= width:
            return line
    # Still too long: the first terms that fit, then how many were left out.
    reserve = len(f" +{len(items)}")
    shown, used = 0, 0
    for item in items:
        need = item.cell_len + (1 if shown else 0)
        if used + need + reserve > width:
            break
        shown, used = shown + 1, used + need
    line = Text(" ").join(items[:shown])
    line.append(f"{' ' if shown else ''}+{len(items) - shown}", style="dim")
    return line


def _item(
    index: int, name: str, value: float | None, hidden: bool, grad: float | None, compact: bool
) -> Text:
    key = TERM_KEYS[index] if index < len(TERM_KEYS) else "·"
    if hidden:
        return Text(key if compact else f"{key} {name}", style="dim strike")
    text = Text()
    text.append(key, style="bold")
    text.append("━", style=fmt.rgb(fmt.color_of(index)))
    text.append(f"{name} {fmt.short(value)}")
    if grad is not None:
        text.append(f" ∇{fmt.short(grad)}", style="dim")
    return text
