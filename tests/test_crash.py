"""Crash safety: a teacher, distill or prune run SIGKILLed during a step, an evaluation or a
checkpoint write, then `--resume`d, ends exactly like an uninterrupted run; so does one stopped
with Ctrl-C, SIGTERM or SIGHUP; a second signal abandons a checkpoint being written, and a
half-written one is removed on the next start; a run that a live process writes is refused to
any other command; a damaged newest checkpoint is reported and the previous one used; a full
disk is a clear error that leaves no half-written checkpoint; a NaN loss stops the run and keeps
the last good checkpoint."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdtui.checkpoint import list_checkpoints
from kdtui.events import Checkpoint as CheckpointEvent
from kdtui.events import Message, RunFailed, RunStarted
from kdtui.faults import CRASH_ENV
from kdtui.sparse import SPARSE_FILE
from tests.conftest import REPO, events_of, invoke, metrics_of

TEACHER = ["teacher", "--profile", "smoke", "--quiet"]


def run_until_crash(args: list[str], crash_at: str) -> subprocess.CompletedProcess:
    """Run the CLI in a child process that kills (or, for "interrupt:N", Ctrl-Cs) itself at
    `crash_at` ("point:step")."""
    env = {**os.environ, "PYTHONPATH": str(REPO), CRASH_ENV: crash_at}
    result = subprocess.run(
        [sys.executable, "-m", "kdtui", *args], env=env, capture_output=True, text=True
    )
    last = crash_at.split(",")[-1]  # the fault that ends the process
    signals = last.split(":")[2:]
    if last.startswith("interrupt"):
        expected = 130
    elif signals:  # stopped by a signal it handles: exit code 128 + the signal's number
        expected = 128 + signal.Signals[signals[0].split("+")[0]]
    else:
        expected = -signal.SIGKILL
    assert result.returncode == expected, f"did not stop at {crash_at}: {result.stderr}"
    return result


def assert_same_result(
    expected: Path, actual: Path, model: str = "model", weights: str = "model.safetensors"
) -> None:
    assert metrics_of(actual) == metrics_of(expected)
    a = load_file(expected / model / weights)
    b = load_file(actual / model / weights)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    result = invoke(*TEACHER, "--output-dir", str(runs), "--name", "full")
    assert result.exit_code == 0, result.stderr
    return runs / "full"


@pytest.mark.parametrize("crash_at", ["step:6", "eval:8", "checkpoint:8"])
def test_teacher_killed_then_resumed_equals_uninterrupted(
    uninterrupted: Path, runs: Path, crash_at: str
) -> None:
    run = runs / "killed"
    run_until_crash([*TEACHER, "--output-dir", str(runs), "--name", "killed"], crash_at)
    assert not (run / "metrics.json").exists()
    if crash_at.startswith("checkpoint"):
        # The half-written folder never took the place of a checkpoint.
        assert (run / "checkpoints" / "step-00000008.tmp").is_dir()
        assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000004"]
    resumed = invoke("teacher", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_result(uninterrupted, run)
    assert not (run / "checkpoints" / "step-00000008.tmp").exists()


@pytest.fixture(scope="module")
def teacher_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A meta-teacher to distill from and a plain teacher to prune, each run once."""
    runs = tmp_path_factory.mktemp("teachers")
    for name, method in (("meta", "meta"), ("mix", "mix")):
        result = invoke(*TEACHER, "--method", method, "--output-dir", str(runs), "--name", name)
        assert result.exit_code == 0, result.stderr
    return runs


def _other_command(teacher_runs: Path, command: str) -> list[str]:
    if command == "distill":
        # books: 6 steps per stage; steps 1-6 distil intermediate layers, 7-12 predictions.
        return ["distill", "--profile", "smoke", "--quiet", "--domain", "books",
                "--teacher", str(teacher_runs / "meta")]  # fmt: skip
    if command == "prune-heads":
        # heads-ffn rounds of 10% each: a kill at step 6 falls between rounds.
        return ["prune", "--profile", "smoke", "--quiet", "--sparsity", "0.5",
                "--structure", "heads-ffn", "--model", str(teacher_runs / "mix")]  # fmt: skip
    # 12 steps: the cubic schedule prunes during steps 2-9, so every point below is mid-pruning.
    return ["prune", "--profile", "smoke", "--quiet", "--sparsity", "0.9",
            "--model", str(teacher_runs / "mix")]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "crash_at"),
    [
        ("distill", "step:5"),  # stage 1, after its first checkpoint
        ("distill", "checkpoint:6"),  # the end of stage 1
        ("distill", "eval:10"),  # stage 2
        ("prune", "step:6"),
        ("prune", "eval:8"),
        ("prune", "checkpoint:8"),
        ("prune-heads", "step:6"),
    ],
)
def test_distill_and_prune_killed_then_resumed_equal_uninterrupted(
    teacher_runs: Path, runs: Path, command: str, crash_at: str
) -> None:
    argv = [*_other_command(teacher_runs, command), "--output-dir", str(runs)]
    full = invoke(*argv, "--name", "full")
    assert full.exit_code == 0, full.stderr
    run_until_crash([*argv, "--name", "killed"], crash_at)
    assert not (runs / "killed" / "metrics.json").exists()
    resumed = invoke(argv[0], "--resume", str(runs / "killed"), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_result(runs / "full", runs / "killed")
    if command == "prune-heads":
        assert metrics_of(runs / "killed")["kept_heads"] == metrics_of(runs / "full")["kept_heads"]
    if command == "prune":
        assert_same_result(runs / "full", runs / "killed", "model-sparse", SPARSE_FILE)
    assert not list((runs / "killed").rglob("*.tmp"))
    messages = [e.text for e in events_of(runs / "killed") if isinstance(e, Message)]
    assert any(m.startswith("resumed ") and " from step " in m for m in messages)


@pytest.mark.parametrize("command", ["teacher", "distill", "prune"])
def test_ctrl_c_checkpoints_the_step_it_stopped_at_and_resumes_to_the_same_result(
    teacher_runs: Path, runs: Path, command: str
) -> None:
    argv = TEACHER if command == "teacher" else _other_command(teacher_runs, command)
    argv = [*argv, "--output-dir", str(runs)]
    full = invoke(*argv, "--name", "full")
    assert full.exit_code == 0, full.stderr
    stopped = run_until_crash([*argv, "--name", "stopped"], "interrupt:7")
    run = runs / "stopped"
    assert stopped.stderr.endswith(
        f"interrupted by Ctrl-C (SIGINT): the last checkpoint of {run} is kept; "
        f"continue with: kdtui {argv[0]} --resume {run}\n"
    )
    events = events_of(run)
    assert isinstance(events[-1], RunFailed) and events[-1].kind == "interrupted"
    checkpoints = [e for e in events if isinstance(e, CheckpointEvent) and e.kind != "best"]
    assert checkpoints[-1].step == 7  # the step that was running when Ctrl-C came
    resumed = invoke(command, "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_result(runs / "full", run)


@pytest.mark.parametrize(
    ("crash_at", "stopped_at"),
    [
        ("step:7:SIGTERM", 7),  # mid-step: the step is finished and checkpointed
        ("checkpoint:8:SIGTERM", 8),  # while a checkpoint is written: that one completes
        ("step:7:SIGHUP", 7),  # the terminal went away
    ],
)
def test_sigterm_and_sighup_stop_like_ctrl_c_and_resume_to_the_same_result(
    uninterrupted: Path, runs: Path, crash_at: str, stopped_at: int
) -> None:
    run = runs / "stopped"
    stopped = run_until_crash([*TEACHER, "--output-dir", str(runs), "--name", "stopped"], crash_at)
    name = crash_at.rsplit(":", 1)[1]
    assert stopped.stderr.endswith(
        f"interrupted by {name}: the last checkpoint of {run} is kept; "
        f"continue with: kdtui teacher --resume {run}\n"
    )
    events = events_of(run)
    assert isinstance(events[-1], RunFailed) and events[-1].kind == "interrupted"
    assert name in events[-1].error
    assert events[-1].step == stopped_at  # the step reached, not 0
    checkpoints = [e for e in events if isinstance(e, CheckpointEvent) and e.kind != "best"]
    assert checkpoints[-1].step == stopped_at
    assert not list(run.rglob("*.tmp")) and not (run / ".lock").exists()
    resumed = invoke("teacher", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_result(uninterrupted, run)
    # The dashboard's header reads the profile from the latest run_started: a resume keeps it.
    started = [e for e in events_of(run) if isinstance(e, RunStarted)]
    assert [(e.profile, e.resumed_from_step) for e in started] == [
        ("smoke", 0),
        ("smoke", stopped_at),
    ]


def test_a_second_signal_abandons_the_checkpoint_being_written(
    uninterrupted: Path, runs: Path
) -> None:
    run = runs / "stopped"
    argv = [*TEACHER, "--output-dir", str(runs), "--name", "stopped"]
    run_until_crash(argv, "checkpoint:8:SIGTERM+SIGTERM")
    assert not list(run.rglob("*.tmp"))  # the half-written step-8 folder was removed
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000004"]
    assert isinstance(events_of(run)[-1], RunFailed)
    resumed = invoke("teacher", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_result(uninterrupted, run)


def test_a_checkpoint_killed_mid_write_is_removed_on_the_next_start(
    uninterrupted: Path, runs: Path
) -> None:
    # Ctrl-C at step 7, then SIGKILL while its checkpoint is written: step 7 is never saved
    # again, so only the start of the resumed run can remove the half-written folder.
    run = runs / "killed"
    argv = [*TEACHER, "--output-dir", str(runs), "--name", "killed"]
    run_until_crash(argv, "step:7:SIGINT,checkpoint:7")
    assert (run / "checkpoints" / "step-00000007.tmp").is_dir()
    resumed = invoke("teacher", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert not list(run.rglob("*.tmp"))
    assert_same_result(uninterrupted, run)


def test_one_writer_per_run_directory(uninterrupted: Path, runs: Path) -> None:
    """A second command on a run that a live process writes is refused, whether it starts a
    run there, replaces it or resumes it; once the writer is killed, its lock is stale and a
    resume takes it over."""
    from kdtui.dashboard.runs import RunScanner

    run = runs / "busy"
    argv = [*TEACHER, "--output-dir", str(runs), "--name", "busy"]
    env = {**os.environ, "PYTHONPATH": str(REPO), CRASH_ENV: "checkpoint:8:SIGSTOP"}
    writer = subprocess.Popen(
        [sys.executable, "-m", "kdtui", *argv], env=env, stderr=subprocess.DEVNULL
    )
    try:
        _, status = os.waitpid(writer.pid, os.WUNTRACED)  # frozen mid-run, holding the lock
        assert os.WIFSTOPPED(status)
        events_before = (run / "events.jsonl").read_bytes()
        for second in (argv, [*argv, "--force"], ["teacher", "--resume", str(run), "--quiet"]):
            result = invoke(*second)
            assert result.exit_code == 2, result.stderr
            assert result.stderr == (
                f"error: {run} is in use: process {writer.pid} is writing to it; wait for it to "
                f"end, or stop it with `kill {writer.pid}` (it checkpoints and stops)\n"
            )
        assert (run / "events.jsonl").read_bytes() == events_before
        assert [s.name for s in RunScanner(runs).scan()] == ["busy"]  # the dashboard sees it
    finally:
        writer.kill()
        writer.wait()
    assert (run / ".lock").is_file()  # left by the killed writer
    resumed = invoke("teacher", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert not (run / ".lock").exists()
    assert_same_result(uninterrupted, run)


def files_of(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_run_resumed_by_another_command_is_refused_and_left_as_it_was(
    teacher_runs: Path, runs: Path
) -> None:
    """`kdtui teacher --resume` of a prune run read the prune run's config as a teacher's and
    failed inside the optimizer, logging a failed teacher run into the prune run."""
    run = runs / "stopped"
    argv = [*_other_command(teacher_runs, "prune"), "--output-dir", str(runs), "--name", "stopped"]
    run_until_crash(argv, "interrupt:5")
    before = files_of(run)
    for other in ("teacher", "distill"):
        result = invoke(other, "--resume", str(run), "--quiet")
        assert result.exit_code == 2, result.stderr
        assert result.stderr == (
            f"error: {run} is a prune run; continue it with `kdtui prune --resume {run}` "
            "(nothing was written to it)\n"
        )
    assert files_of(run) == before
    failed = events_of(run)[-1]
    assert isinstance(failed, RunFailed) and failed.kind == "interrupted" and failed.step == 5
    resumed = invoke("prune", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert [e.profile for e in events_of(run) if isinstance(e, RunStarted)] == ["smoke"] * 2


def test_a_resume_that_fails_before_training_leaves_the_run_as_it_was(
    runs: Path, tmp_path: Path
) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"text": f"review {i}", "label": i % 2, "domain": "ab"[i // 2 % 2]} for i in range(64)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = runs / "stopped"
    run_until_crash(
        [*TEACHER, "--data", str(data), "-o", str(runs), "--name", "stopped"], "interrupt:3"
    )
    before = files_of(run)
    data.rename(tmp_path / "moved.jsonl")
    result = invoke("teacher", "--resume", str(run))  # notes and all, as on a terminal
    assert result.exit_code == 2 and "does not exist" in result.stderr, result.stderr
    assert files_of(run) == before  # no run_failed: the run is still a stopped one


def test_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(
    uninterrupted: Path, runs: Path
) -> None:
    run = runs / "damaged"
    run_until_crash([*TEACHER, "--output-dir", str(runs), "--name", "damaged"], "step:10")
    newest = list_checkpoints(run / "checkpoints")[-1]
    assert newest.name == "step-00000008"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as by a failing disk
    resumed = invoke("teacher", "--resume", str(run))  # not a terminal, not --quiet
    assert resumed.exit_code == 0, resumed.stderr
    warnings = [e.text for e in events_of(run) if isinstance(e, Message) and e.level == "warning"]
    assert any("step-00000008 is damaged" in w and "previous checkpoint" in w for w in warnings)
    assert "warning: checkpoint" in resumed.stderr and "is damaged" in resumed.stderr
    assert_same_result(uninterrupted, run)


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_written_checkpoint(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdtui.checkpoint

    real_save = kdtui.checkpoint.torch.save

    def full_disk(obj: object, path: object) -> None:
        real_save(obj, path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kdtui.checkpoint.torch, "save", full_disk)
    result = invoke(*TEACHER, "--output-dir", str(runs), "--name", "full-disk")
    assert result.exit_code == 2
    assert "could not write checkpoint" in result.stderr
    assert "No space left on device" in result.stderr
    run = runs / "full-disk"
    assert not list(run.rglob("*.tmp"))  # the temporary folder was removed
    assert not (run / "best").exists() and not list_checkpoints(run / "checkpoints")
    assert isinstance(events_of(run)[-1], RunFailed)


def test_a_full_disk_while_saving_the_model_leaves_no_half_written_model(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import PreTrainedTokenizerBase

    real_save = PreTrainedTokenizerBase.save_pretrained

    def full_disk(self, folder, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_save(self, folder, *args, **kwargs)  # the weights and some files are written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full_disk)
    result = invoke(*TEACHER, "--output-dir", str(runs), "--name", "full-disk")
    assert result.exit_code == 2
    assert "could not write" in result.stderr and "No space left on device" in result.stderr
    run = runs / "full-disk"
    assert not (run / "model").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".model")]
    assert list_checkpoints(run / "checkpoints")  # the trained weights are kept
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", real_save)
    resumed = invoke("teacher", "--resume", str(run), "--quiet")  # once there is space again
    assert resumed.exit_code == 0, resumed.stderr
    assert (run / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["teacher", "prune"])
def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    runs: Path, monkeypatch: pytest.MonkeyPatch, teacher_runs: Path, command: str
) -> None:
    from kdtui.engine.hooks import CrossEntropyHook

    real = CrossEntropyHook.loss_terms
    calls = []

    def explodes_at_step_6(self, batch, outputs, model):  # noqa: ANN001, ANN202
        calls.append(1)
        terms = real(self, batch, outputs, model)
        return {k: v * float("nan") for k, v in terms.items()} if len(calls) == 6 else terms

    monkeypatch.setattr(CrossEntropyHook, "loss_terms", explodes_at_step_6)
    argv = TEACHER if command == "teacher" else _other_command(teacher_runs, command)
    result = invoke(*argv, "--output-dir", str(runs), "--name", "nan")
    assert result.exit_code == 2
    assert "the loss became NaN/Inf at step 6 (loss, ce" in result.stderr
    assert "the last good checkpoint is" in result.stderr and "step-00000004" in result.stderr
    run = runs / "nan"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000004"]
    failed = events_of(run)[-1]
    assert isinstance(failed, RunFailed) and "NaN" in failed.error
    monkeypatch.setattr(CrossEntropyHook, "loss_terms", real)
    resumed = invoke(command, "--resume", str(run), "--quiet")  # e.g. after fixing the data
    assert resumed.exit_code == 0, resumed.stderr
