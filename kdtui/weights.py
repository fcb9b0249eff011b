"""Whether a model's weights are what its config.json describes, and the one-line refusal when
they are not.

Apart from kdtui.models so that the loaders of pruned folders (kdtui.methods.compact,
kdtui.sparse), which kdtui.models.load_any calls, can check their weights without importing
kdtui.models back. No torch import: the checks read shapes and names only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdtui.errors import KdtuiError

# The weights files transformers reads, in its order of preference (and kdtui's sparse copy).
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "model.sparse.safetensors",
)


def weights_file(source: str | Path) -> str:
    """The weights file a model folder is read from, as a user would look for it."""
    folder = Path(source)
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return str(folder / name)
    return f"{source} (its weights)"


# Tensors named per message: enough to see the pattern (a layer too many, a head of other size).
SHOWN_TENSORS = 3


def check_loading_info(
    shown: str, source: str | Path, model: Any, info: Mapping[str, Any], *, new_head: bool
) -> None:
    """Refuse a model whose weights file does not hold what its config.json describes.

    transformers fills a tensor missing from the file with random values, drops one the config
    does not describe and (asked to ignore mismatched sizes) replaces one of another shape with
    random values, each with a log line kdtui silences: a model that is not what its files say
    would be scored and trained silently. The one expected gap is a new classifier head
    (NEW_HEAD: the checkpoint is a pre-trained encoder): its classifier and pooler start random
    and another task's head (a masked-LM head, say) is dropped."""
    base = model.base_model_prefix
    encoder_parts = {name for name, _ in model.base_model.named_children()}

    def in_encoder(key: str) -> bool:
        return key.removeprefix(f"{base}.").split(".")[0] in encoder_parts

    def head(key: str) -> bool:
        return not in_encoder(key) or key.removeprefix(f"{base}.").startswith("pooler.")

    missing = [k for k in info.get("missing_keys", ()) if not (new_head and head(k))]
    unexpected = [
        k for k in info.get("unexpected_keys", ()) if not (new_head and not in_encoder(k))
    ]
    mismatched = {
        k: (tuple(a), tuple(b))
        for k, a, b in info.get("mismatched_keys", ())
        if not (new_head and head(k))  # another task's classifier (a token classifier's, say)
    }
    if missing or unexpected or mismatched:
        raise KdtuiError(weights_mismatch(shown, source, model, missing, unexpected, mismatched))


def check_state_dict(shown: str, source: str | Path, model: Any, state: Mapping[str, Any]) -> None:
    """check_loading_info for weights kdtui loads itself (pruned models): STATE against the
    model built from config.json."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = {
        k: (tuple(v.shape), own[k])
        for k, v in state.items()
        if k in own and tuple(v.shape) != own[k]
    }
    if missing or unexpected or mismatched:
        raise KdtuiError(weights_mismatch(shown, source, model, missing, unexpected, mismatched))


def weights_mismatch(
    shown: str,
    source: str | Path,
    model: Any,
    missing: list[str],
    unexpected: list[str],
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
) -> str:
    """The one-line refusal of a model whose weights and config.json disagree: the file, the
    first tensors of each kind, and the layer counts when those are what differs."""
    order = {k: i for i, k in enumerate(model.state_dict())}
    base = model.base_model_prefix

    def rank(key: str) -> tuple[int, int, int, str]:
        """The model's own order; a tensor of a layer the model lacks ranks as its counterpart
        in layer 0 would, after every layer the model has."""
        for name in (key, f"{base}.{key}"):
            if name in order:
                return (0, 0, order[name], key)
        if m := _LAYER.search(key):
            first_layer = key[: m.start(1)] + "0" + key[m.end(1) :]
            at = order.get(first_layer, order.get(f"{base}.{first_layer}", len(order)))
            return (1, int(m.group(1)), at, key)
        return (2, 0, 0, key)

    def first(keys: Any, describe: Any = str) -> str:
        """The first tensors in the model's order, described, and how many more there are."""
        ranked = sorted(keys, key=rank)
        names = ", ".join(describe(k) for k in ranked[:SHOWN_TENSORS])
        more = len(ranked) - SHOWN_TENSORS
        return names + (f" and {more} more" if more > 0 else "")

    def shapes(key: str) -> str:
        in_file, described = (_shape(dims) for dims in mismatched[key])
        return f"{key} ({in_file} in the file, {described} by config.json)"

    file = weights_file(source)
    parts = []
    if missing:
        parts.append(
            f"{_tensors(len(missing))} of the model config.json describes "
            f"{'is' if len(missing) == 1 else 'are'} not in the file and would start random "
            f"({first(missing)})"
        )
    if unexpected:
        parts.append(
            f"{_tensors(len(unexpected))} in the file "
            f"{'is' if len(unexpected) == 1 else 'are'} not part of that model and would be "
            f"dropped ({first(unexpected)})"
        )
    if mismatched:
        parts.append(
            "the weights do not have the shapes its config.json describes: "
            f"{_tensors(len(mismatched))} differ ({first(mismatched, shapes)})"
        )
    layers = _layer_counts(model, missing, unexpected)
    if layers is not None:
        parts.append(
            f"config.json says num_hidden_layers = {layers[0]}, the file holds {layers[1]}"
        )
    return (
        f"cannot load model '{shown}': {file} does not match its config.json: "
        + "; ".join(parts)
        + "; fix config.json to describe the weights, or copy in the weights saved with it"
    )


def _shape(dims: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in dims) or "scalar"


def _tensors(n: int) -> str:
    return f"{n} tensor" + ("" if n == 1 else "s")


_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def _layer_counts(model: Any, missing: list[str], unexpected: list[str]) -> tuple[int, int] | None:
    """(layers config.json describes, layers the file holds) when they differ, else None."""
    declared = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(declared, int) or not (missing or unexpected):
        return None

    def indices(keys: Any) -> set[int]:
        return {int(m.group(1)) for k in keys if (m := _LAYER.search(k))}

    held = (indices(model.state_dict()) - _whole_layers_missing(model, missing)) | indices(
        unexpected
    )
    if not held or len(held) == declared:
        return None
    return declared, len(held)


def _whole_layers_missing(model: Any, missing: list[str]) -> set[int]:
    """Layers none of whose tensors is in the file."""
    gone = set(missing)
    by_layer: dict[int, list[str]] = {}
    for key in model.state_dict():
        if m := _LAYER.search(key):
            by_layer.setdefault(int(m.group(1)), []).append(key)
    return {i for i, keys in by_layer.items() if all(k in gone for k in keys)}
