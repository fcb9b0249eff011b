"""`kdtui teacher`: fine-tune a teacher on all domains (mix), on one (single), or a Meta-KD
meta-teacher (meta). setup -> train -> save the best model -> test -> its statistics as a
source of distillation, on dev."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdtui.data import encode
from kdtui.engine.hooks import CrossEntropyHook, Hook
from kdtui.engine.loop import total_steps
from kdtui.errors import KdtuiError
from kdtui.models import load_classifier, load_tokenizer, save_classifier
from kdtui.recipes.common import (
    RunContext,
    finish_training,
    load_run_data,
    source_metrics,
    train_job,
)


def run_teacher(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    method = cfg.teacher.method
    data = load_run_data(ctx)
    train_split = data.train
    select = "all"
    if method == "single":
        train_split = data.training_domain(cfg.teacher.domain)
        select = cfg.teacher.domain  # dev covers every domain, to show transfer
    if method == "meta" and len(data.domain_names) < 2:
        raise KdtuiError(
            f"a meta-teacher needs at least two domains; the data has {data.domain_names}"
        )

    tokenizer = load_tokenizer(cfg.model)
    model = load_classifier(cfg.model, data.label_names, seed=cfg.run.seed)
    train_enc = encode(train_split, tokenizer, cfg.data.max_length)
    dev_enc = encode(data.dev, tokenizer, cfg.data.max_length)
    hooks: list[Hook] = [CrossEntropyHook()]
    weights: dict[str, float] = {}
    if method == "meta":
        from kdtui.recipes.meta import meta_teacher_hooks

        hooks, weights = meta_teacher_hooks(ctx, data, train_split, model, tokenizer)

    pad_id = tokenizer.pad_token_id or 0
    job = train_job(
        ctx,
        model=model,
        train=train_enc,
        dev=dev_enc,
        domain_names=data.domain_names,
        hooks=hooks,
        pad_id=pad_id,
        weights=weights,
        select_metric=select,
    )

    def save(folder: Path) -> None:
        save_classifier(model, tokenizer, folder, data.label_names)
        for hook in hooks:
            export = getattr(hook, "export", None)
            if export is not None:
                export(folder, data)

    ctx.start(total_steps(cfg.train, len(train_enc)))
    _, metrics = finish_training(ctx, job, tokenizer=tokenizer, data=data, save=save)
    return {**metrics, **source_metrics(ctx, model, dev_enc, pad_id)}
