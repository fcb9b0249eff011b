"""The dashboard without a terminal: `kdtui dashboard RUN > file` (or in a pipe, cron, CI) prints
a plain-text summary of the run as it stands and exits, instead of drawing escape codes into the
file and following the run forever. A folder of runs gives one line per run.

Only the standard library, the state model and the run scanner: no Textual.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kdtui.dashboard import fmt
from kdtui.dashboard.runs import RunScanner
from kdtui.dashboard.state import RunState
from kdtui.rundir import CONFIG_FILE, EVENTS_FILE, LOCK_FILE, RunInfo, lock_holder
from kdtui.runlog import MAX_LINE, EventFollower

LAST_EVENTS = 5


def has_terminal() -> bool:
    """Whether the interactive dashboard can run: it reads keys from stdin and draws on the
    terminal, so all three streams must be one."""
    return all(stream.isatty() for stream in (sys.stdin, sys.stdout, sys.stderr))


def read_state(run_dir: Path) -> RunState:
    """Every event written so far, folded (as the live view would show it now)."""
    state = RunState()
    follower = EventFollower(run_dir / EVENTS_FILE, max_line=MAX_LINE)
    try:
        while True:
            batch = follower.poll()
            state.apply_batch(batch, MAX_LINE)
            if batch.at_end:
                return state
    finally:
        follower.close()


def run_summary(run_dir: Path, now: float | None = None) -> str:
    """One run in a few lines: status, progress, losses, accuracy, sparsity, the last events."""
    now = time.time() if now is None else now
    state = read_state(run_dir)
    status = state.status(now)
    # Events alone say "running" until a dead run's silence passes the stall threshold; the
    # disk knows at once: a run is written only while its writer holds RUN/.lock.
    dead = status in ("running", "stalled") and not has_writer(run_dir)
    if dead:
        status = "stopped"
    lines = [f"run       {state.run or run_dir.name} ({run_dir})"]
    if not state.started:
        where = run_dir / EVENTS_FILE
        if killed_before_start(run_dir):
            command = RunInfo(run_dir).command() or "COMMAND"
            lines.append(
                "status    stopped before training began: no process is writing it; continue "
                f"it with: kdtui {command} --resume {run_dir}"
            )
        else:
            lines.append(f"status    {status}: no run has started in {where} yet")
    else:
        lines.append(
            f"command   {state.command}  profile {state.profile or '-'}  "
            f"precision {state.precision or '-'}"
        )
        total = max(state.total_steps, 1)
        progress = f"step {state.step:,}/{state.total_steps:,} ({100 * state.step / total:.1f}%)"
        # A dead run's clock stopped at its last event.
        ended = state.last_event_at if dead and state.last_event_at is not None else now
        timing = f"elapsed {fmt.duration(state.elapsed(ended))}"
        eta = None if dead else state.eta(now)
        if eta is not None:
            timing += f"  eta {fmt.duration(eta)}"
        lines.append(f"status    {status}  {progress}  {timing}")
    if state.error:
        lines.append(f"{status:<9} {state.error}")
    elif dead:
        lines.append(
            f"{status:<9} no process is writing it: it was killed before it could log why; "
            f"continue it with: kdtui {state.command} --resume {run_dir}"
        )
    if state.losses:
        terms = [f"{name} {fmt.short(s.last)}" for name, s in state.losses.items()]
        lines.append("losses    " + "  ".join(terms))
    if state.domains:
        cells = [f"{d} {fmt.percent(s.latest)}" for d, s in sorted(state.domains.items())]
        overall = state.domains.get("all")
        if overall is not None:  # the average the run selects on goes first, with its best
            cells.remove(f"all {fmt.percent(overall.latest)}")
            cells.insert(0, f"all {fmt.percent(overall.latest)} (best {fmt.percent(overall.best)})")
        lines.append(f"accuracy  {'  '.join(cells)}  (dev %, {_count(state.evals, 'eval')})")
    sparsity = {k: s.last for k, s in state.sparsity_series().items() if s.last is not None}
    if sparsity:
        cells = [f"{k.removeprefix('sparsity/')} {100 * v:.1f}%" for k, v in sparsity.items()]
        lines.append("sparsity  " + "  ".join(cells))
    skipped = state.malformed + state.oversized + sum(state.unknown.values())
    if state.events or skipped:
        counts = [_count(state.checkpoints, "checkpoint"), _count(state.warnings, "warning")]
        if skipped:
            counts.append(_count(skipped, "line") + " skipped (not events)")
        lines.append(f"events    {', '.join(counts)}")
    for entry in list(state.log)[-LAST_EVENTS:]:
        at = f"step {entry.step:,} " if entry.level == "checkpoint" and entry.step else ""
        lines.append(f"  {fmt.clock(entry.time):>8} {entry.level:<10} {at}{entry.text}")
    return "\n".join(lines)


def has_writer(run_dir: Path) -> bool:
    """Whether a live process writes the run (holds its lock). A lock file this user cannot
    open (another user's run) is taken to have one: it cannot be asked."""
    lock = run_dir / LOCK_FILE
    if not lock.exists():
        return False
    if not os.access(lock, os.R_OK | os.W_OK):
        return True
    return lock_holder(run_dir) is not None


def killed_before_start(run_dir: Path) -> bool:
    """A run that wrote its config.toml (with its lock held) but no run_started, and that no
    process writes now: killed while it loaded data or models. Without a config.toml the
    folder may be a run that is about to start."""
    return (run_dir / CONFIG_FILE).is_file() and not has_writer(run_dir)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def runs_summary(root: Path, now: float | None = None) -> str:
    """The run browser as text: one line per run, newest first."""
    now = time.time() if now is None else now
    scanner = RunScanner(root)
    try:
        summaries = scanner.scan(now=now)
    finally:
        scanner.close()
    if not summaries:
        return f"no runs in {root}"
    rows = [("run", "command", "status", "progress", "best acc", "started")]
    for s in summaries:
        if s.status in ("running", "stalled") and not has_writer(s.path):
            s.status = "stopped"  # killed: see run_summary
        elif s.status == "waiting" and killed_before_start(s.path):
            s.status = "stopped"
            s.command = s.command or RunInfo(s.path).command() or ""
        progress = "-"
        if s.progress is not None:
            progress = f"{s.step:,}/{s.total_steps:,} {100 * min(s.progress, 1.0):.0f}%"
        started = fmt.date_time(s.started_at)
        rows.append(
            (s.name, s.command or "-", s.status, progress, fmt.percent(s.best_accuracy), started)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
