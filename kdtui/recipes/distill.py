"""`kdtui distill`: a small single-domain student from a (meta-)teacher.

For each target domain: build (or load) the student, then
  stage 1 (methods meta, vanilla): intermediate layers — hidden-state MSE through a learned
          projection, attention MSE, and (meta) the domain-representation MSE, each instance
          weighted by its domain-expertise weight λ_i (meta) or 1 (vanilla);
  stage 2 (all methods): prediction layer — soft cross-entropy on the teacher's logits at
          temperature T, weighted by λ_i for meta.
The student sees only its domain's training data; it is evaluated on every domain's dev set
(to show transfer) and selected by its own domain's dev accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kdtui.data import Encoded, MultiDomainData, encode
from kdtui.engine.evaluate import predict_logits
from kdtui.engine.hooks import Hook
from kdtui.engine.loop import TrainJob, total_steps, train
from kdtui.errors import KdtuiError
from kdtui.events import Message
from kdtui.models import (
    build_student,
    label_names_of,
    load_trained,
    resolve_model_path,
    save_classifier,
)
from kdtui.profile import read_profile
from kdtui.recipes.common import RunContext, load_run_data
from kdtui.recipes.meta import SCORES_FILE, load_scores
from kdtui.recipes.teacher import domain_index, final_metrics


@dataclass
class Plan:
    """One student: where it goes and how many steps each stage takes."""

    domain: str
    folder: Path
    train: Encoded
    stage1_steps: int
    stage2_steps: int


def run_distill(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    d = cfg.distill
    if not d.teacher:
        raise KdtuiError("distill needs a teacher: --teacher RUN_OR_MODEL (distill.teacher)")
    if not d.domain:
        raise KdtuiError("distill needs a target domain: --domain NAME or --domain all")

    from kdtui.methods.meta_kd import load_domain_head

    teacher_folder = Path(resolve_model_path(d.teacher))
    teacher = load_trained(teacher_folder, attn_implementation="eager")
    teacher.eval()
    tokenizer = _load_tokenizer(teacher_folder)
    domain_head = load_domain_head(teacher_folder)
    method = d.method or ("meta" if domain_head is not None else "vanilla")
    if method == "meta" and domain_head is None:
        raise KdtuiError(
            f"teacher {d.teacher} is not a meta-teacher (no domain head in {teacher_folder}); "
            "train one with `kdtui teacher --method meta`, or use --method vanilla or logits"
        )

    data = load_run_data(ctx)
    if label_names_of(teacher) != data.label_names:
        raise KdtuiError(
            f"the teacher predicts labels {label_names_of(teacher)} but the data has "
            f"{data.label_names}"
        )
    domains = data.domain_names if d.domain == "all" else [d.domain]
    for name in domains:
        domain_index(data, name)
    scores = _teacher_scores(ctx, d.teacher, method)
    dev = encode(data.dev, tokenizer, cfg.data.max_length)

    plans = []
    for name in domains:
        split = data.train.domain_subset(data.domain_names.index(name))
        folder = ctx.run.path if len(domains) == 1 else ctx.run.path / "domains" / name
        train_enc = encode(split, tokenizer, cfg.data.max_length)
        stage1 = 0
        if method != "logits" and d.intermediate_epochs > 0:
            stage1 = total_steps(
                replace(cfg.train, epochs=d.intermediate_epochs, max_steps=0), len(train_enc)
            )
        stage2 = total_steps(
            replace(cfg.train, epochs=d.prediction_epochs, max_steps=0), len(train_enc)
        )
        plans.append(Plan(name, folder, train_enc, stage1, stage2))
    all_steps = sum(p.stage1_steps + p.stage2_steps for p in plans)
    ctx.start(all_steps)

    summary: dict[str, Any] = {"method": method, "teacher": d.teacher, "domains": {}}
    offset = 0
    for plan in plans:
        ctx.run.log(Message(level="info", text=f"distilling a student for domain {plan.domain}"))
        result, student = distill_one(
            ctx, plan, teacher, tokenizer, domain_head, method, scores, dev, data, offset, all_steps
        )
        offset += plan.stage1_steps + plan.stage2_steps
        ctx.last_step = offset
        summary["domains"][plan.domain] = final_metrics(ctx, student, tokenizer, data, result)
        summary["domains"][plan.domain]["model"] = str(
            (plan.folder / "model").relative_to(ctx.run.path)
        )
    if len(plans) == 1:
        summary.update(summary["domains"][plans[0].domain])
    return summary


def distill_one(
    ctx: RunContext,
    plan: Plan,
    teacher: Any,
    tokenizer: Any,
    domain_head: Any,
    method: str,
    scores: torch.Tensor | None,
    dev: Encoded,
    data: MultiDomainData,
    offset: int,
    all_steps: int,
) -> tuple[Any, Any]:
    from kdtui.methods.meta_kd import (
        IntermediateDistillHook,
        PredictionDistillHook,
        parse_layer_map,
        uniform_layer_map,
    )

    cfg = ctx.config
    d = cfg.distill
    student = _make_student(ctx, teacher, tokenizer)
    pad_id = tokenizer.pad_token_id or 0
    common = dict(
        train=plan.train,
        domain_names=data.domain_names,
        run=ctx.run,
        accelerator=ctx.accelerator,
        pad_id=pad_id,
        seed=cfg.run.seed,
        total_steps_all=all_steps,
    )
    use_meta = method == "meta"
    if plan.stage1_steps:
        s_layers, t_layers = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        layer_map = (
            parse_layer_map(
                [list(p) for p in d.layer_map], student_layers=s_layers, teacher_layers=t_layers
            )
            if d.layer_map
            else uniform_layer_map(t_layers, s_layers)
        )
        stage1: list[Hook] = [
            IntermediateDistillHook(
                teacher=teacher,
                teacher_domain_head=domain_head[0] if use_meta and domain_head else None,
                layer_map=layer_map,
                student_hidden=student.config.hidden_size,
                teacher_hidden=teacher.config.hidden_size,
                prototype_scores_by_example_id=scores if use_meta else None,
                use_expertise_weights=use_meta,
                domain_weight=d.domain_weight,
                domain_names=data.domain_names,
            )
        ]
        train(
            TrainJob(
                model=student,
                dev=None,
                hooks=stage1,
                cfg=replace(cfg.train, epochs=d.intermediate_epochs, max_steps=0),
                checkpoint_dir=plan.folder / "checkpoints" / "stage1",
                stage="intermediate",
                step_offset=offset,
                **common,
            )
        )
    cached = None
    if d.cache_teacher_logits:
        ids = plan.train.ids
        logits = predict_logits(
            teacher,
            plan.train,
            range(len(plan.train)),
            batch_size=cfg.train.eval_batch_size,
            pad_id=pad_id,
            device=ctx.accelerator.device,
        )
        cached = torch.zeros(max(ids) + 1, logits.shape[1])
        cached[torch.tensor(ids)] = logits
    stage2: list[Hook] = [
        PredictionDistillHook(
            teacher=teacher,
            temperature=d.temperature,
            weights="expertise" if use_meta else "none",
            prototype_scores_by_example_id=scores if use_meta else None,
            cached_logits=cached,
        )
    ]
    best_dir = plan.folder / "best"
    result = train(
        TrainJob(
            model=student,
            dev=dev,
            hooks=stage2,
            cfg=replace(cfg.train, epochs=d.prediction_epochs, max_steps=0),
            checkpoint_dir=plan.folder / "checkpoints" / "stage2",
            best_dir=best_dir,
            select_metric=plan.domain,
            stage="prediction",
            step_offset=offset + plan.stage1_steps,
            **common,
        )
    )
    _restore(ctx, student, best_dir)
    if ctx.is_main:
        save_classifier(student, tokenizer, plan.folder / "model", data.label_names)
    return result, student


def _restore(ctx: RunContext, model: Any, best_dir: Path) -> None:
    from kdtui.checkpoint import load_checkpoint

    ctx.accelerator.wait_for_everyone()
    if (best_dir / "state.json").is_file():
        model.load_state_dict(load_checkpoint(best_dir).model)


def _make_student(ctx: RunContext, teacher: Any, tokenizer: Any) -> Any:
    d = ctx.config.distill
    if d.student:
        folder = Path(resolve_model_path(d.student))
        student_tokenizer = _load_tokenizer(folder)
        if student_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise KdtuiError(
                f"student {d.student} uses a different tokenizer from the teacher; "
                "distillation needs the same vocabulary (build the student from the teacher "
                "with --student-layers instead)"
            )
        student = load_trained(folder, attn_implementation="eager")
        if label_names_of(student) != label_names_of(teacher):
            raise KdtuiError(
                f"student labels {label_names_of(student)} differ from the teacher's "
                f"{label_names_of(teacher)}"
            )
        return student
    if d.student_layers > teacher.config.num_hidden_layers and not d.layer_map:
        raise KdtuiError(
            f"the student ({d.student_layers} layers) is deeper than the teacher "
            f"({teacher.config.num_hidden_layers}); a uniform layer mapping needs "
            "student layers <= teacher layers (or give distill.layer_map)"
        )
    student = build_student(
        teacher,
        num_layers=d.student_layers,
        hidden_size=d.student_hidden,
        copy_weights=d.student_init == "teacher",
        attn_implementation="eager",
        seed=ctx.config.run.seed,
    )


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise KdtuiError(f"cannot load the tokenizer saved with {folder}: {e}") from None


def _teacher_scores(ctx: RunContext, teacher: str, method: str) -> torch.Tensor | None:
    """Prototype scores t_i the meta-teacher computed, indexed by example id — valid only when
    the student's data is the teacher's data (same source and seed)."""
    if method != "meta":
        return None
    run = Path(teacher).expanduser()
    saved = load_scores(run / SCORES_FILE)
    config_file = run / "config.toml"
    if saved is None or not config_file.is_file():
        ctx.run.log(
            Message(level="warning", text="no prototype scores with the teacher; using t_i = 0")
        )
        return None
    teacher_data = read_profile(config_file).get("data", {})
    mine = ctx.config.data
    if teacher_data.get("source") != mine.source or teacher_data.get("seed", 0) != mine.seed:
        ctx.run.log(
            Message(level="warning", text="the teacher was trained on other data; using t_i = 0")
        )
        return None
    ids = saved["ids"]
    by_id = torch.zeros(int(ids.max()) + 1)
    by_id[ids] = saved["scores"]
    return by_id
