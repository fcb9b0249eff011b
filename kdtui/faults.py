"""Deterministic crash points, so tests can prove that a run killed exactly there resumes to the
same result.

`KDTUI_CRASH_AT="<point>:<step>"` makes the process SIGKILL itself when it reaches `<point>` at
optimiser step `<step>` (counted across stages, as in the events):

* `step`:        after the backward pass, before the optimiser step;
* `eval`:        after the dev predictions, before the eval event is written;
* `checkpoint`:  with the checkpoint's files written but not yet renamed into place;
* `interrupt`:   where `step` is, but SIGINT, as Ctrl-C in a terminal sends it.

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
    if wanted == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif point == "step" and wanted == f"interrupt:{step}":
        os.kill(os.getpid(), signal.SIGINT)
