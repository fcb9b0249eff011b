"""`kdtui export`: a kdtui model as ONNX, runnable with ONNX Runtime alone.

The export folder's layout (model.onnx, model.int8.onnx with --int8, model.opt.onnx and
model.opt.int8.onnx where attention fuses or with --optimize transformer, config.json, the
tokenizer, kdtui_export.json) is named in kdtui.exportdir, which the loaders and the resolver
read.

Dense, unstructured (exported dense: ONNX Runtime multiplies the zeros as PyTorch does) and
heads-ffn models (each layer with its own head count and FFN width) export alike: the exporter
traces the model as loaded, so every layer keeps its own shapes.

`export.optimize` (`--optimize`) also writes the graph after ONNX Runtime's
transformer optimiser (`optimize_onnx`). What it fuses, read from onnxruntime 1.32's
onnxruntime/transformers (fusion_*.py, onnx_model_bert.py) against the graph torch's TorchScript
exporter makes of a transformers 5 BERT at opset 17:

- LayerNormalization is one operator at opset 17 already; the residual Add before it becomes
  SkipLayerNormalization (fusion_skiplayernorm; only where its symbolic shape inference says
  both inputs have one shape), the bias Add after it BiasSkipLayerNormalization.
- GELU is exported as x * (1 + erf(x / sqrt 2)) * 0.5, fusion_gelu's pattern 2: Gelu, and with
  the FFN's bias Add before it BiasGelu.
- Attention (fusion_attention): with sdpa, the exporter follows the Softmax with
  Where(IsNaN(...)) (torch's guard for rows a boolean mask masks entirely), and no pattern of the
  fusion starts from anything but a Softmax: nothing fuses. So the optimised graph is traced
  with eager attention (`model.config._attn_implementation = "eager"`, same outputs within
  float rounding): MatMul -> Mul(scale) -> Add(mask) -> Softmax -> MatMul is the fusion's
  "path2", and transformers 5's eager mask (Where <- Expand <- And <- ... <- Flatten) one of its
  mask patterns. transformers 5 reshapes by view(batch, length, -1, head_size), so the fusion
  cannot read the head count from the graph and falls back to the `num_heads` it is given,
  for every layer alike: a heads-ffn model whose layers kept different head counts would get
  wrong Attention nodes, so for those attention is not fused (`attention_heads`).
- The remaining fusions (EmbedLayerNormalization for the embeddings) apply where their
  patterns match; what was fused is recorded in kdtui_export.json ("optimize").

ONNX Runtime's own graph optimisations (level "all", the default of every session) already fuse
LayerNorm, GELU and the skip Adds at load time; what the Python optimiser can add beyond them is
mostly the attention fusion. bench/export_speed.py measured it (MiniLM-L6 teacher, a 2-layer
student, a 97% unstructured model and heads-ffn 70%; 2 threads, each graph timed in a process of
its own): where attention fused in every layer, the optimised graph ran 1.00-1.47x the plain one
in every shape and precision (batch 1 and 32, lengths 64 and 128, fp32 and int8); on heads-ffn,
where it cannot fuse, 0.86-1.02x. So `export.optimize` is "auto" by default: the optimised
graphs are kept where attention fused in every layer, and not written or not kept elsewhere
(`optimized_graphs`).

ONNX, ONNX Runtime and the quantiser are the optional `export` extra; nothing here imports them
before a command needs them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdtui.errors import KdtuiError
from kdtui.exportdir import (
    EXPORT_INFO_FILE,
    INT8_FILE,
    ONNX_FILE,
    OPT_FILE,
    OPT_INT8_FILE,
    is_export_folder,
)

FORMATS = ("onnx",)
# Opset 17 has LayerNormalization as one operator and is read by every ONNX Runtime since 1.14.
OPSET = 17
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The names of the inputs' dynamic axes, which a session can fix (`session(..., dims=...)`).
BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"
# The optimised graph's logits may differ from PyTorch's by float rounding (fused kernels sum in
# another order, the fused attention masks with -10000 instead of the float minimum); more than
# this means a fusion changed what the model computes, and the export is refused.
OPTIMIZED_MAX_DIFF = 1e-3


def extra_hint(package: Path = Path(__file__).resolve().parent) -> str:
    """The command that installs the export extra for this kdtui: a source checkout (PACKAGE's
    parent holds pyproject.toml) installs it from there, with the checkout's constraints, from
    any directory; an installed kdtui by its name."""
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "constraints.txt").is_file():
        return f"pip install -c {checkout / 'constraints.txt'} -e '{checkout}[export]'"
    return "pip install 'kdtui[export]'"


def require_onnx() -> Any:
    """The onnxruntime module, or a clear error naming the extra that installs it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise KdtuiError(
            f"ONNX export and ONNX Runtime evaluation need the export extra: {extra_hint()}"
        ) from None
    return onnxruntime


class _Logits(torch.nn.Module):
    """The classifier with positional inputs and one output, as the exporter traces it."""

    def __init__(self, model: torch.nn.Module, inputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = list(inputs)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.inputs, tensors, strict=True))).logits


def model_inputs(tokenizer: Any) -> list[str]:
    """The inputs the exported model takes: those the tokenizer produces, so
    `session.run(None, dict(tokenizer(texts, return_tensors="np")))` feeds it directly."""
    produced = getattr(tokenizer, "model_input_names", MODEL_INPUTS)
    return [
        "input_ids",
        "attention_mask",
        *(["token_type_ids"] if "token_type_ids" in produced else []),
    ]


def trace_inputs(names: Sequence[str], vocab_size: int) -> tuple[torch.Tensor, ...]:
    """A batch of 2 in which the second example is padded: the trace then records the attention
    mask's use (a mask of ones could let transformers skip it)."""
    ids = torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(values[name] for name in names)


def export_onnx(
    model: torch.nn.Module,
    tokenizer: Any,
    path: Path,
    *,
    attn_implementation: str | None = None,
) -> list[str]:
    """Write `model` (a sequence classifier) to `path`; returns its input names. With
    ATTN_IMPLEMENTATION ("eager") the model is traced with that attention implementation and
    given back with its own."""
    require_onnx()
    names = model_inputs(tokenizer)
    wrapper = _Logits(model, names).eval()  # the exporter restores the wrapper's mode after
    axes = {name: {0: BATCH_AXIS, 1: SEQUENCE_AXIS} for name in names}
    axes["logits"] = {0: BATCH_AXIS}
    own = getattr(model.config, "_attn_implementation", None)
    if attn_implementation is not None:
        # transformers 5 reads it at every forward (the attention and the mask it builds), from
        # the config every module of the model shares.
        model.config._attn_implementation = attn_implementation
    try:
        _trace(wrapper, names, model.config.vocab_size, path, axes)
    finally:
        if attn_implementation is not None:
            model.config._attn_implementation = own
    return names


def _trace(
    wrapper: torch.nn.Module,
    names: list[str],
    vocab_size: int,
    path: Path,
    axes: dict[str, dict[int, str]],
) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and its tracer's notes on Python
        # booleans in transformers' mask code are not the user's business; the round trip
        # against PyTorch's outputs (check_export) is what says the export is right.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            # dynamo=False: the TorchScript exporter. torch 2.9+ defaults to the torch.export
            # based one, which needs onnxscript (another dependency) and fails on some of
            # transformers' mask code; the TorchScript exporter traces the model as loaded,
            # so heads-ffn layers keep their own widths, and it gives dynamic batch and
            # sequence axes with a plain dict.
            torch.onnx.export(
                wrapper,
                trace_inputs(names, vocab_size),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic quantisation: int8 weights, activations quantised per batch at run time."""
    require_onnx()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    # The quantiser logs advice to pre-process the model first (onnxruntime's quant_pre_process);
    # on these graphs that step fails (its symbolic shape inference is incomplete), so the
    # advice is noise here.
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            # ONNX's shape inference knows no type for the outputs of ONNX Runtime's fused
            # operators (the optimised graph): they are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


def attention_heads(model: torch.nn.Module) -> int | None:
    """The head count every encoder layer has: the config's, or the one count every layer of a
    heads-ffn model kept; None when its layers kept different counts."""
    from kdtui.methods.compact import STRUCTURE_KEY

    structure = getattr(model.config, STRUCTURE_KEY, None)
    if structure:
        counts = {len(kept) for kept in structure["heads"]}
        return counts.pop() if len(counts) == 1 else None
    return int(getattr(model.config, "num_attention_heads", 0) or 0)


def optimize_onnx(model: torch.nn.Module, tokenizer: Any, path: Path) -> dict[str, Any]:
    """Write `model` to `path` as ONNX Runtime's transformer optimiser leaves it (see the module's
    docstring); returns what kdtui_export.json records of it: the operators it fused
    ("fused": {operator: count}), the head count it was given, whether attention was fused, and
    a one-line summary."""
    ort = require_onnx()
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = model.config
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    config_heads = int(getattr(config, "num_attention_heads", 0) or 0)
    head_size = int(getattr(config, "hidden_size", 0) or 0) // config_heads if config_heads else 0
    heads = attention_heads(model)
    options = FusionOptions("bert")
    # The optimiser's BERT default turns the mask into one length per row (ReduceSum), right
    # only for masks padded on the right; the raw mask is right for any mask.
    options.use_raw_attention_mask(True)
    record: dict[str, Any] = {
        "optimizer": "onnxruntime.transformers.optimizer",
        "model_type": "bert",
        "traced_attention": "eager",
        "num_heads": heads or 0,
        "head_size": head_size,
    }
    if not heads or not head_size:
        # One count for all layers is all the fusion takes (see the module's docstring); other
        # fusions go on.
        options.enable_attention = False
        num_heads = hidden_size = 0
        record["attention"] = (
            "not fused: the layers have different head counts"
            if heads is None
            else "not fused: no head count in the model's config"
        )
    else:
        num_heads, hidden_size = heads, heads * head_size
    with tempfile.TemporaryDirectory() as tmp:
        traced = Path(tmp) / "eager.onnx"
        export_onnx(model, tokenizer, traced, attn_implementation="eager")
        root = logging.getLogger()
        level = root.level
        # Its modules log their misses (a pattern not found, shape inference incomplete) as
        # warnings, and print some: what they did is in the counts recorded below.
        root.setLevel(logging.ERROR)
        # And the session it optimises with logs unused initialisers, as `session` keeps quiet.
        ort.set_default_logger_severity(3)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                optimized = optimize_model(
                    str(traced),
                    model_type="bert",
                    num_heads=num_heads,
                    hidden_size=hidden_size,
                    optimization_options=options,
                )
                optimized.save_model_to_file(str(path))
                counts = optimized.get_fused_operator_statistics()
        except Exception as e:  # its fusions raise assertions and whatever onnx raises
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise KdtuiError(
                f"ONNX Runtime's transformer optimiser failed on this model ({first}); "
                "export without --optimize"
            ) from None
        finally:
            root.setLevel(level)
            ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings
    fused = {op: int(n) for op, n in counts.items() if n}
    record["fused"] = fused
    if printed.getvalue().strip():
        record["optimizer_output"] = printed.getvalue().strip().splitlines()
    record["layers"] = layers
    record["attention_fused"] = fused.get("Attention", 0) + fused.get("MultiHeadAttention", 0)
    if "attention" not in record:
        record["attention"] = f"fused in {record['attention_fused']} of {layers} layers"
    shown = ", ".join(f"{op} x{n}" for op, n in fused.items()) or "nothing"
    record["summary"] = (
        f"ONNX Runtime's transformer optimiser fused {shown}; attention {record['attention']}"
    )
    return record


def optimized_graphs(
    model: torch.nn.Module, tokenizer: Any, folder: Path, *, mode: str, int8: bool
) -> dict[str, Any]:
    """Write OPT_FILE (and OPT_INT8_FILE with INT8) into FOLDER as `export.optimize` MODE says;
    returns the optimiser's record with "files": what was written and "kept".

    "transformer" writes them whatever fused, and a failure of the optimiser is an error.
    "auto" keeps them only where attention fused in every layer (the measured gain is there:
    README, Speed): a model whose layers kept different head counts is not optimised at all,
    and one where the optimiser fails or fuses attention in fewer layers keeps the plain graphs
    alone, with the reason in the record's summary."""
    heads = attention_heads(model)
    if mode == "auto" and not heads:
        why = (
            "a model whose layers have different head counts (the optimised graph was no "
            "faster there)"
            if heads is None
            else "a model whose config has no head count"
        )
        return {
            "kept": False,
            "files": [],
            "summary": f"not written: attention cannot fuse in {why}",
        }
    try:
        record = optimize_onnx(model, tokenizer, folder / OPT_FILE)
    except KdtuiError as e:
        if mode == "transformer":
            raise
        reason = str(e).removesuffix("; export without --optimize")
        return {"kept": False, "files": [], "summary": f"not written: {reason}"}
    if mode == "auto" and not 0 < record["attention_fused"] == record["layers"]:
        (folder / OPT_FILE).unlink()
        record["summary"] = f"not kept: attention {record['attention']} ({record['summary']})"
        return {**record, "kept": False, "files": []}
    files = [OPT_FILE]
    if int8:
        # Quantised after fusing, as ONNX Runtime advises: the quantiser has an int8 form of the
        # fused Attention (QAttention).
        quantize_int8(folder / OPT_FILE, folder / OPT_INT8_FILE)
        files.append(OPT_INT8_FILE)
    return {**record, "kept": True, "files": files}


def session(path: Path, threads: int, dims: dict[str, int] | None = None) -> Any:
    """An ONNX Runtime CPU session on `threads` threads (as PyTorch's, for a fair comparison).
    DIMS fixes named input axes ({BATCH_AXIS: 1, SEQUENCE_AXIS: 128}): the session then plans for
    those shapes only (static shapes, for timing batch 1; other shapes are refused)."""
    ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are about unused initialisers
    for name, size in (dims or {}).items():
        options.add_free_dimension_override_by_name(name, size)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types, not exported stably
        raise KdtuiError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None


def session_forward(sess: Any) -> Callable[[dict[str, torch.Tensor]], np.ndarray]:
    """A function of a dict of int64 torch tensors (the collate keys) to logits."""
    wanted = [i.name for i in sess.get_inputs()]

    def forward(inputs: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {}
        for name in wanted:
            tensor = inputs.get(name)
            if tensor is None and name == "token_type_ids":
                tensor = torch.zeros_like(inputs["input_ids"])
            if tensor is None:
                raise KdtuiError(f"the ONNX model needs input '{name}'")
            feed[name] = tensor.numpy().astype(np.int64, copy=False)
        return sess.run(["logits"], feed)[0]

    return forward


def onnx_logits(sess: Any, encoded: Any, *, batch_size: int, pad_id: int) -> torch.Tensor:
    from kdtui.data import collate

    forward = session_forward(sess)
    chunks = []
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded, range(start, min(start + batch_size, len(encoded))), pad_id)
        chunks.append(torch.from_numpy(forward(batch)).float())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def check_export(
    torch_logits: torch.Tensor,
    onnx_logits_: torch.Tensor,
    labels: Sequence[int],
) -> dict[str, float]:
    """How far ONNX Runtime's logits are from PyTorch's on the same examples."""
    gold = torch.tensor(list(labels))
    ref = torch_logits.argmax(-1)
    pred = onnx_logits_.argmax(-1)
    return {
        "max_logit_diff": float((torch_logits - onnx_logits_).abs().max()),
        "same_predictions": float((ref == pred).double().mean()),
        "accuracy": float((pred == gold).double().mean()),
        "pytorch_accuracy": float((ref == gold).double().mean()),
    }


def export_model(
    source: str,
    output: Path,
    config: Any,
    *,
    int8: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Export the model at `source` (a run directory or model folder) into `output` and check
    it against PyTorch on `config.evaluate.split`; returns what kdtui_export.json records.
    With `config.export.optimize` "transformer" also the optimised graph (and its int8 copy
    with INT8), refused when its logits are further than OPTIMIZED_MAX_DIFF from PyTorch's."""
    from kdtui.checkpoint import atomic_folder
    from kdtui.data import encode, load_data
    from kdtui.engine.evaluate import predict_logits
    from kdtui.models import (
        check_max_length,
        check_model_labels,
        label_names_of,
        load_any,
        load_model_tokenizer,
        resolve_model_path,
    )

    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    if output.exists() and not force:
        raise KdtuiError(f"{output} exists; pass --force to replace it")
    if output.exists() and not (output.is_dir() and is_export_folder(output)):
        raise KdtuiError(f"{output} is not a kdtui export folder; --force replaces only those")
    folder = Path(resolve_model_path(source))  # a run with no model yet: say so first
    require_onnx()
    model = load_any(folder).eval()
    tokenizer = load_model_tokenizer(folder, trust_remote_code=config.model.trust_remote_code)
    data = load_data(config.data)
    check_model_labels(source, model, data.label_names)
    check_max_length(config.data.max_length, source, model.config.to_dict())
    split = data.split(config.evaluate.split)
    encoded = encode(split, tokenizer, config.data.max_length)
    pad_id = tokenizer.pad_token_id or 0
    batch_size = config.train.eval_batch_size
    reference = predict_logits(
        model,
        encoded,
        range(len(encoded)),
        batch_size=batch_size,
        pad_id=pad_id,
        device=torch.device("cpu"),
    )
    threads = torch.get_num_threads()
    info: dict[str, Any] = {
        "format": "onnx",
        # absolute, so `kdtui evaluate EXPORT` finds the run's data from any directory
        "source": str(Path(source).expanduser().resolve()) if Path(source).exists() else source,
        "opset": OPSET,
        "labels": label_names_of(model),
        "max_length": config.data.max_length,
        "check": {"split": config.evaluate.split, "examples": len(encoded)},
    }
    with atomic_folder(output) as tmp:
        start = time.perf_counter()
        info["inputs"] = export_onnx(model, tokenizer, tmp / ONNX_FILE)
        info["export_seconds"] = time.perf_counter() - start
        files = [ONNX_FILE]
        if int8:
            quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE)
            files.append(INT8_FILE)
        mode = config.export.optimize
        if mode != "none":
            info["optimize"] = optimized_graphs(model, tokenizer, tmp, mode=mode, int8=int8)
            files += info["optimize"].pop("files")
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in files:
            logits = onnx_logits(
                session(tmp / name, threads), encoded, batch_size=batch_size, pad_id=pad_id
            )
            info["check"][name] = check_export(reference, logits, encoded.labels)
            info["check"][name]["bytes"] = (tmp / name).stat().st_size
        optimized = info["check"].get(OPT_FILE)
        if optimized is not None and not optimized["max_logit_diff"] <= OPTIMIZED_MAX_DIFF:
            moved = (
                f"{OPT_FILE}'s logits differ from PyTorch's by up to "
                f"{optimized['max_logit_diff']:.2e} (more than {OPTIMIZED_MAX_DIFF:g}): ONNX "
                "Runtime's transformer optimiser changed what this model computes"
            )
            if mode == "transformer":
                raise KdtuiError(f"{moved}; export without --optimize")
            for name in (OPT_FILE, OPT_INT8_FILE):  # auto: the plain graphs are the export
                info["check"].pop(name, None)
                (tmp / name).unlink(missing_ok=True)
            info["optimize"] = {"kept": False, "summary": f"not kept: {moved}"}
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def count_parameters(path: Path) -> tuple[int, int]:
    """(elements, non-zero elements) of an ONNX model's weights (its initialisers)."""
    import onnx
    from onnx import numpy_helper

    total = nonzero = 0
    for init in onnx.load(str(path), load_external_data=True).graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim == 0:
            continue  # shape constants and quantisation scales, not weights
        total += array.size
        nonzero += int(np.count_nonzero(array))
    return total, nonzero
