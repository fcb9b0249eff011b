"""Runs on disk, read without torch: the run browser's rows, a teacher's dev accuracy, and the
frontier of the results `kdtui evaluate` cached in the runs.

Summaries are kept up to date incrementally: each run has an `EventFollower`, so a refresh
reads only what was appended since the last one, and step records (most of a file) are not
parsed at all except the newest one of each read.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtui.dashboard.state import STALL_AFTER
from kdtui.errors import KdtuiError
from kdtui.evalcache import Cached, cached_in
from kdtui.events import Eval, RunFailed, RunFinished, RunStarted, Step, parse_event
from kdtui.frontier import mark_report
from kdtui.rundir import (
    CONFIG_FILE,
    EVENTS_FILE,
    LOCK_FILE,
    RunInfo,
    RunLayout,
    describe_contents,
    run_folders,
)
from kdtui.runlog import EventFollower

_STEP = b'{"type":"step"'
_INTERESTING = (b'{"type":"run_started"', b'{"type":"eval"', b'{"type":"run_f')


@dataclass
class RunSummary:
    path: Path
    command: str = ""
    profile: str = ""
    status: str = "waiting"  # waiting | running | stalled | finished | failed | stopped
    step: int = 0
    total_steps: int = 0
    best_accuracy: float | None = None  # best dev accuracy over all domains ("all")
    started_at: float | None = None
    last_event_at: float | None = None
    _outcome: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def progress(self) -> float | None:
        return self.step / self.total_steps if self.total_steps > 0 else None


class RunScanner:
    """Summaries of the runs in a folder (every subfolder holding an events.jsonl)."""

    def __init__(self, root: Path, *, stall_after: float = STALL_AFTER) -> None:
        self.root = root
        self.stall_after = stall_after
        self._runs: dict[Path, tuple[EventFollower, RunSummary]] = {}

    def scan(self, now: float | None = None) -> list[RunSummary]:
        """Every run, newest first; `now` decides which silent runs count as stalled."""
        now = time.time() if now is None else now
        found = run_folders(self.root)
        for gone in set(self._runs) - set(found):
            self._runs.pop(gone)[0].close()
        summaries = []
        for path in found:
            if path not in self._runs:
                follower = EventFollower(RunLayout(path).events_file)
                self._runs[path] = (follower, RunSummary(path))
            follower, summary = self._runs[path]
            summary = self._update(follower, summary, now)
            self._runs[path] = (follower, summary)
            summaries.append(summary)
        summaries.sort(key=lambda s: (s.started_at or 0.0, s.name), reverse=True)
        return summaries

    def _update(self, follower: EventFollower, summary: RunSummary, now: float) -> RunSummary:
        while True:
            lines, _, reset, at_end = follower.read_lines()
            if reset:  # the run was restarted with --force
                summary = RunSummary(summary.path)
            last_step = next((line for line in reversed(lines) if line.startswith(_STEP)), None)
            for line in lines:
                if line.startswith(_INTERESTING) or line is last_step:
                    event = parse_event(line.decode("utf-8", errors="replace"))
                    if event is not None:
                        _fold(summary, event)
            if at_end:
                break
        if summary._outcome is not None:
            summary.status = summary._outcome
        elif summary.started_at is None:
            summary.status = "waiting"
        elif summary.last_event_at is not None and now - summary.last_event_at > self.stall_after:
            summary.status = "stalled"
        else:
            summary.status = "running"
        return summary

    def close(self) -> None:
        for follower, _ in self._runs.values():
            follower.close()
        self._runs.clear()


def _fold(summary: RunSummary, event: object) -> None:
    if isinstance(event, RunStarted):
        if summary.started_at is None:
            summary.started_at = event.time
        summary.command, summary.profile = event.command, event.profile
        summary.total_steps = event.total_steps
        summary._outcome = None
    elif isinstance(event, Step):
        summary.step, summary.total_steps = event.step, event.total_steps or summary.total_steps
    elif isinstance(event, Eval):
        acc = event.accuracy.get("all")
        if acc is not None and math.isfinite(acc):
            best = summary.best_accuracy
            summary.best_accuracy = acc if best is None else max(best, acc)
    elif isinstance(event, RunFinished):
        summary._outcome = "finished"
        summary.step = max(summary.step, event.step)
    elif isinstance(event, RunFailed):
        summary._outcome = "stopped" if event.kind == "interrupted" else "failed"
    if isinstance(event, RunStarted | Step | Eval | RunFinished | RunFailed):
        last = summary.last_event_at
        summary.last_event_at = event.time if last is None else max(last, event.time)


def resolve_run_path(target: Path) -> Path:
    """The run directory a user named: the folder, or the folder of a named events.jsonl."""
    if target.is_file():
        if target.name == EVENTS_FILE:
            return target.parent
        raise KdtuiError(
            f"{target} is a file, not a run directory; give the folder that holds {EVENTS_FILE}"
        )
    return target


# What a run directory holds from its first moment (see kdtui/rundir.py): its lock and event
# log are created before anything else, config.toml right after.
RUN_FILES = (EVENTS_FILE, CONFIG_FILE, LOCK_FILE)


def is_run_folder(path: Path) -> bool:
    """A run directory, possibly one whose run has not written an event yet."""
    return any((path / name).exists() for name in RUN_FILES)


def is_runs_folder(path: Path) -> bool:
    """A folder of runs (what the browser lists) rather than one run."""
    if not path.is_dir() or is_run_folder(path):
        return False
    try:
        return any(child.is_dir() and is_run_folder(child) for child in path.iterdir())
    except OSError as e:
        raise KdtuiError(f"cannot read {path}: {e.strerror}") from None


def check_run_target(path: Path) -> None:
    """Refuse a folder that is neither a run nor a folder of runs: following it would wait for
    an events.jsonl that never comes. A path that does not exist yet, or an empty folder, is
    a run about to start and is waited for."""
    if not path.is_dir() or is_run_folder(path):
        return
    try:
        empty = not any(path.iterdir())
    except OSError as e:
        raise KdtuiError(f"cannot read {path}: {e.strerror}") from None
    if empty or is_runs_folder(path):
        return
    raise KdtuiError(
        f"{path} is not a kdtui run or a folder of runs (it holds {describe_contents(path)}); "
        f"a run folder holds {EVENTS_FILE} and {CONFIG_FILE} (as kdtui teacher, distill and prune "
        "write them, e.g. runs/teacher-20260101-120000), a folder of runs holds run folders "
        "(e.g. runs)"
    )


def teacher_accuracy(source: str, run_dir: Path) -> dict[str, float]:
    """Dev accuracy per domain of the teacher a run learns from: its best evaluation (else its
    last one) when `source` is a kdtui run directory; {} when it is a plain model or missing.

    A relative `source` is tried as given (the run was started from the same folder as the
    dashboard, the usual case) and then beside the run directory's folder."""
    candidates = [Path(source).expanduser()]
    if not candidates[0].is_absolute():
        candidates += [run_dir.parent.parent / source, run_dir.parent / source]
    for folder in candidates:
        run = RunInfo(folder)
        if not run.events_file.is_file():
            continue
        best: dict[str, float] = {}
        last: dict[str, float] = {}
        try:
            for event in run.events():
                if isinstance(event, Eval):
                    values = {
                        k: v
                        for k, v in event.accuracy.items()
                        if v is not None and math.isfinite(v)
                    }
                    last = values
                    if event.best:
                        best = values
        except OSError:
            return {}
        return best or last
    return {}


@dataclass(frozen=True)
class CachedFrontier:
    """The evaluations cached in some runs, as one report marked with its frontiers."""

    report: dict[str, Any] | None  # None: no run holds a current cached result
    runs: int = 0  # runs with a result in the report
    other_settings: int = 0  # results cached under other settings (data, split, grid), not shown


def cached_frontier(runs: list[Path]) -> CachedFrontier:
    """The results `kdtui evaluate` cached in RUNS (kdtui/evalcache.py), never evaluating
    anything: that takes torch and minutes of CPU, so it is the command's job. Results under
    different settings (another data set, split or latency grid) are not comparable; the
    settings most runs were evaluated under are shown (among equals, the latest written)."""
    found = [cached for run in runs for cached in cached_in(run)]
    if not found:
        return CachedFrontier(None)
    groups: dict[str, list[Cached]] = {}
    for cached in found:
        groups.setdefault(cached.digest, []).append(cached)
    chosen = max(
        groups.values(),
        key=lambda group: (len({c.run for c in group}), max(c.written_at for c in group)),
    )
    context = chosen[0].context
    report: dict[str, Any] = {
        "split": context.get("split", ""),
        "data": context.get("data", ""),
        "models": [{**c.result, "model": str(c.model)} for c in chosen],
    }
    mark_report(report)
    return CachedFrontier(
        report, runs=len({c.run for c in chosen}), other_settings=len(found) - len(chosen)
    )
