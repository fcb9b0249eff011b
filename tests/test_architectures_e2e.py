"""Every command on tiny random encoders of each supported family, through the real CLI on the
smoke profile: a pre-trained encoder folder (random weights, MiniLM's tokenizer) is fine-tuned
with `kdtui teacher`, pruned (weights and heads-ffn), distilled (vanilla, logits; a meta-teacher
and Meta-KD on every family but NomicBERT), evaluated and exported. The exactness checks are
in test_architectures.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from kdtui.models import bundled_minilm_path, load_any
from tests.conftest import invoke, metrics_of
from tests.test_architectures import config_of

E2E = ["roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert", "nomic-bert"]


def encoder_folder(arch: str, folder: Path) -> Path:
    """A pre-trained encoder as a user brings one: weights, config.json and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_path())
    config = config_of(arch, vocab=tokenizer.vocab_size)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(*args: str) -> object:
    return invoke(*args, "--profile", "smoke", "--quiet")


@pytest.fixture(scope="module", params=E2E)
def arch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(family, runs folder with RUNS/teacher fine-tuned from a tiny random encoder)."""
    name = request.param
    runs = tmp_path_factory.mktemp(name)
    encoder = encoder_folder(name, runs / "encoder")
    result = run("teacher", "--model", str(encoder), "-o", str(runs), "--name", "teacher")
    assert result.exit_code == 0, result.stderr
    return name, runs


def _evaluate(model: Path, tmp: Path) -> dict:
    report = tmp / f"{model.name}.json"
    result = invoke(
        "evaluate", str(model), "--profile", "smoke", "--json", str(report),
        "--set", "evaluate.latency_repeats=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (scored,) = json.loads(report.read_text())["models"]
    return scored


@pytest.mark.parametrize("structure", ["weights", "heads-ffn"])
def test_prune_then_evaluate(arch: tuple, structure: str, tmp_path: Path) -> None:
    name, runs = arch
    sparsity = "0.9" if structure == "weights" else "0.3"
    out = f"prune-{structure}"
    result = run(
        "prune", "--model", str(runs / "teacher"), "--structure", structure,
        "--sparsity", sparsity, "-o", str(runs), "--name", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    metrics = metrics_of(runs / out)
    assert abs(metrics["sparsity"] - float(sparsity)) < 0.02
    scored = _evaluate(runs / out, tmp_path)
    assert set(scored["accuracy"]) >= {"all"}
    if structure == "heads-ffn":
        teacher = load_any(runs / "teacher")
        pruned = load_any(runs / out)
        assert sum(p.numel() for p in pruned.parameters()) < sum(
            p.numel() for p in teacher.parameters()
        )


@pytest.mark.parametrize("method", ["vanilla", "logits"])
def test_distill_then_evaluate(arch: tuple, method: str, tmp_path: Path) -> None:
    name, runs = arch
    out = f"distill-{method}"
    result = run(
        "distill", "--teacher", str(runs / "teacher"), "--domain", "books",
        "--method", method, "-o", str(runs), "--name", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    student = load_any(runs / out)
    assert student.config.num_hidden_layers == 1  # the smoke profile's student
    assert type(student).__name__ == type(load_any(runs / "teacher")).__name__
    _evaluate(runs / out, tmp_path)


def test_a_narrower_student_learns(arch: tuple) -> None:
    name, runs = arch
    result = run(
        "distill", "--teacher", str(runs / "teacher"), "--domain", "books", "--method",
        "logits", "--student-hidden", "16", "-o", str(runs), "--name", "narrow",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert load_any(runs / "narrow").config.hidden_size == 16


def test_export_matches_pytorch(arch: tuple, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    name, runs = arch
    result = invoke(
        "export", str(runs / "teacher"), "--profile", "smoke", "-o", str(tmp_path / "x")
    )
    assert result.exit_code == 0, result.stderr
    info = json.loads((tmp_path / "x" / "kdtui_export.json").read_text())
    assert info["check"]["model.onnx"]["max_logit_diff"] < 1e-4


@pytest.mark.parametrize("name", [n for n in E2E if n != "nomic-bert"])
def test_meta_teacher_then_meta_distillation(name: str, tmp_path: Path) -> None:
    encoder = encoder_folder(name, tmp_path / "encoder")
    result = run(
        "teacher", "--method", "meta", "--model", str(encoder), "-o", str(tmp_path),
        "--name", "meta",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = run(
        "distill", "--teacher", str(tmp_path / "meta"), "--domain", "books", "-o",
        str(tmp_path), "--name", "student",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert metrics_of(tmp_path / "student")["method"] == "meta"


def test_albert_trains_and_is_refused_where_its_shared_layers_cannot_go(tmp_path: Path) -> None:
    """ALBERT's layers share their weights: kdtui fine-tunes it, and refuses pruning and a
    student built from it with one message that says what works instead."""
    encoder = encoder_folder("albert", tmp_path / "encoder")
    result = run("teacher", "--model", str(encoder), "-o", str(tmp_path), "--name", "albert")
    assert result.exit_code == 0, result.stderr
    teacher = str(tmp_path / "albert")
    commands = {
        "prune": ("prune", "--model", teacher, "--sparsity", "0.5"),
        "logits": ("distill", "--teacher", teacher, "--domain", "books", "--method", "logits"),
        "vanilla": ("distill", "--teacher", teacher, "--domain", "books", "--method", "vanilla"),
    }
    for name, command in commands.items():
        result = run(*command, "-o", str(tmp_path), "--name", name)
        assert result.exit_code == 2, (name, result.stderr)
        assert "ALBERT shares one set of layer weights" in result.stderr, name
        assert "internal error" not in result.stderr
