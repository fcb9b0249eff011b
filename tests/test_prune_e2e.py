"""`kdtui teacher --profile smoke` then `kdtui prune` and `kdtui evaluate` through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdtui.events import Eval, LayerSparsity, Message, RunFinished, RunStarted, Step
from kdtui.sparse import SPARSE_FILE, load_sparse
from tests.conftest import events_of, invoke, kill_when, metrics_of

CAP_TERMS = {"prc_unsup", "prc_sup", "fic_unsup", "fic_sup", "snc_unsup", "snc_sup"}
DOMAINS = {"books", "dvd", "electronics", "kitchen", "all"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs")
    result = invoke("teacher", "--profile", "smoke", "--output-dir", str(path), "--name", "t")
    assert result.exit_code == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def pruned(runs: Path) -> Path:
    # No --model: the newest finished teacher run in the output dir is pruned.
    result = invoke(
        "prune", "--profile", "smoke", "--sparsity", "0.97", "-o", str(runs), "--name", "p"
    )
    assert result.exit_code == 0, result.stderr
    assert "sparsity: 0.97" in result.stdout
    return runs / "p"


def test_prune_smoke_logs_every_term_and_reaches_the_sparsity(pruned: Path, runs: Path) -> None:
    events = events_of(pruned)
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps] == list(range(1, 13))
    for s in steps:
        assert {"ce", "kd", "l1"} | CAP_TERMS <= set(s.losses)
        assert {"sparsity/target", "sparsity/actual"} <= set(s.metrics)
        assert abs(s.metrics["sparsity/actual"] - s.metrics["sparsity/target"]) < 0.005
    assert steps[0].metrics["sparsity/target"] == 0.0  # warm-up
    assert steps[-1].metrics["sparsity/target"] == 0.97
    evals = [e for e in events if isinstance(e, Eval)]
    assert evals and all(set(e.accuracy) == DOMAINS for e in evals)
    layer_events = [e for e in events if isinstance(e, LayerSparsity)]
    assert 3 <= len(layer_events) <= 8  # schedule changes and the end, not every step
    assert layer_events[-1].step == 12
    assert all(abs(v - 0.97) < 0.005 for v in layer_events[-1].layers.values())
    assert isinstance(events[-1], RunFinished)

    metrics = metrics_of(pruned)
    assert metrics["structure"] == "weights" and metrics["criterion"] == "soft-movement"
    assert metrics["cap_modules"] == ["prc", "fic", "snc"]
    assert abs(metrics["sparsity"] - 0.97) < 0.005
    assert set(metrics["test"]) == DOMAINS
    assert metrics["sparse_model"]["encoder_linear_ratio"] <= 0.10
    assert metrics["score_init"] == "magnitude"  # auto, from a fine-tuned model
    assert metrics["soft_mask"] == "calibrated" and metrics["start"] == "finetuned"
    diagnosed = [s.metrics for s in steps if "prune/overlap_magnitude" in s.metrics]
    assert diagnosed and all(
        {"prune/overlap_random", "prune/score_std", "prune/flipped"} <= set(m) for m in diagnosed
    )
    config = (pruned / "config.toml").read_text()
    assert f'model = "{runs / "t"}"' in config  # the teacher run it picked


def test_the_authors_regime_prunes_the_pretrained_weights_under_a_threshold(runs: Path) -> None:
    """--start pretrained --soft-mask threshold: the pre-trained weights (new head) learn from
    the fine-tuned model, scores start at 0, and the sparsity reached is what σ(S) > τ keeps."""
    result = invoke(
        "prune",
        "--profile",
        "smoke",
        "--model",
        str(runs / "t"),
        "--start",
        "pretrained",
        "--soft-mask",
        "threshold",
        "--sparsity",
        "0.5",
        "--set",
        "prune.l1_weight=1000",
        "-o",
        str(runs),
        "--name",
        "authors",
    )
    assert result.exit_code == 0, result.stderr
    assert "(at most 0.5000)" in result.stdout
    metrics = metrics_of(runs / "authors")
    assert metrics["start"] == "pretrained" and metrics["score_init"] == "constant"
    assert 0 <= metrics["sparsity"] <= 0.5 + 1e-9
    steps = [e for e in events_of(runs / "authors") if isinstance(e, Step)]
    taus = [s.metrics["prune/threshold"] for s in steps]
    assert taus[0] == 0.0 and taus[-1] == pytest.approx(0.1) and taus == sorted(taus)
    assert all("sparsity/target" not in s.metrics for s in steps)


def test_dense_and_sparse_copies_hold_the_same_weights(pruned: Path) -> None:
    dense = load_file(pruned / "model" / "model.safetensors")
    sparse = load_sparse(pruned / "model-sparse" / SPARSE_FILE)
    assert dense.keys() == sparse.keys()
    assert all(torch.equal(dense[k], sparse[k]) for k in dense)
    query = dense["bert.encoder.layer.0.attention.self.query.weight"]
    assert abs(float((query == 0).float().mean()) - 0.97) < 0.005


def test_evaluate_shows_teacher_and_pruned_side_by_side(
    runs: Path, pruned: Path, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    result = invoke(
        "evaluate", str(runs / "t"), str(pruned), "--json", str(report_path),
        "--sparse-kernels", "all",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    shown = " ".join(result.stdout.split())  # as one line, however the console wrapped it
    assert "dense PyTorch kernels multiply the zeros" in shown
    assert "12 of 12 encoder matrices" in shown
    teacher, student = json.loads(report_path.read_text())["models"]
    assert student["accuracy"] == pytest.approx(metrics_of(pruned)["test"])
    assert student["nonzero_parameters"] < teacher["nonzero_parameters"]
    assert student["parameters"] == teacher["parameters"]
    assert student["size_files"] == [f"model-sparse/{SPARSE_FILE}"]
    assert student["size_bytes"] == (pruned / "model-sparse" / SPARSE_FILE).stat().st_size
    assert abs(student["encoder_sparsity"] - 0.97) < 0.005
    assert teacher["encoder_sparsity"] < 0.01
    # Sparse kernels: timed both ways, every matrix sparse ("all"), the same outputs.
    assert "sparse_kernels" not in teacher
    sparse = student["sparse_kernels"]
    assert sparse["mode"] == "all" and len(sparse["matrices"]) == sparse["of"] == 12
    assert sparse["max_logit_diff"] < 1e-4
    assert sparse["accuracy"] == pytest.approx(student["accuracy"])
    assert len(sparse["latency"]) == len(student["latency"])


def test_structured_pruning_removes_heads_and_neurons(runs: Path, tmp_path: Path) -> None:
    result = invoke(
        "prune",
        "--profile",
        "smoke",
        "--model",
        str(runs / "t"),
        "--structure",
        "heads-ffn",
        "--sparsity",
        "0.5",
        "-o",
        str(runs),
        "--name",
        "heads",
    )
    assert result.exit_code == 0, result.stderr
    run = runs / "heads"
    metrics = metrics_of(run)
    assert abs(metrics["sparsity"] - 0.5) < 0.005
    assert metrics["kept_heads"] == [1, 1]  # tiny BERT: 2 heads per layer, one must stay
    steps = [e for e in events_of(run) if isinstance(e, Step)]
    assert {"ce", "kd"} | CAP_TERMS <= set(steps[0].losses) and "l1" not in steps[0].losses
    structure = json.loads((run / "model" / "config.json").read_text())["kdtui_structure"]
    assert [len(h) for h in structure["heads"]] == [1, 1]
    assert structure["intermediate_sizes"] == metrics["intermediate_sizes"]
    report_path = tmp_path / "report.json"
    result = invoke("evaluate", str(runs / "t"), str(run), "--json", str(report_path))
    assert result.exit_code == 0, result.stderr
    teacher, student = json.loads(report_path.read_text())["models"]
    assert student["accuracy"] == pytest.approx(metrics["test"])
    assert student["parameters"] < teacher["parameters"]
    assert student["size_bytes"] < teacher["size_bytes"]


def test_no_cap_gives_the_plain_baseline(runs: Path) -> None:
    result = invoke(
        "prune",
        "--profile",
        "smoke",
        "--model",
        str(runs / "t"),
        "--criterion",
        "magnitude",
        "--no-cap",
        "-o",
        str(runs),
        "--name",
        "baseline",
    )
    assert result.exit_code == 0, result.stderr
    steps = [e for e in events_of(runs / "baseline") if isinstance(e, Step)]
    assert set(steps[-1].losses) == {"ce", "kd"}
    assert abs(metrics_of(runs / "baseline")["sparsity"] - 0.9) < 0.005  # the default target


# -- resume ----------------------------------------------------------------------------------

LONGER = ["--max-steps", "40", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=5"]


def test_sigkill_mid_pruning_then_resume_equals_uninterrupted(runs: Path) -> None:
    common = ["prune", "--profile", "smoke", "--model", str(runs / "t"), "--sparsity", "0.9"]
    common += ["-o", str(runs), "--quiet", *LONGER]
    result = invoke(*common, "--name", "full")
    assert result.exit_code == 0, result.stderr

    kill_when([*common, "--name", "killed"], runs / "killed" / "checkpoints" / "step-00000015")
    killed = events_of(runs / "killed")
    assert not any(isinstance(e, RunFinished) for e in killed), "kill came too late"
    last = [e for e in killed if isinstance(e, Step)][-1]
    assert 0 < last.metrics["sparsity/target"] < 0.9  # mid-pruning

    resumed = invoke("prune", "--resume", str(runs / "killed"), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert metrics_of(runs / "killed") == metrics_of(runs / "full")
    for folder in ("model", "model-sparse"):
        name = "model.safetensors" if folder == "model" else SPARSE_FILE
        assert (runs / "killed" / folder / name).read_bytes() == (
            runs / "full" / folder / name
        ).read_bytes()
    messages = [e.text for e in events_of(runs / "killed") if isinstance(e, Message)]
    assert any("resumed training from step" in m for m in messages)


# -- bad input -------------------------------------------------------------------------------


def _fails_cleanly(result: object, text: str) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--sparsity", "1.0"], "prune.sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "prune.sparsity must be in [0, 1)"),
        (["--criterion", "random"], "prune.criterion must be one of magnitude"),
        (["--structure", "heads-ffn", "--sparsity", "0.95"], "would remove every head of a layer"),
    ],
)
def test_bad_options_are_one_line_errors(runs: Path, args: list[str], text: str) -> None:
    before = (runs / "t" / "events.jsonl").read_bytes()
    result = invoke(
        "prune", "--profile", "smoke", "--model", str(runs / "t"), "-o", str(runs), *args
    )
    _fails_cleanly(result, text)
    assert (runs / "t" / "events.jsonl").read_bytes() == before


def test_a_model_without_a_classification_head_is_refused(runs: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    encoder = tmp_path / "encoder"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(encoder)
    result = invoke("prune", "--profile", "smoke", "--model", str(encoder), "-o", str(tmp_path))
    _fails_cleanly(result, "has no sequence classification head")


def test_a_teacher_with_other_labels_is_refused(runs: Path, tmp_path: Path) -> None:
    from kdtui.config import ModelConfig
    from kdtui.models import load_classifier, load_tokenizer, save_classifier

    other = tmp_path / "three-labels"
    model = load_classifier(ModelConfig(name="tiny"), ["a", "b", "c"])
    save_classifier(model, load_tokenizer(ModelConfig(name="tiny")), other, ["a", "b", "c"])
    result = invoke(
        "prune",
        "--profile",
        "smoke",
        "--model",
        str(runs / "t"),
        "--teacher",
        str(other),
        "-o",
        str(tmp_path),
        "--name",
        "bad-teacher",
    )
    _fails_cleanly(result, "KD needs the same label set")
    assert not (tmp_path / "bad-teacher").exists()  # a mistake leaves no run behind


def test_a_plain_checkpoint_folder_with_a_pretrained_model_and_mean_pooling(
    runs: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "downloaded"  # a checkpoint folder that no teacher run describes
    shutil.copytree(runs / "t" / "model", plain)
    common = ["prune", "--profile", "smoke", "--model", str(plain), "-o", str(tmp_path)]
    common += ["--max-steps", "4", "--quiet"]
    # A folder is not a teacher run: nothing records what it was fine-tuned from.
    result = invoke(*common, "--name", "no-pretrained")
    _fails_cleanly(result, "give --pretrained NAME_OR_FOLDER")
    assert not (tmp_path / "no-pretrained").exists()
    result = invoke(*common, "--name", "too-wide", "--pretrained", "minilm")
    _fails_cleanly(result, "is 384 wide but the model being pruned is 32")
    assert not (tmp_path / "too-wide").exists()
    result = invoke(*common, "--name", "mean", "--pretrained", str(plain), "--pooling", "mean")
    assert result.exit_code == 0, result.stderr
    steps = [e for e in events_of(tmp_path / "mean") if isinstance(e, Step)]
    assert set(steps[-1].losses) >= CAP_TERMS
    (started,) = [e for e in events_of(tmp_path / "mean") if isinstance(e, RunStarted)]
    assert started.config["prune"]["pooling"] == "mean"
