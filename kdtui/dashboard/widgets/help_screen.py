"""`?`: the keys and what each panel shows."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]kdtui dashboard[/b]: a live or finished run, read from RUN/events.jsonl

[b]keys[/b]
  q        quit (a run started here: stop it, or keep it running)
  ?        this help                      esc   close it
  1-9, 0   show or hide loss term 1-10 (numbers as in the legend)
  a        show every loss term
  s        smooth the loss lines (moving average)
  l        logarithmic loss axis
  b        back to the run list (when you came from it)

[b]panels[/b]
  header     run, command, profile, status, step/total, elapsed, ETA
  losses     the weighted total and every named term the run logs;
             grey lines mark where the set of terms changes (stages)
  sparsity   target and actual sparsity; zeros per layer × matrix (pruning)
  accuracy   dev accuracy per domain: last, best, the teacher's, trend
  events     checkpoints, messages, warnings and errors

[b]status[/b]
  running, finished, failed, stopped (interrupted: continue with --resume),
  waiting (no events yet), stalled (silent for much longer than usual)"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss_help", "Close", show=True),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP, id="help-text")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
