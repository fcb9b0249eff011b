"""Model layout: which modules of an encoder are its layers, its self-attention and its matrices.

The one place that knows where an encoder family keeps these parts. Pruning, compaction, sparse
kernels, attention distillation, evaluation and the dashboard ask here instead of naming
submodules themselves, so another family is one more `Layout` in `LAYOUTS`. Paths are
submodule paths as `nn.Module.get_submodule` takes them: `layers` under the model's
`base_model`, the others inside one layer.

The names kdtui writes for a matrix (events, pruning checkpoints, per-matrix reports) are
`layer.{i}.{path}`, the family's own path, so they match the model's state dict.

A layout also says how a family's heads and FFN neurons map to rows and columns (a fused Q/K/V
projection, a GLU input projection, DeBERTa's relative-position projections), which config key
names the FFN width, which attention implementation it loads with, and how kdtui recomputes its
attention scores. Families kdtui cannot prune or cut layer by layer are refused here by name
(`REFUSED`), with what works instead.

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
FFN_GATE = "ffn.gate"  # a GLU's separate gate projection (NomicBERT): masked by neuron too


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
    # The rest defaults to BERT's.
    qkv: str = ""  # one fused projection with rows [Q; K; V] (then query/key/value are "")
    ffn_gate: str = ""  # a GLU's separate gate projection, one row per neuron like ffn_in
    glu_in: bool = False  # ffn_in holds rows [input; gate]: neuron n owns rows n and I + n
    # More projections with one block of rows per head, where a layer has them (DeBERTa's
    # relative-position projections when they are not shared with query/key).
    head_rows: tuple[str, ...] = ()
    head_size: str = "attention_head_size"  # the self-attention's attribute
    # config.model_type values of the family: its attention implementation and FFN key are
    # known before the model is loaded. The modules decide whether a model fits, not these.
    model_types: tuple[str, ...] = ()
    ffn_key: str = "intermediate_size"  # the config key of the FFN width
    # "sdpa" where the family supports it; "eager" where transformers refuses sdpa.
    attn_implementation: str = "sdpa"
    # How attention distillation recomputes a layer's pre-softmax scores from its input:
    # "plain" Q·Kᵀ·scale, "deberta" with its relative-position terms, "rotary" with rotary
    # positions (the model's rotary_emb), "modernbert" also pre-norm, fused Q/K/V and local
    # windows; "" not yet: attention distillation is refused with the reason.
    scores: str = "plain"
    scores_refusal: str = ""  # why scores == "" (named in the refusal)

    def matrices(self) -> dict[str, str]:
        """A layer's Linear matrices, short name -> path, in the order kdtui lists them (the
        short names are what the dashboard shows): BERT's six, a fused "qkv" in place of
        query/key/value, a GLU's "ffn.gate" after "ffn.in"."""
        named = {
            "query": self.query,
            "key": self.key,
            "value": self.value,
            "qkv": self.qkv,
            "attn.out": self.attn_out,
            "ffn.in": self.ffn_in,
            FFN_GATE: self.ffn_gate,
            "ffn.out": self.ffn_out,
        }
        return {name: path for name, path in named.items() if path}

    def head_matrices(self) -> list[str]:
        """Paths of the projections whose rows are grouped by head (the attention output's
        columns are too)."""
        return [p for p in (self.query, self.key, self.value, self.qkv) if p]


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
    model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert", "data2vec-text"),
)

DISTILBERT = Layout(
    family="DistilBERT",
    layers="transformer.layer",
    attention="attention",
    query="attention.q_lin",
    key="attention.k_lin",
    value="attention.v_lin",
    attn_out="attention.out_lin",
    ffn_in="ffn.lin1",
    ffn_out="ffn.lin2",
    model_types=("distilbert",),
    ffn_key="hidden_dim",
)

# DeBERTa-v2 and v3 (model_type "deberta-v2"): transformers has no sdpa path for them.
DEBERTA_V2 = Layout(
    family="DeBERTa-v2",
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query_proj",
    key="attention.self.key_proj",
    value="attention.self.value_proj",
    attn_out="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    head_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
    model_types=("deberta-v2",),
    attn_implementation="eager",
    scores="deberta",
)

MODERNBERT = Layout(
    family="ModernBERT",
    layers="layers",
    attention="attn",
    query="",
    key="",
    value="",
    qkv="attn.Wqkv",
    attn_out="attn.Wo",
    ffn_in="mlp.Wi",
    glu_in=True,
    ffn_out="mlp.Wo",
    head_size="head_dim",
    model_types=("modernbert",),
    scores="modernbert",
)

NOMIC_BERT = Layout(
    family="NomicBERT",
    layers="layers",
    attention="self_attn",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    attn_out="self_attn.o_proj",
    ffn_in="mlp.up_proj",
    ffn_gate="mlp.gate_proj",
    ffn_out="mlp.down_proj",
    head_size="head_dim",
    model_types=("nomic_bert",),
    scores="rotary",
)

# The first one a model fits is its layout.
LAYOUTS = (BERT, DISTILBERT, DEBERTA_V2, MODERNBERT, NOMIC_BERT)

# Families whose layers cannot be pruned, masked or dropped one by one: model_type -> why, and
# what works instead.
REFUSED = {
    "albert": (
        "ALBERT shares one set of layer weights across all its layers, so kdtui cannot prune "
        "or mask a layer's heads and neurons, nor keep some of its layers and drop others; "
        "kdtui teacher and kdtui evaluate work on it, and kdtui distill --method logits with "
        "a student you give (--student) of the same tokenizer"
    ),
}

# Path -> short name for every known layout (the dashboard's per-matrix grid).
MATRIX_NAMES = {path: name for layout in LAYOUTS for name, path in layout.matrices().items()}


def layout_of(model: nn.Module) -> Layout:
    """The layout of MODEL's encoder; a KdtuiError naming the known ones when it fits none."""
    refused = REFUSED.get(getattr(getattr(model, "config", None), "model_type", ""))
    if refused:
        raise KdtuiError(refused)
    for layout in LAYOUTS:
        if _fits(model, layout):
            return layout
    known = "; ".join(
        f"{layout.family}: base_model.{layout.layers}[i] with "
        + ", ".join(layout.matrices().values())
        for layout in LAYOUTS
    )
    raise KdtuiError(
        f"kdtui knows these encoder layouts ({known}); {type(model).__name__} has another one: "
        "kdtui teacher and kdtui evaluate work on it, and kdtui distill --method logits with a "
        "student you give (--student), but not pruning or a student built from it"
    )


def layout_for_type(model_type: str) -> Layout | None:
    """The layout of a config.model_type, before the model is loaded (None: not known by
    type; the model may still fit a layout by its modules)."""
    return next((layout for layout in LAYOUTS if model_type in layout.model_types), None)


def attn_implementation_for(model_type: str, requested: str | None = "auto") -> str | None:
    """The attention implementation to load a model of MODEL_TYPE with: REQUESTED unless it is
    "auto"; else its family's (sdpa, or eager where transformers has no sdpa path), and for an
    unknown family None, which lets transformers choose (sdpa where supported, else eager)."""
    if requested != "auto":
        return requested
    layout = layout_for_type(model_type)
    return layout.attn_implementation if layout is not None else None


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
