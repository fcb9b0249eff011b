"""bench/metakd.py's table plumbing, with its runs faked: teacher seeds (a row's units are
teacher seed x student seed, and the student alone pairs with each), the teacher step floor,
the diagnostic rows' commands, and that the first tables' run names stay as they were (their
committed records must keep rendering)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import metakd as bench_metakd  # noqa: E402

from bench.stats import fmt_mean_ci  # noqa: E402

DOMAINS = ("books", "dvd")


def make_bench(tmp_path: Path, *options: str) -> bench_metakd.Bench:
    args = bench_metakd.parser().parse_args(
        ["--data", "synthetic", "--model", "tiny", "--records", str(tmp_path / "records"),
         "--output-dir", str(tmp_path / "runs"), *options]
    )  # fmt: skip
    return bench_metakd.Bench(args)


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Every run the table asks for, by name, with a fake record: each student seed gets its
    own accuracy so that distinct and repeated units can be told apart."""
    commands: dict[str, list[str]] = {}

    def run(self: bench_metakd.Bench, name: str, command: list[str], **_: object) -> dict:
        commands[name] = command
        seed = int(command[command.index("--seed") + 1])
        right = seed % 4 + 4  # of 8 examples per domain
        correct = "1" * right + "0" * (8 - right)
        return {"name": name, "command": command, "wall_s": 60.0,
                "test_correct": dict.fromkeys(DOMAINS, correct)}  # fmt: skip

    monkeypatch.setattr(bench_metakd.Bench, "run", run)
    return commands


def test_the_first_tables_names_and_commands_are_kept(
    tmp_path: Path, ran: dict[str, list[str]]
) -> None:
    make_bench(tmp_path, "--rows", "alone,mix,meta").setting("full")
    assert set(ran) == {
        "full/teacher-mix", "full/teacher-meta",
        *(f"full/{d}/{r}-seed{s}" for d in DOMAINS for r in ("alone", "mix", "meta")
          for s in (43, 44, 45)),
    }  # fmt: skip
    assert ran["full/teacher-meta"][:3] == ["teacher", "--method", "meta"]
    assert ran["full/books/meta-seed43"][ran["full/books/meta-seed43"].index("--student") + 1] == (
        "{OUT}/student-init-tiny-2L-seed43"
    )


def test_two_teacher_seeds_give_every_kd_row_six_units_and_the_student_alone_three(
    tmp_path: Path, ran: dict[str, list[str]]
) -> None:
    table = make_bench(tmp_path, "--rows", "alone,mix,meta", "--teacher-seeds", "2").setting("full")
    assert ran["full/teacher-mix-seed142"][ran["full/teacher-mix-seed142"].index("--seed") + 1] == (
        "142"
    )
    assert "full/books/mix-seed43-t142" in ran and "full/books/mix-seed43" in ran
    assert not [n for n in ran if "alone" in n and "t142" in n]  # no teacher: run once
    assert "3 student seeds x 2 teacher seeds" in table
    assert "seeds 42, 142" in table
    # The fake accuracies of seeds 43, 44, 45 are 7, 4, 5 of 8 on each domain: the alone row's
    # interval is over its 3 distinct runs, not 6 with repeats (which would narrow it).
    alone = next(line for line in table.splitlines() if line.startswith("| student alone"))
    three, six = [0.875, 0.5, 0.625], [0.875, 0.5, 0.625] * 2
    assert fmt_mean_ci(three) != fmt_mean_ci(six)  # or this test shows nothing
    assert f"| {fmt_mean_ci(three)} |" in alone


def test_the_data_scarce_setting_keeps_one_teacher_seed(
    tmp_path: Path, ran: dict[str, list[str]]
) -> None:
    make_bench(tmp_path, "--rows", "mix", "--teacher-seeds", "2").setting("scarce")
    assert not [n for n in ran if "142" in n]


def test_a_teacher_step_floor_is_passed_and_sets_the_evaluations(
    tmp_path: Path, ran: dict[str, list[str]]
) -> None:
    bench = make_bench(
        tmp_path, "--teacher-epochs", "2", "--teacher-min-steps", "200", "--rows", "single"
    )
    bench.setting("scarce")
    command = ran["scarce/books/teacher-single"]
    assert "train.min_steps=200" in command
    assert "train.eval_every=50" in command  # 200 steps / 4 evaluations, not the epochs' few
    make_bench(tmp_path, "--teacher-epochs", "2", "--rows", "single").setting("full")
    assert not [c for c in ran["full/books/teacher-single"] if "min_steps" in c]


def test_the_diagnostic_rows_change_one_thing_each(
    tmp_path: Path, ran: dict[str, list[str]]
) -> None:
    rows = "meta,meta-nodomain,meta-uniform,mix-tinit,meta-tinit"
    make_bench(tmp_path, "--rows", rows).setting("full")
    assert "teacher.domain_loss_weight=0" in ran["full/teacher-meta-nodomain"]
    base = ran["full/books/meta-seed43"]
    nodomain = ran["full/books/meta-nodomain-seed43"]
    assert nodomain[nodomain.index("--teacher") + 1] == "{OUT}/full/teacher-meta-nodomain"
    uniform = ran["full/books/meta-uniform-seed43"]
    assert [c for c in uniform if c not in base] == ["distill.expertise_weights=false"]
    for row, method in (("mix-tinit", "vanilla"), ("meta-tinit", "meta")):
        command = ran[f"full/books/{row}-seed43"]
        assert "--student" not in command and "--student-layers" in command
        assert command[command.index("--method") + 1] == method


def test_the_diagnostic_pairs_are_printed_for_the_rows_that_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(self: bench_metakd.Bench, name: str, command: list[str], **_: object) -> dict:
        right = 5 if "vanilla-meta" in name else 4  # of 8: KD from the meta-teacher +12.5 points
        correct = "1" * right + "0" * (8 - right)
        return {"name": name, "command": command, "wall_s": 60.0,
                "test_correct": dict.fromkeys(DOMAINS, correct)}  # fmt: skip

    monkeypatch.setattr(bench_metakd.Bench, "run", run)
    table = make_bench(tmp_path, "--rows", "mix,vanilla-meta,meta").setting("full")
    # The bootstrap resamples examples too, so only the mean is exact here.
    assert "| KD: meta-teacher minus mix teacher (the teacher as a source) | +12.5 [" in table
    assert "student's start" not in table  # the tinit rows did not run
