"""kdtui never executes what it reads: no unpickling of untrusted files, no remote code unless
asked for, and a profile is data."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO, invoke

SOURCES = sorted((REPO / "kdtui").rglob("*.py"))


def test_every_torch_load_refuses_pickled_code() -> None:
    calls = [
        (path, line)
        for path in SOURCES
        for line in path.read_text().splitlines()
        if "torch.load(" in line and not line.lstrip().startswith("#")
    ]
    assert calls, "expected the checkpoint loader at least"
    for path, line in calls:
        assert "weights_only=True" in line, f"{path.name}: {line.strip()}"


def test_no_pickle_and_no_remote_code_by_default() -> None:
    for path in SOURCES:
        text = path.read_text()
        # Catching pickle's error (a refused weights file) is fine; unpickling is not.
        text = text.replace("from pickle import UnpicklingError", "")
        assert not re.search(r"^\s*(import|from) (pickle|dill|cloudpickle)\b", text, re.M), path
        assert "trust_remote_code=True" not in text, path
        assert not re.search(r"\b(eval|exec)\(", text.replace(".eval(", "")), path


def test_trust_remote_code_is_off_unless_the_profile_says_so() -> None:
    from kdtui.config import ModelConfig

    assert ModelConfig().trust_remote_code is False


def test_a_profile_is_data_not_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    profile = tmp_path / "evil.toml"
    profile.write_text(
        "[model]\n"
        f"name = \"__import__('os').system('touch {marker}')\"\n"
        "[run]\n"
        f'name = "$(touch {marker})"\n'
    )
    result = invoke("teacher", "--profile", str(profile), "--output-dir", str(tmp_path / "runs"))
    assert result.exit_code == 2  # a strange model name, reported as such
    assert not marker.exists()
