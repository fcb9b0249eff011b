"""`kdtui prune`: CAP contrastive pruning of a fine-tuned model.

setup: the fine-tuned model is both the start of the pruned model and (unless prune.teacher
       names another) the frozen KD teacher. The teacher's logits and FiC's vectors come from one
       eval-mode pass over the training data, PrC's from one pass of the pre-trained model;
       both are cached in OUTPUT_DIR/.cache/prune (keyed by the exact weights, data and
       settings), so a series of runs from one teacher encodes once. SnC fills during training.
train: one loop with hooks: CE on gold labels, KD from the teacher, the pruner (masks on the
       cubic schedule, or structured rounds; soft movement adds its L1 term), CAP's contrastive
       terms. The best checkpoint is chosen only among evaluations at the final sparsity.
save:  weights: RUN/model, a dense Hugging Face checkpoint with zeros in place, and
       RUN/model-sparse, the same weights in the compressed bitmask format (kdtui.sparse);
       heads-ffn: RUN/model with the pruned heads and neurons physically removed
       (kdtui.methods.compact). Both load with kdtui.models.load_any and `kdtui evaluate`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdtui.budgets import prune_budget, short_budget_note
from kdtui.checkpoint import atomic_folder, temporary
from kdtui.data import Encoded, MultiDomainData, encode
from kdtui.engine.hooks import CrossEntropyHook, Hook
from kdtui.engine.loop import steps_per_epoch, total_steps
from kdtui.errors import KdtuiError
from kdtui.events import LayerSparsity, Message
from kdtui.layout import is_matrix_weight, layout_of
from kdtui.models import (
    label_names_of,
    load_classifier,
    load_model_tokenizer,
    load_trained,
    resolve_model_path,
    save_classifier,
)
from kdtui.recipes.common import (
    RunContext,
    finish_training,
    load_run_data,
    predict,
    train_job,
)
from kdtui.rundir import RunInfo, run_folders, run_of_model
from kdtui.timing import estimate_seconds


def run_prune(ctx: RunContext) -> dict[str, Any]:
    setup = _setup(ctx)
    pruner = _pruner(ctx, setup)
    hooks, weights = _hooks(ctx, setup, pruner)
    setup.teacher = None  # the hooks hold what they need: the teacher's memory goes now

    ctx.start(setup.n_steps)
    job = train_job(
        ctx,
        model=setup.model,
        train=setup.train,
        dev=setup.dev,
        domain_names=setup.data.domain_names,
        hooks=hooks,
        pad_id=setup.pad_id,
        weights=weights,
        select_after_step=pruner.final_step(),
    )
    _, metrics = finish_training(
        ctx,
        job,
        tokenizer=setup.tokenizer,
        data=setup.data,
        save=lambda folder: save_classifier(setup.model, setup.tokenizer, folder, setup.labels),
        finalize=lambda result: _finalize(ctx, setup.model, pruner, result.steps, setup.modules),
    )
    return {**metrics, **_sizes(ctx, setup.model, setup.tokenizer)}


@dataclass
class Setup:
    """What training starts from: the model to prune, its teacher, the data encoded, the plan."""

    folder: Path  # the model given (prune.model)
    model: Any
    tokenizer: Any
    teacher: Any  # None once the hooks are made
    data: MultiDomainData
    labels: list[str]
    train: Encoded
    dev: Encoded
    pad_id: int
    n_steps: int
    modules: list[str]  # CAP's banks in use


def _setup(ctx: RunContext) -> Setup:
    """Load the model, its teacher and the data, encode the data and log the plan; every
    mistake a user can make is caught here, before anything long starts."""
    from kdtui.methods.contrastive import BANKS
    from kdtui.methods.pruning import check_structured_target

    cfg = ctx.config
    p = cfg.prune
    if not p.model:
        raise KdtuiError("prune needs a model: --model RUN_OR_FOLDER (prune.model)")
    folder = Path(resolve_model_path(p.model))
    model = load_trained(folder, attn_implementation=ctx.config.model.attn_implementation)
    layout_of(model)  # a clear error for models kdtui cannot prune
    tokenizer = load_model_tokenizer(folder)
    data = load_run_data(ctx)
    labels = label_names_of(model)
    if labels != data.label_names:
        raise KdtuiError(
            f"model {p.model} predicts labels {labels} but the data has {data.label_names}"
        )
    teacher = _teacher(p.teacher, model, tokenizer, labels)
    if p.start == "pretrained":
        # The authors' regime: the pre-trained weights (a new, seeded head) are pruned while
        # they learn the task from the fine-tuned model (KD and FiC).
        model = _pretrained_model(ctx, folder, labels)
        model.train()
        for param in model.parameters():
            param.requires_grad_(True)
    if cfg.model.dropout >= 0:
        _set_dropout(model, cfg.model.dropout)
    if p.structure == "heads-ffn":
        check_structured_target(model, p.sparsity)  # before the data is encoded

    train_enc = encode(data.train, tokenizer, cfg.data.max_length)
    dev_enc = encode(data.dev, tokenizer, cfg.data.max_length)
    n_steps = total_steps(cfg.train, len(train_enc))
    modules = [m for m in BANKS if p.cap and getattr(p, m)]
    _log_plan(ctx, modules, n_steps, len(train_enc))
    return Setup(
        folder=folder,
        model=model,
        tokenizer=tokenizer,
        teacher=teacher,
        data=data,
        labels=labels,
        train=train_enc,
        dev=dev_enc,
        pad_id=tokenizer.pad_token_id or 0,
        n_steps=n_steps,
        modules=modules,
    )


def _log_plan(ctx: RunContext, modules: list[str], n_steps: int, examples: int) -> None:
    p = ctx.config.prune
    epochs = n_steps / steps_per_epoch(ctx.config.train, examples)
    ctx.run.log(Message(level="info", text=_plan_line(ctx, modules, n_steps, epochs)))
    if note := short_budget_note(p.sparsity, epochs):
        ctx.run.log(Message(level="warning", text=note))
    ctx.run.log(
        Message(
            level="info",
            text="encoding the training data for KD"
            + (" and the contrastive banks" if modules else ""),
        )
    )


def _pruner(ctx: RunContext, setup: Setup) -> Any:
    """The pruner on the run's schedule: masks on the cubic schedule (weights), or rounds of
    head and neuron removal (heads-ffn)."""
    from kdtui.methods.pruning import StructuredPruner, UnstructuredPruner

    p = ctx.config.prune
    warmup = int(p.warmup_ratio * setup.n_steps)
    cooldown = int(p.cooldown_ratio * setup.n_steps)
    if p.structure == "weights":
        return UnstructuredPruner(
            criterion=p.criterion,
            target_sparsity=p.sparsity,
            total_steps=setup.n_steps,
            warmup_steps=warmup,
            cooldown_steps=cooldown,
            scope=p.scope,
            score_lr=p.score_lr,
            score_init=p.score_init,
            soft_mask=p.soft_mask,
            final_threshold=p.final_threshold,
            stages=p.snapshot_views,
        )
    return StructuredPruner(
        target_sparsity=p.sparsity,
        total_steps=setup.n_steps,
        warmup_steps=warmup,
        cooldown_steps=cooldown,
        step_fraction=p.structured_step,
    )


def _hooks(ctx: RunContext, setup: Setup, pruner: Any) -> tuple[list[Hook], dict[str, float]]:
    """The loop's hooks and their loss weights: CE on gold labels, KD from the teacher's logits
    (one pass over the training data, cached), the pruner, CAP's contrastive terms, and the
    watch for a collapse."""
    from kdtui.methods.kd import KdHook

    p = ctx.config.prune
    train_enc = setup.train
    max_id = max(train_enc.ids)
    teacher_logits, teacher_vectors = encodings(ctx, setup.teacher, train_enc, setup.pad_id)
    logits_by_id = torch.full((max_id + 1, teacher_logits.shape[1]), float("nan"))
    logits_by_id[torch.tensor(train_enc.ids)] = teacher_logits
    hooks: list[Hook] = [
        CrossEntropyHook(),
        KdHook(temperature=p.kd_temperature, logits_by_id=logits_by_id),
        pruner,
    ]
    weights = {"ce": p.ce_weight, "kd": p.kd_weight, "l1": p.l1_weight}
    if setup.modules:
        hooks.append(_cap_hook(ctx, setup, pruner, teacher_vectors))
        for bank in setup.modules:
            weights[f"{bank}_unsup"] = p.w_unsup
            weights[f"{bank}_sup"] = p.w_sup
    del teacher_vectors
    hooks.append(
        _drop_watch(ctx, pruner, setup.teacher, setup.dev, setup.pad_id, setup.data.domain_names)
    )
    return hooks, weights


def _cap_hook(ctx: RunContext, setup: Setup, pruner: Any, teacher_vectors: Any) -> Hook:
    """CAP's contrastive terms over its memory banks: PrC (the pre-trained model's vectors),
    FiC (the teacher's), SnC (the pruned model's own, one view per pruning stage)."""
    from kdtui.methods.contrastive import CapHook, MemoryBank, bank_rows

    cfg = ctx.config
    p = cfg.prune
    train_enc, modules = setup.train, setup.modules
    max_id = max(train_enc.ids)
    labels_by_id = torch.full((max_id + 1,), -1, dtype=torch.long)
    labels_by_id[torch.tensor(train_enc.ids)] = torch.tensor(train_enc.labels)
    rows = bank_rows(train_enc.ids, p.bank_examples, cfg.run.seed)
    ids = torch.tensor(train_enc.ids)
    width = teacher_vectors.shape[1]
    fixed: dict[str, MemoryBank] = {}
    if "prc" in modules:
        pretrained = _pretrained_model(ctx, setup.folder, setup.labels)
        if pretrained.config.hidden_size != setup.model.config.hidden_size:
            raise KdtuiError(
                f"PrC's pre-trained model ({p.pretrained or 'from the teacher run'}) is "
                f"{pretrained.config.hidden_size} wide but the model being pruned is "
                f"{setup.model.config.hidden_size}: their sentence vectors cannot be contrasted"
            )
        _, vectors = encodings(ctx, pretrained, train_enc, setup.pad_id)
        del pretrained
        fixed["prc"] = MemoryBank(rows, labels_by_id, vectors.shape[1], 1)
        fixed["prc"].write(ids, vectors, 0)
        del vectors  # the fp16 bank holds what is kept; N x H float32 must not stay alive
    if "fic" in modules:
        fixed["fic"] = MemoryBank(rows, labels_by_id, width, 1)
        fixed["fic"].write(ids, teacher_vectors, 0)
    snapshots = None
    if "snc" in modules:
        snapshots = MemoryBank(rows, labels_by_id, width, p.snapshot_views)
    return CapHook(
        banks=fixed,
        snapshots=snapshots,
        stage=pruner.stage,
        temperature=p.contrastive_temperature,
        num_negatives=p.num_negatives,
        pooling=p.pooling,
        seed=cfg.run.seed,
    )


def _finalize(
    ctx: RunContext, model: Any, pruner: Any, step: int, modules: list[str]
) -> dict[str, Any]:
    """The best model's final masks applied (weights) or its pruned heads and neurons removed
    (heads-ffn); what was pruned, for metrics.json, and the per-layer sparsity logged."""
    p = ctx.config.prune
    summary: dict[str, Any] = {
        "structure": p.structure,
        "criterion": p.criterion if p.structure == "weights" else "gradient-importance",
        "cap_modules": modules,
        "target_sparsity": p.sparsity,
        "start": p.start,
    }
    if p.structure == "weights" and p.criterion != "magnitude":
        summary["score_init"] = p.score_init
    if p.structure == "weights" and p.criterion == "soft-movement":
        summary["soft_mask"] = p.soft_mask
    if p.structure == "weights":
        summary["sparsity"] = pruner.finalize()
        layers = pruner.layer_sparsity()
    else:
        from kdtui.methods.compact import compact

        layers = pruner.layer_sparsity()
        summary["sparsity"] = pruner.actual_sparsity()
        pruner.detach()
        structure = compact(model, *pruner.kept())
        summary["kept_heads"] = [len(h) for h in structure["heads"]]
        summary["intermediate_sizes"] = structure["intermediate_sizes"]
    ctx.run.log(LayerSparsity(step=step, layers=layers))
    return summary


def _drop_watch(
    ctx: RunContext, pruner: Any, teacher: Any, dev: Any, pad_id: int, domains: list[str]
) -> Hook:
    """The watch that warns when dev accuracy drops while the schedule cuts, measured against
    the teacher's own dev accuracy (one pass over dev, before training)."""
    from kdtui.engine.evaluate import accuracy_of_predictions
    from kdtui.methods.pruning import DropWatch

    with ctx.run.stopwatch.timed("dev_eval"):
        teacher_dev = accuracy_of_predictions(
            predict(ctx, teacher.to(ctx.accelerator.device), dev, pad_id), dev, domains
        )["all"]
    band = prune_budget(ctx.config.prune.sparsity)
    fix = (
        f"give it more steps (--epochs; {band.epochs:g} at this sparsity by default) so that it "
        "cuts more slowly, or stop at a lower --sparsity"
    )
    return DropWatch(pruner, teacher_dev=teacher_dev, fix=fix)


def _plan_line(ctx: RunContext, modules: list[str], n_steps: int, epochs: float) -> str:
    """The run's first line: what it prunes, its budget, and how long that will take here."""
    cfg = ctx.config
    p, t = cfg.prune, cfg.train
    default = (
        " (the default at this sparsity)"
        if t.max_steps == 0 and t.epochs == (prune_budget(p.sparsity).epochs)
        else ""
    )
    earlier = _earlier_runs_like(ctx)
    seconds = estimate_seconds(earlier, n_steps)
    if seconds is None:
        eta = "no earlier run like it here to estimate its time from"
    else:
        eta = (
            f"about {max(1, round(seconds / 60))} min here, going by {len(earlier)} earlier "
            "run(s) like it"
        )
    return (
        f"pruning {p.model} to {p.sparsity:.0%} sparsity ({_method_name(p, modules)}) in "
        f"{n_steps} steps = {epochs:.3g} epochs{default}, {p.warmup_ratio:.0%} warm-up and "
        f"{p.cooldown_ratio:.0%} cool-down: {eta}"
    )


# What makes runs alike in speed: the model, the input shape, the precision, the method, threads.
SPEED_KEYS = (
    ("prune", "model"),
    ("data", "max_length"),
    ("train", "batch_size"),
    ("train", "precision"),
    ("run", "threads"),
    ("prune", "structure"),
    ("prune", "criterion"),
    ("prune", "cap"),
)


def _earlier_runs_like(ctx: RunContext) -> list[tuple[int, dict[str, float]]]:
    """(steps, timings) of the finished prune runs in the output folder that are alike in speed."""

    def key(config: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(config.get(section, {}).get(name) for section, name in SPEED_KEYS)

    mine = key(ctx.config.to_dict())
    found = []
    for folder in run_folders(Path(ctx.config.run.output_dir).expanduser()):
        run = RunInfo(folder)
        alike = folder != ctx.run.path and run.finished() and run.command() == "prune"
        if alike and key(run.config_dict()) == mine:
            metrics = run.metrics()
            found.append((int(metrics.get("steps", 0)), metrics.get("timings", {})))
    return found


def _method_name(p: Any, modules: list[str]) -> str:
    base = p.criterion if p.structure == "weights" else "heads-ffn"
    if not modules:
        return f"{base}, no CAP"
    return f"{base} + CAP ({', '.join(m.upper() for m in modules)})"


def _sizes(ctx: RunContext, model: Any, tokenizer: Any) -> dict[str, Any]:
    """RUN/model's size, and for unstructured pruning RUN/model-sparse (written here) and its
    sizes, for metrics.json."""
    from kdtui.sparse import SPARSE_FILE, save_sparse

    if not ctx.is_main:
        return {}
    p = ctx.config.prune
    result: dict[str, Any] = {"model_bytes": (ctx.run.model / "model.safetensors").stat().st_size}
    if p.structure != "weights":
        return result
    folder = ctx.run.sparse_model
    with atomic_folder(folder) as tmp:
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        sizes = save_sparse(model.state_dict(), tmp / SPARSE_FILE, values=p.sparse_values)
    encoder = [s for name, s in sizes.items() if is_matrix_weight(name)]
    result["sparse_model"] = {
        "path": str((folder / SPARSE_FILE).relative_to(ctx.run.path)),
        "bytes": (folder / SPARSE_FILE).stat().st_size,
        "values": p.sparse_values,
        # Stored bytes of the encoder's Linear weights over their dense float32 bytes.
        "encoder_linear_ratio": sum(s["stored"] for s in encoder)
        / sum(s["dense"] for s in encoder),
    }
    return result


# ---------------------------------------------------------------------------------------------
# Models around the pruned one


def _teacher(name: str, model: Any, tokenizer: Any, labels: list[str]) -> Any:
    """The frozen KD teacher (and FiC's model): prune.teacher, or the model before pruning."""
    if not name:
        teacher = copy.deepcopy(model)
    else:
        folder = Path(resolve_model_path(name))
        teacher = load_trained(folder)
        if label_names_of(teacher) != labels:
            raise KdtuiError(
                f"the teacher {name} predicts labels {label_names_of(teacher)} but the model "
                f"being pruned predicts {labels}; KD needs the same label set"
            )
        if load_model_tokenizer(folder).get_vocab() != tokenizer.get_vocab():
            raise KdtuiError(
                f"the teacher {name} uses another tokenizer than the model being pruned; "
                "KD and the contrastive banks need the same inputs"
            )
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()


def _pretrained_model(ctx: RunContext, folder: Path, labels: list[str]) -> Any:
    """PrC's model: prune.pretrained, else the model the teacher run started from (for a tiny
    random BERT: the same seeded initialisation)."""
    from dataclasses import replace

    from kdtui.config import build_config

    p = ctx.config.prune
    if p.pretrained:
        # The run's model section still applies (a tiny model's sizes, dropout, remote code).
        return load_classifier(replace(ctx.config.model, name=p.pretrained), labels).eval()
    run = run_of_model(folder)
    if run is None or run.command() != "teacher":
        raise KdtuiError(
            f"PrC contrasts with the pre-trained model that {p.model} was fine-tuned from, and "
            "only a `kdtui teacher` run records it: give --pretrained NAME_OR_FOLDER "
            "(prune.pretrained), or turn PrC off with --no-prc"
        )
    recorded = run.config_dict()
    model_cfg = build_config({"model": recorded.get("model", {})}).model
    seed = int(recorded.get("run", {}).get("seed", 42))
    return load_classifier(model_cfg, labels, seed=seed).eval()


def _set_dropout(model: Any, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    model.config.hidden_dropout_prob = p
    model.config.attention_probs_dropout_prob = p


# ---------------------------------------------------------------------------------------------
# Encoding the training data once (teacher logits, bank vectors), with a cache


def encodings(ctx: RunContext, model: Any, encoded: Encoded, pad_id: int) -> tuple[Any, Any]:
    """(logits, L2-normalised sentence vectors) of every training example, from the cache in
    OUTPUT_DIR/.cache/prune when the same weights, data and settings were encoded before."""
    with ctx.run.stopwatch.timed("banks"):
        return _encodings(ctx, model, encoded, pad_id)


def _encodings(ctx: RunContext, model: Any, encoded: Encoded, pad_id: int) -> tuple[Any, Any]:
    from kdtui.methods.contrastive import encode_examples

    cfg = ctx.config
    acc = ctx.accelerator
    path = None
    if cfg.prune.cache:
        key = _fingerprint(model, encoded, cfg.prune.pooling, cfg.train.eval_batch_size)
        path = Path(cfg.run.output_dir).expanduser() / ".cache" / "prune" / f"{key}.pt"
        if _everyone_sees(path, acc):
            cached = torch.load(path, weights_only=True)
            return cached["logits"], cached["vectors"]
    logits, vectors = encode_examples(
        model.to(acc.device),
        encoded,
        pooling=cfg.prune.pooling,
        batch_size=cfg.train.eval_batch_size,
        pad_id=pad_id,
        device=acc.device,
        process_index=acc.process_index,
        num_processes=acc.num_processes,
    )
    if path is not None and ctx.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(path)
        torch.save({"logits": logits, "vectors": vectors}, tmp)
        tmp.replace(path)
    return logits, vectors


def _everyone_sees(path: Path, accelerator: Any) -> bool:
    """Whether the cache file exists, decided by the main process for all (a process that
    computed while the others read would wait forever in the gather)."""
    exists = path.is_file()
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        exists = broadcast_object_list([exists])[0]
    return exists


def _fingerprint(model: Any, encoded: Encoded, pooling: str, batch_size: int) -> str:
    digest = hashlib.sha256()
    digest.update(f"{type(model).__name__}|{pooling}|{batch_size}|".encode())
    digest.update(str(getattr(model.config, "_attn_implementation", "")).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    digest.update(json.dumps([encoded.input_ids, encoded.token_type_ids, encoded.ids]).encode())
    return digest.hexdigest()[:32]
