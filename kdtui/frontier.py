"""The Pareto frontier of evaluated models: which ones no other model beats on both accuracy and
cost. Pure functions over numbers and `kdtui evaluate`'s report dict; nothing is read or
measured here, so the CLI, the plain report and the dashboard mark the same models.

A model is dominated when another is at least as accurate AND at least as cheap, and strictly
better in one of the two; two models with the same accuracy and the same cost are both kept.
A model whose accuracy or cost is not a finite number (an empty split) is on no frontier.

Two frontiers, for two costs: latency and size on disk. Latency is measured on a grid of
(batch, length) shapes; the frontier takes, for each batch size of the grid, the longest length
(a full-length input, where a model's cost shows most), and `frontier_latency` is the one at the
smallest batch: a single request served alone, what "latency" means to whoever deploys a model.
The other batch sizes (throughput) are marked too (`frontier_latency_by_batch`). A model timed
with sparse kernels as well counts at the faster of its two timings, as it would be deployed
(its accuracy is the same within float rounding)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdtui.exportdir import MODEL_FILES
from kdtui.rundir import DOMAINS_DIR, MODEL_DIR

ACCURACY_KEY = "all"  # the report's accuracy over the whole split


@dataclass(frozen=True)
class Point:
    """One model as the frontier sees it: higher accuracy is better, lower costs are."""

    name: str
    accuracy: float
    latency_ms: float
    size_bytes: float


@dataclass(frozen=True)
class Marks:
    latency: bool  # on the accuracy-latency frontier
    size: bool  # on the accuracy-size frontier


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether A = (accuracy, cost) beats B: at least as accurate and at least as cheap, and
    strictly better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def on_frontier(pairs: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (accuracy, cost) pair, whether no other pair dominates it. Quadratic: a report
    holds tens of models, not thousands."""
    finite = [pair for pair in pairs if _finite(pair)]
    # A pair never dominates itself (that needs a strict gain), so it may stay in `finite`.
    return [_finite(pair) and not any(dominates(other, pair) for other in finite) for pair in pairs]


def _finite(pair: tuple[float, float]) -> bool:
    return math.isfinite(pair[0]) and math.isfinite(pair[1])


def frontier_marks(points: Sequence[Point]) -> list[Marks]:
    """Each point's place on the accuracy-latency and the accuracy-size frontier."""
    latency = on_frontier([(p.accuracy, p.latency_ms) for p in points])
    size = on_frontier([(p.accuracy, p.size_bytes) for p in points])
    return [Marks(latency=lat, size=siz) for lat, siz in zip(latency, size, strict=True)]


# -- the report ---------------------------------------------------------------------------------


def latency_shapes(models: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """The (batch, length) shapes the frontier uses: every batch size of the latency grid,
    smallest first, each at the grid's longest length for that batch."""
    longest: dict[int, int] = {}
    for model in models:
        for row in model.get("latency", []):
            batch, length = int(row["batch"]), int(row["length"])
            longest[batch] = max(longest.get(batch, length), length)
    return sorted(longest.items())


def latency_at(model: dict[str, Any], batch: int, length: int) -> float:
    """The model's forward time in ms at (batch, length): the faster of dense and sparse kernels
    where both were timed; NaN where the grid lacks that shape."""
    rows = [*model.get("latency", []), *model.get("sparse_kernels", {}).get("latency", [])]
    times = [float(r["ms"]) for r in rows if r["batch"] == batch and r["length"] == length]
    return min(times) if times else math.nan


def accuracy_of(model: dict[str, Any]) -> float:
    value = model.get("accuracy", {}).get(ACCURACY_KEY)
    return float(value) if isinstance(value, int | float) else math.nan


def mark_report(report: dict[str, Any]) -> None:
    """Mark every model of REPORT (in place): `frontier_latency` (at the smallest batch),
    `frontier_latency_by_batch` ({batch as text: bool}, JSON keys being text), `frontier_size`;
    and what they were computed on in `report["frontier"]`."""
    models = report["models"]
    shapes = latency_shapes(models)
    accuracy = [accuracy_of(m) for m in models]
    by_batch = {
        batch: on_frontier(
            [(a, latency_at(m, batch, length)) for a, m in zip(accuracy, models, strict=True)]
        )
        for batch, length in shapes
    }
    size = on_frontier(
        [(a, float(m.get("size_bytes", math.nan))) for a, m in zip(accuracy, models, strict=True)]
    )
    for i, model in enumerate(models):
        marks = {str(batch): flags[i] for batch, flags in by_batch.items()}
        model["frontier_latency"] = marks[str(shapes[0][0])] if shapes else False
        model["frontier_latency_by_batch"] = marks
        model["frontier_size"] = size[i]
    report["frontier"] = {
        "accuracy": f"accuracy {ACCURACY_KEY}",
        "latency": {"batch": shapes[0][0], "length": shapes[0][1]} if shapes else None,
        "latency_by_batch": [{"batch": b, "length": n} for b, n in shapes],
        "size": "size_bytes",
        "rule": (
            "a model is on a frontier when no other is at least as accurate and at least as "
            "cheap and strictly better in one; latency: the faster of dense and sparse kernels"
        ),
    }


FRONTIER_FIELDS = ("frontier_latency", "frontier_latency_by_batch", "frontier_size")


@dataclass(frozen=True)
class PlotPoint:
    """One model on the accuracy-latency picture."""

    label: str
    accuracy: float  # a fraction, as the report holds it
    latency_ms: float
    on_frontier: bool


def latency_points(report: dict[str, Any]) -> list[PlotPoint]:
    """The models of a marked report (`mark_report`) at the shape `frontier_latency` uses."""
    shape = report.get("frontier", {}).get("latency")
    if not shape:
        return []
    return [
        PlotPoint(
            label=label_of(m["model"]),
            accuracy=accuracy_of(m),
            latency_ms=latency_at(m, shape["batch"], shape["length"]),
            on_frontier=bool(m.get("frontier_latency")),
        )
        for m in report["models"]
    ]


def label_of(model: str) -> str:
    """A short name for a model, as a picture labels it: the run it comes from.

    runs/cap-97 and runs/cap-97/model: cap-97; a student of `distill --domain all`
    (runs/d/domains/books): d/books; an export (runs/cap-97/onnx/model.int8.onnx): cap-97 int8
    (model.onnx: cap-97 onnx, model.opt.onnx: cap-97 opt, as exportdir.MODEL_FILES names them);
    any other folder: its name."""
    path = Path(model)
    suffix = ""
    if path.suffix == ".onnx":
        suffix = " " + MODEL_FILES.get(path.name, "onnx")
        path = path.parent
        if path.name == "onnx":  # RUN/onnx, where `kdtui export` writes a run's export
            path = path.parent
    if path.name == MODEL_DIR:
        path = path.parent
    name = path.name or str(path)
    if path.parent.name == DOMAINS_DIR:
        name = f"{path.parent.parent.name}/{path.name}"
    return name + suffix
