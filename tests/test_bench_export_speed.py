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
    assert export_speed.cell(1, 128) == "1x128"
