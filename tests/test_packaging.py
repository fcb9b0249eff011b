"""kdtui installs anywhere: the wheel carries the profiles and the dashboard's stylesheet."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_package_list_names_every_package_directory() -> None:
    """pyproject lists packages by hand (to map profiles/ into the wheel): a new subpackage
    that is not listed would be missing from every install but the editable one."""
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "kdtui").rglob("__init__.py")
    }
    assert found | {"kdtui.profiles"} == listed


def _has_setuptools(major: int) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


@pytest.mark.slow
def test_the_built_wheel_works_from_any_directory(tmp_path: Path) -> None:
    """Build the wheel, install it into a fresh virtual environment (its dependencies from this
    interpreter's site-packages), and run the CLI from an empty directory."""
    wheels = tmp_path / "wheels"
    # Build with this interpreter's setuptools when it has a recent one (no download), else let
    # pip fetch the build requirements from the registry.
    isolation = ["--no-build-isolation"] if _has_setuptools(68) else []
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *isolation,
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("kdtui-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Without PYTHONPATH for pip too: a checkout on it holds kdtui.egg-info (from the build),
    # and pip would take that for kdtui installed and install nothing.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        env=env,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()

    def kdtui(*args: str) -> str:
        done = subprocess.run(
            [str(python), "-m", "kdtui", *args], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run(
        [str(python), "-c", "import kdtui; print(kdtui.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where  # the installed copy, not the checkout
    listed = kdtui("profiles")
    assert all(name in listed for name in ("smoke", "quickstart", "cap-97"))
    kdtui("teacher", "--profile", "smoke", "--name", "t", "--quiet")
    kdtui("prune", "--profile", "smoke", "--name", "p", "--quiet")
    assert (work / "runs" / "p" / "metrics.json").is_file()


def test_the_export_extra_hint_fits_how_kdtui_was_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-e '.[export]'` works only inside a source checkout; an installed kdtui is told the
    extra by name."""
    from kdtui.errors import KdtuiError
    from kdtui.export import extra_hint, require_onnx

    installed = tmp_path / "site-packages" / "kdtui"
    installed.mkdir(parents=True)
    assert extra_hint(installed) == "pip install 'kdtui[export]'"
    assert extra_hint(REPO / "kdtui") == (
        f"pip install -c {REPO / 'constraints.txt'} -e '{REPO}[export]'"
    )
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    with pytest.raises(KdtuiError, match="need the export extra: pip install -c .*constraints"):
        require_onnx()
