"""Default budgets: the teacher's epochs and pruning's table (kdtui/budgets.py), which the
resolver applies, `--help` prints and a short pruning run is told about; the drop warning; the
time estimate."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kdtui.budgets import (
    PRUNE_BUDGETS,
    PRUNE_LR,
    STUDENT_LR,
    TEACHER_EPOCHS,
    TEACHER_MIN_STEPS,
    describe_budgets,
    prune_budget,
    short_budget_note,
)
from kdtui.cli import app
from kdtui.engine.hooks import HookContext
from kdtui.events import Message
from kdtui.methods.pruning import DROP_WARNING, DropWatch
from kdtui.resolver import resolve
from kdtui.timing import estimate_seconds
from tests.conftest import events_of, invoke


def test_bands_cover_every_sparsity_in_order() -> None:
    starts = [b.from_sparsity for b in PRUNE_BUDGETS]
    assert starts[0] == 0.0 and starts == sorted(starts)
    for band in PRUNE_BUDGETS:
        assert prune_budget(band.from_sparsity) == band
        assert band.warmup_ratio + band.cooldown_ratio < 1
    assert prune_budget(0.999) == PRUNE_BUDGETS[-1]


def test_a_teacher_without_a_budget_trains_the_piloted_epochs() -> None:
    assert TEACHER_EPOCHS != 1.0  # not the engine's own default, or this test shows nothing
    default = resolve(command="teacher").config.train
    assert (default.epochs, default.min_steps) == (TEACHER_EPOCHS, TEACHER_MIN_STEPS)
    given = resolve(options={"train.epochs": 1.0}, command="teacher").config.train
    assert (given.epochs, given.min_steps) == (1.0, 0)  # the user's budget, no floor added
    steps = resolve(options={"train.max_steps": 7}, command="teacher").config
    assert steps.train.max_steps == 7
    layered = resolve(overrides=["train.epochs=3"], command="teacher").config  # a --set or profile
    assert layered.train.epochs == 3.0
    # other commands keep the engine's default
    assert resolve(command="distill").config.train.epochs == 1.0


def test_a_student_learns_at_the_piloted_rate_and_a_teacher_at_its_own() -> None:
    from kdtui.config import Config

    assert Config().train.lr != STUDENT_LR  # or this test shows nothing
    assert resolve(command="distill").config.train.lr == STUDENT_LR
    assert resolve(command="teacher").config.train.lr == Config().train.lr
    given = resolve(options={"train.lr": 1e-3}, command="distill").config
    assert given.train.lr == 1e-3
    assert resolve("smoke", command="distill").config.train.lr == 1e-3  # the profile's
    d = resolve(command="distill").config.distill
    assert (d.intermediate_epochs, d.prediction_epochs) == (2.0, 5.0)


def test_distill_help_prints_the_students_learning_rate() -> None:
    result = CliRunner().invoke(app, ["distill", "--help"])
    text = re.sub(r"[\s│]+", "", result.stdout)
    assert f"[train.lr;default{STUDENT_LR:g},fromthestudentbudgetpilot" in text
    teacher = re.sub(r"[\s│]+", "", CliRunner().invoke(app, ["teacher", "--help"]).stdout)
    assert "[train.lr;default5e-05]" in teacher


def test_teacher_help_prints_its_default_budget() -> None:
    result = CliRunner().invoke(app, ["teacher", "--help"])
    assert result.exit_code == 0
    text = re.sub(r"[\s│]+", "", result.stdout)  # Rich wraps the help
    assert (
        f"[train.epochs;default{TEACHER_EPOCHS:g}andatleast{TEACHER_MIN_STEPS}steps,fromthe"
        "teacherbudgetpilot" in text
    )


def test_a_step_floor_lifts_a_small_data_sets_epochs_and_nothing_else() -> None:
    from kdtui.config import TrainConfig
    from kdtui.engine.loop import total_steps

    floor = TrainConfig(batch_size=16, epochs=2.0, min_steps=200)
    assert total_steps(floor, 280) == 200  # 2 epochs of 280 examples would be 34 steps
    assert total_steps(floor, 5600) == 700  # more data: the epochs decide
    assert total_steps(replace(floor, max_steps=7), 280) == 7  # max_steps still wins
    assert total_steps(replace(floor, min_steps=0), 280) == 34


MODEL = {"prune.model": "a-model-folder"}  # any name: the resolver only looks for its run


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.97])
def test_prune_without_a_budget_gets_its_sparsitys_default(sparsity: float) -> None:
    band = prune_budget(sparsity)
    config = resolve(options={**MODEL, "prune.sparsity": sparsity}, command="prune").config
    assert config.train.epochs == band.epochs and config.train.max_steps == 0
    assert (config.prune.warmup_ratio, config.prune.cooldown_ratio) == (
        band.warmup_ratio,
        band.cooldown_ratio,
    )


def test_the_cap_97_profile_runs_the_97_percent_default_budget() -> None:
    """The shipped profile leaves the budget to the one table, so the two cannot drift apart."""
    config = resolve("cap-97", options=MODEL, command="prune").config
    band = prune_budget(0.97)
    assert config.prune.sparsity == 0.97 and config.train.epochs == band.epochs
    assert (config.prune.warmup_ratio, config.prune.cooldown_ratio) == (
        band.warmup_ratio,
        band.cooldown_ratio,
    )


def test_a_budget_the_user_gives_wins_over_the_default() -> None:
    given = resolve(
        options={**MODEL, "prune.sparsity": 0.97, "train.epochs": 0.25}, command="prune"
    )
    assert given.config.train.epochs == 0.25
    steps = resolve(options=MODEL, overrides=["train.max_steps=7"], command="prune").config
    assert steps.train.max_steps == 7
    shape = resolve(options=MODEL, overrides=["prune.cooldown_ratio=0.3"], command="prune").config
    assert shape.prune.cooldown_ratio == 0.3
    assert shape.prune.warmup_ratio == 0.1  # kdtui's own default, not the band's
    # Distill keeps train.epochs' own default.
    assert resolve(command="distill").config.train.epochs == 1.0


def test_help_prints_the_table_the_resolver_uses() -> None:
    result = CliRunner().invoke(app, ["prune", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    # Rich wraps the help (and may break a word after a hyphen): compare without white space.
    text = re.sub(r"[\s│]+", "", result.stdout)
    assert re.sub(r"\s+", "", describe_budgets()) in text
    for band in PRUNE_BUDGETS:
        assert f"{band.epochs:g} epoch" in describe_budgets()


def test_a_short_budget_gets_a_note_and_the_default_none() -> None:
    band = prune_budget(0.97)
    assert short_budget_note(0.97, band.epochs) == ""
    assert short_budget_note(0.97, band.epochs * 2) == ""
    note = short_budget_note(0.97, band.epochs / 4)
    assert "shorter than" in note and "--epochs" in note


class FakePruner:
    target = 0.97

    def final_step(self) -> int:
        return 80

    def target_now(self) -> float:
        return 0.5


def watch(curve: list[tuple[int, float]], teacher_dev: float = 0.8) -> list[str]:
    """The warnings a DropWatch logs over a dev curve of (step, accuracy)."""
    logged: list[Any] = []
    hook = DropWatch(FakePruner(), teacher_dev=teacher_dev, fix="give it more steps")
    hook.setup(HookContext(model=None, total_steps=100, log=logged.append, device=None))  # type: ignore[arg-type]
    for step, accuracy in curve:
        hook.after_eval(step, {"all": accuracy, "books": accuracy})
    return [e.text for e in logged if isinstance(e, Message) and e.level == "warning"]


def test_the_drop_warning_fires_once_on_a_falling_curve_while_cutting() -> None:
    falling = [(10, 0.79), (20, 0.75), (30, 0.66), (40, 0.55), (50, 0.5)]
    warnings = watch(falling)
    assert len(warnings) == 1
    assert "step 30" in warnings[0] and "give it more steps" in warnings[0]
    assert 0.66 < DROP_WARNING * 0.8 < 0.75  # the curve crosses the line where it says


def test_no_drop_warning_on_a_flat_curve_or_after_the_cutting() -> None:
    assert watch([(10, 0.79), (20, 0.78), (40, 0.77), (70, 0.76)]) == []
    # Low accuracy at the final sparsity is the collapse warning's business, not this one's.
    assert watch([(10, 0.79), (80, 0.4), (90, 0.4)]) == []


def test_the_estimate_scales_training_time_and_adds_the_fixed_costs() -> None:
    assert estimate_seconds([], 100) is None
    earlier = [
        (100, {"train_s": 50.0, "total_s": 60.0}),
        (200, {"train_s": 100.0, "total_s": 130.0}),
        (300, {"train_s": 150.0, "total_s": 160.0}),
    ]
    assert estimate_seconds(earlier, 1000) == pytest.approx(0.5 * 1000 + 10.0)


def test_a_prune_run_states_its_budget_and_estimates_from_an_earlier_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    common = ["--profile", "smoke", "-o", str(runs)]
    assert invoke("teacher", *common, "--name", "t").exit_code == 0
    for name in ("p1", "p2"):
        options = ["--model", str(runs / "t"), "--sparsity", "0.9", "--max-steps", "6"]
        result = invoke("prune", *common, *options, "--name", name)
        assert result.exit_code == 0, result.stderr
    first, second = (
        next(e.text for e in events_of(runs / n) if isinstance(e, Message)) for n in ("p1", "p2")
    )
    assert "to 90% sparsity" in first and "in 6 steps = 0.25 epochs" in first
    assert "no earlier run like it" in first
    assert "min here, going by 1 earlier run(s) like it" in second
    warnings = [
        e.text for e in events_of(runs / "p1") if isinstance(e, Message) and e.level == "warning"
    ]
    assert any("shorter than" in w for w in warnings)


def test_pruning_runs_at_the_rate_its_budgets_were_piloted_at() -> None:
    from kdtui.config import Config

    assert Config().train.lr != PRUNE_LR  # or this test shows nothing
    assert resolve(options=MODEL, command="prune").config.train.lr == PRUNE_LR
    given = resolve(options={**MODEL, "train.lr": 3e-5}, command="prune").config
    assert given.train.lr == 3e-5
    authors = resolve("cap-authors", options=MODEL, command="prune").config
    assert authors.train.lr == 3e-5  # the profile's
    text = re.sub(r"[\s│]+", "", CliRunner().invoke(app, ["prune", "--help"]).stdout)
    assert f"[train.lr;default{PRUNE_LR:g},theratethepruningbudgetpilotranat]" in text
