"""Model layout: which modules of an encoder are its layers, its self-attention and its matrices.

The one place that knows where an encoder family keeps these parts. Pruning, compaction, sparse
kernels, attention distillation, evaluation and the dashboard ask here instead of naming
submodules themselves, so another family is one more `Layout` in `LAYOUTS`. Paths are
submodule paths as `nn.Module.get_submodule` takes them: `layers` under the model's
`base_model`, the others inside one layer.

The names kdtui writes for a matrix (events, pruning checkpoints, per-matrix reports) are
`layer.{i}.{path}`, the family's own path, so they match the model's state dict.

No torch at import time: the dashboard reads the matrices' short names and must stay torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdtui.errors import KdtuiError

if TYPE_CHECKING:
    from torch import nn

# Short names of the FFN matrices (see Layout.matrices): pruning masks them by neuron, not head.
FFN_MATRICES = ("ffn.in", "ffn.out")


@dataclass(frozen=True)
class Layout:
    """Where one encoder family keeps its parts."""

    family: str  # named in messages
    layers: str  # under base_model: the list of transformer layers
    attention: str  # the self-attention (query/key/value, head count and head size)
    query: str
    key: str
    value: str
    attn_out: str  # attention output projection: its input is the heads' context
    ffn_in: str
    ffn_out: str  # FFN output projection: its input is the activated neurons

    def matrices(self) -> dict[str, str]:
        """A layer's six Linear matrices, short name -> path, in the order kdtui lists them
        (the short names are what the dashboard shows)."""
        return {
            "query": self.query,
            "key": self.key,
            "value": self.value,
            "attn.out": self.attn_out,
            "ffn.in": self.ffn_in,
            "ffn.out": self.ffn_out,
        }


# BERT and the encoders built like it (RoBERTa, ELECTRA, MiniLM, ...).
BERT = Layout(
    family="BERT-style",
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attn_out="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
)

# The first one a model fits is its layout.
LAYOUTS = (BERT,)

# Path -> short name for every known layout (the dashboard's per-matrix grid).
MATRIX_NAMES = {path: name for layout in LAYOUTS for name, path in layout.matrices().items()}


def layout_of(model: nn.Module) -> Layout:
    """The layout of MODEL's encoder; a KdtuiError naming the known ones when it fits none."""
    for layout in LAYOUTS:
        if _fits(model, layout):
            return layout
    known = "; ".join(
        f"{layout.family}: base_model.{layout.layers}[i] with "
        + ", ".join(layout.matrices().values())
        for layout in LAYOUTS
    )
    raise KdtuiError(
        f"kdtui knows these encoder layouts ({known}); {type(model).__name__} has another one"
    )


def _fits(model: nn.Module, layout: Layout) -> bool:
    from torch import nn

    try:
        for layer in _layers(model, layout):
            layer.get_submodule(layout.attention)
            matrices = [layer.get_submodule(path) for path in layout.matrices().values()]
            if not all(isinstance(m, nn.Linear) for m in matrices):
                return False
    except (AttributeError, TypeError):
        return False
    return True


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of MODEL's encoder, first to last."""
    return list(_layers(model, layout_of(model)))


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """{"layer.{i}.{path}": Linear} for every matrix of the encoder, layer by layer, each
    layer's in the order of Layout.matrices."""
    layout = layout_of(model)
    paths = layout.matrices().values()
    return {
        f"layer.{i}.{path}": layer.get_submodule(path)
        for i, layer in enumerate(_layers(model, layout))
        for path in paths
    }


def self_attention(model: nn.Module, layer: int) -> nn.Module:
    """The self-attention of encoder layer LAYER (0-based): it has the query, key and value
    projections and the head size."""
    layout = layout_of(model)
    layers = _layers(model, layout)
    if not 0 <= layer < len(layers):
        raise KdtuiError(f"{type(model).__name__} has no encoder layer {layer}")
    return layers[layer].get_submodule(layout.attention)


def _layers(model: nn.Module, layout: Layout) -> nn.Module:
    return model.base_model.get_submodule(layout.layers)


def is_matrix_weight(key: str) -> bool:
    """Whether a state-dict KEY is the weight of an encoder matrix of a known layout."""
    return any(
        f".{layout.layers}." in key
        and key.endswith(tuple(f".{path}.weight" for path in layout.matrices().values()))
        for layout in LAYOUTS
    )
