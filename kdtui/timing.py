"""Where a run's time goes: the fixed costs (loading, tokenising, caching teacher outputs, CAP's
banks, evaluation, checkpoints, the final test, the statistics of a teacher as a source) beside
the training steps themselves.

A short run can spend more time on these than on training; measuring them per run (printed at
the end, in metrics.json and the run_finished event) shows which one to cut. And the latency of
a call (a model's forward pass), as the benchmarks measure it: `median_seconds`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

# The parts a run times by name, in the order they are reported; anything else the run did
# (importing, loading models and data, tokenising) is "other".
PARTS = ("train", "dev_eval", "checkpoint", "teacher_cache", "banks", "test", "source_stats")


class Stopwatch:
    """Seconds per named part of one run (one process's view), from its start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.totals: dict[str, float] = {}
        self.first_step_at: float | None = None

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - start)

    def add(self, part: str, seconds: float) -> None:
        self.totals[part] = self.totals.get(part, 0.0) + seconds

    def step_starts(self) -> None:
        """Called before every training step: the first call marks the end of the set-up."""
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()

    def summary(self) -> dict[str, float]:
        """{part}_s for every part timed, before_first_step_s, other_s and total_s (rounded)."""
        total = time.perf_counter() - self.started
        timed = {
            f"{p}_s": self.totals[p] for p in (*PARTS, *sorted(self.totals)) if p in self.totals
        }
        result = {
            **timed,
            "other_s": max(0.0, total - sum(self.totals.values())),
            "total_s": total,
        }
        if self.first_step_at is not None:
            result["before_first_step_s"] = self.first_step_at - self.started
        return {k: round(v, 2) for k, v in result.items()}


def estimate_seconds(earlier: list[tuple[int, dict[str, float]]], steps: int) -> float | None:
    """How long a run of STEPS training steps will take, from EARLIER runs like it on this
    machine ((steps, their timings summary) each): the median seconds per training step times
    STEPS, plus the median of their other costs. None without an earlier run to go by."""
    usable = [(n, t) for n, t in earlier if n > 0 and t.get("train_s") and t.get("total_s")]
    if not usable:
        return None
    per_step = statistics.median(t["train_s"] / n for n, t in usable)
    fixed = statistics.median(t["total_s"] - t["train_s"] for _, t in usable)
    return per_step * steps + fixed


def rotated_blocks(count: int, repeats: int, rounds: int = 3) -> list[tuple[int, int]]:
    """The blocks in which COUNT things are timed REPEATS times each: (which, how many) in the
    order to run them. Every thing gets one block a round, its share of the repeats, and the
    order rotates from round to round, so slow spells from elsewhere hit every thing alike."""
    rounds = max(1, min(rounds, repeats))
    shares = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    return [((i + r) % count, share) for r, share in enumerate(shares) for i in range(count)]


def median_seconds(
    calls: Sequence[Callable[[], object]], repeats: int, rounds: int = 3
) -> list[float]:
    """The median wall time of each of CALLS over REPEATS timed calls.

    The calls are timed in blocks (`rotated_blocks`): an untimed call, then the block's timed
    ones in a row. Timing them one after another instead let one call's after-effects land on
    the next (ONNX Runtime's worker threads, for one, spin-wait after a run by default):
    interleaved, the same PyTorch forward measured 43.8 ms in one slot and 12.9 ms in another.
    Over the rounds, slow spells from other processes still hit every call alike."""
    times: list[list[float]] = [[] for _ in calls]
    for k, share in rotated_blocks(len(calls), repeats, rounds):
        calls[k]()
        for _ in range(share):
            start = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]
