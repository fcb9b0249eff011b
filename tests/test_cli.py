"""The CLI's surface: version, help, profiles, and bad input answered with one line and exit 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdtui import __version__
from tests.conftest import REPO, events_of, invoke, metrics_of


def test_version_and_help() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"kdtui {__version__}"
    result = invoke("-h")
    assert result.exit_code == 0
    for command in ("teacher", "distill", "evaluate", "profiles"):
        assert command in result.stdout


COMMANDS = ("teacher", "distill", "prune", "evaluate", "profiles", "dashboard")


def _help(*args: str) -> str:
    """Help as on a wide terminal, so no expected phrase is wrapped."""
    from typer.testing import CliRunner

    from kdtui.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=240)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_command_list_shows_each_description_whole() -> None:
    lines = [line.split(maxsplit=1) for line in _help().splitlines() if line.startswith("  ")]
    described = {words[0]: words[1] for words in lines if words[0] in COMMANDS}
    assert set(described) == set(COMMANDS)
    for text in described.values():
        assert text.endswith(".") and not text.endswith("..."), text


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_values_not_python_types(command: str) -> None:
    text = _help(command)
    assert not re.search(r"<[\w\[\], |]+>", text), text  # Typer's <str>, <list[str]>


def test_help_shows_the_defaults_and_every_command_has_a_length() -> None:
    prune = _help("prune")
    for shown in (
        "--sparsity F ",
        "[prune.sparsity; default 0.9]",
        "--criterion magnitude|movement|soft-movement\n",
        "[prune.criterion; default soft-movement]",
        "--structure weights|heads-ffn ",
        "[prune.structure; default weights]",
        "--keep-checkpoints N ",
    ):
        assert shown in prune
    distill = _help("distill")
    for option in ("--epochs N ", "--intermediate-epochs N ", "--max-steps N "):
        assert option in distill
    assert "replaces a max_steps the profile sets" in _help("teacher")
    export = _help("export")
    assert "--optimize auto|none|transformer" in export
    assert "[export.optimize; default auto]" in export


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

    from kdtui.events import Eval, Message, RunStarted, Step
    from kdtui.terminal import ProgressListener

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    bar = ProgressListener(enabled=True, console=console)
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
    from kdtui.events import Message, RunStarted, Step
    from kdtui.terminal import ProgressListener

    for warnings in (True, False):  # False: --quiet
        bar = ProgressListener(enabled=False, warnings=warnings)
        bar(RunStarted(run="r", command="teacher", profile="", total_steps=2, config={}))
        bar(Step(step=1, total_steps=2, epoch=0.5, lr=1e-3, loss=0.5, losses={}))
        bar(Message(level="info", text="data notes"))
        bar(Message(level="warning", text="damaged checkpoint skipped"))
        bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "warning: damaged checkpoint skipped\n"


# ---------------------------------------------------------------------------------------------
# What kdtui decides for the user is said on the terminal; explicit options win; a finished run
# is not rerun. One teacher run on a file of its own serves these tests.


@pytest.fixture(scope="module")
def file_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A finished smoke teacher on a single .jsonl file (dev is held out of it) whose domain 'a'
    has one label, trained for --epochs 0.5 under the smoke profile's max_steps = 12."""
    tmp = tmp_path_factory.mktemp("file-teacher")
    rows = [
        {"text": f"review {i}", "label": 0 if i % 4 < 2 else i % 2, "domain": "ab"[(i // 2) % 2]}
        for i in range(40)
    ]
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = tmp / "runs"
    result = invoke(
        *("teacher", "--profile", "smoke", "--data", str(data), "--epochs", "0.5"),
        *("--output-dir", str(runs), "--name", "t"),
    )
    assert result.exit_code == 0, result.stderr
    return runs, result


def test_notes_about_the_data_are_printed_not_only_logged(
    file_teacher: tuple[Path, object],
) -> None:
    runs, result = file_teacher
    held_out = (
        "note: d.jsonl is the training split: holding out 4 training examples "
        "(10% per domain, seed 0) as dev"
    )
    single = "note: domain 'a' has a single label ('0') in the training data"
    assert held_out in result.stderr and single in result.stderr
    notes = [e.text for e in events_of(runs / "t") if e.type == "message" and e.level == "note"]
    assert len(notes) == 2


def test_epochs_on_the_command_line_replace_the_profiles_max_steps(
    file_teacher: tuple[Path, object],
) -> None:
    runs, _ = file_teacher
    started = next(e for e in events_of(runs / "t") if e.type == "run_started")
    # 36 training examples, batch 8: 4 steps an epoch, so 2 steps, not the profile's 12.
    assert started.total_steps == 2
    assert started.config["train"]["max_steps"] == 0


def test_epochs_zero_is_an_error_not_ignored(runs: Path) -> None:
    result = _smoke(runs, "--name", "zero", "--epochs", "0")
    assert result.exit_code == 2
    assert "train.epochs must be > 0" in result.stderr
    assert not (runs / "zero").exists()


def test_prune_without_model_says_which_run_and_keeps_checkpoints_as_told(
    file_teacher: tuple[Path, object],
) -> None:
    from kdtui.checkpoint import list_checkpoints

    runs, _ = file_teacher
    result = invoke(
        *("prune", "--profile", "smoke", "--output-dir", str(runs), "--name", "p"),
        *("--max-steps", "8", "--keep-checkpoints", "1"),
    )
    assert result.exit_code == 0, result.stderr
    assert (
        f"note: no --model given: pruning {runs / 't'}, the newest finished teacher run in "
        f"{runs}/" in result.stderr
    )
    # Checkpoints were written at steps 4 and 8 (every evaluation); only the newest is kept.
    written = [e.step for e in events_of(runs / "p") if e.type == "checkpoint" and e.kind != "best"]
    assert written == [4, 8]
    assert [c.name for c in list_checkpoints(runs / "p" / "checkpoints")] == ["step-00000008"]
    assert (runs / "p" / "best").is_dir()


def test_distill_takes_max_steps_for_each_stage(file_teacher: tuple[Path, object]) -> None:
    runs, _ = file_teacher
    result = invoke(
        *("distill", "--profile", "smoke", "--teacher", str(runs / "t"), "--domain", "b"),
        *("--data", str(runs.parent / "d.jsonl"), "--max-steps", "2"),
        *("--output-dir", str(runs), "--name", "d", "--quiet"),
    )
    assert result.exit_code == 0, result.stderr
    started = next(e for e in events_of(runs / "d") if e.type == "run_started")
    assert started.total_steps == 4  # stage 1 and stage 2, two steps each


def test_one_student_for_all_domains_together(file_teacher: tuple[Path, object]) -> None:
    # The README's recipe: the data read as one domain named "all" gives one student, trained
    # and scored on every domain's examples together (the teacher's data has domains a and b).
    runs, _ = file_teacher
    result = invoke(
        *("distill", "--profile", "smoke", "--teacher", str(runs / "t"), "--domain", "all"),
        *("--data", str(runs.parent / "d.jsonl"), "--set", "data.domain_column="),
        *("--max-steps", "2", "--output-dir", str(runs), "--name", "pooled", "--quiet"),
    )
    assert result.exit_code == 0, result.stderr
    metrics = metrics_of(runs / "pooled")
    assert list(metrics["domains"]) == ["all"] and metrics["method"] == "vanilla"
    assert sum(metrics["dev_classes"].values()) == 4  # 10% of both domains' 40 examples
    assert (runs / "pooled" / "model").is_dir() and not (runs / "pooled" / "domains").exists()
    started = next(e for e in events_of(runs / "pooled") if e.type == "run_started")
    assert started.config["data"]["domain_column"] == ""


def test_resume_of_a_finished_run_changes_nothing(file_teacher: tuple[Path, object]) -> None:
    runs, _ = file_teacher
    run = runs / "t"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    result = invoke("teacher", "--resume", str(run))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"{run} is finished: nothing to resume, nothing was changed\n"
    assert result.stdout.startswith(f"run: {run}\n") and "best dev accuracy" in result.stdout
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_export_without_the_extra_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    (tmp_path / "config.json").write_text("{}")  # a model folder: checked before the extra
    result = invoke("export", str(tmp_path), "--profile", "smoke")
    assert result.exit_code == 2
    # From this source checkout; an installed kdtui is told `pip install 'kdtui[export]'`.
    assert "constraints.txt -e '" in result.stderr and "[export]'" in result.stderr


def test_export_refuses_an_unknown_format(tmp_path: Path) -> None:
    result = invoke("export", str(tmp_path), "--format", "tflite")
    assert result.exit_code == 2 and "--format must be one of onnx" in result.stderr
