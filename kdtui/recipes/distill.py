"""`kdtui distill`: a small single-domain student from a (meta-)teacher.

For each target domain: build (or load) the student, then
  stage 1 (methods meta, vanilla): intermediate layers — hidden-state MSE through a learned
          projection, attention MSE (probabilities or scores: distill.attention), and (meta)
          the KL to the meta-teacher's domain posterior, each instance weighted by its
          domain-expertise weight λ_i (meta) or 1 (vanilla);
  stage 2 (all methods): prediction layer — soft cross-entropy on the teacher's logits at
          temperature T, weighted by λ_i for meta.
The student sees only its domain's training data; it is evaluated on every domain's dev set
(to show transfer) and selected by its own domain's dev accuracy.

Layout: one target domain trains in the run directory itself (RUN/model, RUN/best,
RUN/checkpoints/stage1|stage2); `--domain all` puts each student under RUN/domains/<domain>/
and writes RUN/summary.md. Each stage checkpoints on its own, so `--resume` skips finished
stages and students and continues the interrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kdtui.checkpoint import list_checkpoints
from kdtui.data import Encoded, MultiDomainData, encode
from kdtui.engine.evaluate import predict_logits
from kdtui.engine.hooks import Hook
from kdtui.engine.loop import total_steps, train
from kdtui.errors import KdtuiError
from kdtui.events import Message
from kdtui.models import (
    build_student,
    label_names_of,
    load_model_tokenizer,
    load_trained,
    read_config_json,
    resolve_model_path,
    save_classifier,
    student_layout,
)
from kdtui.recipes.common import (
    RunContext,
    finish_training,
    load_run_data,
    load_scores,
    train_job,
)
from kdtui.rundir import SUMMARY_FILE, RunInfo, RunLayout


@dataclass
class Plan:
    """One student: where it goes and how many steps each stage takes."""

    domain: str
    folder: RunLayout  # the run directory, or the student's RUN/domains/<domain>
    train: Encoded
    stage1_steps: int
    stage2_steps: int

    @property
    def stage1_dir(self) -> Path:
        return self.folder.checkpoints / "stage1"

    @property
    def stage2_dir(self) -> Path:
        return self.folder.checkpoints / "stage2"


@dataclass
class Teacher:
    """The teacher and what distillation reads from it."""

    folder: Path
    model: Any
    tokenizer: Any
    domain_head: Any  # kdtui.methods.meta_kd.DomainHead | None
    layers: int
    hidden: int
    predictions: dict[str, list[int]] = field(default_factory=dict)  # by split, for agreement


def run_distill(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    d = cfg.distill
    if not d.teacher:
        raise KdtuiError("distill needs a teacher: --teacher RUN_OR_MODEL (distill.teacher)")
    if not d.domain:
        raise KdtuiError("distill needs a target domain: --domain NAME or --domain all")

    teacher, method = _load_teacher(ctx)
    if not d.student:
        student_layout(teacher.model)  # before anything runs: can kdtui cut its layers
    intermediate = method != "logits" and d.intermediate_epochs > 0
    student_layers = _check_student(ctx, teacher)
    layer_map: list[tuple[int, int]] = []
    if intermediate:
        layer_map = _layer_map(ctx, student_layers, teacher.layers)
        from kdtui.methods.meta_kd import check_attention_distillation

        check_attention_distillation(teacher.model)  # stage 1 recomputes attention scores

    data = load_run_data(ctx)
    if label_names_of(teacher.model) != data.label_names:
        raise KdtuiError(
            f"the teacher predicts labels {label_names_of(teacher.model)} but the data has "
            f"{data.label_names}"
        )
    domains = data.domain_names if d.domain == "all" else [d.domain]
    for name in domains:
        data.domain_id(name)
    _check_head_domains(teacher.domain_head, domains)

    tokenizer = teacher.tokenizer
    dev = encode(data.dev, tokenizer, cfg.data.max_length)
    test = encode(data.test, tokenizer, cfg.data.max_length) if data.test is not None else None
    plans = _plans(ctx, data, tokenizer, domains, intermediate)
    scores = _teacher_scores(ctx, teacher.folder, method, plans)

    all_steps = sum(p.stage1_steps + p.stage2_steps for p in plans)
    ctx.start(all_steps, resumed_from_step=_resumed_step(plans))
    summary: dict[str, Any] = {"method": method, "teacher": d.teacher, "domains": {}}
    offset = 0
    for plan in plans:
        ctx.run.log(Message(level="info", text=f"distilling a student for domain {plan.domain}"))
        student, metrics = distill_one(
            ctx,
            plan,
            teacher,
            method,
            layer_map,
            scores,
            dev,
            data,
            offset,
            all_steps,
        )
        offset += plan.stage1_steps + plan.stage2_steps
        ctx.last_step = offset  # the plan's steps, also when stage 2 stopped early
        metrics.update(agreement_metrics(ctx, student, teacher, plan.domain, dev, test, data))
        metrics["model"] = str(plan.folder.model.relative_to(ctx.run.path))
        summary["domains"][plan.domain] = metrics
    if ctx.is_main:
        ctx.run.write_text(SUMMARY_FILE, summary_table(summary))
    if len(plans) == 1:
        summary.update(summary["domains"][plans[0].domain])
    return summary


def _load_teacher(ctx: RunContext) -> tuple[Teacher, str]:
    """The teacher, and the distillation method (meta needs a meta-teacher's domain head)."""
    from kdtui.methods.meta_kd import load_domain_head

    d = ctx.config.distill
    folder = Path(resolve_model_path(d.teacher))
    domain_head = load_domain_head(folder)
    method = d.method  # filled in by the resolver from the teacher when not given
    if method == "meta" and domain_head is None:
        raise KdtuiError(
            f"teacher {d.teacher} is not a meta-teacher (no domain head in {folder}); "
            "train one with `kdtui teacher --method meta`, or use --method vanilla or logits"
        )
    model = load_trained(folder, attn_implementation=ctx.config.model.attn_implementation)
    teacher = Teacher(
        folder=folder,
        model=model,
        tokenizer=load_model_tokenizer(folder),
        domain_head=domain_head if method == "meta" else None,
        layers=model.config.num_hidden_layers,
        hidden=model.config.hidden_size,
    )
    return teacher, method


def _plans(
    ctx: RunContext,
    data: MultiDomainData,
    tokenizer: Any,
    domains: list[str],
    intermediate: bool,
) -> list[Plan]:
    """One student per target domain: its training data encoded, its folder, its stages' steps."""
    cfg = ctx.config
    d = cfg.distill
    plans = []
    for name in domains:
        split = data.training_domain(name)
        folder = ctx.run if len(domains) == 1 else ctx.run.student(name)
        train_enc = encode(split, tokenizer, cfg.data.max_length)
        stage1 = 0
        if intermediate:
            stage1 = total_steps(_stage_cfg(ctx, d.intermediate_epochs), len(train_enc))
        stage2 = total_steps(_stage_cfg(ctx, d.prediction_epochs), len(train_enc))
        plans.append(Plan(name, folder, train_enc, stage1, stage2))
    return plans


def distill_one(
    ctx: RunContext,
    plan: Plan,
    teacher: Teacher,
    method: str,
    layer_map: list[tuple[int, int]],
    scores: torch.Tensor | None,
    dev: Encoded,
    data: MultiDomainData,
    offset: int,
    all_steps: int,
) -> tuple[Any, dict[str, Any]]:
    """Train one student (stage 1, then stage 2 to its end); returns it and its metrics."""
    from kdtui.methods.meta_kd import PredictionDistillHook

    cfg = ctx.config
    d = cfg.distill
    student = _make_student(ctx, teacher)
    pad_id = teacher.tokenizer.pad_token_id or 0
    common = dict(
        train=plan.train,
        domain_names=data.domain_names,
        pad_id=pad_id,
        total_steps_all=all_steps,
    )
    use_meta = method == "meta"
    weighted = use_meta and d.expertise_weights  # λ_i; off: an ablation that keeps the rest
    if plan.stage1_steps:
        stage1 = [_stage1_hook(ctx, teacher, student, method, layer_map, scores, data)]
        train(
            train_job(
                ctx,
                model=student,
                dev=None,
                hooks=stage1,
                cfg=_stage_cfg(ctx, d.intermediate_epochs),
                checkpoint_dir=plan.stage1_dir,
                best_dir=None,
                weights={"domain_kl": d.domain_weight},
                stage="intermediate",
                step_offset=offset,
                **common,
            )
        )
    cached = _cached_teacher_logits(ctx, teacher, plan, pad_id)
    stage2: list[Hook] = [
        PredictionDistillHook(
            teacher=teacher.model,
            temperature=d.kd_temperature,
            weights="expertise" if weighted else "none",
            prototype_scores_by_example_id=scores if weighted else None,
            cached_logits=cached,
        )
    ]
    job = train_job(
        ctx,
        model=student,
        dev=dev,
        hooks=stage2,
        cfg=_stage_cfg(ctx, d.prediction_epochs),
        checkpoint_dir=plan.stage2_dir,
        best_dir=plan.folder.best,
        select_metric=plan.domain,
        stage="prediction",
        step_offset=offset + plan.stage1_steps,
        **common,
    )
    _, metrics = finish_training(
        ctx,
        job,
        tokenizer=teacher.tokenizer,
        data=data,
        save=lambda folder: save_classifier(student, teacher.tokenizer, folder, data.label_names),
        where=plan.folder,
    )
    return student, metrics


def _stage1_hook(
    ctx: RunContext,
    teacher: Teacher,
    student: Any,
    method: str,
    layer_map: list[tuple[int, int]],
    scores: torch.Tensor | None,
    data: MultiDomainData,
) -> Hook:
    """Stage 1's hook: hidden states and attention (and the domain term for meta) matched
    layer by layer, weighted by λ_i for meta unless distill.expertise_weights is off."""
    from kdtui.methods.meta_kd import IntermediateDistillHook

    d = ctx.config.distill
    use_meta = method == "meta"
    weighted = use_meta and d.expertise_weights
    return IntermediateDistillHook(
        teacher=teacher.model,
        layer_map=layer_map,
        student_hidden=student.config.hidden_size,
        teacher_hidden=teacher.hidden,
        teacher_domain_head=teacher.domain_head if use_meta else None,
        head_domain_ids=_head_domain_ids(teacher.domain_head, data.domain_names),
        prototype_scores_by_example_id=scores if weighted else None,
        use_expertise_weights=weighted,
        attention=d.attention,
        seed=ctx.config.run.seed,
    )


def _cached_teacher_logits(
    ctx: RunContext, teacher: Teacher, plan: Plan, pad_id: int
) -> torch.Tensor | None:
    """The teacher's logits on the student's training data by example id, computed once before
    stage 2 (distill.cache_teacher_logits); None: the teacher runs at every step."""
    cfg = ctx.config
    if not cfg.distill.cache_teacher_logits:
        return None
    with ctx.run.stopwatch.timed("teacher_cache"):
        logits = predict_logits(
            teacher.model,
            plan.train,
            range(len(plan.train)),
            batch_size=cfg.train.eval_batch_size,
            pad_id=pad_id,
            device=ctx.accelerator.device,
            autocast=cfg.train.precision == "bf16",
        )
    cached = torch.zeros(max(plan.train.ids) + 1, logits.shape[1])
    cached[torch.tensor(plan.train.ids)] = logits
    return cached


def agreement_metrics(
    ctx: RunContext,
    student: Any,
    teacher: Teacher,
    domain: str,
    dev: Encoded,
    test: Encoded | None,
    data: MultiDomainData,
) -> dict[str, Any]:
    """How closely the student copies its teacher: the share of examples where their argmax
    agree, on dev and test, on the student's domain (`agreement/dev`, `agreement/test`) and on
    every domain (`agreement/dev_all`, `agreement/test_all`); and how many of its own domain's
    dev examples the student gives each class (`dev_classes`: one class = it learned only the
    prior)."""
    from kdtui.methods.source_stats import agreement_by_domain

    metrics: dict[str, Any] = {}
    pad_id = teacher.tokenizer.pad_token_id or 0
    with ctx.run.stopwatch.timed("source_stats"):
        for split, encoded in (("dev", dev), ("test", test)):
            if encoded is None:
                continue
            if split not in teacher.predictions:  # the same for every student of the run
                teacher.predictions[split] = _predictions(ctx, teacher.model, encoded, pad_id)
            mine = _predictions(ctx, student, encoded, pad_id)
            shares = agreement_by_domain(
                mine, teacher.predictions[split], encoded.domains, data.domain_names
            )
            metrics[f"agreement/{split}"] = shares.get(domain, float("nan"))
            metrics[f"agreement/{split}_all"] = shares["all"]
            if split == "dev":
                d = data.domain_id(domain)
                own = [p for p, k in zip(mine, encoded.domains, strict=True) if k == d]
                metrics["dev_classes"] = {n: own.count(c) for c, n in enumerate(data.label_names)}
    return metrics


def _predictions(ctx: RunContext, model: Any, encoded: Encoded, pad_id: int) -> list[int]:
    """Argmax of MODEL on every example, as the final test predictions are computed."""
    cfg = ctx.config
    device = ctx.accelerator.device
    logits = predict_logits(
        model.to(device),
        encoded,
        range(len(encoded)),
        batch_size=cfg.train.eval_batch_size,
        pad_id=pad_id,
        device=device,
        autocast=cfg.train.precision == "bf16",
    )
    return logits.argmax(dim=-1).tolist()


def _stage_cfg(ctx: RunContext, epochs: float) -> Any:
    """The train section for one stage: its own epochs or distill.max_steps (train.max_steps is
    the teacher's)."""
    return replace(ctx.config.train, epochs=epochs, max_steps=ctx.config.distill.max_steps)


def _check_student(ctx: RunContext, teacher: Teacher) -> int:
    """Refuse a student that cannot learn from this teacher, before anything is trained; returns
    the student's depth."""
    d = ctx.config.distill
    if not d.student:
        return d.student_layers
    folder = Path(resolve_model_path(d.student))
    student_tokenizer = load_model_tokenizer(folder)
    if student_tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise KdtuiError(
            f"student {d.student} uses a different tokenizer from the teacher {d.teacher}; "
            "distillation needs the same vocabulary (build the student from the teacher "
            "with --student-layers instead)"
        )
    config = read_config_json(folder)
    # DistilBERT's config.json calls it n_layers
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    if not isinstance(layers, int):
        raise KdtuiError(f"student {d.student}: config.json has no num_hidden_layers")
    return layers


def _layer_map(ctx: RunContext, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    from kdtui.methods.meta_kd import parse_layer_map, uniform_layer_map

    pairs = ctx.config.distill.layer_map
    if pairs:
        return parse_layer_map(
            [list(p) for p in pairs], student_layers=student_layers, teacher_layers=teacher_layers
        )
    return uniform_layer_map(teacher_layers, student_layers)


def _make_student(ctx: RunContext, teacher: Teacher) -> Any:
    d = ctx.config.distill
    if d.student:
        student = load_trained(
            resolve_model_path(d.student), attn_implementation=ctx.config.model.attn_implementation
        )
        if label_names_of(student) != label_names_of(teacher.model):
            raise KdtuiError(
                f"student labels {label_names_of(student)} differ from the teacher's "
                f"{label_names_of(teacher.model)}"
            )
        return student
    return build_student(
        teacher.model,
        num_layers=d.student_layers,
        hidden_size=d.student_hidden,
        copy_weights=d.student_init == "teacher",
        seed=ctx.config.run.seed,
    )


def _check_head_domains(head: Any, targets: list[str]) -> None:
    """Meta-distillation needs a meta-teacher that saw the target domain (its domain posterior
    and prototype scores are about the domains it was trained on)."""
    if head is None:
        return
    missing = [name for name in targets if name not in head.domain_names]
    if missing:
        raise KdtuiError(
            f"the meta-teacher was trained on domains {', '.join(head.domain_names)}, "
            f"not on {', '.join(missing)}"
        )


def _head_domain_ids(head: Any, domain_names: list[str]) -> list[int]:
    """The meta-teacher head's index of each of the data's domains (the student's data may
    keep fewer domains, in another order); -1 for a domain the head has not seen, which no
    student trains on (`_check_head_domains`)."""
    if head is None:
        return []
    return [head.domain_names.index(n) if n in head.domain_names else -1 for n in domain_names]


def _resumed_step(plans: list[Plan]) -> int:
    """The step (over all students and stages) of the furthest checkpoint."""
    done, offset = 0, 0
    for plan in plans:
        for folder, steps in (
            (plan.stage1_dir, plan.stage1_steps),
            (plan.stage2_dir, plan.stage2_steps),
        ):
            found = list_checkpoints(folder)
            if found:
                done = offset + int(found[-1].name.removeprefix("step-"))
            offset += steps
    return done


def _teacher_scores(
    ctx: RunContext, teacher_folder: Path, method: str, plans: list[Plan]
) -> torch.Tensor | None:
    """The prototype scores t_i the meta-teacher computed, as a table by example id covering
    every student's training ids. Valid only when the student's data is the teacher's data
    (same source; for synthetic data, the same generator settings); otherwise, or for examples
    the teacher did not score, t_i = 0 and a warning says so."""
    if method != "meta":
        return None
    run = RunInfo(teacher_folder.parent)  # the teacher's run, when it was trained by kdtui
    saved = load_scores(run.scores_file)

    def warn(text: str) -> None:
        ctx.run.log(Message(level="warning", text=text))

    if saved is None or not run.config_file.is_file():
        warn(f"no prototype scores with the teacher ({run.scores_file}); using t_i = 0")
        return None
    teacher_data = run.config_dict().get("data", {})
    mine = ctx.config.data
    same = teacher_data.get("source") == mine.source
    if same and mine.source == "synthetic":
        from dataclasses import asdict

        keys = [k for k in asdict(mine) if k.startswith("synthetic_")] + ["seed"]
        mine_dict = ctx.config.to_dict()["data"]
        same = all(teacher_data.get(k) == mine_dict[k] for k in keys)
    if not same:
        warn("the teacher was trained on other data; its prototype scores do not apply: t_i = 0")
        return None
    ids = saved["ids"]
    size = max(int(ids.max()) + 1, *(max(p.train.ids) + 1 for p in plans))
    table = torch.zeros(size)
    known = torch.zeros(size, dtype=torch.bool)
    table[ids] = saved["scores"].float()
    known[ids] = True
    wanted = torch.tensor([i for p in plans for i in p.train.ids])
    missing = int((~known[wanted]).sum())
    if missing:
        warn(f"{missing} training examples have no prototype score from the teacher; t_i = 0")
    return table


def summary_table(summary: dict[str, Any]) -> str:
    """A markdown table: one row per student, test accuracy on its own domain and on all."""
    lines = [
        f"# kdtui distill: method {summary['method']}, teacher {summary['teacher']}",
        "",
        "| domain | best dev (own domain) | test (own domain) | test (all domains) | model |",
        "| --- | --- | --- | --- | --- |",
    ]

    def number(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "-"

    for domain, m in summary["domains"].items():
        test = m.get("test") or {}
        lines.append(
            f"| {domain} | {number(m.get('best_dev'))} | {number(test.get(domain))} | "
            f"{number(test.get('all'))} | {m['model']} |"
        )
    return "\n".join(lines) + "\n"
