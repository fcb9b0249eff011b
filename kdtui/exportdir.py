"""The export folder `kdtui export` writes: its layout is named here and nowhere else.

    model.onnx          the classifier: inputs as the tokenizer names them (input_ids,
                        attention_mask, token_type_ids where the model reads them; int64,
                        dynamic batch and sequence), output `logits` (batch, labels)
    model.int8.onnx     with --int8: the same, weights int8 (ONNX Runtime dynamic quantisation)
    model.opt.onnx      where the optimiser fused attention in every layer (--optimize auto,
                        the default) or with --optimize transformer: the same classifier (same
                        inputs and output) after ONNX Runtime's transformer optimiser:
                        attention, LayerNorm and GELU as fused operators of ONNX Runtime's
                        com.microsoft domain, so it runs under ONNX Runtime only
    model.opt.int8.onnx with model.opt.onnx and --int8: model.opt.onnx quantised
    config.json         the model's config (label names in id2label / kdtui_labels)
    tokenizer files     the tokenizer the model was trained with
    kdtui_export.json   what was exported from what, and the check against kdtui's outputs

Apart from kdtui.export (which writes the folder and imports torch and kdtui.models) so that
the model loaders, the resolver and the CLI can recognise and read an export folder without
importing the exporter: kdtui.models refuses to train one, and kdtui.export loads models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdtui.rundir import MODEL_CONFIG, RunLayout

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
OPT_FILE = "model.opt.onnx"
OPT_INT8_FILE = "model.opt.int8.onnx"
EXPORT_INFO_FILE = "kdtui_export.json"  # what was exported from what (read_export_info)

# Every model file an export folder may hold, in the order they are written, listed and scored,
# with the short name a report or picture gives each (runs/cap-97/onnx/model.opt.onnx: cap-97 opt).
MODEL_FILES = {
    ONNX_FILE: "onnx",
    INT8_FILE: "int8",
    OPT_FILE: "opt",
    OPT_INT8_FILE: "opt int8",
}


def is_export_folder(folder: Path) -> bool:
    return (folder / ONNX_FILE).is_file()


def onnx_files(folder: Path) -> list[Path]:
    """The models of an export folder that were written: fp32, int8, optimised, optimised int8."""
    return [folder / name for name in MODEL_FILES if (folder / name).is_file()]


def default_output(source: str) -> Path:
    """RUN/onnx for a run directory, FOLDER-onnx beside any other model folder."""
    path = Path(source).expanduser()
    if (RunLayout(path).model / MODEL_CONFIG).is_file():
        return path / "onnx"
    return path.with_name(f"{path.name}-onnx")


def read_export_info(folder: Path) -> dict[str, Any]:
    """What an export folder records (`kdtui.export.export_model`'s result), {} when it records
    nothing readable."""
    try:
        info = json.loads((folder / EXPORT_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return {}
    return info if isinstance(info, dict) else {}
