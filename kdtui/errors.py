"""The project's one exception type.

Everything a user can cause (a bad profile, a missing file, an unknown domain) raises
`KdtuiError` with a message that names what is wrong. The CLI turns it into one line on stderr
and exit code 2; anything else is an internal error (exit code 1). A run stopped by a signal
raises `Interrupted` (exit code 128 + the signal's number).
"""

from __future__ import annotations

import signal
from pathlib import Path


class KdtuiError(Exception):
    """A problem with the user's input or environment, explained in the message."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal: Ctrl-C (SIGINT), SIGTERM (`kill`, schedulers, container
    stops) or SIGHUP (the terminal went away). The run kept its last checkpoint and can be
    resumed; `run` and `command` are filled in once the run directory is known."""

    def __init__(self, signum: int, run: Path | None = None, command: str = "") -> None:
        super().__init__(signum)
        self.signum = signum
        self.run = run
        self.command = command

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal

    @property
    def signal_name(self) -> str:
        name = signal.Signals(self.signum).name
        return "Ctrl-C (SIGINT)" if self.signum == signal.SIGINT else name

    def message(self) -> str:
        if self.run is None:
            return f"interrupted by {self.signal_name}"
        return (
            f"interrupted by {self.signal_name}: the last checkpoint of {self.run} is kept; "
            f"continue with: kdtui {self.command} --resume {self.run}"
        )
