"""The run-state model: fold events into what the dashboard shows.

Pure Python with no Textual, no file access and no clock: callers pass `now`, so the same events
always give the same state (tests, snapshots, replay). Memory stays bounded whatever the run's
length: every series is decimated to at most `capacity` points and the event log keeps the
latest `max_log` entries.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdtui.config import renamed  # torch-free, like this module
from kdtui.errors import KdtuiError
from kdtui.events import (
    Checkpoint,
    Eval,
    Event,
    LayerSparsity,
    Message,
    RunFailed,
    RunFinished,
    RunStarted,
    Step,
)
from kdtui.layout import MATRIX_NAMES  # torch-free: path -> short name

if TYPE_CHECKING:
    from kdtui.runlog import FollowBatch

# A run with no event for this long is shown as stalled, unless it has already gone longer
# between two events (an evaluation or a teacher pass can take minutes): see `stall_threshold`.
STALL_AFTER = 120.0
# Exit codes of a process ended by SIGHUP, SIGINT or SIGTERM (128 + signal): a stop, not a crash.
STOP_EXIT_CODES = (129, 130, 143)
TOTAL_LOSS = "loss"  # the weighted sum the loop minimises, shown beside the named terms
SPARSITY_PREFIX = "sparsity/"
PRUNE_PREFIX = "prune/"
GRAD_PREFIX = "grad/"
DOMAIN_PREFIX = "domain/"
ADAM_EPS = 1e-8  # what the pruner's median score gradient is compared with (torch's default)


class Series:
    """An (x, y) series that never holds more than `capacity` points.

    Values are averaged in buckets of `stride` consecutive points; when the series is full,
    neighbouring buckets are merged pairwise and the stride doubles. A 100,000-step run keeps
    between capacity/2 and capacity points, each the mean of the steps it covers, so the chart
    still shows the whole run and its trend, and memory does not grow with the run.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.capacity = capacity
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.stride = 1
        self.count = 0  # values added, before decimation
        self.last: float | None = None
        self.last_x: float | None = None
        self._sum = 0.0
        self._n = 0

    def add(self, x: float, y: float) -> None:
        self.count += 1
        self.last, self.last_x = y, x
        self._sum += y
        self._n += 1
        if self._n >= self.stride:
            self.xs.append(x)
            self.ys.append(self._sum / self._n)
            self._sum, self._n = 0.0, 0
            if len(self.xs) >= self.capacity:
                self._halve()

    def _halve(self) -> None:
        # Both buckets of a pair hold `stride` values, so the mean of their means is exact.
        self.xs = self.xs[1::2]
        self.ys = [(a + b) / 2 for a, b in zip(self.ys[0::2], self.ys[1::2], strict=True)]
        self.stride *= 2

    def points(self) -> tuple[list[float], list[float]]:
        """Copies of the stored points, with the bucket still filling as the last point."""
        xs, ys = list(self.xs), list(self.ys)
        if self._n and self.last_x is not None:
            xs.append(self.last_x)
            ys.append(self._sum / self._n)
        return xs, ys

    def truncate(self, x: float) -> None:
        """Forget points at or after `x` (a resumed run logs those steps again)."""
        keep = next((i for i, v in enumerate(self.xs) if v >= x), len(self.xs))
        del self.xs[keep:], self.ys[keep:]
        if self.last_x is not None and self.last_x >= x:
            self._sum, self._n = 0.0, 0
            self.last_x = self.xs[-1] if self.xs else None
            self.last = self.ys[-1] if self.ys else None

    def __len__(self) -> int:
        return len(self.xs) + (1 if self._n else 0)


@dataclass
class DomainStats:
    latest: float
    best: float
    history: Series


@dataclass(frozen=True)
class LogEntry:
    time: float | None  # None: noted before any event had a time
    step: int | None
    level: str  # "info" | "warning" | "error" | "checkpoint" | "run" | "stopped"
    text: str


@dataclass
class RunState:
    """Everything the panels show, folded from a run's events in file order."""

    capacity: int = 1024
    max_log: int = 500
    stall_after: float = STALL_AFTER

    run: str = ""
    command: str = ""
    profile: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    started: bool = False
    total_steps: int = 0
    resumed_from_step: int = 0
    step: int = 0
    epoch: float = 0.0
    lr: float | None = None
    loss: float | None = None
    losses: dict[str, Series] = field(default_factory=dict)  # the total first, then named terms
    metrics: dict[str, Series] = field(default_factory=dict)
    stage_marks: list[int] = field(default_factory=list)  # steps where the logged terms changed
    domains: dict[str, DomainStats] = field(default_factory=dict)
    evals: int = 0
    best_step: int | None = None
    teacher_accuracy: dict[str, float] = field(default_factory=dict)
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    layer_sparsity_step: int | None = None
    log: deque[LogEntry] = field(default_factory=deque)
    checkpoints: int = 0
    warnings: int = 0
    errors: int = 0
    unknown: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    oversized: int = 0  # lines too long to be an event, dropped by the reader
    events: int = 0
    outcome: str | None = None  # None while going, "finished" or "failed"
    error: str = ""
    error_kind: str = ""
    final_metrics: dict[str, Any] = field(default_factory=dict)
    first_event_at: float | None = None
    last_event_at: float | None = None
    ended_at: float | None = None
    longest_gap: float = 0.0
    _session_started_at: float | None = None
    _prior_elapsed: float = 0.0
    _terms: tuple[str, ...] = ()
    _rate: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    # -- folding ---------------------------------------------------------------------------

    def apply_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.apply(event)

    def apply(self, event: Event) -> None:
        self.events += 1
        previous = self.last_event_at
        self._note_time(event)
        if isinstance(event, Step):
            self._step(event)
        elif isinstance(event, Eval):
            self._eval(event)
        elif isinstance(event, RunStarted):
            self._started(event, previous)
        elif isinstance(event, LayerSparsity):
            self.layer_sparsity = dict(event.layers)
            self.layer_sparsity_step = event.step
        elif isinstance(event, Checkpoint):
            self.checkpoints += 1
            # "periodic step-00000040", "best": the folder's name says where it went.
            name = event.path.rstrip("/").rsplit("/", 1)[-1]
            text = event.kind if name == event.kind else f"{event.kind} {name}"
            self._log(event.time, event.step, "checkpoint", text)
        elif isinstance(event, Message):
            if event.level == "warning":
                self.warnings += 1
            elif event.level == "error":
                self.errors += 1
            self._log(event.time, None, event.level, event.text)
        elif isinstance(event, RunFinished):
            self.outcome, self.ended_at = "finished", event.time
            self.step = max(self.step, event.step)
            self.final_metrics = dict(event.metrics)
            teacher = event.metrics.get("teacher")
            if isinstance(teacher, dict):
                self.teacher_accuracy = _accuracies(teacher)
            self._log(event.time, event.step, "run", "run finished")
        elif isinstance(event, RunFailed):
            self.outcome, self.ended_at = "failed", event.time
            self.error, self.error_kind = event.error, event.kind
            self._log_end(event.time, event.step, f"run failed ({event.kind}): {event.error}")
        # Other known types (histograms) are not shown; unknown ones are counted by the reader.

    def apply_batch(self, batch: FollowBatch, max_line: int) -> bool:
        """Fold one read of the event log: its events, and the lines the reader skipped (of an
        unknown type, malformed, or longer than `max_line`). True when anything changed."""
        self.apply_all(batch.events)
        if batch.unknown or batch.malformed:
            self.note_unknown(batch.unknown, batch.malformed)
        if batch.oversized:
            self.note_oversized(batch.oversized, max_line)
        return bool(batch.events or batch.unknown or batch.malformed or batch.oversized)

    def note_unknown(self, unknown: dict[str, int], malformed: int = 0) -> None:
        for kind, n in unknown.items():
            if kind not in self.unknown:
                self._log(
                    self.last_event_at,
                    None,
                    "info",
                    f"skipped unknown event type '{kind}' (from a newer kdtui?)",
                )
            self.unknown[kind] = self.unknown.get(kind, 0) + n
        self.malformed += malformed

    def note_oversized(self, lines: int, limit: int) -> None:
        """The reader dropped `lines` lines longer than `limit` bytes unread."""
        self.oversized += lines
        self.warnings += lines
        size = f"{limit / (1 << 20):g} MiB" if limit >= 1 << 20 else f"{limit:,} bytes"
        for _ in range(lines):
            self._log(
                self.last_event_at,
                None,
                "warning",
                f"skipped a line longer than {size} (events are a few kB): "
                "is this a kdtui events.jsonl?",
            )

    def process_exited(self, code: int, detail: str, now: float) -> None:
        """The launched training process is gone; unless it said how it ended, it failed."""
        if self.outcome is not None:
            return
        self.outcome, self.ended_at = "failed", self.last_event_at or now
        self.error = f"the run's process exited with code {code}" + (
            f": {detail}" if detail else ""
        )
        self.error_kind = "interrupted" if code in STOP_EXIT_CODES else "internal"
        self._log_end(now, None, self.error)

    def _log_end(self, time: float, step: int | None, failure: str) -> None:
        # A stop the user asked for (Ctrl-C, the dashboard's stop, `kill`) is not a failure:
        # the header says STOPPED, and the log must not say "run failed" beside it.
        if self.error_kind == "interrupted":
            at = f" at step {step:,}" if step else ""
            self._log(time, step, "stopped", f"run stopped{at}: {self.error}")
        else:
            self.errors += 1
            self._log(time, step, "error", failure)

    def _note_time(self, event: Event) -> None:
        if self.first_event_at is None:
            self.first_event_at = event.time
        if self.last_event_at is not None and not isinstance(event, RunStarted):
            self.longest_gap = max(self.longest_gap, event.time - self.last_event_at)
        self.last_event_at = (
            event.time if self.last_event_at is None else max(self.last_event_at, event.time)
        )

    def _started(self, event: RunStarted, previous_event_at: float | None) -> None:
        if self.started and self._session_started_at is not None:
            # A resumed run appends to the same file: count the earlier sessions' time only,
            # up to their last event (a killed process wrote no run_failed).
            end = self.ended_at if self.ended_at is not None else previous_event_at
            self._prior_elapsed += max(0.0, (end or 0.0) - self._session_started_at)
        self.started = True
        self._session_started_at = event.time
        self.run, self.command, self.profile = event.run, event.command, event.profile
        self.config = dict(event.config)
        self.total_steps = event.total_steps
        self.resumed_from_step = event.resumed_from_step
        self.outcome, self.error, self.error_kind, self.ended_at = None, "", "", None
        self._rate.clear()
        if event.resumed_from_step:
            self._rewind(event.resumed_from_step + 1)
            self._log(
                event.time,
                event.resumed_from_step,
                "run",
                f"resumed at step {event.resumed_from_step}",
            )
        else:
            self._log(event.time, 0, "run", f"{event.command} started")

    def _step(self, event: Step) -> None:
        if self.losses and event.step <= self.step:
            self._rewind(event.step)
        self.step, self.total_steps = event.step, event.total_steps or self.total_steps
        self.epoch, self.lr, self.loss = event.epoch, event.lr, event.loss
        if event.loss is not None:
            self._series(self.losses, TOTAL_LOSS).add(event.step, event.loss)
        for name, value in event.losses.items():
            if value is not None:
                self._series(self.losses, name).add(event.step, value)
        for name, value in event.metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._series(self.metrics, name).add(event.step, float(value))
        terms = tuple(event.losses)
        if self._terms and terms != self._terms:
            self.stage_marks.append(event.step)
            del self.stage_marks[:-64]
        self._terms = terms
        self._rate.append((event.time, event.step))

    def _eval(self, event: Eval) -> None:
        self.evals += 1
        for domain, acc in event.accuracy.items():
            if acc is None or not math.isfinite(acc):
                continue
            stats = self.domains.get(domain)
            if stats is None:
                stats = self.domains[domain] = DomainStats(acc, acc, Series(256))
            stats.latest, stats.best = acc, max(stats.best, acc)
            stats.history.add(event.step, acc)
        if event.best:
            self.best_step = event.step

    def _rewind(self, step: int) -> None:
        for series in (*self.losses.values(), *self.metrics.values()):
            series.truncate(step)
        self.stage_marks = [s for s in self.stage_marks if s < step]

    def _series(self, table: dict[str, Series], name: str) -> Series:
        series = table.get(name)
        if series is None:
            series = table[name] = Series(self.capacity)
        return series

    def _log(self, time: float | None, step: int | None, level: str, text: str) -> None:
        self.log.append(LogEntry(time, step, level, text))
        while len(self.log) > self.max_log:
            self.log.popleft()

    # -- derived views ---------------------------------------------------------------------

    def stall_threshold(self) -> float:
        return max(self.stall_after, 3 * self.longest_gap)

    @property
    def precision(self) -> str:
        """The precision the run trains in ("bf16", "fp32"; "" when its config does not say)."""
        train = self.config.get("train")
        if not isinstance(train, dict):
            return ""
        try:  # a run written before train.precision says train.bf16
            train = renamed({"train": train})["train"]
        except KdtuiError:  # a train.bf16 that is not true/false: the config does not say
            return ""
        return str(train.get("precision", ""))

    def status(self, now: float) -> str:
        """waiting | running | stalled | finished | failed | stopped (interrupted by the user)."""
        if self.outcome == "finished":
            return "finished"
        if self.outcome == "failed":
            return "stopped" if self.error_kind == "interrupted" else "failed"
        if not self.started:
            return "waiting"
        if self.last_event_at is not None and now - self.last_event_at > self.stall_threshold():
            return "stalled"
        return "running"

    def elapsed(self, now: float) -> float | None:
        if self._session_started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else now
        return self._prior_elapsed + max(0.0, end - self._session_started_at)

    def eta(self, now: float) -> float | None:
        """Seconds left at the pace of the recent steps (None when not running or unknown)."""
        if self.status(now) != "running" or self.total_steps <= 0 or len(self._rate) < 2:
            return None
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        if t1 <= t0 or s1 <= s0:
            return None
        return max(0.0, (self.total_steps - s1) * (t1 - t0) / (s1 - s0))

    def loss_terms(self) -> list[str]:
        return list(self.losses)

    def sparsity_series(self) -> dict[str, Series]:
        return {k: v for k, v in self.metrics.items() if k.startswith(SPARSITY_PREFIX)}

    def latest(self, prefix: str) -> dict[str, float]:
        """The latest value of every step metric named `prefix...`, by the rest of its name:
        `prune/` (the pruner's diagnostics), `grad/` (each term's gradient norm), `domain/`."""
        found = {}
        for name, series in self.metrics.items():
            if name.startswith(prefix) and series.last is not None:
                found[name.removeprefix(prefix)] = series.last
        return found

    def prune_diagnostics(self) -> dict[str, float]:
        return self.latest(PRUNE_PREFIX)

    @property
    def has_sparsity(self) -> bool:
        return bool(self.layer_sparsity) or any(k.startswith(SPARSITY_PREFIX) for k in self.metrics)

    def best_accuracy(self, domain: str = "all") -> float | None:
        stats = self.domains.get(domain)
        return stats.best if stats is not None else None

    def teacher_source(self) -> str | None:
        """The teacher run or model this run learns from, as its config names it."""
        for section, key in (("distill", "teacher"), ("prune", "model")):
            if self.command == section:
                value = self.config.get(section, {}).get(key)
                return value if isinstance(value, str) and value else None
        return None


def _accuracies(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)
    }


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard smooths), so the first
    points are not pulled towards zero."""
    out: list[float] = []
    avg = 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def thin(xs: list[float], ys: list[float], limit: int) -> tuple[list[float], list[float]]:
    """At most `limit` points: means of equal runs of consecutive points. A chart has only so
    many pixels across, and plotext's drawing time grows with the number of points."""
    n = len(xs)
    if n <= limit or limit < 1:
        return xs, ys
    size = -(-n // limit)
    out_x = [xs[min(i + size, n) - 1] for i in range(0, n, size)]
    out_y = [sum(ys[i : i + size]) / len(ys[i : i + size]) for i in range(0, n, size)]
    return out_x, out_y


_LAYER = re.compile(r"(?:^|\.)(\d+)\.(.+)$")


def layer_grid(
    layers: dict[str, float],
) -> tuple[list[int], list[str], dict[tuple[str, int], float]]:
    """Per-layer sparsity as a grid: (layer numbers, matrix names, {(matrix, layer): value}).

    Keys look like `layer.3.attention.self.query` (any prefix before the layer number is
    allowed); keys without a layer number go in layer -1."""
    grid: dict[tuple[str, int], float] = {}
    matrices: list[str] = []
    numbers: set[int] = set()
    for key, value in layers.items():
        if value is None:
            continue
        match = _LAYER.search(key)
        number, rest = (int(match.group(1)), match.group(2)) if match else (-1, key)
        matrix = MATRIX_NAMES.get(rest, rest)
        if matrix not in matrices:
            matrices.append(matrix)
        numbers.add(number)
        grid[(matrix, number)] = float(value)
    order = list(MATRIX_NAMES.values())
    matrices.sort(key=lambda m: (order.index(m) if m in order else len(order), m))
    return sorted(numbers), matrices, grid


def diagnostics_line(d: dict[str, float]) -> str:
    """One line of the pruner's diagnostics for the sparsity panel, each with what it is
    compared to: kept∩magnitude against a random mask, the score gradient against Adam's eps
    (below it, scores stop moving), the share of the mask flipped at the last step."""
    parts = []
    if "overlap_magnitude" in d:
        parts.append(
            f"kept∩magnitude {d['overlap_magnitude']:.2f} (random {d.get('overlap_random', 0):.2f})"
        )
    if "score_std" in d:
        parts.append(f"score sd {d['score_std']:.2g}")
    if "grad_median" in d:
        flag = " < eps!" if d["grad_median"] < ADAM_EPS else ""
        parts.append(f"|∂L/∂S| {d['grad_median']:.1e}{flag}")
    if "flipped" in d:
        parts.append(f"flipped {100 * d['flipped']:.2f}%")
    if "threshold" in d:
        parts.append(f"τ {d['threshold']:.3f}")
    return " · ".join(parts)


def domain_line(d: dict[str, float]) -> str:
    """The meta-teacher's domain game in a few words: the head's accuracy on the true and on the
    corrupted domain labels, and the adversarial loss against its chance value."""
    if "acc_true" not in d:
        return ""
    line = f"domain head: true {100 * d['acc_true']:.0f}% · corrupted "
    line += f"{100 * d.get('acc_corrupted', 0):.0f}%"
    if "adv_chance" in d:
        line += f" · chance {d['adv_chance']:.2f}"
    return line
