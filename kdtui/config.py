"""Configuration: frozen dataclasses, one per profile section, validated once.

A profile is TOML whose tables are the sections below. Every key has a default, so an empty
profile is valid. Validation rejects unknown keys (suggesting the closest valid one) and values
of the wrong type, naming the key in `section.key` form. Nothing here does I/O.
"""

from __future__ import annotations

import difflib
import functools
import math
import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from kdtui.errors import KdtuiError

# KD's softmax temperature unless a run sets another: distill's default, and CAP's authors' for
# unstructured pruning. Every KD default is here, prune's by structure below.
KD_TEMPERATURE = 2.0

# CAP's loss weights and KD temperature in the authors' scripts, by prune.structure: what the
# placeholders (w_unsup, w_sup < 0; kd_temperature 0) stand for (kdtui.resolver fills them).
PRUNE_AUTHORS_DEFAULTS = {
    "weights": {"w_unsup": 0.1, "w_sup": 10.0, "kd_temperature": KD_TEMPERATURE},
    "heads-ffn": {"w_unsup": 0.3, "w_sup": 3.0, "kd_temperature": 1.0},
}


@dataclass(frozen=True)
class RunConfig:
    """Where the run directory goes and what makes the run repeatable."""

    output_dir: str = "runs"  # run directories are created under this folder
    name: str = ""  # run directory name; empty = "<command>-<timestamp>"
    seed: int = 42
    threads: int = 0  # torch intra-op threads; 0 = torch's default


@dataclass(frozen=True)
class DataConfig:
    """Multi-domain text classification data."""

    # "synthetic" (generated from `seed`, no files), a file, a folder with train/dev/test files,
    # or a hub dataset name.
    source: str = "synthetic"
    text_column: str = "text"
    text_pair_column: str = ""  # set for sentence pairs (NLI); empty = single texts
    label_column: str = "label"
    domain_column: str = "domain"  # empty = the whole data set is one domain named "all"
    domains: tuple[str, ...] = ()  # keep only these domains; empty = all
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    max_length: int = 128
    train_fraction: float = 1.0  # keep this fraction of each domain's training examples
    max_train_per_domain: int = 0  # cap per domain, applied before the fraction; 0 = no cap
    # train_fraction applies only to these domains (Meta-KD's data-scarce target domain, the
    # others kept whole; the cap applies to all); empty = every domain.
    subsample_domains: tuple[str, ...] = ()
    max_eval_per_domain: int = 0  # cap per domain on dev/test; 0 = no cap
    seed: int = 0  # drives subsampling and the synthetic generator
    # Synthetic data only.
    synthetic_domains: tuple[str, ...] = ("books", "dvd", "electronics", "kitchen")
    synthetic_train_per_domain: int = 400
    synthetic_eval_per_domain: int = 100
    synthetic_label_noise: float = 0.05


@dataclass(frozen=True)
class ModelConfig:
    """The model to fine-tune (teacher) or start from."""

    # "minilm" (bundled all-MiniLM-L6-v2), "tiny" (small random BERT for tests),
    # a local checkpoint folder, or a hub name.
    name: str = "minilm"
    trust_remote_code: bool = False
    # "auto": the family's (sdpa, eager for DeBERTa, whose attention transformers runs eagerly
    # only); "sdpa" or "eager" force one.
    attn_implementation: str = "auto"
    tiny_hidden: int = 32
    tiny_layers: int = 2
    tiny_heads: int = 2
    tiny_intermediate: int = 64
    dropout: float = -1.0  # hidden and attention dropout; < 0 keeps the checkpoint's own


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: optimiser, schedule, evaluation, checkpoints."""

    epochs: float = 1.0
    max_steps: int = 0  # if > 0, overrides epochs
    # With a budget in epochs: at least this many optimiser steps (each stage's, for distill),
    # so that epochs of a small data set still give the optimiser something to do.
    min_steps: int = 0
    batch_size: int = 16  # per optimiser step, summed over processes and accumulation
    eval_batch_size: int = 64
    grad_accum: int = 1
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # "auto": bf16 autocast where the hardware multiplies bf16 natively (CPUs with AVX512-BF16
    # or AMX, CUDA devices with bf16), fp32 elsewhere; "bf16" or "fp32" force one. The run's
    # config.toml records what "auto" chose.
    precision: str = "auto"
    eval_every: int = 0  # steps between dev evaluations; 0 = once per epoch
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at every evaluation
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = off
    log_every: int = 1  # steps between step events
    # On every evaluation step, the gradient norm of each weighted loss term on the model's
    # parameters (step metrics grad/TERM): shows whether a term acts. One backward per term.
    term_grad_norms: bool = True
    keep_checkpoints: int = 2


@dataclass(frozen=True)
class TeacherConfig:
    """`kdtui teacher`: how the teacher is fine-tuned."""

    method: str = "mix"  # "mix" (all domains pooled), "single" (one domain), "meta" (Meta-KD)
    domain: str = ""  # the domain for method "single"
    # Meta-KD meta-teacher (method "meta"); see the README, section Meta-KD.
    prototype: str = "class"  # "class" (paper: class-wise prototypes) or "centroid" (authors' code)
    alpha: float = 0.5  # weight of the own-domain prototype similarity
    zeta: float = 0.5  # weight of the other domains' prototype similarity
    # Prototype scores as weights are never below 0: "domain-mean" (clamp at 0, then divide by
    # the domain's mean, so every domain weighs the same on average and 1 + t in λ varies) or
    # "clamp" (clamp only, the paper's scale).
    score_normalization: str = "domain-mean"
    # The meta-teacher's domain term (README, Meta-KD): "confusion" (a head learns the true
    # domains from stopped features; the encoder is pushed to make it predict the batch's domain
    # mix) or "authors" (EasyNLP's: one head reads the true domain's embedding plus the mean
    # token states, and the whole model minimises its cross-entropy to in-batch shuffled domain
    # labels). "authors" is the default: chosen on dev by the students distilled from each (the
    # Meta-KD pilot, README); every confusion weight tried left a student at one class.
    domain_loss: str = "authors"
    # γ1, the weight of that term ("confusion": domain_adv; "authors": domain_corrupted, 0.5 in
    # the authors' script as well); 0 = no domain term.
    domain_loss_weight: float = 0.5
    # Peak learning rate of the domain head; 0 = train.lr; < 0 = the option's default, filled in
    # when the config is resolved: 1e-3 for "confusion" (a new head must learn the domains within
    # the teacher's few hundred steps), train.lr for "authors" (one optimiser for everything).
    domain_head_lr: float = -1.0


@dataclass(frozen=True)
class DistillConfig:
    """`kdtui distill`: a single-domain student from a (meta-)teacher, in two stages."""

    teacher: str = ""  # a `kdtui teacher` run directory or a classifier checkpoint folder
    domain: str = ""  # target domain, or "all" for one student per domain
    method: str = ""  # "meta", "vanilla" or "logits"; empty = "meta" for a meta-teacher
    student: str = ""  # a student checkpoint folder; empty = build one from the teacher
    student_layers: int = 2
    student_hidden: int = 0  # 0 = the teacher's width (then layers are copied from the teacher)
    student_init: str = "teacher"  # "teacher" (copy evenly spaced layers) or "random"
    layer_map: tuple[tuple[int, ...], ...] = ()  # [[student, teacher], ...]; empty = uniform
    # The stages' epochs: the student budget pilot on dev (kdtui/budgets.py, STUDENT_LR).
    intermediate_epochs: float = 2.0  # stage 1: hidden/attention/domain MSE (0 = skip)
    prediction_epochs: float = 5.0  # stage 2: soft cross-entropy on the teacher's logits
    # If > 0, each stage stops after this many steps instead of its epochs (train.max_steps is
    # the teacher's: a profile shared by teacher and distill sets it for the teacher).
    max_steps: int = 0
    kd_temperature: float = KD_TEMPERATURE  # stage 2's softmax on both models' logits
    # Stage 1's attention term: "probs" (attention probabilities after softmax, as EasyNLP's
    # official Meta-KD; on MiniLM its gradient is on the hidden-state term's scale) or "scores"
    # (pre-softmax Q·Kᵀ/√d, as TinyBERT; ~3,000x larger, it swamps the other terms).
    attention: str = "probs"
    domain_weight: float = 0.5  # γ2, the KL to the meta-teacher's domain posterior
    # Meta-KD's per-example expertise weights λ_i; false = λ_i = 1 with the domain term kept
    # (an ablation: what the prototype scores add).
    expertise_weights: bool = True
    cache_teacher_logits: bool = True  # stage 2 reads the teacher's logits from a cache


@dataclass(frozen=True)
class PruneConfig:
    """`kdtui prune`: CAP contrastive pruning of a fine-tuned model (see README, CAP pruning)."""

    model: str = ""  # a `kdtui teacher` run directory or a classifier checkpoint folder
    teacher: str = ""  # KD teacher and FiC's model; empty = the model being pruned, before pruning
    # Fraction removed: of the encoder's Linear weights (weights) or parameters (heads-ffn).
    sparsity: float = 0.9
    structure: str = "weights"  # "weights" (unstructured) or "heads-ffn" (structured)
    criterion: str = "soft-movement"  # weights: "magnitude", "movement", "soft-movement"
    scope: str = "matrix"  # "matrix" (each Linear reaches the sparsity) or "global" (one ranking)
    cap: bool = True  # contrastive modules on top of the criterion; false = plain baseline
    prc: bool = True  # contrast with the pre-trained model (encoded once, before pruning)
    fic: bool = True  # contrast with the fine-tuned model (encoded once)
    snc: bool = True  # contrast with snapshots of the model taken during pruning
    pretrained: str = ""  # PrC's model; empty = the model the teacher run started from
    contrastive_temperature: float = 0.1  # τ of the contrastive losses
    # Weights of each module's unsupervised / supervised term; < 0 = the authors' defaults
    # (0.1 / 10 for weights, 0.3 / 3 for heads-ffn), filled in when the config is resolved.
    w_unsup: float = -1.0
    w_sup: float = -1.0
    num_negatives: int = 4096  # bank vectors drawn at random as extra candidates per batch
    snapshot_views: int = 4  # SnC keeps one view per pruning stage, at most this many
    bank_examples: int = 65536  # at most this many training examples get bank vectors
    pooling: str = "cls"  # sentence representation: "cls" (pooler output) or "mean"
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    # KD's softmax temperature; 0 = the authors' default for the structure (PRUNE_AUTHORS_DEFAULTS),
    # filled in when the config is resolved.
    kd_temperature: float = 0.0
    # Where pruning starts: "finetuned" (the model given, which is also the KD/FiC teacher) or
    # "pretrained" (the authors' regime: the pre-trained weights with a new head, learning from
    # the fine-tuned model as KD/FiC teacher; give it a long run and prune.warmup_ratio).
    start: str = "finetuned"
    # Movement scores' initial value: "magnitude" (|W| / mean |W| per matrix), "constant" (0, the
    # authors'), or "auto": magnitude from a fine-tuned model (zero scores carry no signal when
    # cutting starts after a short warm-up, and the model collapses), constant from pretrained.
    score_init: str = "auto"
    score_lr: float = 1e-2  # peak learning rate of movement / soft-movement scores
    # Soft movement's mask: "calibrated" (a top-k on the scores every step: exactly the scheduled
    # sparsity, ending at prune.sparsity) or "threshold" (the authors': keep while σ(S) > τ, τ
    # rising on the cubic schedule to prune.final_threshold; the sparsity reached follows from
    # prune.l1_weight and the run's length, and prune.sparsity only caps it).
    soft_mask: str = "calibrated"
    final_threshold: float = 0.1  # soft_mask "threshold": the final τ on σ(scores)
    # Soft movement's final λ on the mean of σ(scores); ramped from 0 with the schedule (λ·τ/τ_f).
    l1_weight: float = 100.0
    warmup_ratio: float = 0.1  # share of steps before pruning starts
    cooldown_ratio: float = 0.2  # share of steps at the final sparsity
    structured_step: float = 0.1  # heads-ffn: sparsity added per pruning round
    sparse_values: str = "float32"  # values of the compressed sparse model (float16 rounds)
    cache: bool = True  # reuse teacher logits and bank vectors across runs (OUTPUT_DIR/.cache)


@dataclass(frozen=True)
class EvaluateConfig:
    """`kdtui evaluate`: which split, and the latency grid."""

    split: str = "test"
    batch_sizes: tuple[int, ...] = (1, 32)
    lengths: tuple[int, ...] = (32, 128)
    latency_repeats: int = 5
    # Unstructured models are also timed with sparse kernels (kdtui/sparse_kernels.py): "auto"
    # swaps in a CSR product where a measurement says it is faster, "all" wherever a matrix
    # has at least 80% zeros, "off" never.
    sparse_kernels: str = "auto"


@dataclass(frozen=True)
class ExportConfig:
    """`kdtui export`: which graphs are written besides model.onnx."""

    # Also model.opt.onnx (and model.opt.int8.onnx with --int8), the graph after ONNX Runtime's
    # transformer optimiser (onnxruntime.transformers.optimizer: attention, LayerNorm and GELU
    # fused into single operators), checked against PyTorch like model.onnx. "auto": where
    # attention fuses in every layer, the only place it paid (bench/export_speed.py, each graph
    # timed in a process of its own: 1.00-1.47x the plain graph there, 0.86-1.02x on heads-ffn
    # models whose layers kept different head counts, where no attention fuses); "transformer":
    # always, and a failure is an error; "none": the plain graphs alone.
    optimize: str = "auto"


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: _plain(value) for name, value in asdict(self).items()}


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


SECTIONS: dict[str, type] = _section_types()


# Stage 1's attention term (distill.attention); kdtui.methods.meta_kd computes both.
ATTENTION_TARGETS = ("probs", "scores")

CHOICES: dict[str, tuple[str, ...]] = {
    "teacher.method": ("mix", "single", "meta"),
    "teacher.prototype": ("class", "centroid"),
    "teacher.score_normalization": ("domain-mean", "clamp"),
    "teacher.domain_loss": ("confusion", "authors"),
    "distill.method": ("", "meta", "vanilla", "logits"),
    "distill.student_init": ("teacher", "random"),
    "distill.attention": ATTENTION_TARGETS,
    "prune.structure": ("weights", "heads-ffn"),
    "prune.criterion": ("magnitude", "movement", "soft-movement"),
    "prune.start": ("finetuned", "pretrained"),
    "prune.score_init": ("auto", "magnitude", "constant"),
    "prune.soft_mask": ("calibrated", "threshold"),
    "prune.scope": ("matrix", "global"),
    "prune.pooling": ("cls", "mean"),
    "prune.sparse_values": ("float32", "float16"),
    "evaluate.sparse_kernels": ("auto", "all", "off"),
    "export.optimize": ("auto", "none", "transformer"),
    "train.precision": ("auto", "bf16", "fp32"),
    "model.attn_implementation": ("auto", "sdpa", "eager"),
}


# Keys that were renamed, old name -> new: profiles and run configs written before the rename
# still load (a run started then can be resumed).
RENAMED: dict[str, str] = {
    "distill.temperature": "distill.kd_temperature",
    "prune.temperature": "prune.contrastive_temperature",
}


def build_config(data: dict[str, Any]) -> Config:
    """Turn a nested dict (parsed TOML + overrides) into a validated Config."""
    if not isinstance(data, dict):
        raise KdtuiError("a profile must be a TOML table of sections")
    data = renamed(data)
    _reject_unknown(data.keys(), SECTIONS.keys(), "section")
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise KdtuiError(f"'{name}' must be a table ([{name}]), got {type(values).__name__}")
        sections[name] = _build_section(cls, name, values)
    config = Config(**sections)
    _validate(config)
    return config


def renamed(data: dict[str, Any]) -> dict[str, Any]:
    """DATA (a profile's tables) with renamed keys under their new names (a new name given too
    wins): what every reader of an older run's config.toml goes through, the dashboard too."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    # train.bf16 (true/false) became train.precision ("bf16"/"fp32"; "auto" is new).
    train = data.get("train")
    if isinstance(train, dict) and "bf16" in train:
        bf16 = train.pop("bf16")
        if not isinstance(bf16, bool):
            raise KdtuiError(
                f"train.bf16 must be true or false, got {_describe(bf16)} "
                '(newer profiles set train.precision = "auto", "bf16" or "fp32")'
            )
        train.setdefault("precision", "bf16" if bf16 else "fp32")
    for old, new in RENAMED.items():
        section, old_key = old.split(".")
        table = data.get(section)
        if isinstance(table, dict) and old_key in table:
            value = table.pop(old_key)
            table.setdefault(new.split(".")[1], value)
    return data


def _build_section(cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    _reject_unknown(values.keys(), known, "key", prefix=f"{section}.")
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        kwargs[f.name] = _coerce(values[f.name], hints[f.name], f"{section}.{f.name}")
    return cls(**kwargs)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if value is None and len(options) < len(get_args(annotation)):
            return None
        annotation = options[0]
        origin = get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            if isinstance(value, str):  # a single name is a one-element list
                value = [value] if value else []
            else:
                raise KdtuiError(f"{key} must be a list, got {_describe(value)}")
        (item_type, *_) = get_args(annotation)
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise KdtuiError(f"{key} must be true or false, got {_describe(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise KdtuiError(f"{key} must be an integer, got {_describe(value)}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML spells these inf and nan
                raise KdtuiError(f"{key} must be a finite number, got {value}")
            return float(value)
        raise KdtuiError(f"{key} must be a number, got {_describe(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise KdtuiError(f"{key} must be a string, got {_describe(value)}")
    raise AssertionError(f"unsupported config type {annotation!r} for {key}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _reject_unknown(given: Any, known: Any, what: str, prefix: str = "") -> None:
    known = sorted(known)
    for name in given:
        if name in known:
            continue
        # A key of another section (`sparsity` under [train]) is misplaced, not misspelt,
        # unless it is one letter or so from a key of its own section (`data.domain`).
        elsewhere = [
            s for s, cls in SECTIONS.items() if prefix and name in {f.name for f in fields(cls)}
        ]
        if elsewhere and not difflib.get_close_matches(name, known, n=1, cutoff=0.85):
            where = " or ".join(f"'{s}.{name}'" for s in elsewhere)
            raise KdtuiError(
                f"unknown {what} '{prefix}{name}': {name} is a key of "
                f"{' and '.join(f'[{s}]' for s in elsewhere)}; did you mean {where}?"
            )
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid: {', '.join(known)}"
        raise KdtuiError(f"unknown {what} '{prefix}{name}'{hint}")


def _validate(config: Config) -> None:
    """Range checks that types alone cannot express; each names its key. The first that fails
    is reported, in this order."""
    for ok, message in [*_setting_checks(config), *_method_checks(config)]:
        if not ok:
            raise KdtuiError(message)


def _setting_checks(config: Config) -> list[tuple[bool, str]]:
    """data, model, train and run."""
    return [
        (config.data.max_length >= 8, "data.max_length must be at least 8"),
        (config.data.max_length <= 4096, "data.max_length must be at most 4096"),
        (0 < config.data.train_fraction <= 1, "data.train_fraction must be in (0, 1]"),
        (config.data.max_train_per_domain >= 0, "data.max_train_per_domain must be >= 0"),
        (config.data.max_eval_per_domain >= 0, "data.max_eval_per_domain must be >= 0"),
        (bool(config.data.source), "data.source must not be empty"),
        (bool(config.data.text_column), "data.text_column must not be empty"),
        (bool(config.data.label_column), "data.label_column must not be empty"),
        (len(config.data.synthetic_domains) >= 1, "data.synthetic_domains must not be empty"),
        (config.data.synthetic_train_per_domain >= 2, "data.synthetic_train_per_domain >= 2"),
        (config.data.synthetic_eval_per_domain >= 1, "data.synthetic_eval_per_domain >= 1"),
        (
            0 <= config.data.synthetic_label_noise < 0.5,
            "data.synthetic_label_noise must be in [0, 0.5)",
        ),
        (bool(config.model.name), "model.name must not be empty"),
        (config.model.dropout < 1, "model.dropout must be below 1 (< 0 keeps the model's)"),
        (config.train.epochs > 0 or config.train.max_steps > 0, "train.epochs must be > 0"),
        (config.train.max_steps >= 0, "train.max_steps must be >= 0"),
        (config.train.min_steps >= 0, "train.min_steps must be >= 0"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.train.batch_size <= 65536, "train.batch_size must be at most 65536"),
        (config.train.eval_batch_size >= 1, "train.eval_batch_size must be at least 1"),
        (config.train.grad_accum >= 1, "train.grad_accum must be at least 1"),
        (
            config.train.batch_size % config.train.grad_accum == 0,
            "train.batch_size must be divisible by train.grad_accum",
        ),
        (config.train.lr > 0, "train.lr must be > 0"),
        (0 <= config.train.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (config.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (config.train.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 = no clipping)"),
        (config.train.eval_every >= 0, "train.eval_every must be >= 0"),
        (config.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0"),
        (config.train.early_stopping_patience >= 0, "train.early_stopping_patience must be >= 0"),
        (config.train.log_every >= 1, "train.log_every must be at least 1"),
        (config.train.keep_checkpoints >= 1, "train.keep_checkpoints must be at least 1"),
        (config.run.threads >= 0, "run.threads must be >= 0"),
        (
            "/" not in config.run.name
            and "\\" not in config.run.name
            and config.run.name not in (".", ".."),
            "run.name must be a plain folder name (no / or \\; use run.output_dir for the place)",
        ),
    ]


def _method_checks(config: Config) -> list[tuple[bool, str]]:
    """The commands' sections: teacher, distill, prune, evaluate, export."""
    return [
        *_choice_checks(config),
        (
            config.teacher.method != "single" or bool(config.teacher.domain),
            "teacher.method 'single' needs teacher.domain (or --domain)",
        ),
        (
            config.teacher.method == "single" or not config.teacher.domain,
            f"teacher.domain is for teacher.method 'single' only (method is "
            f"'{config.teacher.method}'); use --method single, or drop the domain",
        ),
        (config.teacher.domain_loss_weight >= 0, "teacher.domain_loss_weight must be >= 0"),
        (config.distill.domain_weight >= 0, "distill.domain_weight must be >= 0"),
        (config.distill.student_layers >= 1, "distill.student_layers must be at least 1"),
        (config.distill.student_hidden >= 0, "distill.student_hidden must be >= 0"),
        (config.distill.intermediate_epochs >= 0, "distill.intermediate_epochs must be >= 0"),
        (config.distill.prediction_epochs > 0, "distill.prediction_epochs must be > 0"),
        (config.distill.max_steps >= 0, "distill.max_steps must be >= 0"),
        (config.distill.kd_temperature > 0, "distill.kd_temperature must be > 0"),
        (
            all(len(pair) == 2 for pair in config.distill.layer_map),
            "distill.layer_map must be a list of [student_layer, teacher_layer] pairs",
        ),
        (
            0 <= config.prune.sparsity < 1,
            "prune.sparsity must be in [0, 1)"
            # A percentage is the likely mistake: suggest the fraction it meant.
            + (
                f", a fraction: for {config.prune.sparsity:g}% give {config.prune.sparsity / 100:g}"
                if 1 < config.prune.sparsity < 100
                else ""
            ),
        ),
        (
            config.prune.contrastive_temperature > 0,
            "prune.contrastive_temperature must be > 0",
        ),
        (config.prune.num_negatives >= 0, "prune.num_negatives must be >= 0"),
        (config.prune.snapshot_views >= 1, "prune.snapshot_views must be at least 1"),
        (config.prune.bank_examples >= 1, "prune.bank_examples must be at least 1"),
        (config.prune.score_lr > 0, "prune.score_lr must be > 0"),
        (config.prune.l1_weight >= 0, "prune.l1_weight must be >= 0"),
        (0 < config.prune.final_threshold < 1, "prune.final_threshold must be in (0, 1)"),
        (config.prune.kd_temperature >= 0, "prune.kd_temperature must be >= 0 (0 = default)"),
        (0 <= config.prune.warmup_ratio < 1, "prune.warmup_ratio must be in [0, 1)"),
        (0 <= config.prune.cooldown_ratio < 1, "prune.cooldown_ratio must be in [0, 1)"),
        (
            config.prune.warmup_ratio + config.prune.cooldown_ratio < 1,
            "prune.warmup_ratio + prune.cooldown_ratio must be below 1",
        ),
        (0 < config.prune.structured_step <= 1, "prune.structured_step must be in (0, 1]"),
        (all(b >= 1 for b in config.evaluate.batch_sizes), "evaluate.batch_sizes must be >= 1"),
        (all(n >= 2 for n in config.evaluate.lengths), "evaluate.lengths must be >= 2"),
        (config.evaluate.latency_repeats >= 1, "evaluate.latency_repeats must be at least 1"),
    ]


def _choice_checks(config: Config) -> list[tuple[bool, str]]:
    checks = []
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        shown = ", ".join(a for a in allowed if a)
        checks.append((value in allowed, f"{key} must be one of {shown}, got '{value}'"))
    return checks


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def default_of(section: str, key: str) -> Any:
    """The default value of a key (used by the CLI's help texts)."""
    for f in fields(SECTIONS[section]):
        if f.name == key:
            return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{section}.{key}")


def type_of(section: str, key: str) -> Any:
    """The type of a key's value (used to declare its command-line flag)."""
    return _hints(section)[key]


@functools.cache
def _hints(section: str) -> dict[str, Any]:
    return get_type_hints(SECTIONS[section])
