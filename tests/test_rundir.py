"""The run-directory reader reads back what the writer wrote: command, config, events, status and
model paths, without torch and without training anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdtui.config import build_config
from kdtui.errors import KdtuiError
from kdtui.events import Eval, Message, RunFailed, RunFinished, RunStarted
from kdtui.profile import find_profile, to_toml
from kdtui.rundir import (
    CONFIG_FILE,
    RunDir,
    RunInfo,
    find_run,
    is_run_dir,
    latest_finished_run,
    read_run,
    run_of_model,
)

CONFIG = build_config({"train": {"max_steps": 7, "lr": 0.001}, "run": {"seed": 3}})


def start_run(path: Path, command: str = "teacher") -> RunDir:
    """A run as `kdtui COMMAND` begins one: locked, config recorded, a note, run_started."""
    run = RunDir(path)
    run.open(fresh=True)
    run.write_text(CONFIG_FILE, to_toml(CONFIG, header=f"kdtui {command}: resolved configuration"))
    run.log(Message(level="note", text="10% of train held out as dev"))
    run.log(
        RunStarted(
            run=path.name,
            command=command,
            profile="smoke",
            total_steps=7,
            config=CONFIG.to_dict(),
        )
    )
    return run


def test_a_run_reads_back_what_was_written(tmp_path: Path) -> None:
    writer = start_run(tmp_path / "t")
    writer.log(Eval(step=7, split="dev", accuracy={"all": 0.75}, loss=0.5, best=True))
    run = read_run(tmp_path / "t")
    assert run.command() == "teacher"  # behind the note that came first
    assert run.config() == CONFIG
    assert run.config_dict()["train"]["max_steps"] == 7
    assert [e.type for e in run.events()] == ["message", "run_started", "eval"]
    assert run.status() == "running"  # the writer holds the run
    assert not run.finished() and run.metrics() == {} and run.saved_model() is None
    writer.model.mkdir()
    (writer.model / "config.json").write_text("{}")
    writer.write_metrics({"best_dev": 0.75})
    writer.log(RunFinished(step=7, metrics={"best_dev": 0.75}))
    writer.close()
    assert run.status() == "finished" and run.finished()
    assert run.metrics() == {"best_dev": 0.75}
    assert run.saved_model() == tmp_path / "t" / "model"
    assert is_run_dir(run.path)  # and the writer's safety check agrees it is a run


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (RunFailed(step=3, error="ValueError: x", kind="internal"), "failed"),
        (RunFailed(step=3, error="bad data", kind="user"), "failed"),
        (RunFailed(step=3, error="interrupted by SIGTERM", kind="interrupted"), "stopped"),
        (None, "stopped"),  # killed: no outcome recorded, and no writer left
    ],
)
def test_the_status_of_a_run_that_did_not_finish(
    tmp_path: Path, outcome: RunFailed | None, status: str
) -> None:
    writer = start_run(tmp_path / "r")
    if outcome is not None:
        writer.log(outcome)
    writer.close()
    assert read_run(tmp_path / "r").status() == status


def test_a_resumed_run_is_no_longer_failed(tmp_path: Path) -> None:
    writer = start_run(tmp_path / "r")
    writer.log(RunFailed(step=3, error="disk full", kind="internal"))
    writer.close()
    resumed = RunDir(tmp_path / "r")
    resumed.open(fresh=False)
    resumed.log(RunStarted(run="r", command="teacher", profile="", total_steps=7, config={}))
    assert read_run(tmp_path / "r").status() == "running"
    resumed.close()
    assert read_run(tmp_path / "r").status() == "stopped"


def test_active_seconds_leave_out_the_time_a_killed_run_lay_idle(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.open(fresh=True)
    started = {"run": "r", "command": "teacher", "profile": "", "total_steps": 7, "config": {}}
    run.log(RunStarted(**started, time=100.0))
    run.log(Eval(step=3, split="dev", accuracy={"all": 0.5}, loss=0.7, best=True, time=130.0))
    run.log(RunStarted(**started, time=1000.0))  # resumed after a kill, 870 s later
    run.log(RunFinished(step=7, metrics={}, time=1045.0))
    run.close()
    assert RunInfo(tmp_path / "r").active_seconds() == 30.0 + 45.0
    assert RunInfo(tmp_path / "empty").active_seconds() == 0.0  # no events yet


def test_the_test_predictions_read_back(tmp_path: Path) -> None:
    run = RunInfo(tmp_path)
    assert run.predictions() == {} and run.correct() == ""  # not written yet
    written = {"domains": ["books", "dvd", "dvd"], "labels": [1, 0, 1], "predictions": [1, 1, 1]}
    run.predictions_file.write_text(json.dumps(written))
    assert run.predictions() == written
    assert run.correct() == "101"
    assert run.correct_by_domain() == {"books": "1", "dvd": "01"}
    run.predictions_file.write_text('{"predictions": [1')  # cut short
    assert run.predictions() == {} and run.correct() == "" and run.correct_by_domain() == {}


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KdtuiError, match="no such run directory"):
        read_run(tmp_path / "missing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(KdtuiError, match=r"notes: not a kdtui run \(no config.toml\)"):
        read_run(tmp_path / "notes")
    with pytest.raises(KdtuiError, match="no such run directory"):
        read_run(tmp_path / "notes" / "todo.txt")
    assert find_run(tmp_path / "notes") is None and find_run(tmp_path / "missing") is None


def test_a_run_is_found_from_its_model_and_as_a_profile(tmp_path: Path) -> None:
    start_run(tmp_path / "t").close()
    assert run_of_model(tmp_path / "t" / "model").path == tmp_path / "t"
    assert run_of_model(tmp_path / "t" / "best") is None
    assert run_of_model(tmp_path / "elsewhere" / "model") is None
    assert find_profile(str(tmp_path / "t")) == tmp_path / "t" / CONFIG_FILE


def test_the_students_of_a_distill_run_over_all_domains(tmp_path: Path) -> None:
    writer = start_run(tmp_path / "d", command="distill")
    for domain in ("dvd", "books"):
        model = writer.student(domain).model
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
    writer.student("kitchen").best.mkdir(parents=True)  # still training: no model yet
    writer.close()
    run = read_run(tmp_path / "d")
    assert run.students() == [tmp_path / "d" / "domains" / d for d in ("books", "dvd")]
    assert run.saved_model() is None
    run.model.mkdir()  # a single-domain run: its own model is the one
    assert run.students() == []


def test_the_newest_finished_run_of_a_command_is_found_behind_data_notes(tmp_path: Path) -> None:
    """`kdtui prune` without --model takes the newest finished teacher run; a run whose events
    start with a note about the data (before run_started) is still a teacher run."""

    def make(name: str, command: str, note: bool, mtime: float) -> Path:
        run = tmp_path / name
        run.mkdir()
        lines = [{"type": "message", "time": 1.0, "level": "info", "text": "10% held out"}] * note
        lines.append({"type": "run_started", "time": 2.0, "command": command})
        (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
        (run / "metrics.json").write_text("{}")
        os.utime(run / "metrics.json", (mtime, mtime))
        return run

    old = make("old", "teacher", note=False, mtime=1_000)
    noted = make("noted", "teacher", note=True, mtime=2_000)
    make("pruned", "prune", note=False, mtime=3_000)
    assert RunInfo(noted).command() == "teacher" and RunInfo(tmp_path / "missing").command() is None
    assert latest_finished_run(tmp_path, "teacher") == noted
    (noted / "metrics.json").unlink()
    assert latest_finished_run(tmp_path, "teacher") == old
