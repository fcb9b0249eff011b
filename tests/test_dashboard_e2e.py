"""The dashboard following real processes: `kdtui teacher --profile smoke` end to end, and a
launched run that is stopped or kept going when the dashboard quits; CLI error paths."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdtui.dashboard.app import create_app
from kdtui.dashboard.launch import ChildRun, after_dashboard
from kdtui.dashboard.widgets.domain_table import DomainTable
from kdtui.dashboard.widgets.loss_chart import LossChart
from kdtui.dashboard.widgets.run_screen import RunScreen
from kdtui.dashboard.widgets.stop_run_screen import StopRunScreen
from kdtui.events import Eval, Message, RunFailed, RunFinished, Step
from tests import dashboard_fixtures as fx
from tests.conftest import REPO, events_of, invoke
from tests.test_dashboard_app import screen_text, settled, sync, until


@sync
async def test_dashboard_follows_a_smoke_teacher_run_end_to_end(runs: Path) -> None:
    run_dir = runs / "smoke"
    argv = [
        "teacher",
        "--profile",
        "smoke",
        "--output-dir",
        str(runs),
        "--name",
        "smoke",
        "--max-steps",
        "4",
        "--set",
        "train.eval_every=2",
        "--quiet",
    ]
    child = ChildRun.start(argv, run_dir)
    try:
        app = create_app(run_dir, runs_root=runs, process=child, poll_interval=0.05)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await settled(pilot)
            await until(pilot, lambda: screen.state.outcome is not None, timeout=150)
            await settled(pilot)
            text = screen_text(app)
            assert screen.state.outcome == "finished", (text, child.output_tail())
            events = events_of(run_dir)
            last_eval = [e for e in events if isinstance(e, Eval)][-1]
            rows = {row[0]: row for row in screen.query_one(DomainTable).rows}
            for domain, acc in last_eval.accuracy.items():
                assert rows[domain][1] == pytest.approx(acc)
                assert f"{100 * acc:.1f}" in text
            terms = {k for e in events if isinstance(e, Step) for k in e.losses}
            assert terms and terms <= set(screen.query_one(LossChart).series_lines)
            assert "FINISHED" in text and "step 4/4" in text
            await pilot.press("q")  # the run is over: no question asked
        assert app.return_value is None
        assert after_dashboard(child, app.return_value, run_dir) == 0
        assert isinstance(events[-1], RunFinished)
    finally:
        if child.poll() is None:
            child.popen.kill()


def start_fake(run_dir: Path) -> ChildRun:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f".{run_dir.name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "fake_trainer.py"), str(run_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
    return ChildRun(popen, run_dir.name, log)


@sync
async def test_quit_and_stop_sends_sigint_and_the_run_checkpoints(runs: Path) -> None:
    run_dir = runs / "live"
    child = start_fake(run_dir)
    try:
        app = create_app(run_dir, runs_root=runs, process=child, poll_interval=0.05)
        async with app.run_test(size=(100, 30)) as pilot:
            # A live run never settles: wait for its data instead.
            await until(pilot, lambda: isinstance(app.screen, RunScreen))
            screen = app.screen
            await until(pilot, lambda: screen.state.step >= 3)
            await pilot.press("q")
            assert isinstance(app.screen, StopRunScreen)
            await pilot.press("s")
        assert app.return_value == "stop"
        assert after_dashboard(child, app.return_value, run_dir) == 130
        last = events_of(run_dir)[-1]
        assert isinstance(last, RunFailed) and last.kind == "interrupted"
    finally:
        if child.poll() is None:
            child.popen.kill()


@sync
async def test_quit_and_keep_leaves_the_run_going(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = runs / "bg"
    child = start_fake(run_dir)
    try:
        app = create_app(run_dir, runs_root=runs, process=child, poll_interval=0.05)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunScreen))
            await until(pilot, lambda: app.screen.state.step >= 1)
            await pilot.press("q", "k")
        assert app.return_value == "keep"
        assert after_dashboard(child, app.return_value, run_dir) == 0
        assert child.poll() is None  # still training
        assert f"kdtui dashboard {run_dir}" in capsys.readouterr().out
    finally:
        child.popen.kill()
        child.popen.wait()


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, runs: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a run")
    result = invoke("dashboard", str(notes))
    assert result.exit_code == 2 and "is a file, not a run directory" in result.stderr
    result = invoke("dashboard", "--profile", "smoke")
    assert result.exit_code == 2 and "name the command too" in result.stderr
    stranger = tmp_path / "home"  # what `kdtui dashboard /etc` waited on forever
    (stranger / "docs").mkdir(parents=True)
    (stranger / ".bashrc").write_text("x")
    result = invoke("dashboard", str(stranger))
    assert result.exit_code == 2 and "is not a kdtui run or a folder of runs" in result.stderr
    assert "holds .bashrc, docs/" in result.stderr and "events.jsonl" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (runs / "taken").mkdir()
    (runs / "taken" / "config.toml").write_text("# kdtui teacher: resolved configuration\n")
    (runs / "taken" / "events.jsonl").write_text("")  # a run killed before its first event
    result = invoke(
        "teacher", "--profile", "smoke", "--output-dir", str(runs), "--name", "taken", "--dashboard"
    )
    assert result.exit_code == 2 and "already holds a run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dashboard_flag_starts_the_command_the_user_typed(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], Path]] = []

    def fake_launch(argv: list[str], run_dir: Path, profile_text: str = "") -> int:
        calls.append((argv, run_dir))
        (runs / f".{run_dir.name}.toml").write_text(profile_text)
        return 0

    monkeypatch.setattr("kdtui.dashboard.launch.launch_and_follow", fake_launch)
    result = invoke(
        "teacher",
        "--profile",
        "smoke",
        "--set",
        "train.lr=0.01",
        "--max-steps",
        "3",
        "--output-dir",
        str(runs),
        "--name",
        "n1",
        "--dashboard",
    )
    assert result.exit_code == 0, result.output
    argv, run_dir = calls[-1]
    assert run_dir == runs / "n1"
    resolved = runs / ".n1.toml"  # beside the child's log
    assert argv == ["teacher", "--profile", str(resolved), "--quiet"]
    # The child runs the configuration resolved here.
    from kdtui.resolver import resolve

    config, _ = resolve(str(resolved), command="teacher")
    assert (config.train.lr, config.train.max_steps, config.run.name) == (0.01, 3, "n1")
    assert config.run.output_dir == str(runs)

    result = invoke("dashboard", "--profile", "smoke", "teacher", "-o", str(runs), "--name", "n2")
    assert result.exit_code == 0, result.output
    assert calls[-1] == (["teacher", "--profile", str(runs / ".n2.toml"), "--quiet"], runs / "n2")


def test_the_dashboard_child_runs_the_config_the_foreground_command_would(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prune's config has the most resolved for it: the newest teacher run, that run's data
    under the profile, CAP's loss weights by structure, the scores' initialisation."""
    result = invoke("teacher", "--profile", "smoke", "-o", str(runs), "--name", "t", "-q")
    assert result.exit_code == 0, result.output
    typed = ["prune", "--profile", "smoke", "-o", str(runs), "--structure", "heads-ffn"]
    typed += ["--sparsity", "0.3", "--max-steps", "2", "--set", "prune.num_negatives=8"]
    result = invoke(*typed, "--name", "fg", "-q")
    assert result.exit_code == 0, result.output

    children: list[list[str]] = []

    def run_the_child(argv: list[str], run_dir: Path, profile_text: str = "") -> int:
        children.append(argv)
        (runs / f".{run_dir.name}.toml").write_text(profile_text)
        return invoke(*argv).exit_code

    monkeypatch.setattr("kdtui.dashboard.launch.launch_and_follow", run_the_child)
    result = invoke(*typed, "--name", "bg", "--dashboard")
    assert result.exit_code == 0, result.output
    assert children and "--dashboard" not in children[0]

    def body(run: Path) -> str:  # the resolved values, less the run's own name
        text = (run / "config.toml").read_text()
        return "\n".join(
            line for line in text.splitlines() if not line.startswith(("#", "name = "))
        )

    assert body(runs / "fg") == body(runs / "bg")
    assert f'model = "{runs / "t"}"' in body(runs / "bg")  # the teacher prune picked
    assert "w_unsup = 0.3" in body(runs / "bg")  # the authors' heads-ffn weight


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.mark.usefixtures("utc")
def test_without_a_terminal_the_dashboard_prints_a_summary_and_exits(runs: Path) -> None:
    # CliRunner's streams are not terminals, as with `kdtui dashboard RUN > file` or in a pipe.
    fx.write_teacher(runs / "teacher-a")
    fx.write_stopped(runs / "teacher-c")
    result = invoke("dashboard", str(runs / "teacher-a"))
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout  # no escape codes in the file
    lines = result.stdout.splitlines()
    assert lines[0] == f"run       teacher-fixture ({runs / 'teacher-a'})"
    assert lines[2] == "status    finished  step 40/40 (100.0%)  elapsed 0:21"
    assert "losses    loss 0.0986  ce 0.0986" in lines
    assert lines[-1] == "  22:13:41 run        run finished"

    result = invoke("dashboard", str(runs / "teacher-c"))
    assert "stopped   interrupted by Ctrl-C (SIGINT); resume with --resume" in result.stdout
    assert "failed" not in result.stdout

    result = invoke("dashboard", str(runs))  # a folder of runs: one line each, newest first
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "run        command  status    progress    best acc  started",
        "teacher-c  teacher  stopped   17/40 42%   61.8      2023-11-14 22:13",
        "teacher-a  teacher  finished  40/40 100%  88.0      2023-11-14 22:13",
    ]


def test_with_output_redirected_the_real_command_ends_at_once(runs: Path, tmp_path: Path) -> None:
    """The case measured: stdout to a file used to draw escape codes into it for as long as
    anyone let it run."""
    fx.write_teacher(runs / "teacher-a")
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        done = subprocess.run(
            [sys.executable, "-m", "kdtui", "dashboard", str(runs / "teacher-a")],
            stdout=f,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "status    finished  step 40/40" in text and "\x1b" not in text


def test_starting_a_run_with_the_dashboard_needs_a_terminal(runs: Path) -> None:
    result = invoke("dashboard", "--profile", "smoke", "teacher", "-o", str(runs), "--name", "n")
    assert result.exit_code == 2
    assert "the dashboard needs a terminal" in result.stderr
    assert f"kdtui dashboard {runs / 'n'}" in result.stderr
    assert list(runs.iterdir()) == []  # no child was started, no log written


def test_the_plain_summary_tells_a_killed_run_from_a_running_one(runs: Path) -> None:
    """A run killed without a word (SIGKILL, a power cut) logs no outcome; its events look like
    a running run's until the stall threshold passes, so the summary asks the run's lock."""
    from kdtui.dashboard import plain
    from kdtui.rundir import RunLock

    run = fx.write_stalled(runs / "teacher-k")
    now = fx.stalled_last_time() + 1  # one second after its last event
    text = plain.run_summary(run, now=now)
    assert "status    stopped  step 12/40 (30.0%)  elapsed 0:06\n" in text
    assert "eta" not in text and "running" not in text
    assert (
        "stopped   no process is writing it: it was killed before it could log why; continue "
        f"it with: kdtui teacher --resume {run}\n"
    ) in text
    assert "teacher-k  teacher  stopped" in plain.runs_summary(runs, now=now)

    # Killed while it loaded data: a config.toml and a note, no run_started.
    early = fx.write(runs / "teacher-e", [Message(level="note", text="holding out a dev split")])
    (early / "config.toml").write_text("# kdtui teacher: resolved configuration of run e\n")
    assert (
        "status    stopped before training began: no process is writing it; continue it "
        f"with: kdtui teacher --resume {early}\n"
    ) in plain.run_summary(early, now=now)
    assert "teacher-e  teacher  stopped" in plain.runs_summary(runs, now=now)

    lock = RunLock.acquire(run)  # a live writer
    try:
        text = plain.run_summary(run, now=now)
        assert "status    running  step 12/40 (30.0%)  elapsed 0:07  eta " in text
        assert "teacher-k  teacher  running" in plain.runs_summary(runs, now=now)
    finally:
        lock.release()
