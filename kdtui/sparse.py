"""A compressed file format for sparse models: bitmask + values, loaded back bit-exactly.

`save_sparse(state_dict, path)` writes one safetensors file. A tensor whose bitmask form is
smaller than its dense form is stored as two entries:

    NAME::mask    uint8, one bit per element (numpy packbits order), 1 = stored value
    NAME::values  the stored elements in row-major order

and every other tensor as itself. The metadata holds one key, `kdtui_sparse`: JSON with the
format name and each tensor's shape, dtype and layout (one key, because safetensors writes
several metadata keys in a random order, and the same weights should give the same bytes).
"Zero" means all bits zero, so -0.0 is kept as a value and a round trip is exact to the bit.
At 97% sparsity a float32 matrix takes 1/32 (mask) + 3% × 4 bytes ≈ 6.2% of its dense size.

`values="float16"` stores every floating value (dense tensors too) in half precision: about half
the size again, but the weights come back rounded to float16, so the model's outputs change
slightly; float32 (the default) is exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdtui.checkpoint import temporary
from kdtui.layout import attn_implementation_for
from kdtui.weights import check_state_dict

FORMAT = "kdtui-sparse-1"
SPARSE_FILE = "model.sparse.safetensors"
METADATA_KEY = "kdtui_sparse"
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _nonzero_bits(tensor: torch.Tensor) -> torch.Tensor:
    """True where the element's bit pattern is not all zeros (so -0.0 counts as a value)."""
    if tensor.is_floating_point():
        return tensor.view(_BITS[tensor.element_size()]) != 0
    return tensor != 0


def save_sparse(
    state: dict[str, torch.Tensor], path: Path, *, values: str = "float32"
) -> dict[str, dict[str, int]]:
    """Write `state` to `path`; returns {name: {"stored": bytes, "dense": bytes}} per tensor."""
    if values not in ("float32", "float16"):
        raise ValueError(f"values must be float32 or float16, got {values}")
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    sizes: dict[str, dict[str, int]] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if values == "float16" and tensor.is_floating_point():
            stored = tensor.to(torch.float16)
        else:
            stored = tensor
        dense_bytes = tensor.numel() * tensor.element_size()
        keep = _nonzero_bits(stored)
        nnz = int(keep.sum())
        mask_bytes = (tensor.numel() + 7) // 8
        sparse_bytes = mask_bytes + nnz * stored.element_size()
        record = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        if tensor.numel() and sparse_bytes < stored.numel() * stored.element_size():
            packed = np.packbits(keep.flatten().numpy())
            tensors[f"{name}::mask"] = torch.from_numpy(packed)
            tensors[f"{name}::values"] = stored.flatten()[keep.flatten()]
            layout[name] = {**record, "layout": "bitmask"}
            sizes[name] = {"stored": sparse_bytes, "dense": dense_bytes}
        else:
            tensors[name] = stored
            layout[name] = {**record, "layout": "dense"}
            sizes[name] = {"stored": stored.numel() * stored.element_size(), "dense": dense_bytes}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    save_file(
        tensors, tmp, metadata={METADATA_KEY: json.dumps({"format": FORMAT, "layout": layout})}
    )
    tmp.replace(path)
    return sizes


def load_sparse(path: Path) -> dict[str, torch.Tensor]:
    """The state dict `save_sparse` wrote (float16 values are cast back to the saved dtype)."""
    with safe_open(str(path), framework="pt") as f:
        header = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a kdtui sparse file (format {header.get('format')})")
        layout = header["layout"]
        state = {}
        for name, record in layout.items():
            dtype = getattr(torch, record["dtype"])
            shape = record["shape"]
            if record["layout"] == "dense":
                state[name] = f.get_tensor(name).to(dtype).reshape(shape)
                continue
            numel = int(np.prod(shape)) if shape else 1
            packed = f.get_tensor(f"{name}::mask").numpy()
            keep = torch.from_numpy(np.unpackbits(packed)[:numel].astype(bool))
            dense = torch.zeros(numel, dtype=dtype)
            dense[keep] = f.get_tensor(f"{name}::values").to(dtype)
            state[name] = dense.reshape(shape)
    return state


def is_sparse_folder(folder: Path) -> bool:
    return (folder / SPARSE_FILE).is_file() and not (folder / "model.safetensors").is_file()


def load_sparse_model(folder: str | Path, *, attn_implementation: str | None = "auto") -> Any:
    """A classifier saved as config.json + model.sparse.safetensors (RUN/model-sparse)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    config._attn_implementation = attn_implementation_for(config.model_type, attn_implementation)
    model = AutoModelForSequenceClassification.from_config(config)
    state = load_sparse(folder / SPARSE_FILE)
    check_state_dict(str(folder), folder, model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()
