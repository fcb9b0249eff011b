"""Which configuration a command runs with: the one path from a command line to a `Config`.

Layers, lowest first: kdtui's defaults < the upstream run's [data] section (distill and prune
train on their teacher's data unless told otherwise) < the profile < `--set` overrides <
explicit options. The merged layers are validated once (`build_config`); then the values that
depend on others are filled in (the placeholders: CAP's loss weights and KD temperature by
structure, movement scores' initialisation by where pruning starts, the Meta-KD domain head's
learning rate by the domain loss, the distillation method by the teacher, pruning's budget by
sparsity where no layer sets one), so a recipe, the run's `config.toml` and a `--dashboard`
child all see every value the run uses, and
`--profile RUN/config.toml` reruns it exactly.

A resumed run (`--resume RUN`) has no layers: it continues with the config it was started with
(`resolve_resume`), and only under the command that started it.

Options that imply others: `kdtui teacher --domain D` means `--method single`, and a budget in
epochs given on the command line clears the `max_steps` a profile sets (an explicit
`--max-steps` still wins).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from kdtui.budgets import (
    PRUNE_LR,
    STUDENT_LR,
    TEACHER_EPOCHS,
    TEACHER_MIN_STEPS,
    prune_budget,
)
from kdtui.config import PRUNE_AUTHORS_DEFAULTS, Config, build_config
from kdtui.errors import KdtuiError
from kdtui.exportdir import read_export_info
from kdtui.profile import find_profile, parse_override
from kdtui.rundir import (
    DOMAIN_HEAD_FILE,
    DOMAINS_DIR,
    MODEL_DIR,
    RunInfo,
    find_run,
    latest_finished_run,
    read_profile,
    read_run,
)

# Commands that start from another run, and the key naming it.
UPSTREAM = {"distill": "distill.teacher", "prune": "prune.model"}

# An epochs key given on the command line clears its max_steps key (unless that is given too).
EPOCH_BUDGETS = {
    "train.max_steps": ("train.epochs",),
    "distill.max_steps": ("distill.prediction_epochs", "distill.intermediate_epochs"),
}

# The Meta-KD domain head's peak learning rate by teacher.domain_loss (0 = train.lr): the
# confusion head must learn the true domains within a few hundred steps; the authors train
# their head with the model, under one optimiser.
DOMAIN_HEAD_LR = {"confusion": 1e-3, "authors": 0.0}


class Resolved(NamedTuple):
    config: Config
    notes: tuple[str, ...] = ()  # choices made for the user (the model prune picked)


# Commands whose learning rate is not a teacher's train.lr when no layer sets one.
OWN_LR = {"distill": STUDENT_LR, "prune": PRUNE_LR}


def resolve(
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    options: dict[str, Any] | None = None,
    *,
    command: str = "",
) -> Resolved:
    """The config COMMAND runs with. `options` maps "section.key" to a value given on the
    command line, None meaning "not given"."""
    given = _implied({k: v for k, v in (options or {}).items() if v is not None})
    layered = read_profile(find_profile(profile)) if profile else {}
    layered = _set(layered, [parse_override(o) for o in overrides])
    layered = _set(layered, [(k.split("."), v) for k, v in given.items()])
    notes: list[str] = []
    if command in UPSTREAM:
        layered, notes = _under_upstream(command, layered)
    config = fill_placeholders(build_config(layered))
    if command == "prune":
        config = with_prune_budget(config, layered)
    if command == "teacher" and not _budget_given(layered):
        train = replace(config.train, epochs=TEACHER_EPOCHS, min_steps=TEACHER_MIN_STEPS)
        config = replace(config, train=train)
    if command in OWN_LR and "lr" not in _table(layered, "train"):
        config = replace(config, train=replace(config.train, lr=OWN_LR[command]))
    return Resolved(config, tuple(notes))


def _budget_given(layered: dict[str, Any]) -> bool:
    """Whether a layer (profile, --set, option) sets train.epochs, max_steps or min_steps."""
    return bool({"epochs", "max_steps", "min_steps"} & _table(layered, "train").keys())


class Resumed(NamedTuple):
    run: RunInfo  # nothing to do when it is finished: the CLI says so and leaves it as it is
    config: Config
    profile: str  # the profile it began with, as its first run_started names it


def resolve_resume(
    run_path: Path,
    command: str,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    options: dict[str, Any] | None = None,
) -> Resumed:
    """The run `kdtui COMMAND --resume RUN_PATH` continues, with the config it was started
    with. Refused: a profile, `--set` or an option (they would change that config), a folder
    that is not a run, and a run another command started (that command would read the run's
    config as its own and fail: a prune run's optimizer state is not a teacher's)."""
    if profile or overrides or any(v is not None for v in (options or {}).values()):
        raise KdtuiError(
            "--resume continues a run with the configuration it was started with; "
            "drop --profile/--set/options, or start a new run"
        )
    try:
        run = read_run(run_path)
    except KdtuiError as e:
        raise KdtuiError(f"--resume {e}") from None
    made_by = run.command()
    if made_by is not None and made_by != command:
        raise KdtuiError(
            f"{run_path} is a {made_by} run; continue it with `kdtui {made_by} --resume "
            f"{run_path}` (nothing was written to it)"
        )
    config = fill_placeholders(run.config())  # a run from before placeholders were filled
    return Resumed(run, config, run.profile())


def with_prune_budget(config: Config, layered: dict[str, Any]) -> Config:
    """CONFIG with pruning's default budget for its sparsity (kdtui/budgets.py) where no layer
    sets one: the epochs unless epochs or max_steps is set, the schedule's shape unless a
    warm-up or cool-down share is."""
    band = prune_budget(config.prune.sparsity)
    train, prune = config.train, config.prune
    if not _budget_given(layered):
        train = replace(train, epochs=band.epochs)
    if not {"warmup_ratio", "cooldown_ratio"} & _table(layered, "prune").keys():
        prune = replace(prune, warmup_ratio=band.warmup_ratio, cooldown_ratio=band.cooldown_ratio)
    return replace(config, train=train, prune=prune)


def resolve_for_models(
    models: list[str],
    profile: str | None,
    overrides: list[str] | tuple[str, ...],
    options: dict[str, Any],
) -> Config:
    """The config `evaluate` and `export` score models with: without a profile, the data config
    of the run the first model comes from."""
    recorded = data_profile_of(models[0]) if profile is None else None
    try:
        return resolve(profile or recorded, overrides, options).config
    except KdtuiError:
        if recorded is not None:
            # The user named a model, not this file: say where a bad value comes from.
            inherited(read_profile(Path(recorded)), recorded, f"the run {models[0]} comes from")
        raise


def inherited(layers: dict[str, Any], file: str | Path, what: str) -> None:
    """Validate LAYERS, the part of a configuration taken from a file the user did not name
    (an upstream run's config.toml): an invalid value there names that file."""
    try:
        build_config(layers)
    except KdtuiError as e:
        raise KdtuiError(
            f"{e} (from {file}, {what}; fix it there, or override it with --set)"
        ) from None


def fill_placeholders(config: Config) -> Config:
    """CONFIG with every "decide for me" value replaced by what it stands for."""
    p = config.prune
    authors = PRUNE_AUTHORS_DEFAULTS[p.structure]
    prune = replace(
        p,
        w_unsup=p.w_unsup if p.w_unsup >= 0 else authors["w_unsup"],
        w_sup=p.w_sup if p.w_sup >= 0 else authors["w_sup"],
        kd_temperature=p.kd_temperature or authors["kd_temperature"],
        # Zero scores carry no signal when cutting starts after a short warm-up from a
        # fine-tuned model, which then collapses; from the pre-trained weights the authors'
        # long warm-up lets zero scores learn first.
        score_init=(
            p.score_init
            if p.score_init != "auto"
            else ("constant" if p.start == "pretrained" else "magnitude")
        ),
    )
    teacher = config.teacher
    if teacher.domain_head_lr < 0:
        teacher = replace(teacher, domain_head_lr=DOMAIN_HEAD_LR[teacher.domain_loss])
    distill = config.distill
    if not distill.method and distill.teacher:
        distill = replace(distill, method=_distill_method_for(distill.teacher))
    return replace(config, prune=prune, teacher=teacher, distill=distill)


def _distill_method_for(teacher: str) -> str:
    """Meta-distillation for a meta-teacher (its model folder has a domain head), else plain KD.
    A teacher that cannot be found is left for the recipe to report: method stays empty."""
    from kdtui.models import resolve_model_path

    try:
        folder = Path(resolve_model_path(teacher))
    except KdtuiError:
        return ""
    return "meta" if (folder / DOMAIN_HEAD_FILE).is_file() else "vanilla"


def _implied(given: dict[str, Any]) -> dict[str, Any]:
    if given.get("teacher.domain") and "teacher.method" not in given:
        given["teacher.method"] = "single"
    for steps, epochs in EPOCH_BUDGETS.items():
        if steps not in given and any(e in given for e in epochs):
            given[steps] = 0
    return given


def _set(layered: dict[str, Any], pairs: list[tuple[list[str], Any]]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in layered.items()}
    for (section, key), value in pairs:
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise KdtuiError(f"'{section}' must be a table in the profile")
        table[key] = value
    return merged


def _under_upstream(command: str, layered: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """LAYERED over the upstream run's [data] section. `kdtui prune` without a model takes the
    newest finished teacher run (and says so: the returned notes)."""
    section, key = UPSTREAM[command].split(".")
    upstream = _table(layered, section).get(key)
    notes = []
    if not upstream and command == "prune":
        output_dir = str(_table(layered, "run").get("output_dir", "runs"))
        found = latest_finished_run(Path(output_dir).expanduser(), "teacher")
        if found is None:
            raise KdtuiError(
                f"no model to prune: no finished teacher run in {output_dir}/; "
                "train one (kdtui teacher --profile quickstart) or give --model"
            )
        upstream = str(found)
        layered = _set(layered, [([section, key], upstream)])
        notes.append(
            f"no --model given: pruning {found}, the newest finished teacher run in {output_dir}/"
        )
    run = find_run(Path(upstream).expanduser()) if isinstance(upstream, str) and upstream else None
    if run is None:
        return layered, notes
    data = run.config_dict().get("data", {})
    mine = layered.get("data", {})
    if isinstance(data, dict) and isinstance(mine, dict):
        taken = {k: v for k, v in data.items() if k not in mine}
        inherited({"data": taken}, run.config_file, f"whose [data] {command} trains on")
        layered = {**layered, "data": {**data, **mine}}
    return layered, notes


def _table(layered: dict[str, Any], section: str) -> dict[str, Any]:
    """A section of the layers, {} when absent or not a table (build_config reports that)."""
    table = layered.get(section)
    return table if isinstance(table, dict) else {}


def data_profile_of(model: str) -> str | None:
    """The config.toml of the run a model comes from: the run directory itself, or for an ONNX
    export (its folder or one of its files) the run it was exported from."""
    path = Path(model).expanduser()
    if (run := run_holding(path)) is not None:
        return str(run.config_file)
    source = read_export_info(path.parent if path.suffix == ".onnx" else path).get("source")
    if isinstance(source, str) and source and (run := run_holding(Path(source))) is not None:
        return str(run.config_file)
    return None


def run_holding(path: Path) -> RunInfo | None:
    """The run PATH is, or whose model it is: RUN, RUN/model, a student of `distill --domain
    all` (RUN/domains/D) or its model (RUN/domains/D/model)."""
    folder = path.parent if path.name == MODEL_DIR else path
    if folder.parent.name == DOMAINS_DIR:
        folder = folder.parent.parent
    return find_run(path) or find_run(folder)
