"""The CLI's surface: version, help, profiles, and bad input answered with one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdtui import __version__
from tests.conftest import REPO, invoke


def test_version_and_help() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"kdtui {__version__}"
    result = invoke("-h")
    assert result.exit_code == 0
    for command in ("teacher", "distill", "evaluate", "profiles"):
        assert command in result.stdout


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from kdtui.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate', 'textual')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_profiles_lists_the_shipped_profiles() -> None:
    result = invoke("profiles")
    assert result.exit_code == 0
    assert "smoke" in result.stdout and "quickstart" in result.stdout


def _smoke(runs: Path, *args: str) -> object:
    return invoke("teacher", "--profile", "smoke", "--output-dir", str(runs), "--quiet", *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "no-such-profile"], "profile 'no-such-profile' not found"),
        (["--set", "train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'?"),
        (["--set", "train.batch_size=big"], "train.batch_size must be an integer"),
        (["--data", "missing.jsonl"], "data file 'missing.jsonl' does not exist"),
        (["--method", "single", "--domain", "garden"], "domain 'garden' is not in the data"),
        (["--model", "./no/such/model"], "model path './no/such/model' does not exist"),
        (["--method", "magic"], "teacher.method must be one of mix, single, meta"),
        (["--epochs", "-1", "--max-steps", "0"], "train.epochs must be > 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(
    runs: Path, args: list[str], message: str
) -> None:
    result = _smoke(runs, "--name", "bad", *args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert not (runs / "bad").exists()  # a mistake caught before training leaves nothing


def test_a_bad_command_does_not_touch_an_existing_run(runs: Path) -> None:
    keep = runs / "keep"
    keep.mkdir()
    (keep / "events.jsonl").write_text("precious\n")
    result = _smoke(runs, "--name", "keep", "--data", "missing.jsonl")
    assert result.exit_code == 2
    assert "is not a kdtui run (it holds events.jsonl)" in result.stderr
    assert (keep / "events.jsonl").read_text() == "precious\n"


def test_evaluate_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("evaluate", str(tmp_path / "nope"), "--profile", "smoke")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_a_relative_path_under_an_existing_folder_is_a_path_not_a_hub_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdtui.errors import KdtuiError
    from kdtui.models import resolve_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(KdtuiError, match="model path 'runs/typo' does not exist"):
        resolve_model_path("runs/typo")
    assert resolve_model_path("org/model") == "org/model"  # no folder 'org' here: a hub name


def test_the_progress_bar_shows_steps_loss_evals_and_warnings() -> None:
    import io

    from rich.console import Console

    from kdtui.cli import _ProgressListener
    from kdtui.events import Eval, Message, RunStarted, Step

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    bar = _ProgressListener(enabled=True, console=console)
    bar(RunStarted(run="r", command="teacher", profile="smoke", total_steps=4, config={}))
    for step in range(1, 5):
        bar(Step(step=step, total_steps=4, epoch=step / 4, lr=1e-3, loss=1 / step, losses={}))
    bar(Eval(step=4, split="dev", accuracy={"books": 0.75, "all": 0.7}, best=True))
    bar(Message(level="warning", text="bf16 is emulated here"))
    bar.close()
    text = out.getvalue()
    assert "4/4" in text and "loss 0.2500" in text
    assert "step 4  dev accuracy: books 0.750  all 0.700  (best)" in text
    assert "warning: bf16 is emulated here" in text


def test_without_a_terminal_only_warnings_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from kdtui.cli import _ProgressListener
    from kdtui.events import Message, RunStarted, Step

    for warnings in (True, False):  # False: --quiet
        bar = _ProgressListener(enabled=False, warnings=warnings)
        bar(RunStarted(run="r", command="teacher", profile="", total_steps=2, config={}))
        bar(Step(step=1, total_steps=2, epoch=0.5, lr=1e-3, loss=0.5, losses={}))
        bar(Message(level="info", text="data notes"))
        bar(Message(level="warning", text="damaged checkpoint skipped"))
        bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "warning: damaged checkpoint skipped\n"


def test_export_without_the_extra_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    result = invoke("export", str(tmp_path), "--profile", "smoke")
    assert result.exit_code == 2
    assert "pip install -c constraints.txt -e '.[export]'" in result.stderr


def test_export_refuses_an_unknown_format(tmp_path: Path) -> None:
    result = invoke("export", str(tmp_path), "--format", "tflite")
    assert result.exit_code == 2 and "--format must be one of onnx" in result.stderr
