"""recipes.common.finish_training: the end of every recipe's training, in one order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import kdtui.engine.loop
import kdtui.recipes.common as common
from kdtui.engine.loop import TrainResult

RESULT = TrainResult(steps=7, best_metric=0.8, best_step=5, last_eval=None, stopped_early=False)


def _run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    calls: list[str],
    *,
    is_main: bool,
    **options: Any,
) -> tuple[Any, dict[str, Any]]:
    monkeypatch.setattr(kdtui.engine.loop, "train", lambda job: calls.append("train") or RESULT)

    def restore_best(ctx: Any, model: Any, hooks: Any, best_dir: Any) -> None:
        calls.append(f"restore {model} {list(hooks)} {best_dir}")

    def final_metrics(
        ctx: Any, model: Any, tokenizer: Any, data: Any, result: Any, where: Any
    ) -> dict[str, Any]:
        calls.append(f"metrics {model} {where}")
        return {"best_dev": result.best_metric}

    monkeypatch.setattr(common, "restore_best", restore_best)
    monkeypatch.setattr(common, "final_metrics", final_metrics)
    ctx = SimpleNamespace(run=SimpleNamespace(model=tmp_path / "model"), is_main=is_main)
    ctx.last_step = 0
    job = SimpleNamespace(model="M", hooks=["h"], best_dir=tmp_path / "best", step_offset=3)

    def save(folder: Path) -> None:
        calls.append("save")
        (folder / "weights").write_text("w")

    result, metrics = common.finish_training(
        ctx, job, tokenizer="T", data="D", save=save, **options
    )
    assert result is RESULT
    return ctx, metrics


def test_train_restore_finalize_save_then_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def finalize(result: TrainResult) -> dict[str, Any]:
        calls.append(f"finalize {result.steps}")
        return {"sparsity": 0.5}

    calls: list[str] = []
    ctx, metrics = _run(tmp_path, monkeypatch, calls, is_main=True, finalize=finalize)
    assert calls == [
        "train",
        f"restore M ['h'] {tmp_path / 'best'}",
        "finalize 7",
        "save",
        "metrics M None",
    ]
    assert ctx.last_step == 3 + 7  # steps over all stages, as events count them
    assert metrics == {"best_dev": 0.8, "sparsity": 0.5}  # finalize's keys after the metrics
    assert (tmp_path / "model" / "weights").read_text() == "w"


def test_only_the_main_process_saves_and_where_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    _run(tmp_path, monkeypatch, calls, is_main=False)
    assert "save" not in calls
    assert not (tmp_path / "model").exists()

    student = SimpleNamespace(model=tmp_path / "student" / "model")
    calls.clear()
    _run(tmp_path, monkeypatch, calls, is_main=True, where=student)
    assert calls[-1] == f"metrics M {student}"
    assert (tmp_path / "student" / "model" / "weights").is_file()
    assert not (tmp_path / "model").exists()
