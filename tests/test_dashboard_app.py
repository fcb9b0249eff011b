"""Pilot tests of the dashboard on recorded runs: panels show the right numbers, the follower
picks up appended lines, failure and stall states, key toggles, the run browser."""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot

from kdtui.dashboard.app import DashboardApp, create_app
from kdtui.dashboard.widgets.domain_table import DomainTable
from kdtui.dashboard.widgets.help_screen import HelpScreen
from kdtui.dashboard.widgets.loss_chart import LossChart
from kdtui.dashboard.widgets.loss_legend import LossLegend
from kdtui.dashboard.widgets.run_browser import RunBrowser
from kdtui.dashboard.widgets.run_screen import RunScreen
from kdtui.dashboard.widgets.stop_run_screen import StopRunScreen
from kdtui.events import Message, RunFinished, Step
from tests import dashboard_fixtures as fx

SIZE = (100, 30)


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async Pilot test without an asyncio pytest plugin."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def app_for(run: Path | None, now: float = fx.T0 + 100, **kwargs: object) -> DashboardApp:
    return create_app(run, clock=lambda: now, poll_interval=0.02, **kwargs)  # type: ignore[arg-type]


async def until(pilot: Pilot, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    # Generous: the machine is shared with training jobs; passing tests take well under a second.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the dashboard did not get there in time")
        await pilot.pause(0.02)
    await pilot.pause()


async def settled(pilot: Pilot) -> RunScreen:
    await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen) and pilot.app.screen.settled)
    screen = pilot.app.screen
    assert isinstance(screen, RunScreen)
    return screen


def screen_text(app: DashboardApp) -> str:
    """What a person sees, as plain text."""
    console = Console(width=app.size.width, file=io.StringIO(), record=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


@sync
async def test_teacher_run_panels_show_its_numbers(tmp_path: Path) -> None:
    run = fx.write_teacher(tmp_path / "teacher-a")
    app = app_for(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        text = screen_text(app)
        assert "teacher-fixture" in text and "FINISHED" in text and "step 40/40" in text
        assert "elapsed 0:21" in text  # run_started at T0, run_finished at T0 + 21
        rows = {row[0]: row for row in screen.query_one(DomainTable).rows}
        assert rows["books"][1] == pytest.approx(0.85) and rows["all"][2] == pytest.approx(0.88)
        assert "books" in text and "85.0" in text and "88.0" in text
        assert "ce 0.0986" in text  # the last step's loss term: 0.7 e^(-40/15) + 0.05
        assert "4 ckpt" in text and "ckpt step 40 periodic" in text
        assert not screen.query_one("#sparsity-row").display  # no sparsity in a teacher run


@sync
async def test_distill_run_shows_stage_terms_and_the_teachers_accuracy(tmp_path: Path) -> None:
    teacher = fx.write_teacher(tmp_path / "teacher-a")
    run = fx.write_distill(tmp_path / "distill-a", teacher=str(teacher))
    app = app_for(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        await until(pilot, lambda: bool(screen.query_one(DomainTable).teacher))
        text = screen_text(app)
        for term in ("hidden", "attn", "domain", "soft_ce"):
            assert term in text
        assert screen.state.stage_marks == [21]  # stage 2 (soft_ce only) starts at step 21
        assert "teach" in text
        assert screen.query_one(DomainTable).teacher["books"] == pytest.approx(0.85)
        assert "1 warn" in text and "warn the teacher was" in text


@sync
async def test_prune_run_shows_sparsity_and_layers(tmp_path: Path) -> None:
    run = fx.write_prune(tmp_path / "prune-a")
    app = app_for(run)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await settled(pilot)
        assert screen.query_one("#sparsity-row").display
        text = screen_text(app)
        assert "target 90.0%" in text and "actual 88.2%" in text
        assert "per-layer sparsity @ step 60" in text
        # layer 0 query is 90% zeros, layer 5 ffn.out 0.9 - 0.10 + 0.05 = 85%
        query = next(line for line in text.splitlines() if " query " in line)
        assert "90" in query and "80" in query
        assert "ffn.out" in text and "85" in text
        for term in ("prc_unsup", "fic_sup", "kd"):
            assert term in text


@sync
async def test_failed_run_shows_its_error(tmp_path: Path) -> None:
    run = fx.write_failed(tmp_path / "failed-a")
    app = app_for(run)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        text = screen_text(app)
        assert "FAILED" in text and "step 17/40" in text
        assert "RuntimeError: CUDA out of memory (fixture)" in text, text
        assert "loss spike at step 16" in text


@sync
async def test_a_stopped_run_says_stopped_in_the_header_and_the_events(tmp_path: Path) -> None:
    run = fx.write_stopped(tmp_path / "stopped-a")
    app = app_for(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        text = screen_text(app)
        assert "STOPPED" in text and "step 17/40" in text
        assert "stopped: interrupted by Ctrl-C (SIGINT); resume with --resume" in text, text
        assert "stop run stopped at step" in text  # the log line wraps to show all of it
        assert "ERR" not in text and "failed" not in text
        assert screen.state.log[-1].level == "stopped"


@sync
async def test_a_file_with_a_never_ending_line_warns_instead_of_waiting(tmp_path: Path) -> None:
    run = tmp_path / "huge"
    run.mkdir()
    (run / "events.jsonl").write_bytes(b"x" * (2 << 20))  # 2 MiB, no newline
    app = app_for(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        assert screen.state.oversized == 1 and not screen.state.started
        text = screen_text(app)
        assert "WAITING" in text and "skipped 1 line that is not an event" in text
        assert "1 warn" in text and "skipped 1 too long" in text and "warn skipped a line" in text
        assert screen.state.log[-1].text.startswith("skipped a line longer than 1 MiB")


@sync
async def test_stalled_run(tmp_path: Path) -> None:
    run = fx.write_stalled(tmp_path / "stalled-a")
    last = fx.stalled_last_time()
    app = app_for(run, now=last + 600, stall_after=120)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        text = screen_text(app)
        assert "STALLED" in text and "no event for 10:00" in text
    live = app_for(run, now=last + 5, stall_after=120)
    async with live.run_test(size=SIZE) as pilot:
        await settled(pilot)
        assert "RUNNING" in screen_text(live)


@sync
async def test_follower_waits_for_the_run_and_picks_up_appended_lines(tmp_path: Path) -> None:
    run = tmp_path / "later"
    events = fx.teacher_events(total=40)
    app = app_for(run, now=fx.T0 + 5)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        assert "WAITING" in screen_text(app) and "to appear" in screen_text(app)

        run.mkdir()
        path = run / "events.jsonl"
        head = [e.to_json() + "\n" for e in events[:11]]  # run_started + steps 1..10 (+ eval)
        path.write_text("".join(head))
        await until(pilot, lambda: screen.state.step == 10)
        await settled(pilot)
        assert "step 10/40" in screen_text(app)

        extra = Step(
            step=11,
            total_steps=40,
            epoch=0.5,
            lr=1e-3,
            loss=0.3,
            losses={"ce": 0.3},
            time=fx.T0 + 6,
        ).to_json()
        with open(path, "a") as f:
            f.write('{"type":"from_the_future","x":1}\n')
            f.write(extra[:30])  # a partial line: not shown until its newline arrives
        await until(pilot, lambda: screen.state.unknown == {"from_the_future": 1})
        await settled(pilot)
        assert screen.state.step == 10 and screen.state.malformed == 0
        text = screen_text(app)
        assert "skipped 1 unknown" in text and "skipped unknown event" in text
        assert "'from_the_future'" in screen.state.log[-1].text

        with open(path, "a") as f:
            f.write(extra[30:] + "\n")
            f.write(RunFinished(step=11, metrics={}, time=fx.T0 + 7).to_json() + "\n")
        await until(pilot, lambda: screen.state.outcome == "finished")
        await settled(pilot)
        text = screen_text(app)
        assert "step 11/40" in text and "FINISHED" in text


@sync
async def test_at_80x24_the_legend_is_one_line_and_the_loss_chart_keeps_its_rows(
    tmp_path: Path,
) -> None:
    run = fx.write_cap_prune(tmp_path / "cap")
    app = app_for(run)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settled(pilot)
        assert len(screen.state.losses) == 9 and screen.state.latest("grad/")
        legend = screen.query_one(LossLegend)
        chart = screen.query_one(LossChart)
        assert legend.size.height == 1 and chart.size.height >= 8  # was 3 plot rows
        text = screen_text(app)
        line = text.splitlines()[2]
        assert line == " 1━loss 2.98 2━ce 1.03 3━kd 0.533 4━l1 0.367 5━prc_unsup 0.283 +4".ljust(80)
        sparsity = next(row for row in text.splitlines() if "per-layer" in row)
        assert sparsity.startswith("╭─ sparsity ━tgt 90.0% ━act 88.0% ─")
        await pilot.press("2", "3")  # hidden terms shrink to their key: more values fit
        await until(pilot, lambda: legend.hidden == {"ce", "kd"})
        await settled(pilot)
        line = screen_text(app).splitlines()[2]
        assert line.startswith(" 1━loss 2.98 2 3 4━l1 0.367 5━prc_unsup 0.283 6━prc_sup 0.233")


@sync
async def test_keys_toggle_terms_smoothing_and_log_scale(tmp_path: Path) -> None:
    run = fx.write_prune(tmp_path / "prune-a")
    app = app_for(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        chart = screen.query_one(LossChart)
        assert list(chart.series_lines) == ["loss", "ce", "kd", "prc_unsup", "fic_sup"]
        await pilot.press("2")
        text = screen_text(app)
        assert chart.hidden == {"ce"} and "2 ce" in text and "━ce" not in text
        await pilot.press("4", "2")
        assert chart.hidden == {"prc_unsup"}
        await pilot.press("a")
        assert chart.hidden == set()
        await pilot.press("9")  # no ninth term: nothing happens
        assert chart.hidden == set()
        await pilot.press("s", "l")
        assert chart.smooth and chart.log_scale
        panel = screen.query_one("#losses-panel")
        assert panel.border_subtitle == "smoothed · log y"
        await pilot.press("s", "l")
        assert not chart.smooth and not chart.log_scale and panel.border_subtitle == ""
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunScreen)
        await pilot.press("q")
    assert app.return_value is None


class FakeProcess:
    name = "teacher-x"

    def __init__(self, code: int | None = None, line: str = "") -> None:
        self.code, self.line, self.stopped = code, line, False

    def poll(self) -> int | None:
        return self.code

    def stop(self) -> None:
        self.stopped = True

    def last_line(self) -> str:
        return self.line


@pytest.mark.parametrize(("key", "choice"), [("s", "stop"), ("k", "keep"), ("escape", None)])
@sync
async def test_quitting_asks_about_a_launched_run(tmp_path: Path, key: str, choice: str) -> None:
    run = fx.write_stalled(tmp_path / "live")
    process = FakeProcess()
    app = app_for(run, process=process)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await pilot.press("q")
        assert isinstance(app.screen, StopRunScreen)
        assert "teacher-x is still running" in screen_text(app)
        await pilot.press(key)
        if choice is None:
            assert isinstance(app.screen, RunScreen)
            await pilot.press("q", "k")
    assert app.return_value == (choice or "keep")
    assert process.stopped == (choice == "stop")


@sync
async def test_a_process_that_dies_without_events_is_a_failed_run(tmp_path: Path) -> None:
    run = tmp_path / "never"
    app = app_for(run, process=FakeProcess(2, "error: no such profile: nope"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        await until(pilot, lambda: screen.state.outcome == "failed")
        await settled(pilot)
        text = screen_text(app)
        assert "FAILED" in text and "no such profile: nope" in text
        await pilot.press("q")  # the process is gone: no question
    assert app.return_value is None


@sync
async def test_a_replaced_file_starts_the_view_over(tmp_path: Path) -> None:
    run = fx.write_teacher(tmp_path / "again")
    app = app_for(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        assert screen.state.outcome == "finished"
        fresh = tmp_path / "fresh.jsonl"
        fresh.write_text(fx.started("teacher", 99).to_json() + "\n")
        fresh.replace(run / "events.jsonl")  # `--force` recreates the run
        await until(pilot, lambda: screen.state.total_steps == 99)
        assert screen.state.outcome is None and not screen.state.losses


@sync
async def test_run_browser_lists_runs_and_opens_one(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fx.write_teacher(root / "teacher-a")
    fx.write_failed(root / "teacher-b")
    fx.write_prune(root / "prune-a")
    app = app_for(None, now=fx.T0 + 1000, runs_root=root)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunBrowser) and app.screen.scans > 0)
        browser = app.screen
        assert isinstance(browser, RunBrowser)
        text = screen_text(app)
        for expected in (
            "teacher-a",
            "teacher-b",
            "prune-a",
            "finished",
            "failed",
            "40/40",
            "17/40",
            "88.0",
            "2023-11-14 22:13",
        ):
            assert expected in text, expected
        names = [s.name for s in browser.summaries]
        await pilot.press("down")
        opened = names[1]
        await pilot.press("enter")
        screen = await settled(pilot)
        assert screen.run_dir.name == opened and screen.from_browser
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, RunBrowser))


@sync
async def test_each_screen_has_its_own_help(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fx.write_teacher(root / "teacher-a")
    app = app_for(None, runs_root=root)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunBrowser) and app.screen.scans > 0)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "the runs in a folder" in text and "enter    open it" in text
        assert "loss term" not in text
        await pilot.press("escape")
        assert isinstance(app.screen, RunBrowser)
        await pilot.press("enter")
        await settled(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "show or hide loss term" in text and "enter    open it" not in text
        await pilot.press("question_mark")  # ? closes it again
        assert isinstance(app.screen, RunScreen)


@sync
async def test_run_browser_on_an_empty_folder(tmp_path: Path) -> None:
    app = app_for(None, runs_root=tmp_path / "nothing")
    async with app.run_test(size=(200, 20)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunBrowser) and app.screen.scans > 0)
        assert "does not exist yet" in screen_text(app)
        fx.write_teacher(tmp_path / "nothing" / "t")
        await pilot.press("r")
        await until(pilot, lambda: len(app.screen.summaries) == 1)


@sync
async def test_unknown_messages_and_errors_count(tmp_path: Path) -> None:
    events = [
        *fx.teacher_events(total=4)[:-1],
        Message(level="error", text="disk nearly full", time=fx.T0 + 3),
    ]
    run = fx.write(tmp_path / "msg", events)
    app = app_for(run, now=fx.T0 + 4)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        assert screen.state.errors == 1 and "disk nearly full" in screen_text(app)


@sync
async def test_a_large_terminal_goes_to_the_charts(tmp_path: Path) -> None:
    run = fx.write_prune(tmp_path / "prune-a")
    app = app_for(run)
    async with app.run_test(size=(200, 60)) as pilot:
        screen = await settled(pilot)
        losses = screen.query_one("#loss-chart").region
        side = screen.query_one("#side").region
        sparsity = screen.query_one("#sparsity-chart").region
        assert losses.width >= 110 and losses.height >= 30  # the chart grows with the terminal
        assert 60 <= side.width <= 90  # the side column takes a share, not all the rest
        assert sparsity.width >= 110 and sparsity.height >= 12
        assert losses.height + sparsity.height + 4 >= 56  # rows are not left empty


@sync
async def test_a_flood_of_events_is_folded_with_few_redraws(tmp_path: Path) -> None:
    run = tmp_path / "flood"
    path = run / "events.jsonl"
    fx.write(run, [fx.started("teacher", 5000)])
    app = app_for(run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await settled(pilot)
        before = screen.refreshes
        with open(path, "a") as f:
            for burst in range(50):  # 5,000 steps in 50 bursts, as fast as the disk takes them
                for s in range(burst * 100 + 1, burst * 100 + 101):
                    step = Step(
                        step=s, total_steps=5000, epoch=s / 500, lr=1e-3, loss=1 / s,
                        losses={"ce": 1 / s}, time=fx.T0 + s / 100,
                    )  # fmt: skip
                    f.write(step.to_json() + "\n")
                f.flush()
                await pilot.pause(0.005)
        await until(pilot, lambda: screen.state.step == 5000)
        await settled(pilot)
        assert "step 5,000/5,000" in screen_text(app)
        # Update messages coalesce and panels redraw at most five times a second.
        assert screen.refreshes - before < 50
        ce = screen.state.losses["ce"]
        assert ce.count == 5000 and len(ce.xs) <= 1024  # every value folded, series decimated
