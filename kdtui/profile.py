"""Profiles: TOML files that make a run repeatable, plus `section.key=value` overrides.

This module finds and writes them; `kdtui.rundir.read_profile` reads one (it lives there, below
this module, because a run reads its own config.toml with it); `kdtui.resolver` layers them into
a run's config. The resolved config is written back as TOML (`config.toml` in the run
directory), and that file is itself a profile: `--profile RUN/config.toml` reruns the run exactly.
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdtui.config import Config
from kdtui.errors import KdtuiError
from kdtui.rundir import find_run


def _profiles_dir() -> Path:
    """Where the shipped profiles are: the package data `kdtui.profiles` of an installed kdtui
    (the repository's top-level profiles/, mapped at build time), else the source checkout's
    profiles/ (kdtui run from a checkout that was never installed)."""
    spec = importlib.util.find_spec("kdtui.profiles")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "profiles"


PROFILES_DIR = _profiles_dir()


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    path: Path
    purpose: str


def shipped_profiles() -> list[ProfileInfo]:
    """The profiles in `profiles/`, each with the first line of its header comment."""
    if not PROFILES_DIR.is_dir():
        return []
    result = []
    for path in sorted(PROFILES_DIR.glob("*.toml")):
        purpose = ""
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                purpose = line.lstrip("#").strip()
                break
        result.append(ProfileInfo(path.stem, path, purpose))
    return result


def find_profile(name_or_path: str) -> Path:
    """A TOML file, a run directory, or a shipped profile name (`cap-97`: profiles/cap-97.toml)."""
    path = Path(name_or_path).expanduser()
    run = find_run(path)
    if run is not None:
        return run.config_file  # a run directory reruns its resolved config
    if path.is_file():
        return path
    if path.exists():
        raise KdtuiError(f"profile '{name_or_path}' is not a TOML file")
    shipped = PROFILES_DIR / f"{name_or_path}.toml"
    if "/" not in name_or_path and shipped.is_file():
        return shipped
    names = ", ".join(p.name for p in shipped_profiles()) or "none"
    raise KdtuiError(f"profile '{name_or_path}' not found (a file, or one of: {names})")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-5` -> (["train", "lr"], 3e-05). Values are TOML literals; anything that
    does not parse as one is taken as a plain string (`data.source=my.csv`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise KdtuiError(f"--set expects section.key=value, got '{text}'")
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise KdtuiError(f"--set key must look like section.key, got '{key}'")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def to_toml(config: Config, header: str = "") -> str:
    """The resolved config as TOML, every key written, so the file reruns the run exactly."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in config.to_dict().items():
        lines.append("")
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else "nan"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
