"""`kdtui teacher` then `kdtui evaluate` through the real CLI on the smoke profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdtui.events import Checkpoint, Eval, RunFinished, RunStarted, Step
from tests.conftest import events_of, invoke, metrics_of


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    result = invoke("teacher", "--profile", "smoke", "--output-dir", str(runs), "--name", "t")
    assert result.exit_code == 0, result.stderr
    return runs / "t"


def test_teacher_writes_a_complete_run_directory(teacher_run: Path) -> None:
    events = events_of(teacher_run)
    started = [e for e in events if isinstance(e, RunStarted)]
    assert len(started) == 1 and started[0].command == "teacher" and started[0].total_steps == 12
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps] == list(range(1, 13))
    assert all("ce" in s.losses and s.lr >= 0 for s in steps)
    assert steps[1].lr > steps[0].lr  # warm-up, then decay
    assert steps[-1].lr < steps[2].lr
    evals = [e for e in events if isinstance(e, Eval)]
    assert [e.step for e in evals] == [4, 8, 12]
    assert set(evals[0].accuracy) == {"books", "dvd", "electronics", "kitchen", "all"}
    assert any(e.best for e in evals)
    # Each evaluation step carries the gradient norm of every term, and only those steps do.
    with_norms = [s.step for s in steps if "grad/ce" in s.metrics]
    assert with_norms == [4, 8, 12]
    assert all(s.metrics["grad/ce"] > 0 for s in steps if s.step in with_norms)
    assert any(isinstance(e, Checkpoint) and e.kind == "best" for e in events)
    assert isinstance(events[-1], RunFinished)

    metrics = metrics_of(teacher_run)
    assert metrics["steps"] == 12
    assert metrics["best_dev"] == max(e.accuracy["all"] for e in evals)
    assert set(metrics["test"]) == {"books", "dvd", "electronics", "kitchen", "all"}
    assert (teacher_run / "config.toml").is_file()


def test_test_predictions_are_written_in_split_order(teacher_run: Path) -> None:
    """Benchmarks pair two models example by example: the file must agree with metrics.json."""
    saved = json.loads((teacher_run / "test_predictions.json").read_text())
    test = metrics_of(teacher_run)["test"]
    assert len(saved["predictions"]) == len(saved["labels"]) == len(saved["domains"]) > 0
    for domain in ("books", "dvd", "electronics", "kitchen"):
        pairs = [
            (p, y)
            for p, y, d in zip(saved["predictions"], saved["labels"], saved["domains"], strict=True)
            if d == domain
        ]
        assert sum(p == y for p, y in pairs) / len(pairs) == pytest.approx(test[domain])


def test_saved_model_loads_with_plain_transformers(teacher_run: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(teacher_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(teacher_run / "model")
    inputs = tokenizer(["a great read"], return_tensors="pt")
    assert model(**inputs).logits.shape == (1, 2)
    assert model.config.kdtui_labels == ["0", "1"]


def test_evaluate_reports_accuracy_size_and_latency(teacher_run: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = invoke("evaluate", str(teacher_run), "--json", str(report_path))
    assert result.exit_code == 0, result.stderr
    assert "accuracy books" in result.stdout and "size on disk" in result.stdout
    report = json.loads(report_path.read_text())
    (model,) = report["models"]
    test_accuracy = metrics_of(teacher_run)["test"]
    assert model["accuracy"] == pytest.approx(test_accuracy)
    assert model["parameters"] > model["size_bytes"] / 8  # fp32 weights: 4 bytes each
    assert model["size_bytes"] > 0
    assert {(r["batch"], r["length"]) for r in model["latency"]} == {(1, 16), (8, 16)}


def test_the_teachers_statistics_as_a_source(teacher_run: Path, tmp_path: Path) -> None:
    """Margin, entropy at the KD temperature and every hidden layer's variance and pairwise
    cosine on dev: in metrics.json, in run_finished, and from `kdtui evaluate --json`."""
    metrics = metrics_of(teacher_run)
    layers = [f"source/layer{k}_{what}" for k in range(3) for what in ("variance", "cosine")]
    keys = {"source/margin", "source/entropy", "source/temperature", *layers}
    assert keys <= set(metrics)
    assert metrics["source/temperature"] == 2.0  # distill.kd_temperature
    assert metrics["source/margin"] >= 0 and 0 < metrics["source/entropy"] <= math.log(2)
    for k in range(3):
        assert metrics[f"source/layer{k}_variance"] > 0
        assert -1 <= metrics[f"source/layer{k}_cosine"] <= 1
    finished = next(e for e in events_of(teacher_run) if isinstance(e, RunFinished))
    assert {k: finished.metrics[k] for k in keys} == {k: metrics[k] for k in keys}

    report_path = tmp_path / "dev.json"
    result = invoke(
        "evaluate", str(teacher_run), "--json", str(report_path), "--set", "evaluate.split=dev"
    )
    assert result.exit_code == 0, result.stderr
    (model,) = json.loads(report_path.read_text())["models"]
    assert "agreement" not in model  # a teacher has no teacher
    # the same model on the same split (the run's statistics may have run in bf16)
    for key in keys:
        assert model["source"][key.removeprefix("source/")] == pytest.approx(
            metrics[key], rel=0.05, abs=0.01
        ), key


def test_rerun_from_config_toml_reproduces_the_run(teacher_run: Path, tmp_path: Path) -> None:
    result = invoke(
        "teacher",
        "--profile",
        str(teacher_run / "config.toml"),
        "--output-dir",
        str(tmp_path),
        "--name",
        "again",
    )
    assert result.exit_code == 0, result.stderr
    assert metrics_of(tmp_path / "again")["test"] == metrics_of(teacher_run)["test"]
    from safetensors.torch import load_file

    first = load_file(teacher_run / "model" / "model.safetensors")
    second = load_file(tmp_path / "again" / "model" / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_existing_run_is_not_overwritten(teacher_run: Path) -> None:
    before = (teacher_run / "events.jsonl").read_bytes()
    result = invoke(
        "teacher", "--profile", "smoke", "--output-dir", str(teacher_run.parent), "--name", "t"
    )
    assert result.exit_code == 2
    assert "already holds a run" in result.stderr and "--resume" in result.stderr
    assert (teacher_run / "events.jsonl").read_bytes() == before


def test_force_replaces_a_run_only_once_training_starts(teacher_run: Path, tmp_path: Path) -> None:
    runs = teacher_run.parent
    before = (teacher_run / "events.jsonl").read_bytes()
    common = ["teacher", "--profile", "smoke", "--output-dir", str(runs), "--name", "t", "--force"]
    # A mistake found while loading gives the old run back untouched.
    result = invoke(*common, "--data", str(tmp_path / "typo.jsonl"), "--quiet")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert (teacher_run / "events.jsonl").read_bytes() == before
    assert (teacher_run / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith(".")) == []


def test_domain_alone_trains_a_single_domain_teacher(tmp_path: Path) -> None:
    result = invoke(
        "teacher", "--profile", "smoke", "--domain", "dvd", "--max-steps", "2",
        "--output-dir", str(tmp_path), "--name", "dvd", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    started = [e for e in events_of(tmp_path / "dvd") if isinstance(e, RunStarted)][0]
    assert started.config["teacher"]["method"] == "single"
    assert started.config["teacher"]["domain"] == "dvd"
    assert metrics_of(tmp_path / "dvd")["steps"] == 2


def test_garbage_in_the_events_file_does_not_stop_a_resume(tmp_path: Path) -> None:
    common = ["teacher", "--profile", "smoke", "--output-dir", str(tmp_path), "--quiet"]
    result = invoke(*common, "--name", "g", "--max-steps", "4")
    assert result.exit_code == 0, result.stderr
    events = tmp_path / "g" / "events.jsonl"
    garbage = b'{"type": "step", "step": \n\x00\xff not json\n'
    events.write_bytes(events.read_bytes() + garbage)
    (tmp_path / "g" / "metrics.json").unlink()  # as if it had been killed before the end
    result = invoke("teacher", "--resume", str(tmp_path / "g"), "--quiet")
    assert result.exit_code == 0, result.stderr
    assert garbage in events.read_bytes()  # nothing the user had is lost
    assert isinstance(events_of(tmp_path / "g")[-1], RunFinished)


def test_an_internal_error_exits_1_and_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdtui.engine.hooks import CrossEntropyHook
    from kdtui.events import RunFailed

    def broken(self, batch, outputs, model):  # noqa: ANN001, ANN202
        raise RuntimeError("a bug in a hook")

    monkeypatch.setattr(CrossEntropyHook, "loss_terms", broken)
    monkeypatch.delenv("KDTUI_DEBUG", raising=False)
    result = invoke(
        "teacher", "--profile", "smoke", "--output-dir", str(tmp_path), "--name", "bug", "--quiet"
    )
    assert result.exit_code == 1
    assert "internal error: RuntimeError: a bug in a hook" in result.stderr
    assert f"(the traceback is in {tmp_path / 'bug' / 'error.log'};" in result.stderr
    failed = events_of(tmp_path / "bug")[-1]
    assert isinstance(failed, RunFailed) and failed.kind == "internal"
    assert "a bug in a hook" in failed.error
    log = (tmp_path / "bug" / "error.log").read_text()
    assert "Traceback" in log and "broken" in log


def test_evaluate_a_plain_hugging_face_checkpoint(tmp_path: Path) -> None:
    """A checkpoint kdtui did not write: no kdtui keys in its config, labels LABEL_0/LABEL_1."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kdtui.models import bundled_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, num_labels=2,
    )  # fmt: skip
    folder = tmp_path / "hf"
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    report = tmp_path / "report.json"
    result = invoke(
        "evaluate", str(folder), "--profile", "smoke", "--json", str(report),
        "--set", "evaluate.latency_repeats=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (scored,) = json.loads(report.read_text())["models"]
    assert set(scored["accuracy"]) == {"books", "dvd", "electronics", "kitchen", "all"}
    assert scored["parameters"] == sum(
        p.numel() for p in BertForSequenceClassification(config).parameters()
    )
