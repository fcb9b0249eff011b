"""`?`: the keys and what each part of the current screen shows; each screen has its own."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

_STATUS = """\
[b]status[/b]
  running, finished, failed, waiting (no events yet)
  stopped    asked to stop (Ctrl-C, kill, the dashboard); --resume continues
  stalled    silent for much longer than usual"""

RUN_HELP = f"""\
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
  legend     each loss term: key, colour, latest value; +N: terms that
             did not fit on the line (hide some, or widen the window)
  losses     the weighted total and every named term the run logs;
             grey lines mark where the set of terms changes (stages)
  sparsity   target and actual sparsity; zeros per layer × matrix (pruning)
  accuracy   dev accuracy per domain: last, best, the teacher's, trend
  events     checkpoints, messages, warnings and errors

{_STATUS}"""

BROWSER_HELP = f"""\
[b]kdtui dashboard[/b]: the runs in a folder (each subfolder with an events.jsonl)

[b]keys[/b]
  ↑ ↓      select a run
  enter    open it (b or esc in the run goes back to this list)
  r        scan the folder again now (it is scanned every 2 seconds)
  q        quit
  ?        this help                      esc   close it

[b]columns[/b]
  run        its folder; command: teacher, distill or prune
  progress   step/total; best acc: the best dev accuracy over all domains
  started    when it started (the list is newest first)

{_STATUS}"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss_help", "Close", show=True),
    ]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(self.text, id="help-text")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
