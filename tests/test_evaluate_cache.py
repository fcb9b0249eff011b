"""`kdtui evaluate runs/`: a folder of runs expands to its runs and exports, results are cached
beside each model (kdtui/evalcache.py) so a second evaluation evaluates nothing again, a changed
model is evaluated again, and every report marks the Pareto frontier. Through the real CLI, on
the smoke profile's tiny random BERT (as tests/test_teacher_e2e.py trains it)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdtui.errors import KdtuiError
from kdtui.evalcache import CACHE_DIR
from kdtui.recipes.evaluate import WEIGHT_SUFFIXES, expand_folders
from tests.conftest import invoke


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with two finished smoke teacher runs, a and b (b a copy of a: training
    once is enough for what the cache is asked). Tests evaluate copies of it (`runs_copy`)."""
    root = tmp_path_factory.mktemp("trained")
    result = invoke("teacher", "--profile", "smoke", "--output-dir", str(root), "--name", "a")
    assert result.exit_code == 0, result.stderr
    shutil.copytree(root / "a", root / "b")
    return root


@pytest.fixture
def runs_copy(trained: Path, tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(trained, root)
    return root


def count_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models evaluate_one is asked to evaluate from now on (it still evaluates them)."""
    from kdtui.recipes import evaluate as recipe

    calls: list[str] = []
    real = recipe.evaluate_one

    def counted(path: str, config: Any, data: Any) -> dict[str, Any]:
        calls.append(path)
        return real(path, config, data)

    monkeypatch.setattr(recipe, "evaluate_one", counted)
    return calls


def evaluate(report: Path, *args: str) -> dict[str, Any]:
    result = invoke("evaluate", *args, "--json", str(report), "--set", "evaluate.latency_repeats=1")
    assert result.exit_code == 0, result.stderr
    return json.loads(report.read_text())


def test_a_second_evaluation_of_a_runs_folder_evaluates_nothing_again(
    runs_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_evaluations(monkeypatch)
    first = evaluate(tmp_path / "1.json", str(runs_copy))
    a, b = str(runs_copy / "a"), str(runs_copy / "b")
    assert calls == [a, b]
    assert [m["model"] for m in first["models"]] == [a, b]
    assert [m["cached"] for m in first["models"]] == [False, False]
    # Where the results went: into each run, nowhere else.
    for run in ("a", "b"):
        assert len(list((runs_copy / run / CACHE_DIR).glob("*.json"))) == 1
    assert sorted(p.name for p in runs_copy.iterdir()) == ["a", "b"]

    calls.clear()
    second = evaluate(tmp_path / "2.json", str(runs_copy))
    assert calls == []
    assert [m["cached"] for m in second["models"]] == [True, True]
    assert second["cached"] == 2
    assert (second["domains"], second["examples"]) == (first["domains"], first["examples"])
    for before, after in zip(first["models"], second["models"], strict=True):
        assert after["accuracy"] == before["accuracy"]
        assert after["latency"] == before["latency"]
        assert after["frontier_latency"] == before["frontier_latency"]


def test_a_changed_model_is_evaluated_again_and_no_cache_evaluates_all(
    runs_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_evaluations(monkeypatch)
    evaluate(tmp_path / "1.json", str(runs_copy))
    assert len(calls) == 2

    # b's weights are written again (same size, a later time): b is evaluated, a is not.
    weights = next(
        p for p in (runs_copy / "b" / "model").iterdir() if p.name.endswith(WEIGHT_SUFFIXES)
    )
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    calls.clear()
    report = evaluate(tmp_path / "2.json", str(runs_copy))
    assert calls == [str(runs_copy / "b")]
    assert [m["cached"] for m in report["models"]] == [True, False]

    calls.clear()
    report = evaluate(tmp_path / "3.json", str(runs_copy), "--no-cache")
    assert calls == [str(runs_copy / "a"), str(runs_copy / "b")]
    assert report["cached"] == 0

    # Other settings (another split) are another cache file: evaluated, the first one kept.
    calls.clear()
    report = evaluate(tmp_path / "4.json", str(runs_copy / "a"), "--set", "evaluate.split=dev")
    assert calls == [str(runs_copy / "a")] and report["split"] == "dev"
    assert len(list((runs_copy / "a" / CACHE_DIR).glob("*.json"))) == 2
    calls.clear()
    evaluate(tmp_path / "5.json", str(runs_copy / "a"))  # the test split again: cached
    assert calls == []


def test_the_report_marks_the_frontier_and_prints_it(
    runs_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # Rich's width: a 100-column picture, rows unwrapped
    # Names that appear nowhere else in the output, to find the picture's labels.
    (runs_copy / "a").rename(runs_copy / "alpha-run")
    (runs_copy / "b").rename(runs_copy / "beta-run")
    out = tmp_path / "report.json"
    result = invoke(
        "evaluate", str(runs_copy), "--json", str(out), "--set", "evaluate.latency_repeats=1"
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    # The smoke grid: batches 1 and 8 at length 16.
    assert report["frontier"]["latency"] == {"batch": 1, "length": 16}
    assert [s["batch"] for s in report["frontier"]["latency_by_batch"]] == [1, 8]
    for m in report["models"]:
        assert isinstance(m["frontier_latency"], bool) and isinstance(m["frontier_size"], bool)
        assert set(m["frontier_latency_by_batch"]) == {"1", "8"}
    # The same weights: the same accuracy and size, so at least one of them on each frontier.
    assert any(m["frontier_latency"] for m in report["models"])
    assert all(m["frontier_size"] for m in report["models"])  # a tie on both: both kept
    assert "Pareto frontier" in result.stdout
    assert "accuracy % against latency" in result.stdout  # the picture, labelled by run
    picture = result.stdout[result.stdout.index("accuracy % against latency") :]
    assert "alpha-run" in picture and "beta-run" in picture


def fake_run(path: Path, *, model: bool = True) -> Path:
    """A folder kdtui's run test accepts (`is_run_dir`), with a model folder or none."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text("# kdtui teacher: resolved configuration of run x\n")
    (path / "events.jsonl").write_text("")
    if model:
        (path / "model").mkdir()
        (path / "model" / "config.json").write_text("{}")
    return path


def fake_export(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"")
    return path


def test_a_folder_of_runs_expands_to_its_runs_and_exports(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fake_run(root / "b")
    fake_run(root / "a")
    fake_export(root / "a" / "onnx")  # a run's export
    fake_run(root / "c", model=False)  # stopped before it saved a model
    fake_export(root / "x-onnx")  # an export folder of its own
    fake_run(root / ".b.replaced")  # a run being replaced with --force
    (root / "plain").mkdir()  # neither: ignored
    (root / ".b.log").write_text("a launched run's output\n")

    expanded, notes = expand_folders([str(root)])
    assert expanded == [
        str(root / "a"),
        str(root / "a" / "onnx"),
        str(root / "b"),
        str(root / "x-onnx"),
    ]
    assert notes == [f"{root}: left out the runs without a model: {root / 'c'} (stopped)"]


def test_a_run_a_model_or_an_export_is_not_expanded(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "runs" / "a")
    unfinished = fake_run(tmp_path / "runs" / "c", model=False)
    export = fake_export(tmp_path / "export")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    given = [str(run), str(unfinished), str(export), str(folder), "minilm", "nope/missing"]
    assert expand_folders(given) == (given, [])


def test_a_folder_with_nothing_to_evaluate_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KdtuiError, match="holds no run directory or export folder"):
        expand_folders([str(empty)])
    (empty / "notes.txt").write_text("hello\n")
    with pytest.raises(KdtuiError, match=r"it holds notes\.txt"):
        expand_folders([str(empty)])

    only_unfinished = tmp_path / "runs"
    fake_run(only_unfinished / "c", model=False)
    with pytest.raises(KdtuiError, match="holds no run with a model to evaluate"):
        expand_folders([str(only_unfinished)])

    result = invoke("evaluate", str(empty))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {empty} is not a run, a model folder or an export")
    assert result.stderr.count("\n") == 1
