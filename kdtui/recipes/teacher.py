"""`kdtui teacher`: fine-tune a teacher on all domains (mix), on one (single), or a Meta-KD
meta-teacher (meta). setup -> train -> save the best model -> test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate.utils import gather_object

from kdtui.checkpoint import atomic_folder, load_checkpoint, write_json_atomic
from kdtui.data import MultiDomainData, encode
from kdtui.engine.evaluate import accuracy_of_predictions, predictions_in_order
from kdtui.engine.hooks import CrossEntropyHook, Hook
from kdtui.engine.loop import TrainJob, total_steps, train
from kdtui.errors import KdtuiError
from kdtui.models import load_classifier, load_tokenizer, save_classifier
from kdtui.recipes.common import RunContext, load_run_data

PREDICTIONS_FILE = "test_predictions.json"


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

    n_steps = total_steps(cfg.train, len(train_enc))
    ctx.start(n_steps)
    result = train(
        TrainJob(
            model=model,
            train=train_enc,
            dev=dev_enc,
            domain_names=data.domain_names,
            hooks=hooks,
            cfg=cfg.train,
            run=ctx.run,
            accelerator=ctx.accelerator,
            pad_id=tokenizer.pad_token_id or 0,
            seed=cfg.run.seed,
            checkpoint_dir=ctx.run.checkpoints,
            best_dir=ctx.run.best,
            weights=weights,
            select_metric=select,
        )
    )
    ctx.last_step = result.steps
    restore_best(ctx, model, hooks)
    if ctx.is_main:
        with atomic_folder(ctx.run.model) as folder:
            save_classifier(model, tokenizer, folder, data.label_names)
            for hook in hooks:
                export = getattr(hook, "export", None)
                if export is not None:
                    export(folder, data)
    return final_metrics(ctx, model, tokenizer, data, result)


def restore_best(ctx: RunContext, model: Any, hooks: list[Hook]) -> None:
    """Load the best weights (by dev accuracy) back into the model and hooks, if any were kept."""
    ctx.accelerator.wait_for_everyone()
    if (ctx.run.best / "state.json").is_file():
        best = load_checkpoint(ctx.run.best)
        model.load_state_dict(best.model)
        for hook in hooks:
            hook.load_state_dict(best.train_state["hooks"].get(hook.name, {}))


def final_metrics(
    ctx: RunContext,
    model: Any,
    tokenizer: Any,
    data: MultiDomainData,
    result: Any,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Best dev accuracy and the best model's test accuracy per domain. The test predictions go
    to FOLDER/test_predictions.json (FOLDER: the run directory by default), so a benchmark can
    compare two models example by example."""
    cfg = ctx.config
    metrics: dict[str, Any] = {
        "steps": result.steps,
        "best_step": result.best_step,
        "best_dev": result.best_metric,
        "stopped_early": result.stopped_early,
    }
    if data.test is not None:
        test_enc = encode(data.test, tokenizer, cfg.data.max_length)
        acc = ctx.accelerator
        predictions = predictions_in_order(
            model,
            test_enc,
            batch_size=cfg.train.eval_batch_size,
            pad_id=tokenizer.pad_token_id or 0,
            device=acc.device,
            autocast=cfg.train.bf16,
            process_index=acc.process_index,
            num_processes=acc.num_processes,
            gather=gather_object if acc.num_processes > 1 else None,
        )
        metrics["test"] = accuracy_of_predictions(predictions, test_enc, data.domain_names)
        if ctx.is_main:
            write_json_atomic(
                (folder or ctx.run.path) / PREDICTIONS_FILE,
                {
                    "domains": [data.domain_names[d] for d in test_enc.domains],
                    "labels": list(test_enc.labels),
                    "predictions": predictions,
                },
            )
    return metrics
