"""Recorded-style events.jsonl files of each kind of run, for the dashboard tests.

Deterministic: times start at T0 and advance a fixed amount per step, and every number comes from
a formula, so the tests can state the values a panel must show. Each writer returns the run
directory; the events are the engine's own records (kdtui.events), written as the engine does.
"""

from __future__ import annotations

import math
from pathlib import Path

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
from kdtui.layout import BERT

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
DOMAINS = ("books", "dvd", "electronics", "kitchen")
LAYER_MATRICES = tuple(BERT.matrices().values())


def write(run: Path, events: list[Event]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "events.jsonl", "w", encoding="utf-8") as f:
        for event in events:
            f.write(event.to_json() + "\n")
    return run


def accuracy(step: int, total: int, offset: float = 0.0) -> dict[str, float]:
    """Per-domain dev accuracy rising with training; 'all' is their mean."""
    acc = {
        d: round(0.5 + 0.35 * step / total + 0.02 * i - offset, 4) for i, d in enumerate(DOMAINS)
    }
    acc["all"] = round(sum(acc.values()) / len(acc), 4)
    return acc


def started(command: str, total: int, config: dict | None = None, t: float = T0) -> RunStarted:
    return RunStarted(
        run=f"{command}-fixture",
        command=command,
        profile="smoke",
        total_steps=total,
        config=config or {"train": {"max_steps": total}},
        time=t,
    )


def teacher_events(total: int = 40, eval_every: int = 10, dt: float = 0.5) -> list[Event]:
    events: list[Event] = [started("teacher", total)]
    for s in range(1, total + 1):
        t = T0 + s * dt
        ce = 0.7 * math.exp(-s / 15) + 0.05
        events.append(
            Step(
                step=s, total_steps=total, epoch=s / 20, lr=1e-3, loss=ce, losses={"ce": ce}, time=t
            )
        )
        if s % eval_every == 0:
            events.append(Eval(step=s, split="dev", accuracy=accuracy(s, total), best=True, time=t))
            events.append(
                Checkpoint(step=s, path=f"checkpoints/step-{s:08d}", kind="periodic", time=t)
            )
    end = T0 + total * dt + 1
    events.append(
        RunFinished(step=total, metrics={"best_dev": accuracy(total, total)["all"]}, time=end)
    )
    return events


def write_teacher(run: Path, **kwargs: float) -> Path:
    return write(run, teacher_events(**kwargs))  # type: ignore[arg-type]


def write_distill(run: Path, teacher: str = "", total: int = 40) -> Path:
    """Two stages: intermediate terms (hidden, attn, domain) then prediction (soft_ce)."""
    config = {"distill": {"teacher": teacher, "domain": "books"}}
    events: list[Event] = [started("distill", total, config)]
    events.append(Message(level="info", text="distilling a student for domain books", time=T0))
    for s in range(1, total + 1):
        t = T0 + s * 0.25
        if s <= total // 2:
            terms = {"hidden": 2.0 / s, "attn": 1.0 / s, "domain": 0.5 / s}
        else:
            terms = {"soft_ce": 0.6 * math.exp(-(s - total // 2) / 8) + 0.1}
        events.append(
            Step(
                step=s,
                total_steps=total,
                epoch=s / 20,
                lr=5e-4,
                loss=sum(terms.values()),
                losses=terms,
                time=t,
            )
        )
        if s % 10 == 0:
            events.append(
                Eval(
                    step=s,
                    split="dev",
                    accuracy=accuracy(s, total, offset=0.05),
                    best=s == total,
                    time=t,
                )
            )
    events.append(
        Message(
            level="warning",
            text="the teacher was trained on other data; using t_i = 0",
            time=T0 + total * 0.25,
        )
    )
    events.append(RunFinished(step=total, metrics={}, time=T0 + total * 0.25 + 1))
    return write(run, events)


def write_prune(run: Path, total: int = 60, layers: int = 6, target: float = 0.9) -> Path:
    """Unstructured pruning: cubic target schedule, actual trailing it, per-layer zeros."""
    events: list[Event] = [started("prune", total, {"prune": {"model": "", "sparsity": target}})]
    for s in range(1, total + 1):
        t = T0 + s * 0.5
        progress = min(1.0, s / (total * 0.8))
        tgt = target * (1 - (1 - progress) ** 3)
        terms = {"ce": 0.3 + 0.1 * tgt, "kd": 0.2, "prc_unsup": 1.5 - tgt, "fic_sup": 1.0}
        events.append(
            Step(
                step=s,
                total_steps=total,
                epoch=s / 30,
                lr=1e-4,
                loss=sum(terms.values()),
                losses=terms,
                metrics={"sparsity/target": round(tgt, 4), "sparsity/actual": round(tgt * 0.98, 4)},
                time=t,
            )
        )
        if s % 20 == 0:
            events.append(
                Eval(
                    step=s,
                    split="dev",
                    accuracy=accuracy(s, total, offset=0.1),
                    best=s == total,
                    time=t,
                )
            )
    per_layer = {
        f"layer.{n}.{m}": round(target - 0.02 * n + 0.01 * i, 4)
        for n in range(layers)
        for i, m in enumerate(LAYER_MATRICES)
    }
    events.append(LayerSparsity(step=total, layers=per_layer, time=T0 + total * 0.5))
    events.append(RunFinished(step=total, metrics={"sparsity": target}, time=T0 + total * 0.5 + 1))
    return write(run, events)


CAP_TERMS = ("ce", "kd", "l1", "prc_unsup", "prc_sup", "fic_unsup", "fic_sup", "snc_unsup")


def write_cap_prune(run: Path, total: int = 60) -> Path:
    """A CAP prune run as the engine logs it: many loss terms, each with a gradient norm at
    evaluation steps (a legend that wrapped onto four lines at 80x24)."""
    events: list[Event] = [started("prune", total, {"prune": {"model": "", "sparsity": 0.9}})]
    for s in range(1, total + 1):
        t = T0 + s * 0.5
        terms = {name: round(1.0 / (i + 1) + 2.0 / s, 4) for i, name in enumerate(CAP_TERMS)}
        metrics = {"sparsity/target": round(0.9 * s / total, 4)}
        metrics["sparsity/actual"] = round(0.88 * s / total, 4)
        if s % 20 == 0:
            metrics |= {f"grad/{name}": round(0.01 * (i + 1), 4) for i, name in enumerate(terms)}
            events.append(Eval(step=s, split="dev", accuracy=accuracy(s, total), time=t))
        events.append(
            Step(
                step=s,
                total_steps=total,
                epoch=s / 30,
                lr=1e-4,
                loss=round(sum(terms.values()), 4),
                losses=terms,
                metrics=metrics,
                time=t,
            )
        )
    per_layer = {
        f"layer.{n}.{m}": round(0.88 + 0.002 * (n + i), 4)
        for n in range(12)
        for i, m in enumerate(LAYER_MATRICES)
    }
    events.append(LayerSparsity(step=total, layers=per_layer, time=T0 + total * 0.5))
    events.append(RunFinished(step=total, metrics={"sparsity": 0.9}, time=T0 + total * 0.5 + 1))
    return write(run, events)


def write_failed(run: Path, total: int = 40, at: int = 17) -> Path:
    events = teacher_events(total)
    kept = [e for e in events if getattr(e, "step", 0) <= at and not isinstance(e, RunFinished)]
    kept.append(Message(level="warning", text="loss spike at step 16", time=T0 + at * 0.5))
    kept.append(
        RunFailed(
            step=at,
            error="RuntimeError: CUDA out of memory (fixture)",
            kind="internal",
            time=T0 + at * 0.5 + 0.1,
        )
    )
    return write(run, kept)


STOP_ERROR = "interrupted by Ctrl-C (SIGINT); resume with --resume"  # what the engine writes


def write_stopped(run: Path, total: int = 40, at: int = 17) -> Path:
    """Stopped by the user (Ctrl-C, or the dashboard's stop) at step `at`."""
    events = teacher_events(total)
    kept = [e for e in events if getattr(e, "step", 0) <= at and not isinstance(e, RunFinished)]
    kept.append(RunFailed(step=at, error=STOP_ERROR, kind="interrupted", time=T0 + at * 0.5))
    return write(run, kept)


def write_stalled(run: Path, total: int = 40, at: int = 12) -> Path:
    """Running (no run_finished) but silent since step `at`: stalled once the clock moves on."""
    events = [
        e
        for e in teacher_events(total)
        if getattr(e, "step", 0) <= at and not isinstance(e, RunFinished)
    ]
    return write(run, events)


def stalled_last_time(at: int = 12) -> float:
    return T0 + at * 0.5
