"""The kdtui command line: a thin Typer layer over the recipes.

Heavy libraries (torch, transformers, datasets, accelerate) are imported inside the commands so
`kdtui --help` answers at once. Every command turns `KdtuiError` into one line on stderr and exit
code 2; an unexpected error exits 1 (with the traceback saved in the run's error.log).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from kdtui import __version__
from kdtui.config import CHOICES, default_of
from kdtui.errors import Interrupted, KdtuiError

app = typer.Typer(
    name="kdtui",
    help="Compress BERT-family models: Meta-KD distillation and CAP contrastive pruning.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rendering it with rich costs ~0.2 s of imports on every `--help`.
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])


def _key(key: str) -> str:
    """The end of an option's help: the config key it sets and kdtui's own default for it (a
    profile may set another), e.g. `[prune.criterion; default soft-movement]`."""
    value = default_of(*key.split("."))
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, float):
        shown = f"{value:g}"
    else:
        shown = str(value)
    return f"[{key}; default {shown}]" if shown else f"[{key}]"


def _one_of(key: str) -> str:
    """A metavar listing an option's allowed values: `weights|heads-ffn`."""
    return "|".join(c for c in CHOICES[key] if c)


# Options shared by every training command. Every option has a metavar: Typer's own would read
# `<str>` or `<list[str]>`.
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        metavar="PROFILE",
        help="Profile name in profiles/ (kdtui profiles), a TOML file, or a run directory.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override any key, e.g. train.lr=3e-5 (repeatable).",
    ),
]
ResumeOpt = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        metavar="RUN",
        help="Continue an interrupted run from its last checkpoint; a finished run is left as "
        "it is (exit 0).",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an existing run directory (a kdtui run only).")
]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name", metavar="NAME", help="Run directory name [run.name; default COMMAND-TIME]."
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output-dir",
        "-o",
        metavar="DIR",
        help=f"Where run directories go {_key('run.output_dir')}.",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        metavar="SOURCE",
        help="'synthetic', a csv/tsv/jsonl/json/parquet file, or a folder of train/dev/test files "
        f"{_key('data.source')}.",
    ),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", metavar="N", help=f"Run seed {_key('run.seed')}.")
]
EpochsOpt = Annotated[
    float | None,
    typer.Option(
        "--epochs",
        metavar="N",
        help="Training epochs; replaces a max_steps the profile sets (--max-steps, if also "
        f"given, wins) {_key('train.epochs')}.",
    ),
]
MaxStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-steps",
        metavar="N",
        help=f"Stop after N steps; 0 = by epochs {_key('train.max_steps')}.",
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        metavar="N",
        help=f"Global batch (all processes together) {_key('train.batch_size')}.",
    ),
]
LrOpt = Annotated[
    float | None,
    typer.Option("--lr", metavar="LR", help=f"Peak learning rate {_key('train.lr')}."),
]
Bf16Opt = Annotated[
    bool | None, typer.Option("--bf16/--no-bf16", help=f"bf16 autocast {_key('train.bf16')}.")
]
KeepCheckpointsOpt = Annotated[
    int | None,
    typer.Option(
        "--keep-checkpoints",
        metavar="N",
        help="Periodic checkpoints kept on disk (the newest N; the best model is kept apart) "
        f"{_key('train.keep_checkpoints')}.",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar, notes or warnings on stderr.")
]
DashboardOpt = Annotated[
    bool, typer.Option("--dashboard", help="Run in the background and follow it in the dashboard.")
]


def handles_errors(fn: F) -> F:
    """The one place where errors become messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KdtuiError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:
            stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
            with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
                typer.echo(stop.message(), err=True)
            raise typer.Exit(stop.exit_code) from None
        except typer.Exit:
            raise
        except Exception as e:
            if os.environ.get("KDTUI_DEBUG"):
                raise
            typer.echo(
                f"internal error: {type(e).__name__}: {e}\n"
                "(the traceback is in the run's error.log; set KDTUI_DEBUG=1 to see it here)",
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kdtui {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Compress BERT-family models: Meta-KD distillation and CAP contrastive pruning."""


def _run_training(
    command: str,
    body_path: str,
    *,
    profile: str | None,
    overrides: list[str] | None,
    options: dict[str, Any],
    resume: Path | None,
    force: bool,
    quiet: bool,
    dashboard: bool,
) -> None:
    from kdtui.profile import resolve

    notes: list[str] = []  # choices made here for the user, told on the terminal and logged
    if resume is not None:
        if profile or overrides or any(v is not None for v in options.values()):
            raise KdtuiError(
                "--resume continues a run with the configuration it was started with; "
                "drop --profile/--set/options, or start a new run"
            )
        from kdtui.recipes.common import resumed_run

        run = resumed_run(resume)
        config = run.config()
        if run.finished():
            # Resuming means "make sure this run completes": for a finished run that is already
            # true, so a retried job succeeds (exit 0) and the run's results stay as they are.
            if _is_main_process():
                typer.echo(
                    f"{resume} is finished: nothing to resume, nothing was changed", err=True
                )
                _print_summary(resume, run.metrics(), quiet=quiet)
            return
    else:
        config, _ = resolve(profile, overrides or [], options)
        if command in UPSTREAM:
            config, notes = _with_upstream_data(command, config, profile, overrides or [], options)
    if dashboard:
        _launch_with_dashboard(
            command,
            config,
            profile=profile,
            overrides=overrides or [],
            options=options,
            resume=resume,
            force=force,
        )
        return
    import importlib

    from kdtui.recipes.common import execute

    module_name, _, func_name = body_path.rpartition(".")
    body = getattr(importlib.import_module(module_name), func_name)
    main_process = _is_main_process()
    progress = _ProgressListener(
        enabled=main_process and not quiet and sys.stderr.isatty(),
        warnings=main_process and not quiet,
    )
    try:
        path, metrics = execute(
            command,
            config,
            body,
            profile=profile or "",
            resume=resume,
            force=force,
            listeners=[progress],
            notes=notes,
        )
    finally:
        progress.close()
    if main_process:
        _print_summary(path, metrics, quiet=quiet)


def _is_main_process() -> bool:
    # Under torchrun every process runs the command; only rank 0 talks to the terminal.
    return os.environ.get("RANK", "0") == "0"


def _max_steps_unless_epochs(max_steps: int | None, *epochs: float | None) -> int | None:
    """The max-steps option's value. An explicit --epochs means the run is measured in epochs,
    so it clears the profile's max-steps, which would otherwise win without a word; --max-steps
    given as well still wins."""
    if max_steps is None and any(e is not None for e in epochs):
        return 0
    return max_steps


# Commands that start from another run, and the key naming it.
UPSTREAM = {"distill": "distill.teacher", "prune": "prune.model"}


def _with_upstream_data(
    command: str, config: Any, profile: str | None, overrides: list[str], options: dict[str, Any]
) -> tuple[Any, list[str]]:
    """Train on the upstream run's data unless told otherwise: its [data] section becomes the
    base under the profile. `kdtui prune` without --model takes the newest finished teacher run
    (and says so: the returned notes)."""
    from kdtui.profile import resolve
    from kdtui.rundir import find_run, latest_finished_run

    section, key = UPSTREAM[command].split(".")
    upstream = getattr(getattr(config, section), key)
    notes = []
    if not upstream and command == "prune":
        found = latest_finished_run(Path(config.run.output_dir).expanduser(), "teacher")
        if found is None:
            raise KdtuiError(
                f"no model to prune: no finished teacher run in {config.run.output_dir}/; "
                "train one (kdtui teacher --profile quickstart) or give --model"
            )
        upstream = str(found)
        options = {**options, UPSTREAM[command]: upstream}
        notes.append(
            f"no --model given: pruning {found}, the newest finished teacher run in "
            f"{config.run.output_dir}/"
        )
    run = find_run(Path(upstream).expanduser())
    if run is None:
        return resolve(profile, overrides, options)[0], notes
    base = {"data": run.config_dict().get("data", {})}
    return resolve(profile, overrides, options, base=base)[0], notes


def _launch_with_dashboard(
    command: str,
    config: Any,
    *,
    profile: str | None,
    overrides: list[str],
    options: dict[str, Any],
    resume: Path | None,
    force: bool,
) -> None:
    """Start the run in a child process and follow it. The child is the command the user
    typed, less --dashboard: `python -m kdtui COMMAND --profile P --set ... --quiet`, with the
    run's name (and the upstream model, found once here) pinned so both sides agree on them.
    Nothing on this path imports torch: the dashboard must open at once."""
    from kdtui.dashboard.launch import launch_and_follow
    from kdtui.rundir import check_new_run_path, default_run_name

    if resume is not None:
        raise typer.Exit(launch_and_follow([command, "--resume", str(resume), "--quiet"], resume))
    name = config.run.name or default_run_name(command)
    run_dir = Path(config.run.output_dir).expanduser() / name
    check_new_run_path(run_dir, force=force)
    pinned = {**options, "run.name": name}
    if command in UPSTREAM:
        section, key = UPSTREAM[command].split(".")
        pinned[UPSTREAM[command]] = getattr(getattr(config, section), key) or None
    argv = [command, *(["--profile", profile] if profile else [])]
    for override in overrides:
        argv += ["--set", override]
    for key, value in pinned.items():  # explicit options come last: they win, as here
        if value is not None:
            argv += ["--set", f"{key}={_toml_literal(value)}"]
    argv += ["--quiet", *(["--force"] if force else [])]
    raise typer.Exit(launch_and_follow(argv, run_dir))


def _toml_literal(value: Any) -> str:
    """A value as `--set` reads it back (a TOML literal)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string uses the same escapes


class _ProgressListener:
    """Turns engine events into a Rich progress bar (step/total, loss, ETA) and eval lines on a
    terminal; notes, warnings and errors the run reports (a held-out dev split, a damaged
    checkpoint it skipped, emulated bf16) reach stderr whenever the bar is not silenced with
    --quiet, terminal or not. Info messages stay in events.jsonl and the dashboard."""

    def __init__(self, enabled: bool, warnings: bool = True, console: Any = None) -> None:
        self.enabled = enabled
        self.warnings = warnings
        self.console = console  # where the bar goes (default: stderr, beside the warnings)
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, event: Any) -> None:
        kind = event.type
        if kind == "message" and event.level != "info" and self.progress is None:
            if self.warnings:
                typer.echo(f"{event.level}: {event.text}", err=True)
            return
        if not self.enabled:
            return
        if kind == "run_started":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                transient=False,
                console=self.console or Console(stderr=True),
            )
            self.progress.start()
            start = max(0, event.resumed_from_step)
            self.task = self.progress.add_task(
                event.command, total=event.total_steps, completed=start, loss="-"
            )
        elif self.progress is None:
            return
        elif kind == "step":
            self.progress.update(
                self.task, completed=event.step, total=event.total_steps, loss=f"{event.loss:.4f}"
            )
        elif kind == "eval":
            parts = "  ".join(f"{k} {v:.3f}" for k, v in event.accuracy.items() if v == v)
            mark = "  (best)" if event.best else ""
            self.progress.console.print(f"step {event.step}  dev accuracy: {parts}{mark}")
        elif kind == "message" and event.level != "info":
            from rich.markup import escape

            style = "cyan" if event.level == "note" else "yellow"
            # escape: a message may quote a setting in brackets ([prune.model]), not markup
            self.progress.console.print(f"[{style}]{event.level}:[/] {escape(event.text)}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _print_summary(path: Path, metrics: dict[str, Any], *, quiet: bool) -> None:
    typer.echo(f"run: {path}")
    if quiet:
        return
    students = metrics.get("domains")
    if isinstance(students, dict) and len(students) > 1:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"students ({metrics.get('method')})")
        for column in ("domain", "best dev (own domain)", "test (own domain)", "model"):
            table.add_column(column)
        for domain, m in students.items():
            test = m.get("test", {}).get(domain)
            table.add_row(
                domain,
                f"{m['best_dev']:.4f}" if m.get("best_dev") is not None else "-",
                f"{test:.4f}" if test is not None else "-",
                str(path / m["model"]),
            )
        Console().print(table)
        return
    test = metrics.get("test")
    if isinstance(test, dict):
        typer.echo("test accuracy: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
    if metrics.get("best_dev") is not None:
        typer.echo(f"best dev accuracy: {metrics['best_dev']:.4f} (step {metrics['best_step']})")
    if metrics.get("sparsity") is not None:
        from kdtui.rundir import RunLayout

        typer.echo(
            f"sparsity: {metrics['sparsity']:.4f} "
            f"({'at most' if metrics.get('soft_mask') == 'threshold' else 'target'} "
            f"{metrics['target_sparsity']:.4f}); "
            f"model: {RunLayout(path).model}"
        )
    sparse = metrics.get("sparse_model")
    if isinstance(sparse, dict):
        typer.echo(
            f"compressed: {path / sparse['path']} ({sparse['bytes'] / 2**20:.1f} MiB, encoder "
            f"Linear weights at {sparse['encoder_linear_ratio']:.1%} of their dense size)"
        )


@app.command(short_help="Fine-tune a teacher on multi-domain data (mix, single or meta).")
@handles_errors
def teacher(
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            metavar=_one_of("teacher.method"),
            help="mix (all domains), single (one domain), meta (Meta-KD) "
            f"{_key('teacher.method')}.",
        ),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            metavar="DOMAIN",
            help="Train on this domain alone (implies --method single) [teacher.domain].",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="MODEL",
            help="'minilm' (bundled all-MiniLM-L6-v2), 'tiny' (random, for tests), a checkpoint "
            f"folder or hub name {_key('model.name')}.",
        ),
    ] = None,
    data: DataOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    bf16: Bf16Opt = None,
    keep_checkpoints: KeepCheckpointsOpt = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    output_dir: OutputOpt = None,
    resume: ResumeOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    dashboard: DashboardOpt = False,
) -> None:
    """Fine-tune a teacher on multi-domain data; writes RUN/model and RUN/metrics.json.

    In [brackets]: the config key an option sets and kdtui's own default (a --profile may
    set another)."""
    _run_training(
        "teacher",
        "kdtui.recipes.teacher.run_teacher",
        profile=profile,
        overrides=set_,
        options={
            "teacher.method": method or ("single" if domain else None),
            "teacher.domain": domain,
            "model.name": model,
            "data.source": data,
            "train.epochs": epochs,
            "train.max_steps": _max_steps_unless_epochs(max_steps, epochs),
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.bf16": bf16,
            "train.keep_checkpoints": keep_checkpoints,
            "run.seed": seed,
            "run.name": name,
            "run.output_dir": output_dir,
        },
        resume=resume,
        force=force,
        quiet=quiet,
        dashboard=dashboard,
    )


@app.command(short_help="Distil a small student for one domain from a (meta-)teacher.")
@handles_errors
def distill(
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            "-t",
            metavar="RUN",
            help="Teacher run directory or classifier folder [distill.teacher].",
        ),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            "-d",
            metavar="DOMAIN",
            help="Target domain, or 'all' for one student each [distill.domain].",
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            metavar=_one_of("distill.method"),
            help="Meta-KD or a baseline; default meta for a meta-teacher, else vanilla "
            "[distill.method].",
        ),
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(
            "--student",
            metavar="MODEL",
            help="Student checkpoint folder; default: built from the teacher [distill.student].",
        ),
    ] = None,
    student_layers: Annotated[
        int | None,
        typer.Option(
            "--student-layers",
            metavar="N",
            help=f"Student depth {_key('distill.student_layers')}.",
        ),
    ] = None,
    student_hidden: Annotated[
        int | None,
        typer.Option(
            "--student-hidden",
            metavar="N",
            help=f"Student width; 0 = the teacher's {_key('distill.student_hidden')}.",
        ),
    ] = None,
    student_init: Annotated[
        str | None,
        typer.Option(
            "--student-init",
            metavar=_one_of("distill.student_init"),
            help="teacher (copy evenly spaced teacher layers) or random "
            f"{_key('distill.student_init')}.",
        ),
    ] = None,
    train_fraction: Annotated[
        float | None,
        typer.Option(
            "--train-fraction",
            metavar="F",
            help=f"Keep this share of the training data {_key('data.train_fraction')}.",
        ),
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            "--epochs",
            metavar="N",
            help="Epochs of stage 2 (prediction); replaces a distill.max_steps the profile sets "
            f"{_key('distill.prediction_epochs')}.",
        ),
    ] = None,
    intermediate_epochs: Annotated[
        float | None,
        typer.Option(
            "--intermediate-epochs",
            metavar="N",
            help="Epochs of stage 1 (intermediate layers); 0 skips it "
            f"{_key('distill.intermediate_epochs')}.",
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps",
            metavar="N",
            help=f"Stop each stage after N steps; 0 = by epochs {_key('distill.max_steps')}.",
        ),
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    bf16: Bf16Opt = None,
    keep_checkpoints: KeepCheckpointsOpt = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    output_dir: OutputOpt = None,
    resume: ResumeOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    dashboard: DashboardOpt = False,
) -> None:
    """Distil a small single-domain student from a (meta-)teacher (Meta-KD or baselines).

    In [brackets]: the config key an option sets and kdtui's own default (a --profile may
    set another)."""
    _run_training(
        "distill",
        "kdtui.recipes.distill.run_distill",
        profile=profile,
        overrides=set_,
        options={
            "distill.teacher": teacher,
            "distill.domain": domain,
            "distill.method": method,
            "distill.student": student,
            "distill.student_layers": student_layers,
            "distill.student_hidden": student_hidden,
            "distill.student_init": student_init,
            "data.train_fraction": train_fraction,
            "distill.prediction_epochs": epochs,
            "distill.intermediate_epochs": intermediate_epochs,
            "distill.max_steps": _max_steps_unless_epochs(max_steps, epochs, intermediate_epochs),
            "data.source": data,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.bf16": bf16,
            "train.keep_checkpoints": keep_checkpoints,
            "run.seed": seed,
            "run.name": name,
            "run.output_dir": output_dir,
        },
        resume=resume,
        force=force,
        quiet=quiet,
        dashboard=dashboard,
    )


@app.command(short_help="Prune a fine-tuned model with CAP (contrastive pruning).")
@handles_errors
def prune(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="RUN",
            help="Teacher run directory or classifier folder to prune; default: the newest "
            "finished teacher run in the output dir [prune.model].",
        ),
    ] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(
            "--sparsity",
            metavar="F",
            help="Fraction of encoder weights removed, in [0, 1) (0.97, not 97); reached "
            "exactly, except with --soft-mask threshold, where it caps each matrix "
            f"{_key('prune.sparsity')}.",
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            metavar=_one_of("prune.start"),
            help="finetuned (prune the model, which is also the teacher) or pretrained (prune "
            f"the pre-trained weights, learning from the model; the authors') "
            f"{_key('prune.start')}.",
        ),
    ] = None,
    score_init: Annotated[
        str | None,
        typer.Option(
            "--score-init",
            metavar=_one_of("prune.score_init"),
            help="Movement scores start at magnitude (|W|), constant (0) or auto: magnitude "
            f"from a fine-tuned model, constant from pretrained {_key('prune.score_init')}.",
        ),
    ] = None,
    soft_mask: Annotated[
        str | None,
        typer.Option(
            "--soft-mask",
            metavar=_one_of("prune.soft_mask"),
            help="Soft movement: calibrated (top-k, exact sparsity) or threshold (the authors': "
            f"σ(S) > τ, sparsity follows from λ) {_key('prune.soft_mask')}.",
        ),
    ] = None,
    structure: Annotated[
        str | None,
        typer.Option(
            "--structure",
            metavar=_one_of("prune.structure"),
            help="weights (unstructured) or heads-ffn (whole heads and FFN neurons) "
            f"{_key('prune.structure')}.",
        ),
    ] = None,
    criterion: Annotated[
        str | None,
        typer.Option(
            "--criterion",
            metavar=_one_of("prune.criterion"),
            help=f"What ranks weights (--structure weights) {_key('prune.criterion')}.",
        ),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            metavar=_one_of("prune.scope"),
            help=f"matrix (each Linear alike) or global ranking {_key('prune.scope')}.",
        ),
    ] = None,
    cap: Annotated[
        bool | None,
        typer.Option(
            "--cap/--no-cap", help=f"CAP's contrastive modules on top {_key('prune.cap')}."
        ),
    ] = None,
    prc: Annotated[
        bool | None,
        typer.Option("--prc/--no-prc", help=f"Pre-trained model module {_key('prune.prc')}."),
    ] = None,
    snc: Annotated[
        bool | None, typer.Option("--snc/--no-snc", help=f"Snapshot module {_key('prune.snc')}.")
    ] = None,
    fic: Annotated[
        bool | None,
        typer.Option("--fic/--no-fic", help=f"Fine-tuned model module {_key('prune.fic')}."),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            metavar="MODEL",
            help="KD teacher; default: the model itself, before pruning [prune.teacher].",
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            metavar="MODEL",
            help="PrC's pre-trained model; default: the model the teacher run started from "
            "[prune.pretrained].",
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            metavar="T",
            help=f"Contrastive temperature τ {_key('prune.temperature')}.",
        ),
    ] = None,
    w_unsup: Annotated[
        float | None,
        typer.Option(
            "--w-unsup",
            metavar="W",
            help="Weight of each unsupervised contrastive term; default (< 0): 0.1 weights, 0.3 "
            "heads-ffn [prune.w_unsup].",
        ),
    ] = None,
    w_sup: Annotated[
        float | None,
        typer.Option(
            "--w-sup",
            metavar="W",
            help="Weight of each supervised contrastive term; default (< 0): 10 weights, 3 "
            "heads-ffn [prune.w_sup].",
        ),
    ] = None,
    negatives: Annotated[
        int | None,
        typer.Option(
            "--negatives",
            metavar="N",
            help=f"Bank vectors drawn per batch {_key('prune.num_negatives')}.",
        ),
    ] = None,
    pooling: Annotated[
        str | None,
        typer.Option(
            "--pooling",
            metavar=_one_of("prune.pooling"),
            help=f"Sentence vector: cls (pooler) or mean {_key('prune.pooling')}.",
        ),
    ] = None,
    kd_weight: Annotated[
        float | None,
        typer.Option("--kd-weight", metavar="W", help=f"Weight of KD {_key('prune.kd_weight')}."),
    ] = None,
    kd_temperature: Annotated[
        float | None,
        typer.Option(
            "--kd-temperature",
            metavar="T",
            help="KD temperature; 0 = 2 for weights, 1 for heads-ffn "
            f"{_key('prune.kd_temperature')}.",
        ),
    ] = None,
    ce_weight: Annotated[
        float | None,
        typer.Option("--ce-weight", metavar="W", help=f"Weight of CE {_key('prune.ce_weight')}."),
    ] = None,
    prune_warmup: Annotated[
        float | None,
        typer.Option(
            "--prune-warmup",
            metavar="F",
            help=f"Share of steps before pruning {_key('prune.warmup_ratio')}.",
        ),
    ] = None,
    prune_cooldown: Annotated[
        float | None,
        typer.Option(
            "--prune-cooldown",
            metavar="F",
            help=f"Share of steps at the final sparsity {_key('prune.cooldown_ratio')}.",
        ),
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    bf16: Bf16Opt = None,
    keep_checkpoints: KeepCheckpointsOpt = None,
    seed: SeedOpt = None,
    name: NameOpt = None,
    output_dir: OutputOpt = None,
    resume: ResumeOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    dashboard: DashboardOpt = False,
) -> None:
    """Prune a fine-tuned model with CAP (contrastive pruning) while distilling from it.

    Writes RUN/model (dense, zeros in place; heads-ffn: heads and neurons removed) and, for
    unstructured pruning, RUN/model-sparse (compressed). Data: the teacher run's, by default.

    In [brackets]: the config key an option sets and kdtui's own default (a --profile may
    set another)."""
    _run_training(
        "prune",
        "kdtui.recipes.prune.run_prune",
        profile=profile,
        overrides=set_,
        options={
            "prune.model": model,
            "prune.sparsity": sparsity,
            "prune.start": start,
            "prune.score_init": score_init,
            "prune.soft_mask": soft_mask,
            "prune.structure": structure,
            "prune.criterion": criterion,
            "prune.scope": scope,
            "prune.cap": cap,
            "prune.prc": prc,
            "prune.snc": snc,
            "prune.fic": fic,
            "prune.teacher": teacher,
            "prune.pretrained": pretrained,
            "prune.temperature": temperature,
            "prune.w_unsup": w_unsup,
            "prune.w_sup": w_sup,
            "prune.num_negatives": negatives,
            "prune.pooling": pooling,
            "prune.kd_weight": kd_weight,
            "prune.kd_temperature": kd_temperature,
            "prune.ce_weight": ce_weight,
            "prune.warmup_ratio": prune_warmup,
            "prune.cooldown_ratio": prune_cooldown,
            "data.source": data,
            "train.epochs": epochs,
            "train.max_steps": _max_steps_unless_epochs(max_steps, epochs),
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.bf16": bf16,
            "train.keep_checkpoints": keep_checkpoints,
            "run.seed": seed,
            "run.name": name,
            "run.output_dir": output_dir,
        },
        resume=resume,
        force=force,
        quiet=quiet,
        dashboard=dashboard,
    )


@app.command(short_help="Accuracy per domain, size and latency of models, side by side.")
@handles_errors
def evaluate(
    models: Annotated[
        list[str],
        # Described in the docstring: Typer's own argument help adds a `<list[str]>`.
        typer.Argument(metavar="MODEL", hidden=True),
    ],
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split", metavar="train|dev|test", help=f"Split to score {_key('evaluate.split')}."
        ),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Also write the report as JSON here."),
    ] = None,
    sparse_kernels: Annotated[
        str | None,
        typer.Option(
            "--sparse-kernels",
            metavar=_one_of("evaluate.sparse_kernels"),
            help="Unstructured models: auto (CSR where measured faster), all, off "
            f"{_key('evaluate.sparse_kernels')}.",
        ),
    ] = None,
) -> None:
    """Accuracy per domain, parameters, size on disk and latency of one or more models.

    MODEL: a run directory, a model folder or an ONNX export folder (kdtui export; run under
    ONNX Runtime); several are shown side by side. Unstructured models are timed with dense and
    with sparse kernels. Data: the first run directory's data config, unless
    --profile/--set/--data is given."""
    from kdtui.profile import resolve

    options = {
        "data.source": data,
        "evaluate.split": split,
        "evaluate.sparse_kernels": sparse_kernels,
    }
    if profile is None:
        profile = _data_profile_of(models[0])
    config, _ = resolve(profile, set_ or [], options)
    from kdtui.recipes.evaluate import evaluate_models

    report = evaluate_models(models, config)
    _print_report(report)
    if json_path is not None:
        import json

        try:
            json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise KdtuiError(f"cannot write {json_path}: {e.strerror}") from None


def _data_profile_of(model: str) -> str | None:
    """The config.toml of the run a model comes from: the run directory itself, or for an ONNX
    export (its folder or one of its files) the run it was exported from."""
    from kdtui.rundir import find_run

    path = Path(model).expanduser()
    if (run := find_run(path)) is not None:
        return str(run.config_file)
    folder = path.parent if path.suffix == ".onnx" else path
    info = folder / "kdtui_export.json"
    if info.is_file():
        import json

        try:
            source = Path(json.loads(info.read_text(encoding="utf-8")).get("source", ""))
        except (OSError, ValueError, AttributeError):
            return None
        if (run := find_run(source)) is not None:
            return str(run.config_file)
    return None


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    models = report["models"]
    table = Table(
        title=f"{report['split']} split of {report['data']} ({report['examples']} examples)"
    )
    table.add_column("")
    for m in models:
        table.add_column(m["model"], justify="right")
    for domain in [*report["domains"], "all"]:
        table.add_row(
            f"accuracy {domain}",
            *(f"{m['accuracy'][domain]:.4f}" if domain in m["accuracy"] else "-" for m in models),
        )
    table.add_row("parameters", *(f"{m['parameters']:,}" for m in models))
    table.add_row("non-zero parameters", *(f"{m['nonzero_parameters']:,}" for m in models))
    if any(m.get("encoder_sparsity") for m in models):
        table.add_row(
            "encoder Linear sparsity",
            *(
                f"{m['encoder_sparsity']:.1%}" if m.get("encoder_sparsity") is not None else "-"
                for m in models
            ),
        )
    table.add_row("size on disk", *(f"{m['size_bytes'] / 2**20:.1f} MiB" for m in models))
    if any("size_files" in m for m in models):
        table.add_row("weights file", *(", ".join(m.get("size_files", [])) for m in models))
    table.add_row("runtime", *(m.get("runtime", "pytorch") for m in models))
    for i, row in enumerate(models[0]["latency"]):
        label = f"latency b{row['batch']} len{row['length']}"
        table.add_row(label, *(f"{m['latency'][i]['ms']:.1f} ms" for m in models))
    sparse = [m.get("sparse_kernels", {}) for m in models]
    if any("latency" in s for s in sparse):
        for i, row in enumerate(models[0]["latency"]):
            label = f"latency b{row['batch']} len{row['length']}, sparse kernels"
            table.add_row(
                label,
                *(f"{s['latency'][i]['ms']:.1f} ms" if "latency" in s else "-" for s in sparse),
            )
        table.add_row(
            "accuracy all, sparse kernels",
            *(f"{s['accuracy']['all']:.4f}" if "accuracy" in s else "-" for s in sparse),
        )
    console.print(table)
    console.print(f"latency: median forward time on {report['threads']} CPU threads")
    for m, s in zip(models, sparse, strict=True):
        if s:
            line = f"sparse kernels ({m['model']}, {s['mode']}): {s['summary']}"
            if "max_logit_diff" in s:
                line += f"; max |logit difference| to dense kernels {s['max_logit_diff']:.2e}"
            console.print(line)
    for m in models:
        for note in m["notes"]:
            console.print(f"[yellow]note[/] ({m['model']}): {note}")


@app.command()
@handles_errors
def export(
    model: Annotated[str, typer.Argument(help="A run directory or model folder.")],
    format_: Annotated[
        str, typer.Option("--format", metavar="onnx", help="Export format [default onnx].")
    ] = "onnx",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Export folder [default RUN/onnx, or FOLDER-onnx].",
        ),
    ] = None,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write int8 weights (dynamic quantisation).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export.")] = False,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Split the export is checked on [evaluate.split].")
    ] = None,
) -> None:
    """Export a model for ONNX Runtime, with its tokenizer, checked against kdtui's outputs.

    Needs the export extra: pip install -c constraints.txt -e '.[export]'. The export's logits
    are compared with PyTorch's on the split (data as for evaluate: the run's, unless
    --profile/--set/--data is given)."""
    from kdtui.export import FORMATS, default_output, export_model
    from kdtui.profile import resolve

    if format_ not in FORMATS:
        raise KdtuiError(f"--format must be one of {', '.join(FORMATS)}, got '{format_}'")
    options = {"data.source": data, "evaluate.split": split}
    if profile is None:
        profile = _data_profile_of(model)
    config, _ = resolve(profile, set_ or [], options)
    target = output if output is not None else default_output(model)
    info = export_model(model, target, config, int8=int8, force=force)
    check = info["check"]
    typer.echo(f"exported {model} to {target} (inputs: {', '.join(info['inputs'])})")
    for name in ("model.onnx", "model.int8.onnx"):
        if name in check:
            c = check[name]
            typer.echo(
                f"  {name}: {c['bytes'] / 2**20:.1f} MiB; on {check['examples']} "
                f"{check['split']} examples: max |logit difference| to kdtui "
                f"{c['max_logit_diff']:.2e}, same predictions {c['same_predictions']:.2%}, "
                f"accuracy {c['accuracy']:.4f} "
                f"(kdtui {c['pytorch_accuracy']:.4f})"
            )


@app.command()
@handles_errors
def profiles() -> None:
    """List the shipped profiles and what each is for."""
    from kdtui.profile import shipped_profiles

    for info in shipped_profiles():
        typer.echo(f"{info.name:<16} {info.purpose}")


TRAINING_COMMANDS = ("teacher", "distill", "prune")


@app.command(short_help="Follow a run live, replay a finished one, or browse the runs.")
@handles_errors
def dashboard(
    target: Annotated[
        str | None,
        # Described in the docstring: Typer's own argument help adds a `<str>`.
        typer.Argument(metavar="RUN_DIR|COMMAND", hidden=True),
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    name: NameOpt = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir",
            "-o",
            metavar="DIR",
            help="The runs folder the browser lists [runs]; with COMMAND, where the run goes.",
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Follow a run live or replay a finished one; with no RUN_DIR, browse the runs folder.

    RUN_DIR: a run directory (followed live; it may not exist yet) or a folder of runs
    (browsed). COMMAND: teacher, distill or prune: `kdtui dashboard --profile smoke teacher`
    starts the command in the background and follows it (as `kdtui teacher --profile smoke
    --dashboard` does); quitting asks whether to stop it."""
    if target in TRAINING_COMMANDS:
        _run_training(
            target,
            "",
            profile=profile,
            overrides=set_,
            options={"run.name": name, "run.output_dir": output_dir},
            resume=None,
            force=force,
            quiet=True,
            dashboard=True,
        )
        return
    if profile or set_ or name or force:
        raise KdtuiError(
            "--profile, --set, --name and --force start a run: name the command too, "
            "e.g. kdtui dashboard --profile smoke teacher"
        )
    from kdtui.dashboard.app import create_app
    from kdtui.dashboard.runs import check_run_target, is_runs_folder, resolve_run_path

    root = Path(output_dir or "runs").expanduser()
    run: Path | None = None
    if target is not None:
        run = resolve_run_path(Path(target).expanduser())
        check_run_target(run)
        if is_runs_folder(run):
            run, root = None, run
    from kdtui.dashboard import plain

    if not plain.has_terminal():
        # Redirected, piped, cron, CI: the run as it stands in plain text, then exit.
        typer.echo(plain.run_summary(run) if run is not None else plain.runs_summary(root))
        return
    create_app(run, runs_root=root).run()


def main() -> None:
    app()
