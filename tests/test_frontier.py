"""The Pareto frontier (kdtui/frontier.py) on hand-made points and reports, its picture as text,
and the dashboard's reading of cached results (kdtui.dashboard.runs.cached_frontier). Pure:
no model is loaded or timed."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from kdtui.dashboard.frontier_plot import cell_of, frontier_text, label_span, place_labels
from kdtui.dashboard.runs import cached_frontier
from kdtui.evalcache import CACHE_DIR, SELF, digest, make_entry
from kdtui.frontier import (
    Marks,
    PlotPoint,
    Point,
    dominates,
    frontier_marks,
    label_of,
    latency_points,
    mark_report,
    on_frontier,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_a_point_is_dominated_only_by_one_at_least_as_good_in_both_and_better_in_one() -> None:
    assert dominates((0.9, 10.0), (0.8, 20.0))
    assert dominates((0.9, 10.0), (0.9, 20.0))  # as accurate, faster
    assert dominates((0.9, 10.0), (0.8, 10.0))  # as fast, more accurate
    assert not dominates((0.9, 10.0), (0.9, 10.0))  # a tie is no gain
    assert not dominates((0.9, 20.0), (0.8, 10.0))  # a trade-off


def test_one_dominated_point_is_off_the_frontier() -> None:
    # (accuracy, cost): the third is less accurate and slower than the first.
    assert on_frontier([(0.9, 10.0), (0.95, 30.0), (0.85, 12.0)]) == [True, True, False]


def test_ties_on_both_are_both_kept() -> None:
    assert on_frontier([(0.9, 10.0), (0.9, 10.0), (0.8, 20.0)]) == [True, True, False]


def test_a_trade_off_curve_is_all_on_the_frontier() -> None:
    pairs = [(0.80, 5.0), (0.85, 10.0), (0.90, 20.0), (0.92, 40.0)]
    assert on_frontier(pairs) == [True] * 4


def test_a_single_point_is_on_the_frontier_and_none_is_an_empty_frontier() -> None:
    assert on_frontier([(0.5, 1.0)]) == [True]
    assert on_frontier([]) == []


def test_same_accuracy_the_cheaper_wins_and_a_nan_is_on_no_frontier() -> None:
    assert on_frontier([(0.9, 10.0), (0.9, 11.0)]) == [True, False]
    # A point without a number neither stands on the frontier nor pushes others off it.
    assert on_frontier([(math.nan, 1.0), (0.8, 10.0), (0.9, math.inf)]) == [False, True, False]


def test_frontier_marks_latency_and_size_separately() -> None:
    points = [
        Point("big", accuracy=0.92, latency_ms=30.0, size_bytes=400.0),
        Point("fast", accuracy=0.90, latency_ms=10.0, size_bytes=300.0),
        Point("small", accuracy=0.90, latency_ms=20.0, size_bytes=100.0),
        Point("worst", accuracy=0.80, latency_ms=40.0, size_bytes=500.0),
    ]
    assert frontier_marks(points) == [
        Marks(latency=True, size=True),
        Marks(latency=True, size=False),  # as accurate as "small" but larger
        Marks(latency=False, size=True),  # as accurate as "fast" but slower
        Marks(latency=False, size=False),
    ]


def model(name: str, accuracy: float, ms: dict[tuple[int, int], float], size: int) -> dict:
    """One model's entry of `kdtui evaluate`'s report, with what the frontier reads."""
    return {
        "model": name,
        "accuracy": {"books": accuracy, "all": accuracy},
        "latency": [
            {"batch": b, "length": n, "ms": t, "examples_per_s": 1000 * b / t}
            for (b, n), t in ms.items()
        ],
        "size_bytes": size,
        "parameters": 100,
        "nonzero_parameters": 100,
        "notes": [],
    }


def grid(b1: float, b32: float) -> dict[tuple[int, int], float]:
    # The default grid: batches 1 and 32, lengths 32 and 128; the frontier reads length 128.
    return {(1, 32): b1 / 4, (1, 128): b1, (32, 32): b32 / 4, (32, 128): b32}


def test_mark_report_per_batch_at_the_longest_length() -> None:
    report = {
        "models": [
            model("runs/teacher", 0.90, grid(b1=20.0, b32=300.0), size=400),
            # Faster alone (batch 1), slower in bulk (batch 32): on one frontier, not the other.
            model("runs/student", 0.85, grid(b1=10.0, b32=320.0), size=100),
        ]
    }
    mark_report(report)
    teacher, student = report["models"]
    assert report["frontier"]["latency"] == {"batch": 1, "length": 128}
    assert report["frontier"]["latency_by_batch"] == [
        {"batch": 1, "length": 128},
        {"batch": 32, "length": 128},
    ]
    assert teacher["frontier_latency"] and student["frontier_latency"]
    assert teacher["frontier_latency_by_batch"] == {"1": True, "32": True}
    assert student["frontier_latency_by_batch"] == {"1": True, "32": False}
    assert teacher["frontier_size"] and student["frontier_size"]
    json.dumps(report)  # --json writes it: every key is text


def test_sparse_kernels_count_at_their_faster_timing() -> None:
    dense = model("runs/teacher", 0.90, grid(b1=20.0, b32=300.0), size=400)
    pruned = model("runs/cap-97", 0.90, grid(b1=25.0, b32=350.0), size=50)
    # Slower with dense kernels than the teacher, faster with sparse ones.
    pruned["sparse_kernels"] = {"latency": model("", 0, grid(b1=15.0, b32=250.0), 0)["latency"]}
    report = {"models": [dense, pruned]}
    mark_report(report)
    assert [m["frontier_latency"] for m in report["models"]] == [False, True]
    assert [m["frontier_size"] for m in report["models"]] == [False, True]


def test_a_report_without_a_latency_grid_marks_no_latency_frontier() -> None:
    report = {"models": [model("runs/a", 0.9, {}, size=10)]}
    mark_report(report)
    assert report["frontier"]["latency"] is None
    assert report["models"][0]["frontier_latency"] is False
    assert report["models"][0]["frontier_size"] is True
    assert latency_points(report) == []


@pytest.mark.parametrize(
    ("model_path", "label"),
    [
        ("runs/cap-97", "cap-97"),
        ("runs/cap-97/model", "cap-97"),
        ("runs/d/domains/books", "d/books"),
        ("runs/d/domains/books/model", "d/books"),
        ("runs/cap-97/onnx/model.onnx", "cap-97 onnx"),
        ("runs/cap-97/onnx/model.int8.onnx", "cap-97 int8"),
        ("runs/cap-97/onnx/model.opt.onnx", "cap-97 opt"),
        ("runs/cap-97/onnx/model.opt.int8.onnx", "cap-97 opt int8"),
        ("models/hf-onnx/model.onnx", "hf-onnx onnx"),
        ("/abs/path/bert", "bert"),
    ],
)
def test_labels_name_the_run(model_path: str, label: str) -> None:
    assert label_of(model_path) == label


def test_the_picture_labels_every_point() -> None:
    points = [
        PlotPoint("teacher", accuracy=0.90, latency_ms=30.0, on_frontier=True),
        PlotPoint("small", accuracy=0.85, latency_ms=10.0, on_frontier=True),
        PlotPoint("worse", accuracy=0.80, latency_ms=20.0, on_frontier=False),
    ]
    text = frontier_text(points, width=100, height=24, title="the frontier", xlabel="latency ms")
    plain = ANSI.sub("", text)
    for expected in ("teacher", "small", "worse", "the frontier", "latency ms", "◆", "•"):
        assert expected in plain, expected
    lines = plain.splitlines()
    assert len(lines) == 24 and max(len(line) for line in lines) <= 100


def rows_of(cells: list, spans: list, canvas_rows: int = 24) -> list:
    """place_labels for left-aligned labels given by their spans: each label's row."""
    lengths = [end - start + 1 for start, end in spans]
    at = [(row, start) for (row, _), (start, _) in zip(cells, spans, strict=True)]
    places = place_labels(at, lengths, ["left"] * len(cells), canvas_rows, 100)
    assert all(p is None or p[1] == "left" for p in places)
    return [None if p is None else p[0] for p in places]


def test_a_label_moves_off_a_row_an_earlier_label_takes() -> None:
    # Same row, overlapping columns: the second label goes a row higher; apart: both stay.
    assert rows_of([(10, 0), (10, 5)], [(0, 15), (5, 20)]) == [11, 12]
    assert rows_of([(10, 0), (10, 30)], [(0, 15), (30, 40)]) == [11, 11]
    assert rows_of([(10, 0), (3, 5)], [(0, 15), (5, 20)]) == [11, 4]
    # Touching labels need a column of space between them.
    assert rows_of([(10, 0), (10, 16)], [(0, 15), (16, 20)]) == [11, 12]
    assert rows_of([(10, 0), (10, 17)], [(0, 15), (17, 20)]) == [11, 11]
    # Then one below the point, then further out; never off the canvas.
    assert rows_of([(10, 0), (10, 0), (10, 0)], [(0, 5)] * 3) == [11, 12, 9]
    assert rows_of([(23, 0), (23, 0)], [(0, 5)] * 2) == [22, 21]
    # At most three rows away: the seventh label of one spot has no place and is left out.
    assert rows_of([(10, 0)] * 7, [(0, 5)] * 7) == [11, 12, 9, 13, 8, 7, None]


def test_a_label_does_not_cover_a_marker_aligns_another_way_or_is_left_out() -> None:
    # A marker under the label's first row: a row higher.
    places = place_labels([(10, 0), (11, 6)], [16, 1], ["left", "right"], 24, 100)
    assert places[0] == (12, "left")
    # The preferred alignment runs off the canvas's right edge: another way that fits.
    assert place_labels([(5, 95)], [10], ["left"], 24, 100) == [(6, "center")]
    # A canvas of two rows whose only other row is taken: no room, left out.
    assert place_labels([(0, 0), (0, 0)], [5, 5], ["left", "left"], 2, 10) == [(1, "left"), None]


def test_cells_and_spans_follow_plotexts_rounding_and_alignment() -> None:
    # plotext puts a value at floor(0.5 + (cells - 1) * share), rounded to 8 places first.
    assert cell_of(0.0, 0.0, 10.0, 11) == 0
    assert cell_of(10.0, 0.0, 10.0, 11) == 10
    assert cell_of(4.5, 0.0, 10.0, 11) == 5
    assert cell_of(4.49, 0.0, 10.0, 11) == 4
    assert label_span(4, 10, "left") == (10, 13)
    assert label_span(4, 10, "center") == (8, 11)
    assert label_span(4, 10, "right") == (7, 10)


# The benchmark's twelve models of 2026-12-07: six points within 0.2 points of each other
# between 3.8 and 12.9 ms, whose labels ran into each other ("heads-ffn-70student-2l-s2")
# while label positions were estimated rather than taken from plotext's cells.
CROWDED = [
    PlotPoint("cap-soft-movement-97-s2", accuracy=0.76, latency_ms=17.5, on_frontier=False),
    PlotPoint("cap-soft-movement-97-s2 onnx", accuracy=0.76, latency_ms=26.2, on_frontier=False),
    PlotPoint("cap-soft-movement-97-s2 int8", accuracy=0.76, latency_ms=11.0, on_frontier=False),
    PlotPoint("heads-ffn-70-s2", accuracy=0.8125, latency_ms=12.9, on_frontier=False),
    PlotPoint("heads-ffn-70-s2 onnx", accuracy=0.8125, latency_ms=7.4, on_frontier=False),
    PlotPoint("heads-ffn-70-s2 int8", accuracy=0.8125, latency_ms=5.4, on_frontier=False),
    PlotPoint("student-2l-s2", accuracy=0.8144, latency_ms=10.7, on_frontier=False),
    PlotPoint("student-2l-s2 onnx", accuracy=0.8144, latency_ms=9.2, on_frontier=True),
    PlotPoint("student-2l-s2 int8", accuracy=0.8125, latency_ms=3.8, on_frontier=True),
    PlotPoint("teacher", accuracy=0.8344, latency_ms=32.5, on_frontier=False),
    PlotPoint("teacher onnx", accuracy=0.8344, latency_ms=28.0, on_frontier=True),
    PlotPoint("teacher int8", accuracy=0.8319, latency_ms=11.4, on_frontier=True),
]
# And those of 2026-12-06: a model and its export at the same accuracy 3 ms apart printed as
# "heads-ffn-70-s2 onnx-s2" when the second label was written over the first.
NEIGHBOURS = [
    PlotPoint("cap-97", accuracy=0.7569, latency_ms=14.8, on_frontier=False),
    PlotPoint("cap-97 onnx", accuracy=0.7569, latency_ms=30.5, on_frontier=False),
    PlotPoint("cap-97 int8", accuracy=0.7588, latency_ms=13.2, on_frontier=False),
    PlotPoint("heads-ffn-70-s2", accuracy=0.81, latency_ms=12.3, on_frontier=False),
    PlotPoint("heads-ffn-70-s2 onnx", accuracy=0.81, latency_ms=9.4, on_frontier=True),
    PlotPoint("heads-ffn-70-s2 int8", accuracy=0.8037, latency_ms=5.4, on_frontier=True),
    PlotPoint("teacher", accuracy=0.8337, latency_ms=36.9, on_frontier=False),
    PlotPoint("teacher int8", accuracy=0.8363, latency_ms=12.9, on_frontier=True),
]


@pytest.mark.parametrize("points", [CROWDED, NEIGHBOURS], ids=["crowded", "neighbours"])
@pytest.mark.parametrize(
    ("width", "height", "title"), [(80, 24, "t"), (100, 24, "t"), (80, 20, "")]
)
def test_labels_of_neighbouring_points_do_not_overwrite_each_other(
    points: list[PlotPoint], width: int, height: int, title: str
) -> None:
    plain = ANSI.sub(
        "", frontier_text(points, width=width, height=height, title=title, xlabel="ms")
    )
    markers = sum(line.count("◆") + line.count("•") for line in plain.splitlines())
    assert markers == len(points)  # no label covers a point
    for label in (p.label for p in points):
        # Whole, and not run into another label (each label is followed by a space or the frame).
        assert re.search(r"(?<![\w-])" + re.escape(label) + r"(?=\s|│)(?! onnx| int8)", plain), (
            label
        )


def test_the_picture_of_a_single_model_and_of_none() -> None:
    one = [PlotPoint("alone", accuracy=0.9, latency_ms=12.0, on_frontier=True)]
    assert "alone" in ANSI.sub("", frontier_text(one, width=80, height=20, title="t", xlabel="x"))
    nothing = [PlotPoint("nan", accuracy=math.nan, latency_ms=1.0, on_frontier=False)]
    text = ANSI.sub("", frontier_text(nothing, width=80, height=20, title="t", xlabel="x"))
    assert "no model has both an accuracy and a latency" in text


def test_print_report_shows_the_frontier_table_and_picture(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdtui.terminal import print_report

    monkeypatch.setenv("COLUMNS", "160")  # Rich's width: every table row on one line

    report: dict[str, Any] = {
        "split": "test",
        "data": "synthetic",
        "domains": ["books"],
        "examples": 10,
        "threads": 1,
        "cached": 1,
        "models": [
            {**model("runs/teacher", 0.90, grid(20.0, 300.0), size=4 << 20), "cached": True},
            {**model("runs/student", 0.85, grid(10.0, 320.0), size=1 << 20), "cached": False},
            {**model("runs/worse", 0.80, grid(30.0, 400.0), size=5 << 20), "cached": False},
        ],
    }
    mark_report(report)
    print_report(report)
    out = ANSI.sub("", capsys.readouterr().out)
    assert "cached: 1 of 3 models" in out
    frontier = out[out.index("Pareto frontier") :]
    assert "latency b1 len128" in frontier and "latency b32 len128" in frontier
    rows = {
        name: next(line for line in frontier.splitlines() if f"runs/{name} " in line)
        for name in ("teacher", "student", "worse")
    }
    assert "◆" in rows["teacher"] and "◆" in rows["student"]
    assert "◆" not in rows["worse"]  # dominated on every cost
    # The picture, under the table: each point labelled with its run.
    picture = out[out.index("accuracy % against latency") :]
    for label in ("teacher", "student", "worse"):
        assert label in picture, label


def write_cached(
    run: Path,
    accuracy: float,
    latency_ms: float,
    *,
    settings: dict[str, Any] | None = None,
    files: list[list[Any]] | None = None,
    name: str = SELF,
) -> Path:
    """A result as `kdtui evaluate` caches it in RUN (kdtui/evalcache.py)."""
    settings = settings if settings is not None else {"data": "synthetic"}
    result = model(name, accuracy, {(1, 128): latency_ms, (32, 128): 10 * latency_ms}, 1000)
    entry = make_entry(
        name,
        settings,
        files or [],
        {"split": "test", "data": "synthetic", "domains": ["books"], "examples": 10},
        result,
        written_at=1.0,
    )
    slug = "_" if name == SELF else name.replace("/", "+")
    file = run / CACHE_DIR / f"{slug}.{digest(settings)}.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(entry))
    return file


def test_cached_frontier_reads_the_runs_and_keeps_to_one_set_of_settings(tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / name for name in ("a", "b", "c", "d"))
    write_cached(a, 0.90, 20.0)
    write_cached(b, 0.85, 10.0)
    # An export inside the run (RUN/onnx): its home is the export folder.
    write_cached(b / "onnx", 0.80, 5.0, name="model.int8.onnx")
    write_cached(c, 0.99, 1.0, settings={"data": "other.csv"})  # another data set: not mixed
    # A model changed since it was evaluated (the recorded size is not the file's): left out.
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(b"12345")
    write_cached(d, 0.95, 1.0, files=[["model/model.safetensors", 4, 0]])

    found = cached_frontier([a, b, c, d])
    assert found.report is not None
    assert found.runs == 2 and found.other_settings == 1
    names = [m["model"] for m in found.report["models"]]
    assert names == [str(a), str(b), str(b / "onnx" / "model.int8.onnx")]
    labels = [p.label for p in latency_points(found.report)]
    assert labels == ["a", "b", "b int8"]
    assert [m["frontier_latency"] for m in found.report["models"]] == [True, True, True]

    assert cached_frontier([tmp_path / "nothing-here"]).report is None
