"""The run directory: the unit a user keeps.

    RUN/config.toml     the fully resolved config (a profile: `--profile RUN/config.toml` reruns it)
    RUN/events.jsonl    append-only event log (the dashboard's only input)
    RUN/checkpoints/    atomic checkpoints for --resume
    RUN/best/           the best weights so far (by dev accuracy)
    RUN/model/          the final model in Hugging Face layout
    RUN/metrics.json    the final summary

Only the main process writes; other processes get a RunDir whose writes are no-ops.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdtui.errors import KdtuiError
from kdtui.events import Event
from kdtui.runlog import EVENTS_FILE, EventSink

Listener = Callable[[Event], None]


def default_run_name(command: str) -> str:
    return f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_new_run_path(path: Path, *, force: bool) -> None:
    """Refuse to overwrite a run unless asked to (`--force`); `--resume` is the other way."""
    if path.exists() and not path.is_dir():
        raise KdtuiError(f"output path {path} exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise KdtuiError(f"cannot create {path}: {parent} is a file, not a directory")
            break
    if path.is_dir() and any(path.iterdir()) and not force:
        raise KdtuiError(
            f"{path} already holds a run; use --resume {path} to continue it, "
            "--force to replace it, or choose another --name"
        )


def latest_finished_run(root: Path, command: str) -> Path | None:
    """The most recently finished run of `command` under `root` (by metrics.json time)."""
    import json

    candidates = []
    for metrics in root.glob("*/metrics.json"):
        run = metrics.parent
        try:
            first = json.loads((run / EVENTS_FILE).open(encoding="utf-8").readline())
        except (OSError, ValueError):
            continue
        if first.get("type") == "run_started" and first.get("command") == command:
            candidates.append((metrics.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None


class RunDir:
    def __init__(self, path: Path, *, is_main: bool = True) -> None:
        self.path = path
        self.is_main = is_main
        self.listeners: list[Listener] = []
        self._sink: EventSink | None = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def events_file(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def _replaced(self) -> Path:
        return self.path.with_name(f".{self.path.name}.replaced")

    def open(self, *, fresh: bool) -> None:
        """Create (or reopen, on resume) the directory and its event log. A run that `--force`
        replaces is moved aside, not deleted, until training starts (`keep`): a mistake found
        while loading data or models gives it back (`discard`)."""
        if self.is_main:
            try:
                if fresh and self.path.exists():  # only reached with --force (checked before)
                    shutil.rmtree(self._replaced, ignore_errors=True)
                    self.path.rename(self._replaced)
                self.path.mkdir(parents=True, exist_ok=True)
                self._sink = EventSink(self.events_file)
            except OSError as e:
                raise KdtuiError(
                    f"cannot write the run directory {self.path}: {e.strerror}"
                ) from None

    def write_text(self, name: str, text: str) -> None:
        if self.is_main:
            tmp = self.path / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.path / name)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.is_main:
            from kdtui.checkpoint import write_json_atomic  # torch: keep it off the dashboard path

            write_json_atomic(self.path / "metrics.json", metrics)

    def log(self, event: Event) -> None:
        if not self.is_main:
            return
        if self._sink is not None:
            self._sink.write(event)
        for listener in self.listeners:
            listener(event)

    def keep(self) -> None:
        """Training starts: this run is the one to keep, and a run it replaces goes."""
        if self.is_main:
            shutil.rmtree(self._replaced, ignore_errors=True)

    def discard(self) -> None:
        """Remove a run directory this process created and nothing else depends on, and put
        back the run it was to replace, if any."""
        self.close()
        if self.is_main:
            shutil.rmtree(self.path, ignore_errors=True)
            if self._replaced.exists():
                self._replaced.rename(self.path)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
