"""The loss chart's legend: each term's key, colour, latest value and, once an evaluation step has
logged it, its latest gradient norm (∇): a term with a tiny ∇ does not steer training whatever
its value. Hidden terms are dimmed."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kdtui.dashboard import fmt

TERM_KEYS = "1234567890"  # the keys that toggle the first ten terms


class LossLegend(Static):
    _length = -1

    def show(
        self,
        latest: dict[str, float | None],
        hidden: set[str],
        grads: dict[str, float] | None = None,
    ) -> None:
        grads = grads or {}
        text = Text()
        for i, (name, value) in enumerate(latest.items()):
            key = TERM_KEYS[i] if i < len(TERM_KEYS) else "·"
            if i:
                text.append("  ")
            if name in hidden:
                text.append(f"{key} {name}", style="dim strike")
                continue
            text.append(key, style="bold")
            text.append("━", style=fmt.rgb(fmt.color_of(i)))
            text.append(f"{name} {fmt.short(value)}")
            if name in grads:
                text.append(f" ∇{fmt.short(grads[name])}", style="dim")
        if not latest:
            text.append("no loss logged yet", style="dim")
        # A layout pass re-renders the whole screen: only when the legend may wrap differently.
        self.update(text, layout=len(text) != self._length)
        self._length = len(text)
