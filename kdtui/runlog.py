"""The run's `events.jsonl`: an append-only sink and a reader (no torch, the dashboard uses it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kdtui.events import Event, parse_event

EVENTS_FILE = "events.jsonl"


class EventSink:
    """Appends events to a file, one line each, flushed per line so followers see them at once.

    Only the main process of a multi-process run writes; the others get a sink with `path=None`
    that drops everything, so the engine can log unconditionally.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._repair_partial_line(path)

    def _repair_partial_line(self, path: Path) -> None:
        # A process killed mid-write can leave a line without its newline; start ours on a
        # fresh line so the next record is not glued onto the broken one.
        if path.stat().st_size == 0:
            return
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                assert self._file is not None
                self._file.write("\n")
                self._file.flush()

    def write(self, event: Event) -> None:
        if self._file is None:
            return
        self._file.write(event.to_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: Path) -> Iterator[Event]:
    """All complete, known events of a file (a partial last line or garbage is skipped)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            event = parse_event(line)
            if event is not None:
                yield event
