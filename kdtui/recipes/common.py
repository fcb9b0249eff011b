"""What every training command shares: open the run directory, record the resolved config,
start Accelerate, run the recipe body, and end with run_finished or run_failed; and the pieces
the recipes have in common (the TrainJob for a run, the end of its training: finish_training,
which restores the best model, saves it and computes the final test metrics; a teacher's
statistics as a source, the meta-teacher's prototype scores). Recipes
share through here, never import each other."""

from __future__ import annotations

import functools
import os
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtui.config import Config
from kdtui.errors import Interrupted, KdtuiError
from kdtui.events import Checkpoint, Event, Message, RunFailed, RunFinished, RunStarted, Step
from kdtui.profile import to_toml
from kdtui.rundir import (
    CONFIG_FILE,
    RunDir,
    RunLayout,
    check_new_run_path,
    default_run_name,
)

if TYPE_CHECKING:  # annotations only: the CLI imports this module, and stays quick to start
    from kdtui.data import MultiDomainData, Split
    from kdtui.engine.hooks import Hook
    from kdtui.engine.loop import TrainJob, TrainResult


@dataclass
class RunContext:
    command: str
    config: Config
    run: RunDir
    accelerator: Any
    profile: str
    resumed: bool
    last_step: int = 0
    started: bool = False  # training began (run_started was logged)

    def start(self, total_steps: int, resumed_from_step: int | None = None) -> None:
        """Log run_started. A recipe whose checkpoints are not in RUN/checkpoints (distill keeps
        one folder per stage) says where it resumes from."""
        self.started = True
        self.run.keep()
        self.run.release_events()  # a resumed run's notes, held until it is sure to train
        if resumed_from_step is None:
            resumed_from_step = self._resumed_step()
        if self.resumed:
            self.last_step = max(self.last_step, resumed_from_step)
        self.run.log(
            RunStarted(
                run=self.run.path.name,
                command=self.command,
                profile=self.profile,
                total_steps=total_steps,
                config=self.config.to_dict(),
                resumed_from_step=resumed_from_step if self.resumed else 0,
            )
        )

    def _resumed_step(self) -> int:
        if not self.resumed:
            return 0
        from kdtui.checkpoint import list_checkpoints

        found = list_checkpoints(self.run.checkpoints)
        return int(found[-1].name.removeprefix("step-")) if found else 0

    @property
    def is_main(self) -> bool:
        return self.run.is_main


def load_run_data(ctx: RunContext) -> Any:
    """The run's data, with anything the loader decided on the user's behalf (a held-out dev
    split) or noticed (a domain with one label) logged as a note: the terminal shows it."""
    from kdtui.data import load_data

    data = load_data(ctx.config.data)
    for note in data.notes:
        ctx.run.log(Message(level="note", text=note))
    return data


def make_accelerator(config: Config) -> Any:
    import torch
    from accelerate import Accelerator

    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    # Accelerate treats a torchrun launch without a GPU as multi-CPU (gloo) only when asked for
    # the CPU explicitly; otherwise every process believes it is alone.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # Mixed precision is applied by the loop's explicit autocast, so Accelerate stays at "no".
    return Accelerator(mixed_precision="no", cpu=multi_cpu)


def with_resolved_precision(config: Config, device: Any) -> Config:
    """CONFIG with train.precision "auto" replaced by what it means on DEVICE, so config.toml,
    run_started and a resume all say (and use) the precision that ran."""
    from kdtui.precision import resolve_precision

    precision = resolve_precision(config.train.precision, device)
    return replace(config, train=replace(config.train, precision=precision))


def execute(
    command: str,
    config: Config,
    body: Callable[[RunContext], dict[str, Any]],
    *,
    profile: str = "",
    resume: Path | None = None,
    force: bool = False,
    listeners: Sequence[Callable[[Event], None]] = (),
    notes: Sequence[str] = (),
) -> tuple[Path, dict[str, Any]]:
    """Run `body` inside a run directory; returns (run path, final metrics). `notes` are
    choices the command line made for the user (the model `prune` picked), logged first."""
    accelerator = make_accelerator(config)
    config = with_resolved_precision(config, accelerator.device)
    path = resume if resume is not None else _new_run_path(command, config, accelerator, force)
    check_models_fit(command, config)
    run = RunDir(path, is_main=accelerator.is_main_process)
    run.listeners.extend(listeners)
    run.open(fresh=resume is None)  # locks the directory: from here on, `run.close()` unlocks it
    if resume is not None:
        # A resume that fails before training (a moved data file, a Ctrl-C while it loads)
        # leaves the run as it was: its events are held until run_started and dropped if it
        # never comes. The terminal still hears them.
        run.hold_events()
    previous_handlers = _stop_on_signals()
    try:
        if resume is None:
            run.write_text(
                CONFIG_FILE,
                to_toml(
                    config,
                    header=f"kdtui {command}: resolved configuration of run {path.name}\n"
                    f"rerun: kdtui {command} --profile {run.config_file}",
                ),
            )
        for note in notes:
            run.log(Message(level="note", text=note))
        ctx = RunContext(command, config, run, accelerator, profile, resumed=resume is not None)
        run.listeners.append(functools.partial(_follow_step, ctx))
        try:
            metrics = body(ctx)
        except KdtuiError as e:
            run.log(RunFailed(step=ctx.last_step, error=str(e), kind="user"))
            if resume is None and not ctx.started:
                # A mistake caught before training began leaves nothing worth keeping; removing
                # the new directory lets the user fix the command and rerun it under the same
                # name.
                run.discard()
            raise
        except KeyboardInterrupt as e:
            stop = Interrupted(getattr(e, "signum", signal.SIGINT), path, command)
            run.log(
                RunFailed(
                    step=ctx.last_step,
                    error=f"interrupted by {stop.signal_name}; resume with --resume",
                    kind="interrupted",
                )
            )
            raise stop from None
        except Exception as e:
            run.log(
                RunFailed(step=ctx.last_step, error=f"{type(e).__name__}: {e}", kind="internal")
            )
            if run.is_main and (resume is None or ctx.started):
                run.error_log.write_text(traceback.format_exc(), encoding="utf-8")
                e.add_note(f"{ERROR_LOG_NOTE}{run.error_log}")
            raise
        finally:
            accelerator.wait_for_everyone()
        metrics = {**metrics, "timings": run.stopwatch.summary()}
        run.write_metrics(metrics)
        run.log(RunFinished(step=ctx.last_step, metrics=metrics))
    finally:
        _restore_signals(previous_handlers)
        run.close()
    return path, metrics


def _new_run_path(command: str, config: Config, accelerator: Any, force: bool) -> Path:
    """Where a new run goes: OUTPUT_DIR/run.name, or a timestamped name every process shares;
    checked before anything is written."""
    name = config.run.name or default_run_name(command)
    if accelerator.num_processes > 1:  # every process must agree on a timestamped name
        from accelerate.utils import broadcast_object_list

        name = broadcast_object_list([name])[0]
    path = Path(config.run.output_dir).expanduser() / name
    if accelerator.is_main_process:
        check_new_run_path(path, force=force)
    return path


# The note `execute` adds to an unexpected error whose traceback it wrote to the run's error.log:
# the CLI names that file (a failed resume writes none).
ERROR_LOG_NOTE = "traceback: "


def _follow_step(ctx: RunContext, event: Event) -> None:
    """The step the run has reached, by the events it logs: what run_failed records when the
    run stops before its recipe has a result (a signal, an error mid-training)."""
    step = getattr(event, "step", None)
    if isinstance(event, Step | Checkpoint) and isinstance(step, int):
        ctx.last_step = max(ctx.last_step, step)


# Signals that ask a run to stop: `kill` and schedulers send SIGTERM, a closed terminal SIGHUP.
# Ctrl-C (SIGINT) already raises KeyboardInterrupt; these now do the same, so the run logs that
# it was interrupted and unlocks its directory. The training loop replaces all three with a
# handler that first finishes the step and checkpoints.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _stop_on_signals() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def check_models_fit(command: str, config: Config) -> None:
    """data.max_length against the position limit of every model the command reads, before
    anything is written or loaded. A model whose config cannot be read here is left to the
    recipe, which reports that problem better."""
    from kdtui.models import check_max_length, declared_config

    names = {
        "teacher": [config.model.name],
        "prune": [config.prune.model, config.prune.teacher, config.prune.pretrained],
        "distill": [config.distill.teacher, config.distill.student],
    }.get(command, [])
    for name in names:
        declared = declared_config(name) if name else None
        if declared is not None:
            check_max_length(config.data.max_length, name, declared)


def train_job(ctx: RunContext, **fields: Any) -> Any:
    """The loop's TrainJob for this run: the run's train settings, run directory, accelerator,
    seed, checkpoints and best-model folder unless FIELDS says otherwise (a distillation stage
    has its own)."""
    from kdtui.engine.loop import TrainJob

    defaults: dict[str, Any] = {
        "cfg": ctx.config.train,
        "run": ctx.run,
        "accelerator": ctx.accelerator,
        "seed": ctx.config.run.seed,
        "checkpoint_dir": ctx.run.checkpoints,
        "best_dir": ctx.run.best,
    }
    return TrainJob(**{**defaults, **fields})


def finish_training(
    ctx: RunContext,
    job: TrainJob,
    *,
    tokenizer: Any,
    data: MultiDomainData,
    save: Callable[[Path], None],
    finalize: Callable[[TrainResult], dict[str, Any]] | None = None,
    where: RunLayout | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Every recipe's training, to its end: train JOB, load its best weights (by dev accuracy)
    back into the model and hooks, FINALIZE the model if the method needs it (pruning's final
    masks, compaction; returns metrics), SAVE it into WHERE's model folder (the run directory
    by default; written whole or not at all, by the main process), and the final metrics: best
    dev, test accuracy, and the test predictions beside the model. The recipe has logged
    run_started (ctx.start) before; returns (the loop's result, metrics)."""
    from kdtui.checkpoint import atomic_folder
    from kdtui.engine.loop import train

    result = train(job)
    ctx.last_step = job.step_offset + result.steps
    restore_best(ctx, job.model, job.hooks, job.best_dir)
    finalized = finalize(result) if finalize is not None else {}
    if ctx.is_main:
        with atomic_folder((where or ctx.run).model) as folder:
            save(folder)
    metrics = final_metrics(ctx, job.model, tokenizer, data, result, where)
    return result, {**metrics, **finalized}


def restore_best(
    ctx: RunContext, model: Any, hooks: Sequence[Hook] = (), best_dir: Path | None = None
) -> None:
    """Load the best weights (by dev accuracy) back into the model and hooks, if any were kept
    (in BEST_DIR: the run's `best/` by default)."""
    from kdtui.checkpoint import STATE_FILE, load_checkpoint

    ctx.accelerator.wait_for_everyone()
    best_dir = best_dir or ctx.run.best
    if (best_dir / STATE_FILE).is_file():
        best = load_checkpoint(best_dir)
        model.load_state_dict(best.model)
        for hook in hooks:
            hook.load_state_dict(best.train_state["hooks"].get(hook.name, {}))


def final_metrics(
    ctx: RunContext,
    model: Any,
    tokenizer: Any,
    data: MultiDomainData,
    result: Any,
    where: RunLayout | None = None,
) -> dict[str, Any]:
    """Best dev accuracy and the best model's test accuracy per domain. The test predictions go
    to WHERE's test_predictions.json (WHERE: the run directory by default; a distill student's
    folder), so a benchmark can compare two models example by example."""
    metrics: dict[str, Any] = {
        "steps": result.steps,
        "best_step": result.best_step,
        "best_dev": result.best_metric,
        "stopped_early": result.stopped_early,
    }
    if data.test is not None:
        with ctx.run.stopwatch.timed("test"):
            _test_predictions(ctx, model, tokenizer, data, metrics, where)
    return metrics


def _test_predictions(
    ctx: RunContext,
    model: Any,
    tokenizer: Any,
    data: MultiDomainData,
    metrics: dict[str, Any],
    where: RunLayout | None,
) -> None:
    from kdtui.checkpoint import write_json_atomic
    from kdtui.data import encode
    from kdtui.engine.evaluate import accuracy_of_predictions

    cfg = ctx.config
    assert data.test is not None
    test_enc = encode(data.test, tokenizer, cfg.data.max_length)
    predictions = predict(ctx, model, test_enc, tokenizer.pad_token_id or 0)
    metrics["test"] = accuracy_of_predictions(predictions, test_enc, data.domain_names)
    if ctx.is_main:
        write_json_atomic(
            (where or ctx.run).predictions_file,
            {
                "domains": [data.domain_names[d] for d in test_enc.domains],
                "labels": list(test_enc.labels),
                "predictions": predictions,
            },
        )


def predict(ctx: RunContext, model: Any, encoded: Any, pad_id: int) -> list[int]:
    """MODEL's predicted class of every example of ENCODED, in order, as the run computes
    (its device, precision and processes; every process gets them all)."""
    from accelerate.utils import gather_object

    from kdtui.engine.evaluate import predictions_in_order

    acc = ctx.accelerator
    return predictions_in_order(
        model,
        encoded,
        batch_size=ctx.config.train.eval_batch_size,
        pad_id=pad_id,
        device=acc.device,
        autocast=ctx.config.train.precision == "bf16",
        process_index=acc.process_index,
        num_processes=acc.num_processes,
        gather=gather_object if acc.num_processes > 1 else None,
    )


def source_metrics(ctx: RunContext, model: Any, dev: Any, pad_id: int) -> dict[str, float]:
    """The model's statistics as a source of distillation on the dev split DEV (encoded), at
    the KD temperature `distill.kd_temperature`: `source/margin`, `source/entropy`,
    `source/layer{l}_variance`, `source/layer{l}_cosine` (kdtui/methods/source_stats.py)."""
    from kdtui.methods.source_stats import logits_and_sentence_layers, source_statistics

    cfg = ctx.config
    with ctx.run.stopwatch.timed("source_stats"):
        logits, layers = logits_and_sentence_layers(
            model,
            dev,
            batch_size=cfg.train.eval_batch_size,
            pad_id=pad_id,
            device=ctx.accelerator.device,
            autocast=cfg.train.precision == "bf16",
        )
    if not len(logits):
        return {}
    stats = source_statistics(logits, layers, cfg.distill.kd_temperature)
    return {f"source/{name}": value for name, value in stats.items()}


def save_scores(path: Path, split: Split, scores: Any, domain_names: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    save_file(
        {
            "ids": torch.tensor(split.ids, dtype=torch.long),
            "domains": torch.tensor(split.domains, dtype=torch.long),
            "scores": scores.float().contiguous(),
        },
        str(path),
        metadata={"domains": ",".join(domain_names)},
    )


def load_scores(path: Path) -> dict[str, Any] | None:
    from safetensors.torch import load_file

    return load_file(str(path)) if path.is_file() else None
