"""What every training command shares: open the run directory, record the resolved config,
start Accelerate, run the recipe body, and end with run_finished or run_failed."""

from __future__ import annotations

import os
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdtui.config import Config
from kdtui.errors import Interrupted, KdtuiError
from kdtui.events import Event, Message, RunFailed, RunFinished, RunStarted
from kdtui.profile import to_toml
from kdtui.rundir import RunDir, check_new_run_path, default_run_name


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
        if resumed_from_step is None:
            resumed_from_step = self._resumed_step()
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
    if resume is not None:
        path = resume
    else:
        name = config.run.name or default_run_name(command)
        if accelerator.num_processes > 1:  # every process must agree on a timestamped name
            from accelerate.utils import broadcast_object_list

            name = broadcast_object_list([name])[0]
        path = Path(config.run.output_dir).expanduser() / name
        if accelerator.is_main_process:
            check_new_run_path(path, force=force)
    check_models_fit(command, config)
    run = RunDir(path, is_main=accelerator.is_main_process)
    run.listeners.extend(listeners)
    run.open(fresh=resume is None)  # locks the directory: from here on, `run.close()` unlocks it
    previous_handlers = _stop_on_signals()
    try:
        if resume is None:
            run.write_text(
                "config.toml",
                to_toml(
                    config,
                    header=f"kdtui {command}: resolved configuration of run {path.name}\n"
                    f"rerun: kdtui {command} --profile {path / 'config.toml'}",
                ),
            )
        for note in notes:
            run.log(Message(level="note", text=note))
        ctx = RunContext(command, config, run, accelerator, profile, resumed=resume is not None)
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
            if run.is_main:
                (path / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            raise
        finally:
            accelerator.wait_for_everyone()
        run.write_metrics(metrics)
        run.log(RunFinished(step=ctx.last_step, metrics=metrics))
    finally:
        _restore_signals(previous_handlers)
        run.close()
    return path, metrics


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


def load_resume_config(run_path: Path) -> Config:
    """The config a run was started with; --resume continues exactly that."""
    from kdtui.config import build_config
    from kdtui.profile import read_profile

    if not run_path.is_dir():
        raise KdtuiError(f"--resume {run_path}: no such run directory")
    config_file = run_path / "config.toml"
    if not config_file.is_file():
        raise KdtuiError(f"--resume {run_path}: not a kdtui run (no config.toml)")
    return build_config(read_profile(config_file))
