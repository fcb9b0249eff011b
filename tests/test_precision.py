"""The precision a run trains in: bf16 where the hardware has it natively, fp32 elsewhere, the
command line's --bf16 / --no-bf16 over both; recorded in config.toml, run_started and the
dashboard. And the fixed costs every run reports at its end, and the latency loop the
benchmarks time forward passes with."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kdtui import precision, timing
from kdtui.config import Config, TrainConfig, build_config
from kdtui.dashboard.state import RunState
from kdtui.errors import KdtuiError
from kdtui.events import RunFinished, RunStarted
from kdtui.precision import resolve_precision
from kdtui.recipes.common import with_resolved_precision
from kdtui.resolver import resolve
from kdtui.timing import Stopwatch
from tests.conftest import events_of, invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import machine  # noqa: E402


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-bf16"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def test_auto_is_bf16_exactly_where_the_cpu_computes_it_natively(native: bool) -> None:
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_an_explicit_precision_wins_over_the_hardware(native: bool) -> None:
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_the_run_records_what_auto_chose(native: bool) -> None:
    import torch

    config = with_resolved_precision(Config(), torch.device("cpu"))
    assert config.train.precision == ("bf16" if native else "fp32")


def test_the_flags_set_the_precision_and_the_default_is_auto() -> None:
    assert TrainConfig().precision == "auto"
    assert resolve().config.train.precision == "auto"
    assert resolve(options={"train.precision": "fp32"}).config.train.precision == "fp32"
    assert resolve(options={"train.precision": "bf16"}).config.train.precision == "bf16"


def test_cli_bf16_switch_maps_to_the_precision_key() -> None:
    from kdtui.cli import TRAINING

    flag = next(f for f in TRAINING if f.key == "train.precision")
    assert (flag.value(True), flag.value(False), flag.value(None)) == ("bf16", "fp32", None)


def test_profiles_written_before_precision_still_load() -> None:
    assert build_config({"train": {"bf16": True}}).train.precision == "bf16"
    assert build_config({"train": {"bf16": False}}).train.precision == "fp32"
    with pytest.raises(KdtuiError, match=r"train.bf16 must be true or false.*train.precision"):
        build_config({"train": {"bf16": 1}})
    with pytest.raises(KdtuiError, match=r"train.precision must be one of"):
        build_config({"train": {"precision": "fp16"}})


def test_dashboard_state_shows_the_precision() -> None:
    state = RunState()
    state.apply(
        RunStarted(
            run="r", command="teacher", profile="", total_steps=3,
            config={"train": {"precision": "bf16"}},
        )
    )  # fmt: skip
    assert state.precision == "bf16"
    old = RunState()
    old.apply(RunStarted(run="r", command="teacher", profile="", total_steps=3, config={}))
    assert old.precision == ""


def test_stopwatch_parts_add_up_to_the_total() -> None:
    watch = Stopwatch()
    with watch.timed("dev_eval"):
        pass
    watch.add("train", 2.0)
    watch.add("train", 1.0)
    summary = watch.summary()
    assert summary["train_s"] == 3.0
    assert "dev_eval_s" in summary and "before_first_step_s" not in summary
    assert summary["other_s"] == 0.0  # the parts exceed the wall time: nothing is left over


def test_median_seconds_times_each_call_in_its_own_block_rotating_the_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    calls: list[str] = []

    def taking(name: str, seconds: list[float]) -> Callable[[], None]:
        def call() -> None:
            calls.append(name)
            now[0] += seconds.pop(0)

        return call

    # Per round: an untimed call opening each block (9.0 below), then the block's timed calls.
    a = taking("a", [9.0, 1.0, 2.0, 9.0, 3.0, 9.0, 4.0])
    b = taking("b", [9.0, 5.0, 4.0, 9.0, 60.0, 9.0, 6.0])  # one slow call: not the median
    assert timing.median_seconds([a, b], repeats=4, rounds=3) == [2.5, 5.5]
    # 4 timed calls over 3 rounds: blocks of 2, 1, 1; the order of the blocks rotates.
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 2 + ["a"] * 2 + ["a"] * 2 + ["b"] * 2


def test_rotated_blocks_give_each_thing_a_block_a_round_in_rotated_order() -> None:
    # 10 repeats over 3 rounds: shares of 4, 3, 3; the first block of a round moves along.
    assert timing.rotated_blocks(3, repeats=10, rounds=3) == [
        (0, 4), (1, 4), (2, 4), (1, 3), (2, 3), (0, 3), (2, 3), (0, 3), (1, 3)
    ]  # fmt: skip
    # Fewer repeats than rounds: one round a repeat.
    assert timing.rotated_blocks(2, repeats=1, rounds=3) == [(0, 1), (1, 1)]


def test_a_smoke_run_reports_its_precision_and_fixed_costs(runs: Path) -> None:
    result = invoke(
        "teacher", "--profile", "smoke", "--no-bf16", "--output-dir", str(runs), "--name", "t"
    )
    assert result.exit_code == 0, result.stderr
    run = runs / "t"
    started = next(e for e in events_of(run) if isinstance(e, RunStarted))
    assert started.config["train"]["precision"] == "fp32"
    assert 'precision = "fp32"' in (run / "config.toml").read_text()
    timings = json.loads((run / "metrics.json").read_text())["timings"]
    for part in ("train_s", "dev_eval_s", "checkpoint_s", "test_s", "other_s", "total_s"):
        assert timings[part] >= 0, part
    assert 0 < timings["before_first_step_s"] < timings["total_s"]
    finished = next(e for e in events_of(run) if isinstance(e, RunFinished))
    assert finished.metrics["timings"] == timings
    assert "time " in result.stdout and "training steps" in result.stdout


def test_benchmarks_never_run_more_threads_than_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cores", lambda: 2)
    monkeypatch.setattr(machine, "cpu_busy", lambda seconds=1.0: 0.0)
    machine.claim_cores(2, 1)
    machine.claim_cores(1, 2)
    with pytest.raises(SystemExit, match="jobs x threads <= 2"):
        machine.claim_cores(2, 2)


def test_benchmarks_warn_when_the_machine_is_busy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(machine, "cores", lambda: 2)
    monkeypatch.setattr(machine, "cpu_busy", lambda seconds=1.0: 1.3)
    machine.claim_cores(1, 2)
    assert "other processes already use 1.3 of 2 cores" in capsys.readouterr().err


def test_run_timed_reports_the_childs_cpu_time(tmp_path: Path) -> None:
    timed = machine.run_timed(
        [sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], log=tmp_path / "log"
    )
    assert timed.returncode == 0
    assert 0 < timed.cpu_s <= timed.wall_s + 0.05
