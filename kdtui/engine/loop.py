"""The one training loop. Every command (teacher, distill, prune) runs through `train()`.

Read top to bottom: set up hooks and the optimiser, restore a checkpoint if there is one, then
for each optimiser step: pick the step's examples from a per-epoch seeded permutation, run the
forward once, ask every hook for its named loss terms, weight and sum them, backward, average
gradients over processes, clip, step, let hooks act (masks, schedules), log, evaluate,
checkpoint. On evaluation steps the step event also carries each term's gradient norm
(`grad/TERM`), so a term that does nothing is visible.

Why the data order is derived from (seed, epoch, step) instead of a DataLoader's iterator: a
resumed run recomputes exactly which examples come next from the step number alone, so a run
killed at any point and resumed ends bit-identical to an uninterrupted one on CPU.

Why gradients are averaged by hand instead of DistributedDataParallel: hooks add trainable
parameters that live outside the model (projections, domain heads, pruning scores) and may use
them outside the model's forward; one explicit all-reduce over every trainable gradient is
correct for all of them. Accelerate supplies the process group, device and autocast.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import nn

from kdtui.checkpoint import (
    list_checkpoints,
    load_latest,
    prune_old,
    remove_unfinished,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kdtui.config import TrainConfig
from kdtui.data import Encoded, collate
from kdtui.engine.evaluate import accuracy_of_predictions, predictions_in_order
from kdtui.engine.hooks import Batch, Hook, HookContext, StepInfo
from kdtui.errors import Interrupted, KdtuiError
from kdtui.events import Checkpoint, Eval, Message, Step
from kdtui.faults import crash_point
from kdtui.precision import cpu_has_native_bf16, resolve_precision
from kdtui.rundir import RunDir


@dataclass
class TrainJob:
    """What a recipe hands the loop."""

    model: nn.Module
    train: Encoded
    dev: Encoded | None
    domain_names: Sequence[str]
    hooks: Sequence[Hook]
    cfg: TrainConfig
    run: RunDir
    accelerator: Any
    pad_id: int
    seed: int
    checkpoint_dir: Path  # this stage's checkpoints
    best_dir: Path | None = None  # where the best weights go; None = do not track
    weights: Mapping[str, float] = field(default_factory=dict)  # term name -> weight (default 1)
    select_metric: str = "all"  # key of the dev accuracy dict that picks the best model
    select_after_step: int = 0  # evaluations before this step cannot be "best" (pruning)
    stage: str = ""  # shown in events when a command runs several stages
    step_offset: int = 0  # events count steps across stages
    total_steps_all: int = 0  # total steps over all stages (events); 0 = this stage's


@dataclass
class EngineState:
    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    last_eval: dict[str, float] | None = None
    warned_collapse: bool = False


@dataclass
class TrainResult:
    steps: int
    best_metric: float | None
    best_step: int | None
    last_eval: dict[str, float] | None
    stopped_early: bool


def steps_per_epoch(cfg: TrainConfig, num_examples: int) -> int:
    """Full batches only: every step sees exactly batch_size examples, so each process always
    has its share and a step means the same thing in single- and multi-process runs."""
    return max(1, num_examples // cfg.batch_size)


def total_steps(cfg: TrainConfig, num_examples: int) -> int:
    by_epochs = math.ceil(steps_per_epoch(cfg, num_examples) * cfg.epochs)
    return cfg.max_steps or max(1, cfg.min_steps, by_epochs)


def warmup_then_linear_decay(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up to the peak at step `warmup`, then linear decay to 0 at
    `total`. The first step already learns (no step is spent at learning rate 0)."""
    if step <= warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def train(job: TrainJob) -> TrainResult:
    loop = _setup(job)
    _resume(loop)
    previous_handlers = _catch_stop_signals(loop.stop)
    loop.model.train()
    try:
        while loop.state.step < loop.n_steps and not loop.state.stopped_early:
            _train_step(loop)
    finally:
        _restore_signals(previous_handlers)
    state = loop.state
    return TrainResult(
        state.step, state.best_metric, state.best_step, state.last_eval, state.stopped_early
    )


@dataclass
class _Loop:
    """What one train() call works with: the job, the schedule, the optimiser and the state."""

    job: TrainJob
    model: nn.Module  # on the device
    device: torch.device
    rank: int
    world: int
    per_epoch: int
    n_steps: int
    eval_every: int
    checkpoint_every: int
    autocast: bool
    params: list[nn.Parameter]  # every trainable parameter, the hooks' included
    model_params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    need_hidden: bool
    need_attn: bool
    state: EngineState = field(default_factory=EngineState)
    stop: _StopRequest = field(default_factory=lambda: _StopRequest())


def _setup(job: TrainJob) -> _Loop:
    """Check the job, move the model, seed, set the hooks up and build the optimiser and the
    learning-rate schedule."""
    cfg, acc = job.cfg, job.accelerator
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    if len(job.train) == 0:
        raise KdtuiError("no training examples")
    micro_size = cfg.batch_size // cfg.grad_accum
    if micro_size < world:
        raise KdtuiError(
            f"train.batch_size / train.grad_accum = {micro_size} is smaller than the number of "
            f"processes ({world}); raise the batch size"
        )
    per_epoch = steps_per_epoch(cfg, len(job.train))
    n_steps = total_steps(cfg, len(job.train))
    eval_every = cfg.eval_every or per_epoch
    autocast = resolve_precision(cfg.precision, device) == "bf16"

    model = job.model.to(device)
    torch.manual_seed(job.seed + rank)
    if autocast and device.type == "cpu" and not cpu_has_native_bf16():
        job.run.log(
            Message(
                level="warning",
                text="bf16 autocast on a CPU without AVX512-BF16 or AMX is emulated and "
                "several times slower than fp32 here; drop --bf16",
            )
        )
    ctx = HookContext(model, n_steps, job.run.log, device, rank, world)
    for hook in job.hooks:
        hook.setup(ctx)
    optimizer = _adamw(model, job.hooks, cfg)
    warmup = int(cfg.warmup_ratio * n_steps)
    return _Loop(
        job=job,
        model=model,
        device=device,
        rank=rank,
        world=world,
        per_epoch=per_epoch,
        n_steps=n_steps,
        eval_every=eval_every,
        checkpoint_every=cfg.checkpoint_every or eval_every,
        autocast=autocast,
        params=_trainable(model, job.hooks),
        model_params=[p for p in model.parameters() if p.requires_grad],
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_then_linear_decay(s, warmup, n_steps)
        ),
        need_hidden=any(h.needs_hidden_states for h in job.hooks),
        need_attn=any(h.needs_attentions for h in job.hooks),
    )


def _resume(loop: _Loop) -> None:
    """Drop checkpoints a crash left half written, and go on from the latest whole one."""
    job, run = loop.job, loop.job.run
    if run.is_main:
        remove_unfinished(job.checkpoint_dir)
        if job.best_dir is not None:
            remove_unfinished(job.best_dir)
    loaded = load_latest(
        job.checkpoint_dir, lambda text: run.log(Message(level="warning", text=text))
    )
    if loaded is None:
        return
    loop.model.load_state_dict(loaded.model)
    loop.optimizer.load_state_dict(loaded.train_state["optimizer"])
    loop.scheduler.load_state_dict(loaded.train_state["scheduler"])
    for hook in job.hooks:
        hook.load_state_dict(loaded.train_state["hooks"].get(hook.name, {}))
    rngs = loaded.train_state["rng"]
    set_rng_state(rngs[loop.rank] if loop.rank < len(rngs) else rngs[0])
    loop.state = EngineState(
        **{k: v for k, v in loaded.state.items() if k in EngineState.__dataclass_fields__}
    )
    what = job.stage or "training"
    run.log(Message(level="info", text=f"resumed {what} from step {loop.state.step}"))


def _train_step(loop: _Loop) -> None:
    """One optimiser step, then what follows it: hooks, the step's log, evaluation,
    checkpoint, and a requested stop."""
    job, state, watch = loop.job, loop.state, loop.job.run.stopwatch
    watch.step_starts()
    step_started = time.perf_counter()
    # On the evaluation cadence, also for a stage without dev data (distillation's
    # intermediate stage), so every stage shows its terms' balance.
    evaluates = (state.step + 1) % loop.eval_every == 0 or state.step + 1 == loop.n_steps
    sums, grad_norms = _forward_backward(loop, evaluates)
    crash_point("step", job.step_offset + state.step + 1)
    agreed_stop = _update(loop, sums)
    lr = loop.scheduler.get_last_lr()[0]  # the rate this step used (before the schedule moves)
    loop.optimizer.step()
    loop.scheduler.step()
    state.step += 1
    _after_step(loop, lr, sums, grad_norms)
    # The step's work (hooks' mask updates and logging included); evaluation and
    # checkpoints are timed as their own parts.
    watch.add("train", time.perf_counter() - step_started)
    last = state.step == loop.n_steps
    if job.dev is not None and (state.step % loop.eval_every == 0 or last):
        with watch.timed("dev_eval"):
            _evaluate(loop)
    if state.step % loop.checkpoint_every == 0 or last or state.stopped_early:
        _save(loop, "final" if last else "periodic")
    # One process stops as soon as it can: a signal during this step's evaluation or
    # checkpoint counts too.
    if agreed_stop if loop.world > 1 else loop.stop.signum is not None:
        if state.step % loop.checkpoint_every and not last:
            _save(loop, "periodic")
        raise Interrupted(loop.stop.signum or signal.SIGINT)


def _forward_backward(
    loop: _Loop, evaluates: bool
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The step's examples (a per-epoch seeded permutation), forward and backward micro-batch
    by micro-batch; returns the loss and each term, as means over the global batch, and on
    evaluation steps each term's gradient norm."""
    job, cfg, state = loop.job, loop.job.cfg, loop.state
    device, rank, world = loop.device, loop.rank, loop.world
    epoch, position = divmod(state.step, loop.per_epoch)
    order = epoch_order(len(job.train), job.seed, epoch)
    step_indices = order[position * cfg.batch_size : (position + 1) * cfg.batch_size]

    loop.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}
    grad_norms: dict[str, float] = {}
    for micro in _chunks(step_indices, cfg.grad_accum):
        local = micro[rank::world]
        if not local:
            continue
        batch = Batch(**{k: v.to(device) for k, v in collate(job.train, local, job.pad_id).items()})
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=loop.autocast):
            outputs = loop.model(
                **batch.model_inputs(),
                output_hidden_states=loop.need_hidden,
                output_attentions=loop.need_attn,
            )
            terms = _loss_terms(job.hooks, batch, outputs, loop.model)
        loss = sum(job.weights.get(name, 1.0) * value.float() for name, value in terms.items())
        # Every process must join the norms' all-reduce: only a micro-batch that gives
        # each of them an example (the same decision everywhere) qualifies.
        if evaluates and cfg.term_grad_norms and not grad_norms and len(micro) >= world:
            grad_norms = _term_grad_norms(
                terms, job.weights, loop.model_params, len(local) / len(micro), world
            )
        share = len(local) / len(step_indices)  # gradient of the mean over the global batch
        (loss * share).backward()
        for name, value in [("loss", loss), *terms.items()]:
            sums[name] = sums.get(name, 0.0) + value.detach().float() * share
    return sums, grad_norms


def _update(loop: _Loop, sums: dict[str, torch.Tensor]) -> bool:
    """Average the gradients (and SUMS) over processes, refuse a NaN/Inf loss, clip; returns
    whether some process was asked to stop."""
    job = loop.job
    agreed_stop = False
    if loop.world > 1:
        # Processes stop after the same step: the one in which any of them was asked to.
        agreed_stop = _all_reduce_sum(loop.params, sums, loop.device, loop.stop.signum is not None)
    if not all(math.isfinite(float(v)) for v in sums.values()):
        bad = ", ".join(k for k, v in sums.items() if not math.isfinite(float(v)))
        kept = list_checkpoints(job.checkpoint_dir)
        where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint yet"
        raise KdtuiError(
            f"the loss became NaN/Inf at step {job.step_offset + loop.state.step + 1} ({bad}); "
            f"{where} — lower train.lr or check the data"
        )
    if job.cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(loop.params, job.cfg.max_grad_norm)
    return agreed_stop


def _after_step(
    loop: _Loop, lr: float, sums: dict[str, torch.Tensor], grad_norms: dict[str, float]
) -> None:
    """The hooks' after_step (masks, schedules) and the step's event, on the log cadence."""
    job, state = loop.job, loop.state
    info = StepInfo(step=state.step, total_steps=loop.n_steps, epoch=state.step / loop.per_epoch)
    metrics: dict[str, float] = {f"grad/{k}": v for k, v in grad_norms.items()}
    for hook in job.hooks:
        metrics.update(hook.after_step(info))
    if state.step % job.cfg.log_every == 0 or state.step == loop.n_steps or grad_norms:
        job.run.log(
            Step(
                step=job.step_offset + state.step,
                total_steps=job.total_steps_all or loop.n_steps,
                epoch=info.epoch,
                lr=lr,
                loss=float(sums.pop("loss")),
                losses={k: float(v) for k, v in sums.items()},
                metrics=metrics,
            )
        )


def _save(loop: _Loop, kind: str) -> None:
    """A checkpoint of everything a resume needs: weights, optimiser, schedule, hooks, every
    process's random state and the loop's state."""
    job, run, state = loop.job, loop.job.run, loop.state
    with run.stopwatch.timed("checkpoint"):
        rngs = gather_object([rng_state()]) if loop.world > 1 else [rng_state()]
        if not run.is_main:
            return
        folder = save_checkpoint(
            job.checkpoint_dir / f"step-{state.step:08d}",
            model_state=loop.model.state_dict(),
            train_state={
                "optimizer": loop.optimizer.state_dict(),
                "scheduler": loop.scheduler.state_dict(),
                "hooks": {h.name: h.state_dict() for h in job.hooks},
                "rng": rngs,
            },
            state=asdict(state),
            before_commit=lambda: crash_point("checkpoint", job.step_offset + state.step),
        )
        prune_old(job.checkpoint_dir, job.cfg.keep_checkpoints)
        run.log(
            Checkpoint(
                step=job.step_offset + state.step, path=str(folder.relative_to(run.path)), kind=kind
            )
        )


def _evaluate(loop: _Loop) -> None:
    """Dev accuracy; the best model kept, early stopping, a collapse warned about."""
    job, state = loop.job, loop.state
    model, device, autocast = loop.model, loop.device, loop.autocast
    rank, world = loop.rank, loop.world
    assert job.dev is not None
    predictions = predictions_in_order(
        model,
        job.dev,
        batch_size=job.cfg.eval_batch_size,
        pad_id=job.pad_id,
        device=device,
        autocast=autocast,
        process_index=rank,
        num_processes=world,
        gather=gather_object if world > 1 else None,
    )
    accuracy = accuracy_of_predictions(predictions, job.dev, job.domain_names)
    crash_point("eval", job.step_offset + state.step)
    if not state.warned_collapse and (what := _collapse(predictions, job.dev.labels)):
        state.warned_collapse = True
        causes = [d for h in job.hooks if (d := getattr(h, "diagnosis", lambda: "")())]
        job.run.log(
            Message(
                level="warning",
                text=f"the model {what} at step {job.step_offset + state.step}: it has collapsed "
                "or not learned yet" + (f"; {'; '.join(causes)}" if causes else ""),
            )
        )
    for hook in job.hooks:
        hook.after_eval(state.step, accuracy)
    state.last_eval = accuracy
    metric = accuracy.get(job.select_metric, float("nan"))
    eligible = state.step >= job.select_after_step and math.isfinite(metric)
    is_best = eligible and (state.best_metric is None or metric > state.best_metric)
    job.run.log(
        Eval(step=job.step_offset + state.step, split="dev", accuracy=accuracy, best=is_best)
    )
    if not eligible:
        return
    if is_best:
        state.best_metric, state.best_step, state.evals_since_best = metric, state.step, 0
        if job.best_dir is not None and job.run.is_main:
            save_checkpoint(
                job.best_dir,
                model_state=model.state_dict(),
                train_state={"hooks": {h.name: h.state_dict() for h in job.hooks}},
                state={"step": state.step, "metric": metric, "select_metric": job.select_metric},
            )
            job.run.log(
                Checkpoint(
                    step=job.step_offset + state.step,
                    path=str(job.best_dir.relative_to(job.run.path)),
                    kind="best",
                )
            )
    else:
        state.evals_since_best += 1
        patience = job.cfg.early_stopping_patience
        if patience and state.evals_since_best >= patience:
            state.stopped_early = True
            job.run.log(
                Message(
                    level="info", text=f"early stopping: no improvement in {patience} evaluations"
                )
            )


def _collapse(predictions: Sequence[int], labels: Sequence[int]) -> str:
    """What shows that a model carries no information about a split that holds several classes
    (empty when nothing does): one predicted class for every example, or an accuracy no better
    than always answering the most common class (a model at chance can still mix its answers)."""
    if len(set(labels)) < 2:
        return ""
    if len(set(predictions)) == 1:
        return "predicts one class for every dev example"
    majority = max(Counter(labels).values()) / len(labels)
    correct = sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)
    if correct <= majority:
        return (
            f"is no better on dev ({correct:.1%}) than always predicting the most common class "
            f"({majority:.1%})"
        )
    return ""


def _loss_terms(
    hooks: Sequence[Hook], batch: Batch, outputs: Any, model: nn.Module
) -> dict[str, torch.Tensor]:
    terms: dict[str, torch.Tensor] = {}
    for hook in hooks:
        for name, value in hook.loss_terms(batch, outputs, model).items():
            if name in terms:
                raise AssertionError(f"loss term '{name}' returned by two hooks")
            terms[name] = value
    if not terms:
        raise AssertionError("no hook returned a loss term")
    return terms


def _term_grad_norms(
    terms: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    params: list[nn.Parameter],
    share: float,
    world: int,
) -> dict[str, float]:
    """L2 norm of the gradient of each weighted term on the model's parameters, over one
    micro-batch (the graph is kept for the real backward that follows).

    With several processes each holds `share` of the micro-batch: their gradients are summed
    before the norm, so the metric is the same as one process computes on the whole micro-batch.
    A term whose norm is orders of magnitude below the others does not steer training, whatever
    its value; a term with no path to the model (a hook's own parameters only) shows 0."""
    norms = {}
    for name, value in terms.items():
        weight = weights.get(name, 1.0)
        # Skipped terms are skipped on every process (same weights, same hooks): no collective.
        if weight == 0:
            norms[name] = 0.0
            continue
        grads: list[torch.Tensor | None] = [None] * len(params)
        if value.requires_grad:
            grads = list(
                torch.autograd.grad(
                    weight * value.float(), params, retain_graph=True, allow_unused=True
                )
            )
        if world > 1:
            import torch.distributed as dist

            flat = torch.cat(
                [
                    (g.float() if g is not None else torch.zeros_like(p, dtype=torch.float32))
                    .reshape(-1)
                    .mul(share)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
            dist.all_reduce(flat)
            norms[name] = float(flat.norm())
            continue
        squares = [g.float().pow(2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


def _chunks(items: list[int], parts: int) -> list[list[int]]:
    size = math.ceil(len(items) / parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _trainable(model: nn.Module, hooks: Sequence[Hook]) -> list[nn.Parameter]:
    seen: set[int] = set()
    result = []
    for p in [*model.parameters(), *(p for h in hooks for p in h.parameters())]:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            result.append(p)
    return result


def _adamw(model: nn.Module, hooks: Sequence[Hook], cfg: TrainConfig) -> torch.optim.Optimizer:
    # Biases and LayerNorm weights are not decayed (the usual BERT recipe). A hook that sets
    # `lr` gets its own undecayed group at that peak rate (pruning scores learn at 1e-2 while
    # the weights learn at 3e-5); the schedule scales every group alike.
    decay, no_decay = [], []
    own_lr: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    named = [
        *((name, p, None) for name, p in model.named_parameters()),
        *(
            (f"{h.name}.{i}", p, getattr(h, "lr", None))
            for h in hooks
            for i, p in enumerate(h.parameters())
        ),
    ]
    for name, p, lr in named:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if lr is not None:
            own_lr.setdefault(lr, []).append(p)
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        *({"params": ps, "lr": lr, "weight_decay": 0.0} for lr, ps in own_lr.items()),
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def _all_reduce_sum(
    params: list[nn.Parameter], sums: dict[str, torch.Tensor], device: torch.device, stop: bool
) -> bool:
    """Sum every gradient and logged term over processes in one flat buffer. Each process
    scaled its loss by its share of the global batch, so the sum is the global mean. The same
    buffer carries each process's stop request; returns whether any process has one."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat(
        [g.reshape(-1) for g in grads]
        + [
            torch.stack(
                [torch.as_tensor(v, device=device) for v in sums.values()]
                + [torch.tensor(float(stop), device=device)]
            )
        ]
    )
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    for i, name in enumerate(sums):
        sums[name] = flat[offset + i]
    return bool(flat[-1] > 0)


@dataclass
class _StopRequest:
    signum: int | None = None  # the first stop signal received


# Ctrl-C, `kill` (and schedulers, container stops), a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _catch_stop_signals(stop: _StopRequest) -> dict[int, Any]:
    """The first stop signal: finish the current step, checkpoint, stop. A second one stops at
    once (a checkpoint being written is abandoned, the previous one is kept)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is not None:
            raise Interrupted(signum)
        stop.signum = signum

    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
