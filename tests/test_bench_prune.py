"""bench/prune.py keeps one teacher for a whole table, across machines: when the teacher's
record outlives its run, the teacher is trained again and the table goes on only if it is the
same teacher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import prune as bench_prune  # noqa: E402

COMMAND = ["teacher", "--data", "synthetic", "--model", "tiny", "--seed", "42"]


@pytest.fixture
def bench(tmp_path: Path) -> bench_prune.Bench:
    args = bench_prune.parser().parse_args(
        ["--data", "synthetic", "--model", "tiny", "--results", str(tmp_path / "records"),
         "--output-dir", str(tmp_path / "runs")]
    )  # fmt: skip
    return bench_prune.Bench(args)


def keep_record(bench: bench_prune.Bench, command: list[str], correct: str) -> dict:
    record = {"name": "teacher", "row": "dense", "command": command, "correct": correct}
    (bench.results / "teacher.json").write_text(json.dumps(record))
    return record


def train_again(monkeypatch: pytest.MonkeyPatch, correct: str) -> list[list[str]]:
    """The retraining, faked: records the command and leaves a run with CORRECT."""
    ran: list[list[str]] = []

    def execute(self: bench_prune.Bench, name: str, options: list[str]) -> Path:
        ran.append(options)
        return self.teacher_dir

    monkeypatch.setattr(bench_prune.Bench, "execute", execute)
    monkeypatch.setattr(bench_prune.RunInfo, "correct", lambda self: correct)
    return ran


def test_the_same_teacher_trained_again_lets_the_table_go_on(
    bench: bench_prune.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = train_again(monkeypatch, "1011")
    bench.reproduce_teacher(keep_record(bench, COMMAND, "1011"))
    assert ran == [COMMAND]  # the recorded command, not today's options


def test_another_teacher_stops_the_table(
    bench: bench_prune.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_again(monkeypatch, "1001")
    with pytest.raises(SystemExit, match=r"differs from the recorded one \(1 of 4 test"):
        bench.reproduce_teacher(keep_record(bench, COMMAND, "1011"))


def test_a_teacher_given_by_path_cannot_be_trained_again(
    bench: bench_prune.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = train_again(monkeypatch, "1011")
    with pytest.raises(SystemExit, match="--teacher-run /gone, which is gone"):
        bench.reproduce_teacher(keep_record(bench, ["--teacher-run", "/gone"], "1011"))
    assert ran == []


def test_the_teacher_uses_every_core_the_table_claimed(
    bench: bench_prune.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(bench_prune.Bench, "run", lambda self, n, o, i: calls.append(o) or {})
    bench.args.jobs, bench.args.threads = 2, 1
    bench.teacher()
    assert "run.threads=2" in calls[0]


def test_an_epoch_budget_is_read_from_the_teachers_record_when_its_run_is_gone(
    bench: bench_prune.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = {"name": "teacher", "command": COMMAND, "metrics": {"steps": 349}}
    (bench.results / "teacher.json").write_text(json.dumps(record))
    monkeypatch.setattr(bench_prune.Bench, "teacher", lambda self: pytest.fail("retrained"))
    bench.args.epochs, bench.args.teacher_epochs = 2.0, 1.0
    assert not bench.teacher_dir.exists()
    assert bench.steps() == 698


def test_an_epoch_budget_trains_the_teacher_first_when_there_is_none(
    bench: bench_prune.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    def teacher(self: bench_prune.Bench) -> Path:
        record = {"name": "teacher", "command": COMMAND, "metrics": {"steps": 100}}
        (self.results / "teacher.json").write_text(json.dumps(record))
        return self.teacher_dir

    monkeypatch.setattr(bench_prune.Bench, "teacher", teacher)
    bench.args.epochs, bench.args.teacher_epochs = 1.5, 2.0
    assert bench.steps() == 75
