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
  f        the Pareto frontier of these runs (from kdtui evaluate's cache)
  q        quit
  ?        this help                      esc   close it

[b]columns[/b]
  run        its folder; command: teacher, distill or prune
  progress   step/total; best acc: the best dev accuracy over all domains
  started    when it started (the list is newest first)

{_STATUS}"""

FRONTIER_HELP = """\
[b]kdtui dashboard[/b]: the Pareto frontier of the runs in the list

[b]keys[/b]
  b, esc   back to the run list
  r        read the cached results again
  q        quit
  ?        this help                      esc   close it

[b]picture[/b]
  each model a point labelled with its run: accuracy on the evaluated split
  against latency at batch 1 and the longest length of the latency grid;
  ◆ joined by a line: on the frontier (no other model is at least as
  accurate and at least as fast, and better in one); • dominated

[b]where the results come from[/b]
  kdtui evaluate RUNS_FOLDER caches each model's results in its run
  (.kdtui-eval-cache/); nothing is evaluated here. Results of a model
  changed since, or under other settings than most runs, are left out."""


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
