from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kdtui.config import Config, build_config
from kdtui.errors import KdtuiError
from kdtui.profile import (
    find_profile,
    parse_override,
    shipped_profiles,
    to_toml,
)
from kdtui.resolver import resolve
from kdtui.rundir import read_profile


def test_empty_profile_gives_defaults() -> None:
    assert build_config({}) == Config()


def test_unknown_key_names_it_and_suggests_the_closest() -> None:
    with pytest.raises(KdtuiError, match=r"unknown key 'train.lrr'; did you mean 'train.lr'\?"):
        build_config({"train": {"lrr": 1e-4}})


def test_unknown_section_is_rejected() -> None:
    with pytest.raises(KdtuiError, match=r"unknown section 'trian'; did you mean 'train'"):
        build_config({"trian": {}})


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("train", {"batch_size": "16"}, r"train.batch_size must be an integer, got str '16'"),
        ("train", {"lr": True}, r"train.lr must be a number"),
        ("train", {"bf16": 1}, r"train.bf16 must be true or false"),
        ("data", {"domains": 3}, r"data.domains must be a list"),
        ("data", {"domains": ["a", 1]}, r"data.domains\[1\] must be a string"),
        ("model", {"name": 5}, r"model.name must be a string"),
        ("train", {"lr": float("inf")}, r"train.lr must be a finite number, got inf"),
        ("data", {"train_fraction": float("nan")}, r"data.train_fraction must be a finite"),
    ],
)
def test_wrong_types_name_the_key(section: str, values: dict, message: str) -> None:
    with pytest.raises(KdtuiError, match=message):
        build_config({section: values})


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("train", {"batch_size": 0}, "train.batch_size must be at least 1"),
        ("train", {"batch_size": 10**9}, "train.batch_size must be at most"),
        ("data", {"train_fraction": 0.0}, r"data.train_fraction must be in \(0, 1\]"),
        ("data", {"max_length": -5}, "data.max_length must be at least 8"),
        ("train", {"batch_size": 10, "grad_accum": 3}, "divisible by train.grad_accum"),
        ("teacher", {"method": "magic"}, "teacher.method must be one of mix, single, meta"),
        ("teacher", {"method": "single"}, "needs teacher.domain"),
        (
            "teacher",
            {"domain_loss": "adversarial"},
            "teacher.domain_loss must be one of confusion, authors, got 'adversarial'",
        ),
        ("export", {"optimize": "fast"}, "export.optimize must be one of auto, none, transformer"),
    ],
)
def test_ranges_are_checked(section: str, values: dict, message: str) -> None:
    with pytest.raises(KdtuiError, match=message):
        build_config({section: values})


def test_an_int_is_accepted_where_a_number_is_expected() -> None:
    assert build_config({"train": {"lr": 1}}).train.lr == 1.0


def test_override_values_are_toml_literals_or_strings() -> None:
    assert parse_override("train.lr=3e-5") == (["train", "lr"], 3e-5)
    assert parse_override("train.bf16=true") == (["train", "bf16"], True)
    assert parse_override("data.domains=['books', 'dvd']") == (
        ["data", "domains"],
        ["books", "dvd"],
    )
    assert parse_override("data.source=my data.csv") == (["data", "source"], "my data.csv")
    with pytest.raises(KdtuiError, match="section.key=value"):
        parse_override("train.lr")
    with pytest.raises(KdtuiError, match="section.key"):
        parse_override("lr=3")


def test_precedence_defaults_profile_set_options(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("[train]\nlr = 1e-3\nbatch_size = 8\nepochs = 3\n")
    config, _ = resolve(
        str(profile),
        ["train.batch_size=4", "train.epochs=2"],
        {"train.epochs": 5.0, "train.max_steps": None},
    )
    assert config.train.lr == 1e-3  # profile beats default
    assert config.train.batch_size == 4  # --set beats profile
    assert config.train.epochs == 5.0  # explicit option beats --set
    assert config.train.max_steps == 0  # an option not given changes nothing


def test_resolved_config_round_trips_through_toml(tmp_path: Path) -> None:
    config, _ = resolve("smoke", ["data.domains=['books']", 'run.name=a "quoted" name'])
    text = to_toml(config, header="test")
    assert text.startswith("# test")
    path = tmp_path / "config.toml"
    path.write_text(text)
    again, _ = resolve(str(path))
    assert again == config


def test_every_shipped_profile_validates_and_says_how_to_run_it() -> None:
    profiles = shipped_profiles()
    assert {"smoke", "quickstart"} <= {p.name for p in profiles}
    for info in profiles:
        text = info.path.read_text()
        assert info.purpose, f"{info.name} needs a header comment"
        assert "kdtui " in text.split("\n[")[0], f"{info.name}'s header must say how to run it"
        build_config(tomllib.loads(text))


def test_missing_and_malformed_profiles(tmp_path: Path) -> None:
    with pytest.raises(KdtuiError, match="profile 'nope' not found"):
        find_profile("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = ")
    with pytest.raises(KdtuiError, match="not valid TOML"):
        read_profile(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KdtuiError, match="not UTF-8"):
        read_profile(binary)
    with pytest.raises(KdtuiError, match="is not a TOML file"):
        find_profile(str(tmp_path))
