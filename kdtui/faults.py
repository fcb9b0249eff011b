"""Deterministic crash points, so tests can prove that a run killed or stopped exactly there
resumes to the same result.

`KDTUI_CRASH_AT="<point>:<step>"` makes the process SIGKILL itself when it reaches `<point>` at
optimiser step `<step>` (counted across stages, as in the events):

* `step`:        after the backward pass, before the optimiser step;
* `eval`:        after the dev predictions, before the eval event is written;
* `checkpoint`:  with the checkpoint's files written but not yet renamed into place;
* `interrupt`:   where `step` is, but SIGINT, as Ctrl-C in a terminal sends it.

`<point>:<step>:<SIGNAL>[+<SIGNAL>...]` sends those signals instead, one after the other (e.g.
`checkpoint:8:SIGTERM`, or `checkpoint:8:SIGINT+SIGINT` for a double Ctrl-C), and several
points can be given separated by commas (`step:7:SIGINT,checkpoint:7`).

Outside tests the variable is unset and a crash point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "KDTUI_CRASH_AT"


def crash_point(point: str, step: int) -> None:
    wanted = os.environ.get(CRASH_ENV)
    if wanted is None:
        return
    for fault in wanted.split(","):
        name, _, rest = fault.partition(":")
        where, _, signals = rest.partition(":")
        if name == point and where == str(step):
            for signal_name in signals.split("+") if signals else ["SIGKILL"]:
                os.kill(os.getpid(), signal.Signals[signal_name])
        elif point == "step" and name == "interrupt" and where == str(step):
            os.kill(os.getpid(), signal.SIGINT)
