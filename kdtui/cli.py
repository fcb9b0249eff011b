"""The kdtui command line: argument parsing, the error boundary, and what the terminal shows.

Every command turns `KdtuiError` into one line on stderr and exit code 2; an unexpected error
exits 1 (with the traceback saved in the run's error.log). The config a command runs with comes
from `kdtui.resolver`; what the terminal shows from `kdtui.terminal`. Heavy libraries (torch,
transformers, datasets, accelerate) are imported inside the commands so `kdtui --help` answers
at once.

Which config keys have a flag: a flag names what a run does, never how a method is tuned. Every
key with a fixed set of values (a method, criterion, structure, ...) or on/off in the command's
own section; the run's inputs (models, data, domain, share of the training data), its target
(sparsity, the student's shape) and budget (epochs, steps, batch, learning rate, precision,
checkpoints kept); and its seed, name and output folder. Numbers that tune a method (loss
weights, temperatures, score learning rate, schedule shares, bank sizes) are set in a profile or
with `--set section.key=value`. Each flag is declared once, with its key (`Flag`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from kdtui import __version__
from kdtui.budgets import (
    PRUNE_LR,
    PRUNE_LR_WHY,
    STUDENT_BUDGET_WHY,
    STUDENT_LR,
    TEACHER_EPOCHS,
    TEACHER_EPOCHS_WHY,
    TEACHER_MIN_STEPS,
    describe_budgets,
)
from kdtui.config import CHOICES, Config, default_of, type_of
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
TRAINING_COMMANDS = ("teacher", "distill", "prune")


# -- flags: one declaration per config key ------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """A command-line option that sets one config key. Its type comes from the key; its help
    ends with the key and kdtui's own default, e.g. `[prune.criterion; default soft-movement]`
    (a profile may set another)."""

    key: str
    names: tuple[str, ...]  # "--sparsity"; an on/off key gets "--cap/--no-cap" from "--cap"
    help: str
    metavar: str = ""  # default: the key's values (a|b) for a choice, else N or F by type
    default: str = ""  # the default shown instead of the key's own value
    # An on/off option for a key of two named values: (value for --x, value for --no-x).
    switch: tuple[str, str] | None = None

    @property
    def param(self) -> str:
        return self.key.replace(".", "__")

    def value(self, given: Any) -> Any:
        """The key's value for what the command line gave (None: not given)."""
        if self.switch is None or given is None:
            return given
        return self.switch[0] if given else self.switch[1]

    def option(self) -> Any:
        kind = type_of(*self.key.split("."))
        if kind is bool or self.switch is not None:
            names = [f"{self.names[0]}/--no-{self.names[0].removeprefix('--')}", *self.names[1:]]
            return Annotated[bool | None, typer.Option(*names, help=self._help())]
        metavar = self.metavar or (
            "|".join(c for c in CHOICES[self.key] if c)
            if self.key in CHOICES
            else {int: "N", float: "F"}.get(kind, "VALUE")
        )
        return Annotated[kind | None, typer.Option(*self.names, metavar=metavar, help=self._help())]

    def _help(self) -> str:
        value = default_of(*self.key.split("."))
        if self.default:
            shown = self.default
        elif isinstance(value, bool):
            shown = "on" if value else "off"
        elif isinstance(value, float):
            shown = f"{value:g}"
        else:
            shown = str(value) or self.default
        suffix = f"; default {shown}" if shown else ""
        return f"{self.help} [{self.key}{suffix}]"


def with_flags(*flags: Flag) -> Callable[[F], F]:
    """Give a command one option per flag, ahead of its own parameters; the command receives
    the values given as `options` ({key: value}, None where not given)."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)  # the Annotated options, not text
        own = [p for p in signature.parameters.values() if p.name != "options"]
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = [
            inspect.Parameter(f.param, keyword, default=None, annotation=f.option()) for f in flags
        ]
        params += [p.replace(kind=keyword) for p in own]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            options = {f.key: f.value(kwargs.pop(f.param)) for f in flags}
            return fn(options=options, **kwargs)

        del command.__wrapped__  # Typer reads the signature below, not fn's
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate


DATA = Flag(
    "data.source",
    ("--data",),
    "'synthetic', a csv/tsv/jsonl/json/parquet file, or a folder of train/dev/test files",
    metavar="SOURCE",
)
SPLIT = Flag("evaluate.split", ("--split",), "Split to score", metavar="train|dev|test")
# Every training command.
TRAINING = (
    DATA,
    Flag("data.train_fraction", ("--train-fraction",), "Keep this share of the training data"),
    Flag("train.batch_size", ("--batch-size",), "Global batch (all processes together)"),
    Flag("train.lr", ("--lr",), "Peak learning rate", metavar="LR"),
    Flag(
        "train.precision",
        ("--bf16",),
        "bf16 autocast (--no-bf16: fp32); by default bf16 where the hardware computes it "
        "natively (AVX512-BF16 or AMX CPUs, CUDA with bf16), else fp32",
        switch=("bf16", "fp32"),
    ),
    Flag(
        "train.keep_checkpoints",
        ("--keep-checkpoints",),
        "Periodic checkpoints kept on disk (the newest N; the best model is kept apart)",
    ),
    Flag("run.seed", ("--seed",), "Run seed"),
    Flag("run.name", ("--name",), "Run directory name", metavar="NAME", default="COMMAND-TIME"),
    Flag("run.output_dir", ("--output-dir", "-o"), "Where run directories go", metavar="DIR"),
)
# The budget of teacher and prune (distill has one per stage).
EPOCHS = (
    Flag(
        "train.epochs",
        ("--epochs",),
        "Training epochs; replaces a max_steps the profile sets (--max-steps, if also given, wins)",
        metavar="N",
    ),
    Flag("train.max_steps", ("--max-steps",), "Stop after N steps; 0 = by epochs"),
)
# Prune's budget depends on the sparsity (kdtui/budgets.py), so its default is that table.
PRUNE_EPOCHS = (
    replace(
        EPOCHS[0],
        help=f"{EPOCHS[0].help}. A shorter budget than the default gets a note",
        default=f"by sparsity, {describe_budgets()}",
    ),
    EPOCHS[1],
)
TEACHER_BUDGET = (
    replace(
        EPOCHS[0],
        default=f"{TEACHER_EPOCHS:g} and at least {TEACHER_MIN_STEPS} steps, from "
        f"{TEACHER_EPOCHS_WHY}",
    ),
    EPOCHS[1],
)

TEACHER = (
    Flag("teacher.method", ("--method",), "mix (all domains), single (one domain), meta (Meta-KD)"),
    Flag(
        "teacher.domain",
        ("--domain",),
        "Train on this domain alone (implies --method single)",
        metavar="DOMAIN",
    ),
    Flag(
        "model.name",
        ("--model", "-m"),
        "'minilm' (bundled all-MiniLM-L6-v2), 'tiny' (random, for tests), a checkpoint folder "
        "or hub name",
        metavar="MODEL",
    ),
    Flag("teacher.prototype", ("--prototype",), "Meta-KD prototypes: per class or per domain"),
    Flag(
        "teacher.score_normalization",
        ("--score-normalization",),
        "Meta-KD prototype scores as weights: clamped at 0, then per-domain mean 1, or clamped",
    ),
    Flag(
        "teacher.domain_loss",
        ("--domain-loss",),
        "Meta-KD meta-teacher's domain term: a confusion game against a head learning the true "
        "domains, or the authors' cross-entropy to shuffled domain labels",
    ),
)

DISTILL = (
    Flag(
        "distill.teacher",
        ("--teacher", "-t"),
        "Teacher run directory or classifier folder",
        metavar="RUN",
    ),
    Flag(
        "distill.domain",
        ("--domain", "-d"),
        "Target domain, or 'all' for one student each",
        metavar="DOMAIN",
    ),
    Flag(
        "distill.method",
        ("--method",),
        "Meta-KD or a baseline",
        default="meta for a meta-teacher, else vanilla",
    ),
    Flag(
        "distill.student",
        ("--student",),
        "Student checkpoint folder",
        metavar="MODEL",
        default="built from the teacher",
    ),
    Flag("distill.student_layers", ("--student-layers",), "Student depth"),
    Flag("distill.student_hidden", ("--student-hidden",), "Student width; 0 = the teacher's"),
    Flag(
        "distill.student_init",
        ("--student-init",),
        "teacher (copy evenly spaced teacher layers) or random",
    ),
    Flag(
        "distill.attention",
        ("--attention",),
        "Stage 1 matches attention probabilities or pre-softmax scores",
    ),
    Flag(
        "distill.expertise_weights",
        ("--expertise-weights",),
        "Meta-KD weighs each example by its prototype score λ_i; off: every λ_i = 1 (an "
        "ablation that keeps the domain term)",
    ),
    Flag(
        "distill.cache_teacher_logits",
        ("--cache-teacher-logits",),
        "Stage 2 reads the teacher's logits from a cache",
    ),
    Flag(
        "distill.prediction_epochs",
        ("--epochs",),
        "Epochs of stage 2 (prediction); replaces a distill.max_steps the profile sets",
        metavar="N",
    ),
    Flag(
        "distill.intermediate_epochs",
        ("--intermediate-epochs",),
        "Epochs of stage 1 (intermediate layers); 0 skips it",
        metavar="N",
    ),
    Flag("distill.max_steps", ("--max-steps",), "Stop each stage after N steps; 0 = by epochs"),
)

PRUNE = (
    Flag(
        "prune.model",
        ("--model", "-m"),
        "Teacher run directory or classifier folder to prune",
        metavar="RUN",
        default="the newest finished teacher run in the output dir",
    ),
    Flag(
        "prune.sparsity",
        ("--sparsity",),
        "Fraction of encoder weights removed, in [0, 1) (0.97, not 97); reached exactly, "
        "except with --soft-mask threshold, where it caps each matrix",
    ),
    Flag(
        "prune.start",
        ("--start",),
        "finetuned (prune the model, which is also the teacher) or pretrained (prune the "
        "pre-trained weights, learning from the model; the authors')",
    ),
    Flag(
        "prune.score_init",
        ("--score-init",),
        "Movement scores start at magnitude (|W|), constant (0) or auto: magnitude from a "
        "fine-tuned model, constant from pretrained",
    ),
    Flag(
        "prune.soft_mask",
        ("--soft-mask",),
        "Soft movement: calibrated (top-k, exact sparsity) or threshold (the authors': σ(S) > τ, "
        "sparsity follows from λ)",
    ),
    Flag(
        "prune.structure",
        ("--structure",),
        "weights (unstructured) or heads-ffn (whole heads and FFN neurons)",
    ),
    Flag("prune.criterion", ("--criterion",), "What ranks weights (--structure weights)"),
    Flag("prune.scope", ("--scope",), "matrix (each Linear alike) or global ranking"),
    Flag("prune.cap", ("--cap",), "CAP's contrastive modules on top"),
    Flag("prune.prc", ("--prc",), "Pre-trained model module"),
    Flag("prune.snc", ("--snc",), "Snapshot module"),
    Flag("prune.fic", ("--fic",), "Fine-tuned model module"),
    Flag("prune.pooling", ("--pooling",), "Sentence vector: cls (pooler) or mean"),
    Flag(
        "prune.teacher",
        ("--teacher",),
        "KD teacher",
        metavar="MODEL",
        default="the model itself, before pruning",
    ),
    Flag(
        "prune.pretrained",
        ("--pretrained",),
        "PrC's pre-trained model",
        metavar="MODEL",
        default="the model the teacher run started from",
    ),
    Flag(
        "prune.sparse_values",
        ("--sparse-values",),
        "Values of the compressed copy (float16 halves it, rounding)",
    ),
    Flag("prune.cache", ("--cache",), "Reuse teacher logits and bank vectors across runs"),
)

EVALUATE = (
    DATA,
    SPLIT,
    Flag(
        "evaluate.sparse_kernels",
        ("--sparse-kernels",),
        "Unstructured models: auto (CSR where measured faster), all, off",
    ),
)

OPTIMIZE = Flag(
    "export.optimize",
    ("--optimize",),
    "Also write model.opt.onnx, fused by ONNX Runtime's transformer optimiser: auto (where "
    "attention fuses in every layer), transformer (always) or none",
)


# -- options that set no config key ---------------------------------------------------------------

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
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar, notes or warnings on stderr.")
]
DashboardOpt = Annotated[
    bool, typer.Option("--dashboard", help="Run in the background and follow it in the dashboard.")
]
BRACKETS = (
    "In [brackets]: the config key an option sets and kdtui's own default (a --profile may set "
    "another). Loss weights, temperatures and schedules: --set section.key=value."
)


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
            from kdtui.recipes.common import ERROR_LOG_NOTE

            logs = [n for n in getattr(e, "__notes__", []) if n.startswith(ERROR_LOG_NOTE)]
            where = (
                f"the traceback is in {logs[0].removeprefix(ERROR_LOG_NOTE)}; set KDTUI_DEBUG=1 "
                "to see it here"
                if logs
                else "set KDTUI_DEBUG=1 to see the traceback"
            )
            typer.echo(f"internal error: {type(e).__name__}: {e}\n({where})", err=True)
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


# -- training commands ----------------------------------------------------------------------------


def training_command(name: str, flags: tuple[Flag, ...], short_help: str, doc: str) -> None:
    """Register `kdtui NAME`: FLAGS, then the options every training command has."""

    @with_flags(*flags)
    def command(
        options: dict[str, Any],
        profile: ProfileOpt = None,
        set_: SetOpt = None,
        resume: ResumeOpt = None,
        force: ForceOpt = False,
        quiet: QuietOpt = False,
        dashboard: DashboardOpt = False,
    ) -> None:
        _run_training(name, options, profile, set_, resume, force, quiet, dashboard)

    command.__doc__ = f"{doc}\n\n{BRACKETS}"
    app.command(name, short_help=short_help)(handles_errors(command))


training_command(
    "teacher",
    (*TEACHER, *TEACHER_BUDGET, *TRAINING),
    "Fine-tune a teacher on multi-domain data (mix, single or meta).",
    "Fine-tune a teacher on multi-domain data; writes RUN/model and RUN/metrics.json.",
)


def _with_lr_default(default: str) -> tuple[Flag, ...]:
    """TRAINING with --lr's help showing DEFAULT (a command whose rate is not a teacher's)."""
    return tuple(replace(f, default=default) if f.key == "train.lr" else f for f in TRAINING)


# A student's and a pruning run's learning rates are not a teacher's (kdtui/budgets.py).
DISTILL_TRAINING = _with_lr_default(f"{STUDENT_LR:g}, from {STUDENT_BUDGET_WHY}")
PRUNE_TRAINING = _with_lr_default(f"{PRUNE_LR:g}, {PRUNE_LR_WHY}")
training_command(
    "distill",
    (*DISTILL, *DISTILL_TRAINING),
    "Distil a small student for one domain from a (meta-)teacher.",
    "Distil a small single-domain student from a (meta-)teacher (Meta-KD or baselines).",
)
training_command(
    "prune",
    (*PRUNE, *PRUNE_EPOCHS, *PRUNE_TRAINING),
    "Prune a fine-tuned model with CAP (contrastive pruning).",
    "Prune a fine-tuned model with CAP (contrastive pruning) while distilling from it.\n\n"
    "Writes RUN/model (dense, zeros in place; heads-ffn: heads and neurons removed) and, for "
    "unstructured pruning, RUN/model-sparse (compressed). Data: the teacher run's, by default.",
)


def _run_training(
    command: str,
    options: dict[str, Any],
    profile: str | None,
    overrides: list[str] | None,
    resume: Path | None,
    force: bool,
    quiet: bool,
    dashboard: bool,
) -> None:
    notes: tuple[str, ...] = ()  # choices made for the user, told on the terminal and logged
    if resume is not None:
        from kdtui.resolver import resolve_resume

        run, config, profile = resolve_resume(resume, command, profile, overrides or [], options)
        if run.finished():
            # Resuming means "make sure this run completes": for a finished run that is already
            # true, so a retried job succeeds (exit 0) and the run's results stay as they are.
            if _is_main_process():
                from kdtui.terminal import print_summary

                typer.echo(
                    f"{resume} is finished: nothing to resume, nothing was changed", err=True
                )
                print_summary(resume, run.metrics(), quiet=quiet)
            return
    else:
        from kdtui.resolver import resolve

        config, notes = resolve(profile, overrides or [], options, command=command)
    if dashboard:
        _launch_with_dashboard(command, config, resume=resume, force=force)
        return
    from kdtui.recipes.common import execute
    from kdtui.terminal import ProgressListener, print_summary

    main_process = _is_main_process()
    progress = ProgressListener(
        enabled=main_process and not quiet and sys.stderr.isatty(),
        warnings=main_process and not quiet,
    )
    try:
        path, metrics = execute(
            command,
            config,
            _recipe(command),
            profile=profile or "",
            resume=resume,
            force=force,
            listeners=[progress],
            notes=notes,
        )
    finally:
        progress.close()
    if main_process:
        print_summary(path, metrics, quiet=quiet)


def _recipe(command: str) -> Callable[[Any], dict[str, Any]]:
    if command == "teacher":
        from kdtui.recipes.teacher import run_teacher

        return run_teacher
    if command == "distill":
        from kdtui.recipes.distill import run_distill

        return run_distill
    from kdtui.recipes.prune import run_prune

    return run_prune


def _is_main_process() -> bool:
    # Under torchrun every process runs the command; only rank 0 talks to the terminal.
    return os.environ.get("RANK", "0") == "0"


def _launch_with_dashboard(
    command: str, config: Config, *, resume: Path | None, force: bool
) -> None:
    """Start the run in a child process and follow it. The child runs the config resolved
    here, written beside its log as RUNS/.NAME.toml: `python -m kdtui COMMAND --profile
    RUNS/.NAME.toml --quiet`, so both sides agree on every value (the run's name, the model prune
    picked). Nothing on this path imports torch: the dashboard must open at once."""
    from kdtui.dashboard.launch import launch_and_follow, resolved_profile
    from kdtui.profile import to_toml
    from kdtui.rundir import check_new_run_path, default_run_name

    if resume is not None:
        raise typer.Exit(launch_and_follow([command, "--resume", str(resume), "--quiet"], resume))
    name = config.run.name or default_run_name(command)
    run_dir = Path(config.run.output_dir).expanduser() / name
    check_new_run_path(run_dir, force=force)
    text = to_toml(
        replace(config, run=replace(config.run, name=name)),
        header=f"kdtui {command} --dashboard: the configuration its background process runs",
    )
    argv = [command, "--profile", str(resolved_profile(run_dir)), "--quiet"]
    raise typer.Exit(launch_and_follow([*argv, *(["--force"] if force else [])], run_dir, text))


# -- scoring and exporting ------------------------------------------------------------------------


@app.command(short_help="Accuracy per domain, size and latency of models, side by side.")
@handles_errors
@with_flags(*EVALUATE)
def evaluate(
    options: dict[str, Any],
    models: Annotated[
        list[str],
        # Described in the docstring: Typer's own argument help adds a `<list[str]>`.
        typer.Argument(metavar="MODEL", hidden=True),
    ],
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Also write the report as JSON here."),
    ] = None,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="Evaluate every model again, even one whose results are cached for these "
            "settings (in .kdtui-eval-cache/ in its run or folder); the new results replace them.",
        ),
    ] = False,
) -> None:
    """Accuracy per domain, parameters, size on disk and latency of one or more models.

    MODEL: a run directory, a model folder or an ONNX export folder (kdtui export; run under
    ONNX Runtime); several are shown side by side. A folder of runs (runs/) stands for every run
    in it that has a model, the runs' exports (RUN/onnx) and the export folders in it. Models on
    the Pareto frontier of accuracy against latency and against size are marked, and pictured
    when there are several. Unstructured models are timed with dense and with sparse kernels.
    Results are cached beside each model: a model whose files and settings did not change is
    not evaluated again (--no-cache). Data: the data config of the run the first model comes
    from (RUN, RUN/model, a distill student's folder, an export of one), unless
    --profile/--set/--data is given."""
    from kdtui.recipes.evaluate import evaluate_models, expand_folders
    from kdtui.resolver import data_profile_of, resolve_for_models
    from kdtui.terminal import print_report

    # Before the config: the data config comes from the first model's run, not from runs/.
    models, notes = expand_folders(models)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    config = resolve_for_models(models, profile, set_ or [], options)
    recorded = data_profile_of(models[0]) if profile is None else None
    data_from = ""
    if recorded is not None and options.get("data.source") is None:
        data_from = f"of {models[0]}, the first model (its run's {Path(recorded).name})"
    report = evaluate_models(models, config, data_from, use_cache=not no_cache)
    print_report(report)
    if json_path is not None:
        import json

        try:
            json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise KdtuiError(f"cannot write {json_path}: {e.strerror}") from None


@app.command()
@handles_errors
@with_flags(DATA, SPLIT, OPTIMIZE)
def export(
    options: dict[str, Any],
    model: Annotated[str, typer.Argument(help="A run directory or model folder.")],
    format_: Annotated[
        str,
        typer.Option(
            "--format", metavar="onnx", help="Export format [default onnx].", show_default=False
        ),
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
) -> None:
    """Export a model for ONNX Runtime, with its tokenizer, checked against kdtui's outputs.

    Needs the export extra: pip install 'kdtui[export]' (in a source checkout: pip install -c
    constraints.txt -e '.[export]'). The export's logits
    are compared with PyTorch's on the split (data as for evaluate: the run's, unless
    --profile/--set/--data is given). Where attention fuses in every layer, model.opt.onnx (and
    model.opt.int8.onnx with --int8) is written too, checked alike (--optimize)."""
    from kdtui.export import FORMATS, export_model
    from kdtui.exportdir import MODEL_FILES, OPT_FILE, default_output
    from kdtui.resolver import resolve_for_models

    if format_ not in FORMATS:
        raise KdtuiError(f"--format must be one of {', '.join(FORMATS)}, got '{format_}'")
    config = resolve_for_models([model], profile, set_ or [], options)
    target = output if output is not None else default_output(model)
    info = export_model(model, target, config, int8=int8, force=force)
    check = info["check"]
    typer.echo(f"exported {model} to {target} (inputs: {', '.join(info['inputs'])})")
    if "optimize" in info:
        typer.echo(f"  {OPT_FILE}: {info['optimize']['summary']}")
    for name in MODEL_FILES:
        if name in check:
            c = check[name]
            typer.echo(
                f"  {name}: {c['bytes'] / 2**20:.1f} MiB; on {check['examples']} "
                f"{check['split']} examples: max |logit difference| to kdtui "
                f"{c['max_logit_diff']:.2e}, same predictions {c['same_predictions']:.2%}, "
                f"accuracy {c['accuracy']:.4f} "
                f"(kdtui {c['pytorch_accuracy']:.4f})"
            )


# -- profiles and the dashboard -------------------------------------------------------------------


@app.command()
@handles_errors
def profiles() -> None:
    """List the shipped profiles and what each is for."""
    from kdtui.profile import shipped_profiles

    for info in shipped_profiles():
        typer.echo(f"{info.name:<16} {info.purpose}")


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
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="With COMMAND: the run's name.")
    ] = None,
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
        options = {"run.name": name, "run.output_dir": output_dir}
        _run_training(target, options, profile, set_, None, force, True, True)
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
