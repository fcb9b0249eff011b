"""Quitting while the run this dashboard started is still going: stop it, or keep it going."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

STOP, KEEP = "stop", "keep"


class StopRunScreen(ModalScreen[str | None]):
    """Dismisses with "stop", "keep" or None (cancel: back to the dashboard)."""

    BINDINGS = [
        Binding("s", "choose('stop')", "Stop the run"),
        Binding("k", "choose('keep')", "Keep it running"),
        Binding("escape,c", "choose('')", "Cancel"),
    ]

    def __init__(self, run_name: str) -> None:
        super().__init__()
        self.run_name = run_name

    def compose(self) -> ComposeResult:
        with Vertical(id="stop-box"):
            yield Static(
                f"[b]{self.run_name}[/b] is still running.\n\n"
                "[b]s[/b]  stop it: it finishes the current step, writes a checkpoint and "
                "stops (continue later with --resume)\n"
                "[b]k[/b]  keep it running in the background\n"
                "[b]esc[/b] stay here",
                id="stop-text",
            )
            with Horizontal(id="stop-buttons"):
                yield Button("Stop (s)", id="stop", variant="error")
                yield Button("Keep running (k)", id="keep", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_choose("" if event.button.id == "cancel" else str(event.button.id))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)
