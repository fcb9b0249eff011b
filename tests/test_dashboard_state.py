"""The dashboard's UI-free parts: the follower, the run-state model, run summaries, formatters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdtui.dashboard import fmt
from kdtui.dashboard.runs import (
    RunScanner,
    check_run_target,
    is_runs_folder,
    resolve_run_path,
    teacher_accuracy,
)
from kdtui.dashboard.state import (
    RunState,
    Series,
    diagnostics_line,
    domain_line,
    ema,
    layer_grid,
    thin,
)
from kdtui.dashboard.widgets.layer_heatmap import _layer_labels
from kdtui.dashboard.widgets.loss_legend import legend_line
from kdtui.errors import KdtuiError
from kdtui.events import Message, RunFailed, RunStarted, Step
from kdtui.runlog import EventFollower, FollowBatch
from tests import dashboard_fixtures as fx


def step(s: int, t: float, **losses: float) -> Step:
    return Step(
        step=s,
        total_steps=100,
        epoch=0.0,
        lr=1e-3,
        loss=sum(losses.values()),
        losses=losses,
        time=t,
    )


# -- follower ----------------------------------------------------------------------------------


def test_follower_waits_for_the_file_and_keeps_a_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "run" / "events.jsonl"
    follower = EventFollower(path)
    first = follower.poll()
    assert not first.exists and not first.events and first.at_end

    path.parent.mkdir()
    line = step(1, fx.T0, ce=0.5).to_json()
    with open(path, "w") as f:
        f.write(line + "\n" + line[:20])  # the second record is half written
    batch = follower.poll()
    assert batch.exists and [e.step for e in batch.events] == [1] and batch.malformed == 0
    assert follower.poll().events == []  # still half a line

    with open(path, "a") as f:
        f.write(line[20:] + "\n")
    assert [e.step for e in follower.poll().events] == [1]


def test_follower_counts_unknown_types_apart_from_garbage(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"type":"from_the_future","x":1}\n{not json\n\n{"type":"step","bogus":1}\n'
        + Message(level="info", text="hi").to_json()
        + "\n"
    )
    batch = EventFollower(path).poll()
    assert batch.unknown == {"from_the_future": 1}
    assert batch.malformed == 2  # bad JSON, and a known type with wrong fields
    assert [e.type for e in batch.events] == ["message"]


def test_follower_reads_a_big_file_in_slices(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(step(s, fx.T0 + s, ce=1.0).to_json() + "\n" for s in range(1, 201)))
    follower = EventFollower(path, max_bytes=4096)
    seen, polls = [], 0
    while True:
        batch = follower.poll()
        polls += 1
        seen += [e.step for e in batch.events]
        if batch.at_end:
            break
    assert seen == list(range(1, 201)) and polls > 3


def poll_to_end(follower: EventFollower) -> list[FollowBatch]:
    batches = [follower.poll()]
    while not batches[-1].at_end:
        batches.append(follower.poll())
    return batches


@pytest.mark.parametrize("slice_bytes", [64, 1000, 1 << 16])
def test_follower_drops_a_never_ending_line_and_counts_it(tmp_path: Path, slice_bytes: int) -> None:
    path = tmp_path / "events.jsonl"
    event = step(1, fx.T0, ce=0.5).to_json() + "\n"
    path.write_text(event + "x" * 5000)  # a line with no newline, longer than max_line
    follower = EventFollower(path, max_bytes=slice_bytes, max_line=1000)
    batches = poll_to_end(follower)
    assert [e.step for b in batches for e in b.events] == [1]
    assert sum(b.oversized for b in batches) == 1
    assert len(follower._partial) <= 1000  # nothing buffered beyond the cap

    with open(path, "a") as f:  # more of the same line, then its end and a real event
        f.write("x" * 5000 + "\n" + step(2, fx.T0, ce=0.4).to_json() + "\n")
    batches = poll_to_end(follower)
    assert [e.step for b in batches for e in b.events] == [2]
    assert sum(b.oversized for b in batches) == 0 and follower.oversized == 1


def test_follower_drops_a_complete_line_over_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    event = step(1, fx.T0, ce=0.5).to_json() + "\n"
    path.write_text("y" * 3000 + "\n" + event)
    batch = EventFollower(path, max_line=1000).poll()
    assert batch.oversized == 1 and [e.step for e in batch.events] == [1]
    assert batch.malformed == 0


def test_follower_starts_over_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        step(1, fx.T0, ce=1.0).to_json() + "\n" + step(2, fx.T0, ce=1.0).to_json() + "\n"
    )
    follower = EventFollower(path)
    assert len(follower.poll().events) == 2
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(step(1, fx.T0, ce=9.0).to_json() + "\n")
    os.replace(replacement, path)  # what --force does: a new file under the same name
    batch = follower.poll()
    assert batch.reset and [e.losses["ce"] for e in batch.events] == [9.0]


# -- state -------------------------------------------------------------------------------------


def test_series_stays_bounded_and_keeps_the_mean() -> None:
    series = Series(capacity=64)
    for s in range(1, 100_001):
        series.add(s, float(s))
    xs, ys = series.points()
    assert len(series) <= 64 and len(xs) >= 32
    assert xs[-1] == 100_000 and xs == sorted(xs)
    # Each stored point is the mean of the steps its bucket covers.
    width = series.stride
    assert ys[0] == pytest.approx((1 + width) / 2)


def test_state_folds_100k_steps_with_bounded_memory() -> None:
    state = RunState(capacity=512)
    state.apply(fx.started("prune", 100_000))
    for s in range(1, 100_001):
        state.apply(
            Step(
                step=s,
                total_steps=100_000,
                epoch=0.0,
                lr=1e-4,
                loss=1.0,
                losses={"ce": 0.5, "kd": 0.5},
                metrics={"sparsity/target": s / 1e5, "sparsity/actual": s / 1e5},
                time=fx.T0 + s,
            )
        )
    assert state.step == 100_000 and state.has_sparsity
    for series in (*state.losses.values(), *state.metrics.values()):
        assert len(series) <= 512
        assert series.points()[0][-1] == 100_000


def test_status_elapsed_eta_and_stall() -> None:
    state = RunState(stall_after=60)
    assert state.status(fx.T0) == "waiting"
    state.apply(fx.started("teacher", 100))
    for s in range(1, 11):
        state.apply(step(s, fx.T0 + s, ce=1.0))
    now = fx.T0 + 10.5
    assert state.status(now) == "running"
    assert state.elapsed(now) == pytest.approx(10.5)
    assert state.eta(now) == pytest.approx(90.0)  # one step per second, 90 left
    assert state.status(fx.T0 + 10 + 61) == "stalled"
    assert state.eta(fx.T0 + 10 + 61) is None
    state.apply(RunFailed(step=10, error="boom", kind="internal", time=fx.T0 + 12))
    assert state.status(fx.T0 + 1000) == "failed" and state.error == "boom"
    assert state.elapsed(fx.T0 + 1000) == pytest.approx(12.0)  # frozen at the end


def test_a_long_pause_raises_the_stall_threshold() -> None:
    state = RunState(stall_after=60)
    state.apply(fx.started("teacher", 100))
    state.apply(step(1, fx.T0 + 1, ce=1.0))
    state.apply(step(2, fx.T0 + 101, ce=1.0))  # a 100 s evaluation happened in between
    assert state.stall_threshold() == pytest.approx(300.0)
    assert state.status(fx.T0 + 101 + 200) == "running"


def test_a_stop_the_user_asked_for_is_worded_as_a_stop_not_a_failure() -> None:
    state = RunState()
    state.apply(fx.started("teacher", 20))
    state.apply(step(1, fx.T0 + 1, ce=1.0))
    state.apply(RunFailed(step=7, error=fx.STOP_ERROR, kind="interrupted", time=fx.T0 + 10))
    assert state.status(fx.T0 + 11) == "stopped" and state.errors == 0
    last = state.log[-1]
    assert last.level == "stopped"
    assert last.text == f"run stopped at step 7: {fx.STOP_ERROR}"
    assert not any("fail" in entry.text for entry in state.log)


@pytest.mark.parametrize(("code", "status"), [(130, "stopped"), (143, "stopped"), (1, "failed")])
def test_a_launched_process_ended_by_a_signal_is_stopped(code: int, status: str) -> None:
    state = RunState()
    state.apply(fx.started("teacher", 20))
    state.process_exited(code, "", fx.T0 + 5)
    assert state.status(fx.T0 + 5) == status
    assert state.log[-1].level == ("stopped" if status == "stopped" else "error")


def test_resume_rewinds_series_and_counts_sessions() -> None:
    state = RunState()
    state.apply(fx.started("teacher", 20))
    for s in range(1, 11):
        state.apply(step(s, fx.T0 + s, ce=1.0))
    state.apply(RunFailed(step=10, error="interrupted", kind="interrupted", time=fx.T0 + 10))
    assert state.status(fx.T0 + 11) == "stopped"
    resumed = RunStarted(
        run="r",
        command="teacher",
        profile="smoke",
        total_steps=20,
        config={},
        resumed_from_step=8,
        time=fx.T0 + 100,
    )
    state.apply(resumed)
    assert state.status(fx.T0 + 100) == "running"
    assert state.losses["ce"].points()[0][-1] == 8  # steps 9, 10 will be logged again
    state.apply(step(9, fx.T0 + 101, ce=2.0))
    assert state.elapsed(fx.T0 + 101) == pytest.approx(10 + 1)


def test_stage_marks_where_terms_change() -> None:
    state = RunState()
    state.apply_all(fx.teacher_events(total=4)[:1])
    state.apply(step(1, fx.T0, hidden=1.0, attn=1.0))
    state.apply(step(2, fx.T0, hidden=1.0, attn=1.0))
    state.apply(step(3, fx.T0, soft_ce=1.0))
    assert state.stage_marks == [3]
    assert state.loss_terms() == ["loss", "hidden", "attn", "soft_ce"]


def test_pruning_diagnostics_reach_the_sparsity_panel_line() -> None:
    state = RunState()
    base = step(1, fx.T0, ce=1.0)
    diag = {
        "sparsity/actual": 0.2,
        "prune/overlap_magnitude": 0.81,
        "prune/overlap_random": 0.8,
        "prune/score_std": 0.012,
        "prune/grad_median": 3e-10,
        "prune/flipped": 0.0025,
    }
    state.apply(Step(**{**base.__dict__, "metrics": diag}))
    state.apply(Step(**{**step(2, fx.T0, ce=1.0).__dict__, "metrics": {"sparsity/actual": 0.3}}))
    assert state.prune_diagnostics()["overlap_magnitude"] == 0.81  # the latest value kept
    line = diagnostics_line(state.prune_diagnostics())
    assert "kept∩magnitude 0.81 (random 0.80)" in line
    assert "|∂L/∂S| 3.0e-10 < eps!" in line and "flipped 0.25%" in line
    assert diagnostics_line({}) == ""


def test_gradient_norms_and_the_domain_game_are_kept_latest_first() -> None:
    state = RunState()
    metrics = {"grad/ce": 0.9, "grad/domain_adv": 0.5, "domain/acc_true": 0.75}
    metrics |= {"domain/acc_corrupted": 0.25, "domain/adv_chance": 1.386}
    state.apply(Step(**{**step(4, fx.T0, ce=1.0, domain_adv=1.3).__dict__, "metrics": metrics}))
    later = {"domain/acc_true": 0.5, "domain/acc_corrupted": 0.3, "domain/adv_chance": 1.386}
    state.apply(Step(**{**step(5, fx.T0, ce=1.0).__dict__, "metrics": later}))
    assert state.latest("grad/") == {"ce": 0.9, "domain_adv": 0.5}
    assert (
        domain_line(state.latest("domain/"))
        == "domain head: true 50% · corrupted 30% · chance 1.39"
    )
    assert domain_line({}) == ""


def test_process_exit_without_an_ending_is_a_failure() -> None:
    state = RunState()
    state.process_exited(2, "error: no such profile", now=fx.T0)
    assert state.status(fx.T0) == "failed"
    assert "code 2" in state.error and "no such profile" in state.error
    finished = RunState()
    finished.apply_all(fx.teacher_events(total=4))
    finished.process_exited(0, "", now=fx.T0)
    assert finished.status(fx.T0) == "finished"


def test_layer_grid_parses_bert_names() -> None:
    numbers, matrices, grid = layer_grid(
        {
            "layer.1.attention.self.query": 0.5,
            "bert.encoder.layer.0.output.dense": 0.9,
            "pooler": 0.1,
        }
    )
    assert numbers == [-1, 0, 1]
    assert matrices[:2] == ["query", "ffn.out"] and "pooler" in matrices
    assert grid[("ffn.out", 0)] == 0.9


def test_thin_keeps_the_span_and_the_means() -> None:
    xs = list(range(1, 1001))
    tx, ty = thin(xs, [float(x) for x in xs], 100)
    assert len(tx) == 100 and tx[0] == 10 and tx[-1] == 1000
    assert ty[0] == pytest.approx(5.5)  # mean of 1..10
    assert thin(xs[:50], xs[:50], 100) == (xs[:50], xs[:50])


def test_formatters() -> None:
    assert ema([1.0, 1.0, 1.0], 0.8) == pytest.approx([1.0, 1.0, 1.0])  # bias corrected
    assert fmt.sparkline([0.0, 0.5, 1.0], 10) == "▁▅█"
    assert fmt.sparkline([0.7, 0.7], 10) == "▄▄"
    assert fmt.duration(3725) == "1:02:05" and fmt.duration(65) == "1:05"
    assert fmt.int_ticks(1, 100_000, 5) == [20_000, 40_000, 60_000, 80_000, 100_000]


# -- runs on disk ------------------------------------------------------------------------------


def test_scanner_summarises_runs_incrementally(tmp_path: Path) -> None:
    fx.write_teacher(tmp_path / "a")
    fx.write_failed(tmp_path / "b")
    fx.write_stalled(tmp_path / "c")
    (tmp_path / "not-a-run").mkdir()
    scanner = RunScanner(tmp_path, stall_after=60)
    rows = {s.name: s for s in scanner.scan(now=fx.T0 + 1000)}
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"].status == "finished" and rows["a"].step == 40
    assert rows["a"].best_accuracy == pytest.approx(0.88)
    assert rows["b"].status == "failed" and rows["b"].step == 17
    assert rows["c"].status == "stalled" and rows["c"].progress == pytest.approx(12 / 40)
    with open(tmp_path / "c" / "events.jsonl", "a") as f:
        f.write(step(13, fx.T0 + 999, ce=1.0).to_json() + "\n")
    rows = {s.name: s for s in scanner.scan(now=fx.T0 + 1000)}
    assert rows["c"].status == "running" and rows["c"].step == 13


def test_paths_a_user_can_give(tmp_path: Path) -> None:
    run = fx.write_teacher(tmp_path / "runs" / "a")
    assert resolve_run_path(run / "events.jsonl") == run
    assert is_runs_folder(tmp_path / "runs") and not is_runs_folder(run)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(KdtuiError, match="not a run directory"):
        resolve_run_path(tmp_path / "notes.txt")
    assert resolve_run_path(tmp_path / "later") == tmp_path / "later"  # waited for


def test_a_folder_that_is_neither_a_run_nor_a_folder_of_runs_is_refused(tmp_path: Path) -> None:
    stranger = tmp_path / "home"
    (stranger / "docs").mkdir(parents=True)
    (stranger / ".bashrc").write_text("x")
    (stranger / "docs" / "notes.txt").write_text("x")
    with pytest.raises(KdtuiError) as caught:
        check_run_target(stranger)
    message = str(caught.value)
    assert "is not a kdtui run or a folder of runs (it holds .bashrc, docs/)" in message
    assert "a run folder holds events.jsonl and config.toml" in message

    fx.write_teacher(tmp_path / "runs" / "a")
    starting = tmp_path / "runs" / "b"  # locked, not one event yet: a run about to start
    starting.mkdir()
    (starting / ".lock").write_text("1 host\n")
    (tmp_path / "empty").mkdir()
    for waited_for in (tmp_path / "runs" / "a", starting, tmp_path / "empty", tmp_path / "later"):
        check_run_target(waited_for)
    check_run_target(tmp_path / "runs")
    assert is_runs_folder(tmp_path / "runs") and not is_runs_folder(starting)


def test_teacher_accuracy_from_the_teacher_run(tmp_path: Path) -> None:
    teacher = fx.write_teacher(tmp_path / "runs" / "teacher-a")
    student = tmp_path / "runs" / "distill-a"
    found = teacher_accuracy("runs/teacher-a", student)  # relative to the runs folder's parent
    assert found["books"] == pytest.approx(0.85) and found["all"] == pytest.approx(0.88)
    assert teacher_accuracy(str(teacher), student) == found
    assert teacher_accuracy("minilm", student) == {}


def test_the_dashboard_never_imports_torch() -> None:
    # What this buys is a speed (the dashboard opens in ~0.7 s; torch, transformers and
    # accelerate took 4.4 s to import on the loaded machine), which a test on a shared machine
    # cannot time reliably; the imports are what it can check.
    code = (
        "import sys;"
        "import kdtui.cli, kdtui.dashboard.app, kdtui.dashboard.launch;"
        "print([m for m in ('torch', 'transformers', 'datasets', 'accelerate')"
        " if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["teacher", "--profile", "smoke"],
        ["distill", "--profile", "smoke", "--teacher", "{up}", "--domain", "books"],
        ["prune", "--profile", "smoke", "--model", "{up}"],
        ["teacher", "--resume", "{up}"],
    ],
    ids=["teacher", "distill", "prune", "resume"],
)
def test_dashboard_flag_reaches_the_dashboard_without_torch(
    tmp_path: Path, argv: list[str]
) -> None:
    """`COMMAND --dashboard` resolves the config (reading an upstream run's config.toml) and
    opens the dashboard in this process: none of that may import torch."""
    upstream = tmp_path / "runs" / "up"
    upstream.mkdir(parents=True)
    (upstream / "config.toml").write_text('[run]\nname = "up"\n[model]\nname = "tiny"\n')
    argv = [a.replace("{up}", str(upstream)) for a in argv]
    code = (
        "import sys; import kdtui.dashboard.launch as launch;\n"
        "def follow(argv, run_dir, profile_text=''):\n"
        "    heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate')"
        " if m in sys.modules]\n"
        "    print('heavy', heavy, 'child', argv[0]); return 0\n"
        "launch.launch_and_follow = follow\n"
        "from kdtui.cli import main; sys.argv = ['kdtui', *sys.argv[1:]]; main()\n"
    )
    extra = [] if "--resume" in argv else ["--output-dir", str(tmp_path / "runs")]
    out = subprocess.run(
        [sys.executable, "-c", code, *argv, *extra, "--dashboard"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert f"heavy [] child {argv[0]}" in out.stdout


# -- the loss legend's one line ------------------------------------------------------------------

CAP_TERMS = {
    "loss": 52.5,
    "ce": 0.698,
    "kd": 3.3e-05,
    "l1": 0.484,
    "prc_unsup": 2.69,
    "prc_sup": 0.108,
    "fic_unsup": 3.18,
    "fic_sup": 0.109,
    "snc_unsup": 0.0,
    "snc_sup": 0.123,
}  # a CAP prune run's ten terms, which took four lines at 80x24


def test_the_legend_is_one_line_and_gives_up_grads_then_spaces_then_terms() -> None:
    terms = {"loss": 0.149, "hidden": 0.1, "attn": 0.05}
    grads = {"hidden": 0.012}
    full = legend_line(terms, {"attn"}, grads, 80).plain
    assert full == "1━loss 0.149  2━hidden 0.1 ∇0.012  3 attn"
    assert legend_line(terms, {"attn"}, grads, 35).plain == "1━loss 0.149 2━hidden 0.1 3"
    cut = legend_line(CAP_TERMS, set(), {}, 78).plain
    assert cut == "1━loss 52.5 2━ce 0.698 3━kd 3.3e-05 4━l1 0.484 5━prc_unsup 2.69 +5"
    for width in (10, 20, 36, 78, 100, 160):
        line = legend_line(CAP_TERMS, set(), {"ce": 0.5}, width)
        assert "\n" not in line.plain and line.cell_len <= width
        words = line.plain.split()
        for i, word in enumerate(words):  # a term is shown with its whole value, or not at all
            if "━" in word:
                name = word.split("━")[1]
                assert words[i + 1] == fmt.short(CAP_TERMS[name])
    assert legend_line(CAP_TERMS, set(), {}, 200).plain.count("━") == 10
    assert legend_line({}, set(), {}, 80).plain == "no loss logged yet"


def test_layer_numbers_never_run_into_each_other() -> None:
    assert _layer_labels(list(range(12)), 4) == "".join(f"{n:>4}" for n in range(12))
    assert _layer_labels(list(range(12)), 2) == " 0   2   4   6   8  10  "  # was "91011"
    assert _layer_labels([-1, *range(24)], 1).split() == ["*", "5", "10", "15", "20"]


def test_precision_reads_old_and_new_configs() -> None:
    """An old run's train.bf16 goes through config.renamed, the rename table config.toml
    readers share."""
    cases = [
        ({"train": {"precision": "auto"}}, "auto"),
        ({"train": {"bf16": True}}, "bf16"),
        ({"train": {"bf16": False}}, "fp32"),
        ({"train": {"bf16": "yes"}}, ""),  # not true/false: the config does not say
        ({"train": {}}, ""),
        ({}, ""),
    ]
    for config, shown in cases:
        state = RunState()
        state.config = config
        assert state.precision == shown, config
