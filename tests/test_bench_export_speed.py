"""bench/export_speed.py's table and labels on hand-made numbers: pure, nothing is timed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import export_speed  # noqa: E402

CELLS = ["1x128", "32x128"]
BASE = {"1x128": 80.0, "32x128": 3200.0}


def rows() -> list[dict]:
    return [
        {"model": "heads", "runtime": export_speed.BASELINE, "ms": BASE, "baseline_ms": BASE},
        {
            "model": "heads",
            "runtime": "PyTorch fp32",
            "ms": {"1x128": 40.0, "32x128": 1600.0},
            "baseline_ms": BASE,
            "accuracy": 0.808,
            "pytorch_accuracy": 0.808,
            "note": "",
        },
        {
            "model": "heads",
            "runtime": "ONNX Runtime optimised int8",
            "file": "model.opt.int8.onnx",
            "ms": {"1x128": 20.0, "32x128": 800.0},
            "static_ms": {"1x128": 19.5},
            "baseline_ms": BASE,
            "accuracy": 0.804,
            "pytorch_accuracy": 0.808,
            "max_logit_diff": 0.24,
            "bytes": 17 * 2**20,
            "note": "fused in 6 of 6 layers",
        },
    ]


def test_the_table_shows_ms_speed_ups_over_the_baseline_and_accuracy_differences() -> None:
    lines = export_speed.table(rows(), CELLS)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "model",
        "runtime",
        "acc",
        "vs its PyTorch",
        "max abs logit diff",
        "b1 L128 ms",
        "vs dense",
        "b1 L128 static ms",
        "b32 L128 ms",
        "vs dense",
        "MiB",
        "notes",
    ]
    assert len(lines) == 2 + 3
    baseline, pytorch, optimised = (
        [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]
    )
    # The baseline: 1.00x, no accuracy of its own here, no static timing (not an ONNX graph).
    assert baseline[2:11] == ["-", "-", "-", "80.0", "1.00x", "-", "3200", "1.00x", "-"]
    assert pytorch[2:5] == ["80.8", "+0.0", "-"]
    assert pytorch[5:7] == ["40.0", "2.00x"]
    assert optimised == [
        "heads",
        "ONNX Runtime optimised int8",
        "80.4",
        "-0.4",
        "2.4e-01",
        "20.0",
        "4.00x",
        "19.5",
        "800",
        "4.00x",
        "17.0",
        "fused in 6 of 6 layers",
    ]


def test_a_cell_a_row_was_not_timed_in_shows_a_dash() -> None:
    row = {"model": "m", "runtime": "PyTorch fp32", "ms": {"1x128": 10.0}, "baseline_ms": BASE}
    cols = [c.strip() for c in export_speed.table([row], CELLS)[2].strip("|").split("|")]
    assert cols[5:10] == ["10.0", "8.00x", "-", "-", "-"]


def test_labels_are_folder_names_numbered_when_two_share_one(tmp_path: Path) -> None:
    paths = [str(tmp_path / "a" / "teacher"), str(tmp_path / "b" / "teacher"), str(tmp_path / "c")]
    assert export_speed.unique_labels(paths) == ["teacher", "teacher-2", "c"]
    # A link is named as given, not as its target: runs gathered by links keep their names.
    (tmp_path / "c").mkdir()
    (tmp_path / "student").symlink_to(tmp_path / "c")
    assert export_speed.unique_labels([str(tmp_path / "student")]) == ["student"]
    assert export_speed.unique_labels([str(tmp_path / "a" / ".." / "c")]) == ["c"]
    assert export_speed.cell(1, 128) == "1x128"


def test_timing_jobs_time_every_source_on_the_grid_and_each_graph_static_per_batch1_cell(
    tmp_path: Path,
) -> None:
    sources = [
        (export_speed.BASELINE, None),
        ("PyTorch fp32", None),
        ("ONNX Runtime int8", "model.int8.onnx"),
    ]
    grid = [(1, 64), (1, 128), (32, 128)]

    def jobs_of(static_batch1: bool) -> list[dict]:
        return export_speed.timing_jobs(
            sources,
            grid,
            model_paths={export_speed.BASELINE: "teacher", "PyTorch fp32": "heads"},
            folder=tmp_path,
            vocab=100,
            threads=2,
            static_batch1=static_batch1,
        )

    jobs = jobs_of(True)
    free = [(j["runtime"], j["kind"], j["path"]) for j in jobs if j["dims"] is None]
    assert free == [
        (export_speed.BASELINE, "torch", "teacher"),
        ("PyTorch fp32", "torch", "heads"),
        ("ONNX Runtime int8", "onnx", str(tmp_path / "model.int8.onnx")),
    ]
    assert all(j["grid"] == grid for j in jobs if j["dims"] is None)
    # A static session serves one shape: one job per batch-1 cell, ONNX graphs only.
    fixed = [(j["runtime"], j["grid"], sorted(j["dims"].values())) for j in jobs if j["dims"]]
    assert fixed == [
        ("ONNX Runtime int8", [(1, 64)], [1, 64]),
        ("ONNX Runtime int8", [(1, 128)], [1, 128]),
    ]
    assert {(j["threads"], j["vocab"]) for j in jobs} == {(2, 100)}
    assert [j["dims"] for j in jobs_of(False)] == [None, None, None]


def test_isolated_timing_runs_each_job_in_its_own_process_and_returns_every_cell(
    tmp_path: Path,
) -> None:
    import pytest

    from tests.test_pruning import tiny_bert

    tiny_bert().save_pretrained(tmp_path / "m")
    jobs = [
        {
            "runtime": name,
            "kind": "torch",
            "path": str(tmp_path / "m"),
            "dims": None,
            "grid": grid,
            "vocab": 0,  # a PyTorch job takes its model's own vocabulary
            "threads": 1,
        }
        for name, grid in (("a", [(1, 8), (2, 8)]), ("b", [(3, 4)]))
    ]
    # One process a job (a worker starts torch: seconds each), each job's own cells back.
    seconds = export_speed.time_isolated(jobs, warmup=1, repeats=2, rounds=1)
    assert [sorted(s) for s in seconds] == [["1x8", "2x8"], ["3x4"]]
    assert all(0 < v < 10 for s in seconds for v in s.values())
    # A worker that fails stops the measurement with its error, not a table with holes.
    gone = [{**jobs[0], "path": str(tmp_path / "missing")}]
    with pytest.raises(SystemExit, match="missing"):
        export_speed.time_isolated(gone, warmup=1, repeats=1)


def test_in_process_timing_times_each_job_on_its_own_cells(tmp_path: Path) -> None:
    from tests.test_pruning import tiny_bert

    tiny_bert().save_pretrained(tmp_path / "m")
    job = {"kind": "torch", "path": str(tmp_path / "m"), "dims": None, "vocab": 0, "threads": 1}
    jobs = [
        {**job, "runtime": "a", "grid": [(1, 8), (2, 8)]},
        {**job, "runtime": "b", "grid": [(2, 8)]},
    ]
    seconds = export_speed.time_in_process(jobs, warmup=1, repeats=3)
    assert [sorted(s) for s in seconds] == [["1x8", "2x8"], ["2x8"]]
    assert all(0 < v < 10 for s in seconds for v in s.values())
