"""Typed event records and their JSON-lines form.

The run directory's `events.jsonl` is the only channel from training to any UI: one JSON object
per line, each with a `type` and a wall-clock `time` (seconds since the epoch). This module is
pure Python (no torch) so the dashboard can import it.

Event types and fields (all floats are plain numbers, never NaN in the file):

* run_started:   run, command, profile, total_steps, config (the resolved config as a dict),
                 resumed_from_step (0 for a fresh run)
* step:          step, total_steps, epoch, lr, loss (the weighted sum), losses {term: value,
                 unweighted}, metrics {name: value} (e.g. sparsity/target, sparsity/actual)
* eval:          step, split, accuracy {domain: acc, ..., "all": acc}, loss, best (bool)
* layer_sparsity: step, layers {"layer.0.attention.self.query": fraction_zero, ...}
* histogram:     name, domain, edges [n+1 floats], counts [n ints]
* checkpoint:    step, path, kind ("periodic" | "best" | "final")
* message:       level ("info" | "note" | "warning" | "error"), text; a note is a fact the user
                 must hear (a choice made for them), shown on the terminal like a warning;
                 info is for the log and the dashboard only
* run_finished:  step, metrics {name: value}
* run_failed:    step, error (one line), kind ("user" | "internal" | "interrupted")
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_json(self) -> str:
        record = {"type": self.type, **asdict(self)}
        return json.dumps(_finite(record), separators=(",", ":"), sort_keys=False)


@dataclass(frozen=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    run: str
    command: str
    profile: str
    total_steps: int
    config: dict[str, Any]
    resumed_from_step: int = 0


@dataclass(frozen=True)
class Step(Event):
    type: ClassVar[str] = "step"
    step: int
    total_steps: int
    epoch: float
    lr: float
    loss: float
    losses: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Eval(Event):
    type: ClassVar[str] = "eval"
    step: int
    split: str
    accuracy: dict[str, float]
    loss: float | None = None
    best: bool = False


@dataclass(frozen=True)
class LayerSparsity(Event):
    type: ClassVar[str] = "layer_sparsity"
    step: int
    layers: dict[str, float]


@dataclass(frozen=True)
class Histogram(Event):
    type: ClassVar[str] = "histogram"
    name: str
    domain: str
    edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class Checkpoint(Event):
    type: ClassVar[str] = "checkpoint"
    step: int
    path: str
    kind: str = "periodic"


@dataclass(frozen=True)
class Message(Event):
    type: ClassVar[str] = "message"
    level: str
    text: str


@dataclass(frozen=True)
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    step: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class RunFailed(Event):
    type: ClassVar[str] = "run_failed"
    step: int
    error: str
    kind: str = "internal"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted,
        Step,
        Eval,
        LayerSparsity,
        Histogram,
        Checkpoint,
        Message,
        RunFinished,
        RunFailed,
    )
}


def parse_event(line: str) -> Event | None:
    """Parse one JSON line; None for blank, malformed or unknown records (callers count them)."""
    return parse_line(line)[0]


def parse_line(line: str) -> tuple[Event | None, str | None]:
    """One line of an event log, parsed once: (its event, None); (None, its type) for a
    well-formed record of a type this version does not know (a newer engine's event, which
    readers count apart from garbage); (None, None) for a blank or malformed line."""
    record = parse_record(line)
    if record is None:
        return None, None
    kind = record["type"]
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        return None, kind
    try:
        return cls(**{k: v for k, v in record.items() if k != "type"}), None
    except TypeError:
        return None, None  # a known type with fields it does not have


def parse_record(line: str) -> dict[str, Any] | None:
    """The record of one line as written (a JSON object with a string `type`), None for a
    blank or malformed line. For readers that want a field whatever its event's version."""
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        return None
    return record


def _finite(value: Any) -> Any:
    """JSON has no NaN/Inf; write them as null so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
