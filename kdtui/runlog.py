"""The run's `events.jsonl`: an append-only sink, a reader and a follower (no torch: the
dashboard uses it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kdtui.events import Event, parse_event, parse_line

# Bytes: a longer line is not an event (the largest are a few kB); followers drop it.
MAX_LINE = 1 << 20


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


@dataclass
class FollowBatch:
    """What one `EventFollower.poll()` found since the previous poll."""

    events: list[Event] = field(default_factory=list)
    unknown: dict[str, int] = field(default_factory=dict)  # event type -> lines skipped
    malformed: int = 0  # complete lines that are not a valid event record
    oversized: int = 0  # lines longer than the follower's `max_line`, dropped unread
    exists: bool = False  # the file is there (a run may not have started writing yet)
    reset: bool = False  # the file was replaced or truncated: start over from `events`
    at_end: bool = True  # nothing more to read right now (callers may sleep)


class EventFollower:
    """`tail -f` for an events file, independent of any UI: call `poll()` as often as you like.

    Each poll reads what was appended since the last one (at most `max_bytes`, so a huge file is
    consumed in slices and a caller stays responsive), parses the complete lines, and keeps a
    partial last line until its newline arrives. A line longer than `max_line` is dropped and
    counted in `oversized` (events are a few kB at most; a file with no newline at all, or not
    an event log, must not be buffered without end). A missing file is not an error (the run has
    not started yet). A file that is replaced (a run restarted with --force) or shrinks is read
    again from its start, with `reset` set so the caller drops what it folded so far.
    """

    def __init__(self, path: Path, *, max_bytes: int = 1 << 20, max_line: int = MAX_LINE) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_line = max_line
        self.oversized = 0  # lines dropped for their length, ever (poll() reports the new ones)
        self._file: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None
        self._partial = b""
        self._skipping = False  # inside a dropped line: discard up to its newline

    def read_lines(self) -> tuple[list[bytes], bool, bool, bool]:
        """Complete raw lines since the last call: (lines, exists, reset, at_end)."""
        reset = False
        try:
            stat = os.stat(self.path)
        except OSError:
            if self._file is not None:
                self._close()
                reset = True
            return [], False, reset, True
        identity = (stat.st_dev, stat.st_ino)
        if self._file is not None and (
            identity != self._identity or stat.st_size < self._file.tell()
        ):
            self._close()
            reset = True
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - kept open between polls
            except OSError:
                return [], False, reset, True
            self._identity = identity
            self._partial = b""
        chunk = self._file.read(self.max_bytes)
        at_end = len(chunk) < self.max_bytes
        if not chunk:
            return [], True, reset, at_end
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                return [], True, reset, at_end
            chunk, self._skipping = chunk[end + 1 :], False
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self.max_line:
            self._partial, self._skipping = b"", True
            self.oversized += 1
        if any(len(line) > self.max_line for line in lines):
            kept = [line for line in lines if len(line) <= self.max_line]
            self.oversized += len(lines) - len(kept)
            lines = kept
        return lines, True, reset, at_end

    def poll(self) -> FollowBatch:
        oversized = self.oversized
        lines, exists, reset, at_end = self.read_lines()
        batch = FollowBatch(
            exists=exists, reset=reset, at_end=at_end, oversized=self.oversized - oversized
        )
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            event, unknown = parse_line(line)
            if event is not None:
                batch.events.append(event)
            elif unknown is not None:
                batch.unknown[unknown] = batch.unknown.get(unknown, 0) + 1
            elif line.strip():
                batch.malformed += 1
        return batch

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._identity = None
        self._partial = b""
        self._skipping = False

    def close(self) -> None:
        self._close()
