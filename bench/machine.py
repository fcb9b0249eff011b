"""The machine a benchmark runs on: cores it may use, whether something else already loads them,
and each run's wall and CPU time.

Every benchmark script calls `claim_cores(jobs, threads)` first: jobs x threads above the core
count is refused (two runs on two cores plus a test suite made runs 4-30x slower than alone),
and a machine that is already busy is reported before the first run, so a table's wall times are
not silently those of a shared machine. `run_timed` runs one child process and returns its wall
and CPU seconds, so a table can say how much of its elapsed time was computing.

Run a benchmark alone; anything beside it (tests, an editor's linter) under `nice -n 19`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Share of one core that other processes may use before the start-up warning: an idle machine
# shows 1-3% here (the shell, the kernel's own threads).
BUSY_WARNING = 0.2


def cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_busy(seconds: float = 1.0) -> float:
    """Cores' worth of CPU time the whole machine used over SECONDS (from /proc/stat), minus
    this process's own; NaN where /proc/stat is not there."""

    def sample() -> tuple[float, float] | None:
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
        except OSError:
            return None
        ticks = [float(x) for x in first[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)
        return sum(ticks) - idle, sum(ticks)

    own_start = time.process_time()
    before = sample()
    time.sleep(seconds)
    after = sample()
    own = time.process_time() - own_start
    if before is None or after is None:
        return float("nan")
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    busy = (after[0] - before[0]) / ticks_per_s - own
    return max(0.0, busy / seconds)


def claim_cores(jobs: int, threads: int) -> None:
    """Refuse JOBS x THREADS above the core count; warn when the machine is already busy."""
    available = cores()
    if jobs < 1 or threads < 1:
        sys.exit(f"--jobs and threads must be at least 1 (got jobs {jobs}, threads {threads})")
    if jobs * threads > available:
        sys.exit(
            f"{jobs} job(s) x {threads} thread(s) = {jobs * threads} threads on {available} "
            f"core(s): lower --jobs or the threads per run so that jobs x threads <= {available}"
        )
    busy = cpu_busy()
    if busy > BUSY_WARNING:
        print(
            f"warning: other processes already use {busy:.1f} of {available} cores; this "
            "benchmark's times will be slower than alone (run it alone, and anything beside it "
            "under `nice -n 19`)",
            file=sys.stderr,
        )


@dataclass(frozen=True)
class Timed:
    returncode: int
    wall_s: float
    cpu_s: float  # user + system time of the child and its children


def run_timed(command: Sequence[str], *, log: Path, env: dict[str, str] | None = None) -> Timed:
    """Run COMMAND with its output appended to LOG; its wall and CPU seconds (the child's own
    rusage from wait4, so several jobs at once from threads each get their own figure)."""
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        child = subprocess.Popen(
            list(command), stdout=f, stderr=subprocess.STDOUT, env=env or dict(os.environ)
        )
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    wall = time.perf_counter() - start
    return Timed(child.returncode, wall, usage.ru_utime + usage.ru_stime)


CPU_FILE = "cpu_s"  # in a benchmark's run folder: CPU seconds summed over its attempts


def add_cpu_seconds(run: Path, seconds: float) -> None:
    """Add SECONDS to the CPU time recorded in RUN (a resumed run's attempts add up)."""
    if run.is_dir():
        (run / CPU_FILE).write_text(f"{cpu_seconds(run) + seconds}\n")


def cpu_seconds(run: Path) -> float:
    try:
        return float((run / CPU_FILE).read_text())
    except (OSError, ValueError):
        return 0.0


def cpu_share(records: Sequence[dict], threads: int) -> str:
    """'CPU 5.1 h of 5.6 h wall x 1 thread(s) (91% computing)' over records with wall_s and
    cpu_s: how much of the runs' time their threads were busy."""
    wall = sum(r["wall_s"] for r in records)
    cpu = sum(r["cpu_s"] for r in records)
    return (
        f"CPU time {cpu / 3600:.2f} h over {len(records)} runs with CPU on record, against "
        f"{wall / 3600:.2f} h wall x {threads} thread(s) ({100 * cpu / (wall * threads):.0f}% "
        "of the threads' time computing)."
    )
