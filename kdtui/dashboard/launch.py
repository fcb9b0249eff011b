"""`--dashboard`: start a training command in a child process and follow it in the dashboard.

The child is `python -m kdtui COMMAND ... --quiet` in its own session, so Ctrl-C in the terminal
and a closed terminal window do not reach it: quitting the dashboard asks whether to stop the
run (SIGINT, as Ctrl-C would: it finishes its step, writes a checkpoint and stops) or to keep it
going in the background. Its output goes to RUNS/.NAME.log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from kdtui.dashboard import plain
from kdtui.dashboard.app import create_app
from kdtui.dashboard.widgets.stop_run_screen import KEEP, STOP
from kdtui.errors import KdtuiError


class ChildRun:
    """The training process, as the dashboard sees it (implements run_screen.RunProcess)."""

    def __init__(self, popen: subprocess.Popen[bytes], name: str, log_path: Path) -> None:
        self.popen = popen
        self.name = name
        self.log_path = log_path

    @classmethod
    def start(cls, argv: list[str], run_dir: Path, profile_text: str = "") -> ChildRun:
        """Start `kdtui ARGV`; PROFILE_TEXT, if given, is first written to
        `resolved_profile(run_dir)` (ARGV names it), beside the child's log."""
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        if profile_text:
            path = resolved_profile(run_dir)
            try:
                path.write_text(profile_text, encoding="utf-8")
            except OSError as e:
                raise KdtuiError(f"cannot write {path}: {e.strerror}") from None
        log_path = run_dir.parent / f".{run_dir.name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "kdtui", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return cls(popen, run_dir.name, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)

    def wait(self) -> int:
        return self.popen.wait()

    def output_tail(self, lines: int = 5) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def last_line(self) -> str:
        tail = self.output_tail(1)
        return tail[0] if tail else ""


def resolved_profile(run_dir: Path) -> Path:
    """Where `--dashboard` writes the config its child runs: beside the child's log."""
    return run_dir.parent / f".{run_dir.name}.toml"


def launch_and_follow(argv: list[str], run_dir: Path, profile_text: str = "") -> int:
    """Start `kdtui ARGV` (which writes `run_dir`; PROFILE_TEXT as `ChildRun.start` takes it),
    follow it, and return the exit code."""
    if not plain.has_terminal():
        # Checked before the child starts: without a terminal nobody could stop or keep it.
        raise KdtuiError(
            "the dashboard needs a terminal (stdin, stdout and stderr are not all one); "
            f"start the run without it (kdtui {argv[0]} ... without --dashboard) and look at "
            f"it with: kdtui dashboard {run_dir}"
        )
    child = ChildRun.start(argv, run_dir, profile_text)
    choice = create_app(run_dir, runs_root=run_dir.parent, process=child).run()
    return after_dashboard(child, choice, run_dir)


def after_dashboard(child: ChildRun, choice: str | None, run_dir: Path) -> int:
    """What happens to the run once the dashboard is closed; returns the exit code."""
    if child.poll() is None and choice != STOP:
        # KEEP, or the dashboard ended some other way: the run is not ours to end silently.
        if choice != KEEP:
            print("the dashboard closed while the run was going", file=sys.stderr)
        print(
            f"the run goes on in the background (pid {child.pid}, output in {child.log_path})\n"
            f"follow it:  kdtui dashboard {run_dir}"
        )
        return 0
    if child.poll() is None:
        print("stopping the run: it finishes its step and writes a checkpoint …", file=sys.stderr)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        child.stop()  # a second SIGINT: the run stops at once
        code = child.wait()
    if code != 0:
        for line in child.output_tail():
            print(line, file=sys.stderr)
    print(f"run: {run_dir}")
    return code
