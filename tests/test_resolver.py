"""The one path from a command line to a Config: layers, implied options, upstream data, the
placeholders filled in, renamed keys, and the rule for which keys have a flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtui import cli
from kdtui.config import CHOICES, SECTIONS, type_of
from kdtui.errors import KdtuiError
from kdtui.resolver import resolve, resolve_resume
from kdtui.rundir import DOMAIN_HEAD_FILE


def test_cap_placeholders_become_the_authors_values_by_structure() -> None:
    weights = resolve().config.prune
    assert (weights.w_unsup, weights.w_sup, weights.kd_temperature) == (0.1, 10.0, 2.0)
    heads = resolve(options={"prune.structure": "heads-ffn"}).config.prune
    assert (heads.w_unsup, heads.w_sup, heads.kd_temperature) == (0.3, 3.0, 1.0)
    mine = resolve(overrides=["prune.w_unsup=0.5", "prune.kd_temperature=4"]).config.prune
    assert (mine.w_unsup, mine.w_sup, mine.kd_temperature) == (0.5, 10.0, 4.0)


def test_the_domain_loss_is_recorded_and_fills_its_head_learning_rate(tmp_path: Path) -> None:
    from kdtui.profile import to_toml

    default = resolve().config.teacher
    assert (default.domain_loss, default.domain_loss_weight, default.domain_head_lr) == (
        "authors",
        0.5,
        0.0,
    )
    confusion = resolve(options={"teacher.domain_loss": "confusion"}).config.teacher
    assert (confusion.domain_loss, confusion.domain_head_lr) == ("confusion", 1e-3)
    authors = resolve(options={"teacher.domain_loss": "authors"}).config
    assert (authors.teacher.domain_loss, authors.teacher.domain_head_lr) == ("authors", 0.0)
    written = tmp_path / "config.toml"
    written.write_text(to_toml(authors))
    assert 'domain_loss = "authors"' in written.read_text()
    assert resolve(str(written)).config == authors
    mine = resolve(overrides=["teacher.domain_head_lr=3e-4", "teacher.domain_loss=authors"])
    assert mine.config.teacher.domain_head_lr == 3e-4


def test_score_init_auto_depends_on_where_pruning_starts() -> None:
    assert resolve().config.prune.score_init == "magnitude"
    pretrained = resolve(options={"prune.start": "pretrained"}).config.prune
    assert pretrained.score_init == "constant"
    mine = resolve(options={"prune.start": "pretrained", "prune.score_init": "magnitude"})
    assert mine.config.prune.score_init == "magnitude"


def test_the_distill_method_follows_the_teacher(tmp_path: Path) -> None:
    meta, plain = tmp_path / "meta", tmp_path / "plain"
    for folder in (meta, plain):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    (meta / DOMAIN_HEAD_FILE).write_bytes(b"")
    assert resolve(options={"distill.teacher": str(meta)}).config.distill.method == "meta"
    assert resolve(options={"distill.teacher": str(plain)}).config.distill.method == "vanilla"
    given = {"distill.teacher": str(meta), "distill.method": "logits"}
    assert resolve(options=given).config.distill.method == "logits"
    # A teacher that is not there is the recipe's to report, with its own message.
    missing = {"distill.teacher": str(tmp_path / "nope")}
    assert resolve(options=missing).config.distill.method == ""


def test_options_that_imply_others() -> None:
    assert resolve(options={"teacher.domain": "books"}).config.teacher.method == "single"
    smoke_steps = resolve("smoke").config.train.max_steps
    assert smoke_steps > 0
    assert resolve("smoke", options={"train.epochs": 2.0}).config.train.max_steps == 0
    both = {"train.epochs": 2.0, "train.max_steps": 5}
    assert resolve("smoke", options=both).config.train.max_steps == 5
    stage = resolve(options={"distill.max_steps": 3}, overrides=[])
    assert stage.config.distill.max_steps == 3
    cleared = resolve(overrides=["distill.max_steps=3"], options={"distill.prediction_epochs": 2.0})
    assert cleared.config.distill.max_steps == 0


def test_prune_trains_on_its_upstream_runs_data_unless_told_otherwise(tmp_path: Path) -> None:
    teacher = tmp_path / "runs" / "t"
    teacher.mkdir(parents=True)
    (teacher / "config.toml").write_text(
        '[data]\nsource = "my.csv"\nmax_length = 96\n[model]\nname = "tiny"\n'
    )
    (teacher / "events.jsonl").write_text("")
    resolved = resolve(options={"prune.model": str(teacher)}, command="prune")
    assert (resolved.config.data.source, resolved.config.data.max_length) == ("my.csv", 96)
    assert resolved.notes == ()
    mine = resolve(
        overrides=["data.max_length=32"], options={"prune.model": str(teacher)}, command="prune"
    )
    assert (mine.config.data.source, mine.config.data.max_length) == ("my.csv", 32)
    # Without --model, prune needs a finished teacher run, and says which it took.
    with pytest.raises(KdtuiError, match="no model to prune"):
        resolve(options={"run.output_dir": str(tmp_path / "empty")}, command="prune")


def test_renamed_keys_still_load() -> None:
    old = resolve(overrides=["prune.temperature=0.2", "distill.temperature=3"]).config
    assert old.prune.contrastive_temperature == 0.2
    assert old.distill.kd_temperature == 3.0
    with pytest.raises(KdtuiError, match="prune.contrastive_temperature must be > 0"):
        resolve(overrides=["prune.temperature=0"])


def test_resolving_a_resolved_config_changes_nothing(tmp_path: Path) -> None:
    from kdtui.profile import to_toml

    config = resolve("smoke", options={"prune.structure": "heads-ffn"}).config
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(config))
    assert resolve(str(path)).config == config


@pytest.mark.parametrize(
    ("command", "flags"),
    [("teacher", cli.TEACHER), ("distill", cli.DISTILL), ("prune", cli.PRUNE)],
)
def test_every_pick_one_or_on_off_key_of_a_command_has_a_flag(
    command: str, flags: tuple[cli.Flag, ...]
) -> None:
    """The first half of the stated rule (cli.py's docstring, README): a method's switches."""
    keys = {f.key for f in flags}
    section = SECTIONS[command]
    switches = {
        f"{command}.{name}"
        for name in section.__dataclass_fields__
        if f"{command}.{name}" in CHOICES or type_of(command, name) is bool
    }
    assert switches <= keys, switches - keys
    # and each flag is declared once per command
    names = [n for f in (*flags, *cli.TRAINING) for n in f.names]
    assert len(names) == len(set(names))


def test_a_resumed_run_resolves_to_its_recorded_config_under_its_own_command(
    tmp_path: Path,
) -> None:
    from kdtui.profile import to_toml
    from kdtui.rundir import CONFIG_FILE, RunDir

    recorded = resolve(options={"prune.structure": "heads-ffn"}).config
    run = RunDir(tmp_path / "p")
    run.open(fresh=True)
    run.write_text(CONFIG_FILE, to_toml(recorded, header="kdtui prune: resolved configuration"))
    run.close()
    resumed = resolve_resume(tmp_path / "p", "prune")
    assert resumed.run.path == tmp_path / "p" and resumed.config == recorded
    assert resumed.profile == ""  # no run_started yet: it began with no profile it named
    with pytest.raises(KdtuiError, match="is a prune run; continue it with `kdtui prune --resume"):
        resolve_resume(tmp_path / "p", "teacher")
    with pytest.raises(KdtuiError, match="^--resume continues a run with the configuration"):
        resolve_resume(tmp_path / "p", "prune", options={"train.lr": 0.1})
    assert resolve_resume(tmp_path / "p", "prune", options={"train.lr": None}).config == recorded
    with pytest.raises(KdtuiError, match="^--resume .*: no such run directory"):
        resolve_resume(tmp_path / "nope", "prune")
