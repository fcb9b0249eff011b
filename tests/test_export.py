"""ONNX export round trips on tiny models (dense, unstructured, heads-ffn): ONNX Runtime's logits
equal kdtui's; `kdtui export` and `kdtui evaluate EXPORT` through the real CLI.

Needs the export extra (pip install -c constraints.txt -e '.[export]'); skipped without it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from kdtui.export import (  # noqa: E402
    export_onnx,
    quantize_int8,
    session,
    session_forward,
)
from kdtui.exportdir import (  # noqa: E402
    EXPORT_INFO_FILE,
    INT8_FILE,
    ONNX_FILE,
    read_export_info,
)
from kdtui.methods.compact import compact  # noqa: E402
from tests.conftest import invoke, metrics_of  # noqa: E402
from tests.test_pruning import batch_of, tiny_bert  # noqa: E402
from tests.test_sparse_kernels import sparsify  # noqa: E402

BERT_INPUTS = SimpleNamespace(model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def heads_ffn(model: torch.nn.Module) -> torch.nn.Module:
    """Each layer with its own head count and FFN width, as heads-ffn pruning leaves them."""
    compact(model, heads=[[0, 2, 3], [1]], neurons=[list(range(0, 48, 2)), list(range(5))])
    return model


MODELS = {
    "dense": lambda: tiny_bert(heads=4).eval(),
    "unstructured": lambda: sparsify(tiny_bert(heads=4), 0.9).eval(),
    "heads-ffn": lambda: heads_ffn(tiny_bert(heads=4)).eval(),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_onnx_runtime_gives_kdtui_logits(kind: str, tmp_path: Path) -> None:
    model = MODELS[kind]()
    names = export_onnx(model, BERT_INPUTS, tmp_path / ONNX_FILE)
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    assert not model.training  # the exporter hands the model back in eval mode
    forward = session_forward(session(tmp_path / ONNX_FILE, threads=1))
    # Other batch sizes and lengths than the trace's (2 x 16), padded and not.
    for size, length in ((1, 5), (8, 10), (3, 24)):
        batch = batch_of(size=size, length=length, seed=size)
        inputs = batch.model_inputs()
        with torch.no_grad():
            expected = model(**inputs).logits
        got = torch.from_numpy(forward(inputs))
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_int8_quantisation_writes_a_smaller_model_that_runs(tmp_path: Path) -> None:
    model = tiny_bert().eval()
    export_onnx(model, BERT_INPUTS, tmp_path / ONNX_FILE)
    quantize_int8(tmp_path / ONNX_FILE, tmp_path / INT8_FILE)
    assert (tmp_path / INT8_FILE).stat().st_size < (tmp_path / ONNX_FILE).stat().st_size
    batch = batch_of()
    logits = session_forward(session(tmp_path / INT8_FILE, threads=1))(batch.model_inputs())
    assert logits.shape == (8, 2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    result = invoke("teacher", "--profile", "smoke", "-o", str(runs), "--name", "t")
    assert result.exit_code == 0, result.stderr
    return runs / "t"


def test_export_then_evaluate_the_export(teacher: Path, tmp_path: Path) -> None:
    result = invoke("export", str(teacher), "--format", "onnx", "--int8")
    assert result.exit_code == 0, result.stderr
    folder = teacher / "onnx"
    assert "max |logit difference| to kdtui" in result.stdout
    names = {p.name for p in folder.iterdir()}
    assert {ONNX_FILE, INT8_FILE, EXPORT_INFO_FILE, "config.json", "tokenizer.json"} <= names
    info = read_export_info(folder)
    check = info["check"]
    assert check["split"] == "test" and check["examples"] == 48
    assert check[ONNX_FILE]["max_logit_diff"] < 1e-4
    assert check[ONNX_FILE]["same_predictions"] == 1.0
    assert check[ONNX_FILE]["accuracy"] == pytest.approx(metrics_of(teacher)["test"]["all"])

    # A second export to the same place needs --force.
    again = invoke("export", str(teacher))
    assert again.exit_code == 2 and "--force" in again.stderr

    report_path = tmp_path / "report.json"
    result = invoke("evaluate", str(teacher), str(folder), "--json", str(report_path))
    assert result.exit_code == 0, result.stderr
    torch_model, fp32, int8 = json.loads(report_path.read_text())["models"]
    assert [fp32["model"], int8["model"]] == [str(folder / ONNX_FILE), str(folder / INT8_FILE)]
    assert fp32["runtime"] == int8["runtime"] == "onnxruntime"
    assert fp32["accuracy"] == pytest.approx(torch_model["accuracy"])
    assert set(int8["accuracy"]) == set(torch_model["accuracy"])
    assert [(r["batch"], r["length"]) for r in fp32["latency"]] == [(1, 16), (8, 16)]
    assert int8["size_bytes"] < fp32["size_bytes"]

    # One file alone is scored on the data of the run it was exported from (48 examples).
    result = invoke("evaluate", str(folder / INT8_FILE), "--json", str(report_path))
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["examples"] == 48 and len(report["models"]) == 1
    assert report["models"][0]["accuracy"] == pytest.approx(int8["accuracy"])


def test_a_pytorch_loader_refuses_an_export_with_a_clear_error(teacher: Path) -> None:
    from kdtui.errors import KdtuiError
    from kdtui.models import load_any

    folder = teacher.parent / "plain-export"
    result = invoke("export", str(teacher), "-o", str(folder))
    assert result.exit_code == 0, result.stderr
    with pytest.raises(KdtuiError, match="ONNX export"):
        load_any(folder)
