"""The model layout (kdtui.layout) on a tiny random BERT: the layers, the six matrices of each
with their shapes, the self-attention, state-dict names, and a clear error for other models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from kdtui.errors import KdtuiError
from kdtui.layout import (
    BERT,
    FFN_MATRICES,
    MATRIX_NAMES,
    encoder_layers,
    encoder_linears,
    is_matrix_weight,
    layout_of,
    self_attention,
)

HIDDEN, FFN, HEADS, LAYERS = 32, 48, 4, 3


@pytest.fixture(scope="module")
def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def test_a_bert_has_the_bert_layout_and_its_layers(bert: nn.Module) -> None:
    assert layout_of(bert) is BERT
    assert encoder_layers(bert) == list(bert.bert.encoder.layer)


def test_six_matrices_per_layer_in_order_with_their_shapes(bert: nn.Module) -> None:
    linears = encoder_linears(bert)
    paths = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    # These names are in events, pruning checkpoints and reports: they must not change.
    assert list(linears) == [f"layer.{i}.{path}" for i in range(LAYERS) for path in paths]
    for i, layer in enumerate(bert.bert.encoder.layer):
        assert linears[f"layer.{i}.attention.self.query"] is layer.attention.self.query
        assert linears[f"layer.{i}.output.dense"] is layer.output.dense
    shapes = {path: tuple(linears[f"layer.0.{path}"].weight.shape) for path in paths}
    square = (HIDDEN, HIDDEN)
    assert shapes == {
        "attention.self.query": square,
        "attention.self.key": square,
        "attention.self.value": square,
        "attention.output.dense": square,
        "intermediate.dense": (FFN, HIDDEN),
        "output.dense": (HIDDEN, FFN),
    }


def test_short_names_and_ffn_matrices() -> None:
    assert list(BERT.matrices()) == ["query", "key", "value", "attn.out", "ffn.in", "ffn.out"]
    assert MATRIX_NAMES["attention.output.dense"] == "attn.out"
    assert MATRIX_NAMES["output.dense"] == "ffn.out"
    assert set(FFN_MATRICES) <= set(BERT.matrices())


def test_self_attention_is_the_module_with_query_key_value(bert: nn.Module) -> None:
    for i, layer in enumerate(bert.bert.encoder.layer):
        block = self_attention(bert, i)
        assert block is layer.attention.self
        assert isinstance(block.query, nn.Linear) and isinstance(block.value, nn.Linear)
        assert block.attention_head_size * HEADS == HIDDEN
    with pytest.raises(KdtuiError, match="no encoder layer 3"):
        self_attention(bert, LAYERS)


def test_state_dict_names_of_encoder_matrices(bert: nn.Module) -> None:
    weights = [k for k in bert.state_dict() if is_matrix_weight(k)]
    assert len(weights) == 6 * LAYERS
    assert "bert.encoder.layer.0.attention.self.query.weight" in weights
    assert "bert.encoder.layer.0.attention.self.query.bias" not in weights
    assert "bert.pooler.dense.weight" not in weights
    assert "classifier.weight" not in weights


class _Elsewhere(nn.Module):
    """An encoder whose layers live under another name."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleList([nn.Linear(4, 4)])

    @property
    def base_model(self) -> nn.Module:
        return self


def test_an_unknown_layout_is_a_clear_error(bert: nn.Module) -> None:
    for model in (_Elsewhere(), nn.Linear(4, 4)):
        with pytest.raises(KdtuiError, match="has another one") as error:
            encoder_layers(model)
        assert "BERT-style: base_model.encoder.layer[i] with attention.self.query" in str(
            error.value
        )
        with pytest.raises(KdtuiError, match=type(model).__name__):
            self_attention(model, 0)


def test_a_layer_whose_matrix_is_not_a_linear_does_not_fit() -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2)
    model = BertForSequenceClassification(config)
    model.bert.encoder.layer[1].intermediate.dense = nn.Identity()
    with pytest.raises(KdtuiError, match="has another one"):
        encoder_linears(model)


def test_importing_the_layout_loads_no_torch() -> None:
    """The dashboard reads MATRIX_NAMES from here and must stay torch-free."""
    code = "import sys, kdtui.layout; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
