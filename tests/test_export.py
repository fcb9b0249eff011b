"""ONNX export round trips on tiny models (dense, unstructured, heads-ffn): ONNX Runtime's logits
equal kdtui's, for the plain graph and the one ONNX Runtime's transformer optimiser fused;
`kdtui export` (with --int8 and --optimize transformer) and `kdtui evaluate EXPORT` through the
real CLI.

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
    BATCH_AXIS,
    SEQUENCE_AXIS,
    attention_heads,
    export_onnx,
    optimize_onnx,
    optimized_graphs,
    quantize_int8,
    session,
    session_forward,
)
from kdtui.exportdir import (  # noqa: E402
    EXPORT_INFO_FILE,
    INT8_FILE,
    ONNX_FILE,
    OPT_FILE,
    OPT_INT8_FILE,
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


def assert_runs_like(model: torch.nn.Module, graph: Path, atol: float) -> None:
    """GRAPH under ONNX Runtime gives MODEL's logits on other batch sizes and lengths than the
    trace's (2 x 16), padded and not."""
    forward = session_forward(session(graph, threads=1))
    for size, length in ((1, 5), (8, 10), (3, 24)):
        batch = batch_of(size=size, length=length, seed=size)
        inputs = batch.model_inputs()
        with torch.no_grad():
            expected = model(**inputs).logits
        got = torch.from_numpy(forward(inputs))
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=atol), (got - expected).abs().max()


@pytest.mark.parametrize("kind", list(MODELS))
def test_onnx_runtime_gives_kdtui_logits(kind: str, tmp_path: Path) -> None:
    model = MODELS[kind]()
    names = export_onnx(model, BERT_INPUTS, tmp_path / ONNX_FILE)
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    assert not model.training  # the exporter hands the model back in eval mode
    assert_runs_like(model, tmp_path / ONNX_FILE, atol=1e-5)


def heads_ffn_uniform(model: torch.nn.Module) -> torch.nn.Module:
    """heads-ffn with the same head count kept in every layer: one count for the optimiser."""
    compact(model, heads=[[0, 3], [1, 2]], neurons=[list(range(0, 48, 2)), list(range(7))])
    return model


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_optimised_graph_gives_kdtui_logits(kind: str, tmp_path: Path) -> None:
    model = MODELS[kind]()
    own = model.config._attn_implementation
    record = optimize_onnx(model, BERT_INPUTS, tmp_path / OPT_FILE)
    # Traced with eager attention, and handed back with its own.
    assert record["traced_attention"] == "eager"
    assert model.config._attn_implementation == own
    assert isinstance(record["fused"], dict) and record["summary"]
    assert_runs_like(model, tmp_path / OPT_FILE, atol=1e-4)
    if kind == "heads-ffn":  # 3 heads in layer 0, 1 in layer 1: one count cannot serve both
        assert attention_heads(model) is None
        assert record["attention"] == "not fused: the layers have different head counts"
        assert "Attention" not in record["fused"]
    else:
        assert attention_heads(model) == 4 and record["num_heads"] == 4


@pytest.mark.parametrize(
    ("make", "heads"),
    [
        (lambda: tiny_bert(heads=4).eval(), 4),
        (lambda: heads_ffn_uniform(tiny_bert(heads=4)).eval(), 2),
    ],
    ids=["dense", "heads-ffn-same-count"],
)
def test_the_optimiser_fuses_attention_in_every_layer(make, heads: int, tmp_path: Path) -> None:
    """What kdtui/export.py's docstring reads from onnxruntime's fusion_attention.py: the eager
    trace of a transformers 5 BERT matches its "path2" and the transformers 5 mask pattern, and
    with the head count given every layer's attention becomes one Attention node."""
    model = make()
    assert attention_heads(model) == heads
    record = optimize_onnx(model, BERT_INPUTS, tmp_path / OPT_FILE)
    assert record["fused"].get("Attention") == 2, record
    assert record["attention"] == "fused in 2 of 2 layers"
    batch = batch_of(size=4, length=12)
    with torch.no_grad():
        expected = model(**batch.model_inputs()).logits
    got = torch.from_numpy(session_forward(session(tmp_path / OPT_FILE, 1))(batch.model_inputs()))
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_auto_keeps_the_optimised_graphs_where_attention_fuses_in_every_layer(
    tmp_path: Path,
) -> None:
    record = optimized_graphs(MODELS["dense"](), BERT_INPUTS, tmp_path, mode="auto", int8=True)
    assert record["kept"] and record["files"] == [OPT_FILE, OPT_INT8_FILE]
    assert record["attention"] == "fused in 2 of 2 layers"
    assert {p.name for p in tmp_path.iterdir()} == {OPT_FILE, OPT_INT8_FILE}


def test_auto_does_not_optimise_layers_with_different_head_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdtui.export

    def never(*args: object) -> None:
        raise AssertionError("the optimiser ran")

    monkeypatch.setattr(kdtui.export, "optimize_onnx", never)
    record = optimized_graphs(MODELS["heads-ffn"](), BERT_INPUTS, tmp_path, mode="auto", int8=True)
    assert not record["kept"] and record["files"] == []
    assert "different head counts" in record["summary"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["auto", "transformer"])
def test_auto_drops_a_graph_whose_attention_fused_in_fewer_layers(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdtui.export

    def half_fused(model: object, tokenizer: object, path: Path) -> dict:
        path.write_bytes(b"graph")
        return {
            "attention": "fused in 1 of 2 layers",
            "attention_fused": 1,
            "layers": 2,
            "summary": "fused Attention x1",
        }

    monkeypatch.setattr(kdtui.export, "optimize_onnx", half_fused)
    monkeypatch.setattr(kdtui.export, "quantize_int8", lambda a, b: b.write_bytes(b"int8"))
    record = optimized_graphs(MODELS["dense"](), BERT_INPUTS, tmp_path, mode=mode, int8=True)
    if mode == "auto":
        assert not record["kept"] and record["files"] == []
        assert record["summary"].startswith("not kept: attention fused in 1 of 2 layers")
        assert list(tmp_path.iterdir()) == []
    else:  # asked for: written whatever fused
        assert record["kept"] and record["files"] == [OPT_FILE, OPT_INT8_FILE]


def test_a_failing_optimiser_is_a_note_under_auto_and_an_error_when_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdtui.export
    from kdtui.errors import KdtuiError

    def fails(*args: object) -> None:
        raise KdtuiError(
            "ONNX Runtime's transformer optimiser failed on this model (boom); "
            "export without --optimize"
        )

    monkeypatch.setattr(kdtui.export, "optimize_onnx", fails)
    record = optimized_graphs(MODELS["dense"](), BERT_INPUTS, tmp_path, mode="auto", int8=False)
    assert not record["kept"] and record["files"] == []
    assert record["summary"] == (
        "not written: ONNX Runtime's transformer optimiser failed on this model (boom)"
    )
    with pytest.raises(KdtuiError, match="boom"):
        optimized_graphs(MODELS["dense"](), BERT_INPUTS, tmp_path, mode="transformer", int8=False)


def test_a_session_with_fixed_axes_runs_that_shape(tmp_path: Path) -> None:
    model = tiny_bert().eval()
    export_onnx(model, BERT_INPUTS, tmp_path / ONNX_FILE)
    fixed = session(tmp_path / ONNX_FILE, threads=1, dims={BATCH_AXIS: 1, SEQUENCE_AXIS: 10})
    free = session(tmp_path / ONNX_FILE, threads=1)
    inputs = batch_of(size=1, length=10).model_inputs()
    got = session_forward(fixed)(inputs)
    assert got.shape == (1, 2)
    expected = torch.from_numpy(session_forward(free)(inputs))
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5)


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
    assert f"{OPT_FILE}: ONNX Runtime's transformer optimiser fused" in result.stdout
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
    torch_model, fp32, int8, *optimised = json.loads(report_path.read_text())["models"]
    assert [fp32["model"], int8["model"]] == [str(folder / ONNX_FILE), str(folder / INT8_FILE)]
    # By default (export.optimize = auto) the optimised graphs too: attention fuses in this BERT.
    assert [m["model"] for m in optimised] == [str(folder / OPT_FILE), str(folder / OPT_INT8_FILE)]
    assert info["optimize"]["kept"]
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


def test_optimised_export_is_checked_listed_and_evaluated(teacher: Path, tmp_path: Path) -> None:
    folder = tmp_path / "optimised"
    result = invoke(
        "export", str(teacher), "-o", str(folder), "--optimize", "transformer", "--int8"
    )
    assert result.exit_code == 0, result.stderr
    assert "transformer optimiser fused" in result.stdout
    assert f"{OPT_FILE}: " in result.stdout and f"{OPT_INT8_FILE}: " in result.stdout
    names = {p.name for p in folder.iterdir()}
    assert {ONNX_FILE, INT8_FILE, OPT_FILE, OPT_INT8_FILE, EXPORT_INFO_FILE} <= names
    info = read_export_info(folder)
    check = info["check"]
    assert check[OPT_FILE]["max_logit_diff"] < 1e-4
    assert check[OPT_FILE]["same_predictions"] == 1.0
    assert check[OPT_FILE]["accuracy"] == pytest.approx(check[ONNX_FILE]["accuracy"])
    assert check[OPT_INT8_FILE]["bytes"] < check[OPT_FILE]["bytes"]
    assert info["optimize"]["optimizer"] == "onnxruntime.transformers.optimizer"
    assert info["optimize"]["num_heads"] > 0

    report_path = tmp_path / "report.json"
    result = invoke("evaluate", str(folder), "--json", str(report_path))
    assert result.exit_code == 0, result.stderr
    models = json.loads(report_path.read_text())["models"]
    assert [m["model"] for m in models] == [
        str(folder / name) for name in (ONNX_FILE, INT8_FILE, OPT_FILE, OPT_INT8_FILE)
    ]
    assert all(m["runtime"] == "onnxruntime" for m in models)
    assert models[2]["accuracy"] == pytest.approx(models[0]["accuracy"])


def test_an_optimised_graph_whose_logits_moved_is_refused(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdtui.export

    # Any difference at all is too much here: the refusal, as a fusion that changed the model
    # would meet it.
    monkeypatch.setattr(kdtui.export, "OPTIMIZED_MAX_DIFF", -1.0)
    folder = tmp_path / "refused"
    result = invoke("export", str(teacher), "-o", str(folder), "--optimize", "transformer")
    assert result.exit_code == 2
    assert f"{OPT_FILE}'s logits differ from PyTorch's" in result.stderr
    assert "export without --optimize" in result.stderr
    assert not folder.exists()  # nothing half-written
    # Not asked for (auto): the plain graph is the export, and the export says why.
    result = invoke("export", str(teacher), "-o", str(folder))
    assert result.exit_code == 0, result.stderr
    assert f"{OPT_FILE}: not kept: {OPT_FILE}'s logits differ from PyTorch's" in result.stdout
    assert {p.name for p in folder.glob("*.onnx")} == {ONNX_FILE}
    assert set(read_export_info(folder)["check"]) == {"split", "examples", ONNX_FILE}


def test_a_pytorch_loader_refuses_an_export_with_a_clear_error(teacher: Path) -> None:
    from kdtui.errors import KdtuiError
    from kdtui.models import load_any

    folder = teacher.parent / "plain-export"
    result = invoke("export", str(teacher), "-o", str(folder))
    assert result.exit_code == 0, result.stderr
    with pytest.raises(KdtuiError, match="ONNX export"):
        load_any(folder)
