"""Physically remove pruned attention heads and FFN neurons, and load such models back.

transformers 5 has no `prune_heads`, so the Linear layers are sliced: a removed head takes its
rows of query/key/value and its columns of the attention output projection with it; a removed
FFN neuron its row of the intermediate projection and its column of the output projection.
BERT's attention reshapes by head size (`view(..., -1, head_size)`), so a layer with fewer heads
needs no other change. The kept structure goes into config.json under `kdtui_structure`:

    {"heads": [[kept head indices of layer 0], ...], "intermediate_sizes": [kept neurons, ...]}

`load_compact(folder)` (also reached through `kdtui.models.load_any`) builds the model from its
config, shrinks every layer to the recorded structure and loads the weights strictly. Plain
`from_pretrained` refuses such a folder (the shapes do not match the config), which is better
than loading it wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdtui.layout import attn_implementation_for, encoder_layers, layout_of
from kdtui.weights import check_state_dict

STRUCTURE_KEY = "kdtui_structure"


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None)
    out = out.to(linear.weight.device, linear.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[rows])
    return out


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> nn.Linear:
    out = nn.Linear(len(columns), linear.out_features, bias=linear.bias is not None)
    out = out.to(linear.weight.device, linear.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(linear.weight[:, columns])
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    return out


def _slice(
    layer: nn.Module,
    path: str,
    keep: Callable[[nn.Linear, torch.Tensor], nn.Linear],
    indices: torch.Tensor,
) -> None:
    """Replace the Linear at PATH in LAYER by KEEP(linear, INDICES)."""
    layer.set_submodule(path, keep(layer.get_submodule(path), indices))


def compact(model: nn.Module, heads: list[list[int]], neurons: list[list[int]]) -> dict[str, Any]:
    """Slice every layer down to its kept `heads` and FFN `neurons` (indices per layer), in
    place; record and return the structure. The layout says where a head's rows are (in each
    third of a fused Q/K/V projection) and a neuron's (in both halves of a GLU input)."""
    layout = layout_of(model)
    for layer, kept_heads, kept_neurons in zip(encoder_layers(model), heads, neurons, strict=True):
        attention = layer.get_submodule(layout.attention)
        size = int(getattr(attention, layout.head_size))
        rows = torch.tensor(
            [h * size + j for h in kept_heads for j in range(size)], dtype=torch.long
        )
        width = layer.get_submodule(layout.attn_out).in_features  # all heads' rows
        for path in layout.head_matrices() + [p for p in layout.head_rows if _has(layer, p)]:
            _slice(layer, path, _keep_rows, _head_rows(rows, layer.get_submodule(path), width))
        _set_head_count(attention, len(kept_heads), size)
        _slice(layer, layout.attn_out, _keep_columns, rows)
        units = torch.tensor(kept_neurons, dtype=torch.long)
        neurons_now = layer.get_submodule(layout.ffn_out).in_features
        in_rows = torch.cat([units, units + neurons_now]) if layout.glu_in else units
        _slice(layer, layout.ffn_in, _keep_rows, in_rows)
        if layout.ffn_gate:
            _slice(layer, layout.ffn_gate, _keep_rows, units)
        _slice(layer, layout.ffn_out, _keep_columns, units)
    structure = {
        "heads": [list(map(int, h)) for h in heads],
        "intermediate_sizes": [len(n) for n in neurons],
    }
    setattr(model.config, STRUCTURE_KEY, structure)
    return structure


def _has(layer: nn.Module, path: str) -> bool:
    try:
        layer.get_submodule(path)
    except AttributeError:
        return False
    return True


def _head_rows(rows: torch.Tensor, linear: nn.Linear, width: int) -> torch.Tensor:
    """The kept heads' ROWS in each per-head block of LINEAR, a block being WIDTH rows (all
    heads × head size): one block in a query projection, three in a fused [Q; K; V]."""
    return torch.cat([rows + block * width for block in range(linear.out_features // width)])


def _set_head_count(attention: nn.Module, count: int, size: int) -> None:
    """The attributes a family's attention reshapes by (BERT reads num_attention_heads and
    all_head_size, DeBERTa num_attention_heads, DistilBERT n_heads); the others infer it."""
    for name in ("num_attention_heads", "n_heads", "num_heads"):
        if isinstance(getattr(attention, name, None), int):
            setattr(attention, name, count)
    if isinstance(getattr(attention, "all_head_size", None), int):
        attention.all_head_size = count * size


def shrink_to(model: nn.Module, structure: dict[str, Any]) -> None:
    """Give a freshly built model the shapes of a compacted one (weights are loaded after)."""
    heads = structure["heads"]
    sizes = structure["intermediate_sizes"]
    neurons = [list(range(n)) for n in sizes]
    if len(heads) != len(encoder_layers(model)) or len(sizes) != len(heads):
        raise ValueError("kdtui_structure does not match the model's number of layers")
    compact(model, heads, neurons)


def load_compact(folder: str | Path, *, attn_implementation: str | None = "auto") -> Any:
    """A model saved by `kdtui prune --structure heads-ffn` (config.json has kdtui_structure)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    config._attn_implementation = attn_implementation_for(config.model_type, attn_implementation)
    model = AutoModelForSequenceClassification.from_config(config)
    shrink_to(model, getattr(config, STRUCTURE_KEY))
    state = load_file(folder / "model.safetensors")
    check_state_dict(str(folder), folder, model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()
