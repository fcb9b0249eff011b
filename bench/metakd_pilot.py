"""The Meta-KD pilots on dev: the teachers' budget, the meta-teacher's domain term and the
students' budget, each chosen by a rule written down before any of its runs (issue 25).

Every run is bench/metakd.py's (MiniLM-L6, amazon-4domains, length 64, batch 16, teacher lr
5e-5, teacher seed 42, 2-layer students copied from MiniLM's first layers), in bf16, one thread
per run, two runs at a time. Nothing here reads a test number.

Stage 1, teachers (`teachers`): one epoch count for every teacher.
* Runs: the mix teacher (`kdtui teacher --method mix`, all four domains) at 1, 2 and 3 epochs,
  each a run with its own schedule, 4 dev evaluations, the best dev checkpoint kept.
* Choice: the smallest epoch count whose best dev accuracy (all four domains) is within 0.5
  points of the best of the three. Every teacher of the table (single-domain, mix, meta, in
  both settings) then trains that many epochs of its own training data.

Stage 2, the meta-teacher's domain term (`domain`): the default and γ1.
* Candidates, in this order: the authors' loss with γ1 0.5 (EasyNLP's script), the confusion
  game with γ1 0.05, 0.1 and 0.5, and no domain term (γ1 0).
* Each: a meta-teacher at stage 1's epochs, then Meta-KD students (`kdtui distill --method
  meta`) for books and dvd at full data, student seeds 101 and 102 (not the table's), the
  first table's student budget (50 + 150 steps, lr 1e-3).
* Rule: bench/metakd.py's `pilot_choice` over each candidate's four students: a candidate with a
  student that predicts one class on its dev is not eligible; the highest mean best dev
  accuracy wins; a tie goes to the earlier candidate. The winner becomes kdtui's default.

Stage 3, the students' budget (`students`), for the KD rows together.
* Candidates, in this order: (stage 1, stage 2) steps (50, 150) and (150, 450) at full data
  (half of each in the data-scarce setting, as in the table), each at student lr 1e-3 and
  3e-4.
* Each: KD from the single-domain and from the mix teacher (stage 1's epochs), books and dvd,
  full data and 20% of the target domain, student seed 101.
* Rule: `pilot_choice` over each candidate's eight students (as stage 2). Meta-KD students get
  the same budget (no pilot of their own).

Records go to --records/<folder> (one bench/metakd.py records folder per teacher setting), runs
to --output-dir/<folder>; a rerun resumes from the records and prints the tables.

    python bench/metakd_pilot.py                          # all three stages, in order
    python bench/metakd_pilot.py --stages teachers        # one stage
    python bench/metakd_pilot.py --report                 # the tables from the records
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent)]
from bench.machine import claim_cores  # noqa: E402
from bench.metakd import Bench, check_args, parser, pilot_choice  # noqa: E402

TEACHER_EPOCHS = (1.0, 2.0, 3.0)
WITHIN = 0.005  # 0.5 points of dev accuracy
# (name, teacher.domain_loss, teacher.domain_loss_weight)
DOMAIN_TERMS = (
    ("authors-0.5", "authors", 0.5),
    ("confusion-0.05", "confusion", 0.05),
    ("confusion-0.1", "confusion", 0.1),
    ("confusion-0.5", "confusion", 0.5),
    ("none", "confusion", 0.0),
)
# (stage 1 steps, stage 2 steps, student lr) at full data
STUDENT_BUDGETS = ((50, 150, 1e-3), (50, 150, 3e-4), (150, 450, 1e-3), (150, 450, 3e-4))
DOMAINS = ("books", "dvd")
STAGES = ("teachers", "domain", "students")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(BENCH.parents[1] / "shared" / "data" / "amazon-4domains"))
    p.add_argument("--model", default="minilm")
    p.add_argument("--stages", default=",".join(STAGES), help="any of " + ", ".join(STAGES))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--output-dir", type=Path, default=Path("/tmp/kdtui-metakd-pilot"))
    p.add_argument("--records", type=Path, default=BENCH / "results" / "metakd-pilot-v2")
    p.add_argument("--report", action="store_true", help="print the tables; run nothing")
    p.add_argument("--set", action="append", default=[], help="section.key=value for every run")
    args = p.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if unknown := [s for s in stages if s not in STAGES]:
        sys.exit(f"--stages: unknown {unknown}; choose from {', '.join(STAGES)}")
    started = time.perf_counter()
    if not args.report:
        claim_cores(args.jobs, 1)
    for stage in STAGES:
        if stage in stages:
            print(STAGE_RUNNERS[stage](args), flush=True)
    print(f"\nThis invocation: {(time.perf_counter() - started) / 60:.1f} min")


def bench_for(args: argparse.Namespace, folder: str, *extra: str) -> Bench:
    """bench/metakd.py's Bench for one records folder, with the pilots' shared settings."""
    options = [
        "--data", args.data, "--model", args.model, "--bf16", "--set", "run.threads=1",
        "--records", str(args.records / folder), "--output-dir", str(args.output_dir / folder),
        *(x for text in args.set for x in ("--set", text)), *extra,
    ]  # fmt: skip
    bench_args = parser().parse_args(options)
    check_args(bench_args)
    return Bench(bench_args)


def in_parallel(args: argparse.Namespace, tasks: list[Callable[[], Any]]) -> list[Any]:
    if args.report:
        return []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return [f.result() for f in [pool.submit(task) for task in tasks]]


def recorded(bench: Bench, name: str) -> dict[str, Any] | None:
    """A run's record, or None before it has one (read without running anything)."""
    import json

    path = bench.record_path(name)
    return json.loads(path.read_text()) if path.is_file() else None


# -- stage 1 ------------------------------------------------------------------------------------


def teacher_folder(epochs: float) -> str:
    return f"teachers-{epochs:g}ep"


def teachers_stage(args: argparse.Namespace) -> str:
    benches = {
        e: bench_for(args, teacher_folder(e), "--teacher-epochs", f"{e:g}") for e in TEACHER_EPOCHS
    }
    in_parallel(args, [lambda b=b: b.teacher("full", "mix", "") for b in benches.values()])
    lines = ["## Stage 1: teacher epochs (mix teacher, dev accuracy of all four domains)", ""]
    lines += [
        "| epochs | steps | best dev | dev curve | wall min |",
        "| --- | --- | --- | --- | --- |",
    ]
    for epochs, bench in benches.items():
        r = recorded(bench, "full/teacher-mix")
        if r is None:
            lines.append(f"| {epochs:g} | - | - | - | - |")
            continue
        curve = ", ".join(f"{100 * acc['all']:.1f}" for _, acc in r["dev"])
        lines.append(
            f"| {epochs:g} | {r['metrics']['steps']} | {100 * r['metrics']['best_dev']:.1f} "
            f"| {curve} | {r['wall_s'] / 60:.1f} |"
        )
    chosen = chosen_epochs(args)
    lines.append(f"\nChosen (smallest within 0.5 points of the best): {chosen or 'not yet'}")
    return "\n".join(lines)


def chosen_epochs(args: argparse.Namespace) -> float | None:
    """Stage 1's choice, or None until all its runs have records."""
    best: dict[float, float] = {}
    for epochs in TEACHER_EPOCHS:
        bench = bench_for(args, teacher_folder(epochs), "--teacher-epochs", f"{epochs:g}")
        r = recorded(bench, "full/teacher-mix")
        if r is None:
            return None
        best[epochs] = r["metrics"]["best_dev"]
    return epochs_choice(best)


def epochs_choice(best_dev: dict[float, float]) -> float:
    """Stage 1's rule: the smallest epoch count whose best dev accuracy is within 0.5 points of
    the best one's."""
    top = max(best_dev.values())
    return min(e for e, dev in best_dev.items() if dev >= top - WITHIN)


def need_epochs(args: argparse.Namespace) -> float:
    epochs = chosen_epochs(args)
    if epochs is None:
        sys.exit("stage 1 (teachers) has not finished: run --stages teachers first")
    return epochs


# -- stage 2 ------------------------------------------------------------------------------------


def domain_stage(args: argparse.Namespace) -> str:
    epochs = need_epochs(args)
    benches = {
        name: bench_for(
            args,
            f"domain-{name}",
            "--teacher-epochs",
            f"{epochs:g}",
            "--rows",
            "meta",
            "--set",
            f"teacher.domain_loss={loss}",
            "--set",
            f"teacher.domain_loss_weight={w}",
        )  # fmt: skip
        for name, loss, w in DOMAIN_TERMS
    }
    in_parallel(args, [lambda b=b: b.teacher("full", "meta", "") for b in benches.values()])
    tasks = [
        lambda b=b, d=d, s=s: b.student("full", "meta", d, s, b.teacher("full", "meta", ""))
        for b in benches.values()
        for d in DOMAINS
        for s in (101, 102)
    ]
    in_parallel(args, tasks)
    students = {
        name: [
            r["metrics"]
            for d in DOMAINS
            for s in (101, 102)
            if (r := recorded(b, f"full/{d}/meta-seed{s}")) is not None
        ]
        for name, b in benches.items()
    }
    teachers = {name: recorded(b, "full/teacher-meta") for name, b in benches.items()}
    lines = [
        f"## Stage 2: the meta-teacher's domain term ({epochs:g}-epoch teachers; Meta-KD "
        "students for books and dvd, seeds 101 and 102, full data)",
        "",
        "| candidate | teacher dev | students' mean dev | students | one-class students |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, _, _ in DOMAIN_TERMS:
        t, ss = teachers[name], students[name]
        tdev = f"{100 * t['metrics']['best_dev']:.1f}" if t else "-"
        mean = f"{100 * statistics.mean(s['best_dev'] for s in ss):.1f}" if ss else "-"
        one = sum(1 for s in ss if sum(n > 0 for n in (s.get("dev_classes") or {}).values()) <= 1)
        lines.append(f"| {name} | {tdev} | {mean} | {len(ss)} | {one} |")
    complete = all(len(ss) == 2 * len(DOMAINS) for ss in students.values())
    chosen, excluded = pilot_choice(students) if complete else (None, {})
    lines.append(
        f"\nChosen: {chosen or 'not yet'}" + (f"; excluded: {excluded}" if excluded else "")
    )
    return "\n".join(lines)


# -- stage 3 ------------------------------------------------------------------------------------


def budget_name(stage1: int, stage2: int, lr: float) -> str:
    return f"{stage1}+{stage2}-lr{lr:g}"


def students_stage(args: argparse.Namespace) -> str:
    epochs = need_epochs(args)
    folder = teacher_folder(epochs)  # the stage-1 mix teacher of these epochs is reused
    benches = {
        budget_name(s1, s2, lr): bench_for(
            args,
            folder,
            "--teacher-epochs",
            f"{epochs:g}",
            "--stage1-steps",
            str(s1),
            "--stage2-steps",
            str(s2),
            "--student-lr",
            f"{lr:g}",
            "--student-tag",
            f"-{budget_name(s1, s2, lr)}",
        )  # fmt: skip
        for s1, s2, lr in STUDENT_BUDGETS
    }
    first = next(iter(benches.values()))
    teacher_runs = [("full", "mix", "")] + [
        (setting, kind, d)
        for setting in ("full", "scarce")
        for kind in ("single", "mix")
        for d in DOMAINS
        if (setting, kind) != ("full", "mix")
    ]
    # Teachers first, by one Bench (its locks keep one run per teacher), shared by every budget.
    in_parallel(args, [lambda t=t: first.teacher(*t) for t in teacher_runs])
    cells = [
        (setting, row, d)
        for setting in ("full", "scarce")
        for row in ("single", "mix")
        for d in DOMAINS
    ]
    tasks = [
        lambda b=b, c=c: b.student(c[0], c[1], c[2], 101, b.teacher(c[0], c[1], c[2]))
        for b in benches.values()
        for c in cells
    ]
    in_parallel(args, tasks)
    students: dict[str, list[dict[str, Any]]] = {}
    lines = [
        f"## Stage 3: the students' budget (KD from single and mix teachers of {epochs:g} "
        "epochs; books and dvd; full data and 20%; seed 101)",
        "",
        "| candidate | full single | full mix | 20% single | 20% mix | mean dev | one-class |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, b in benches.items():
        found = {c: recorded(b, f"{c[0]}/{c[2]}/{c[1]}-seed101-{name}") for c in cells}
        students[name] = [r["metrics"] for r in found.values() if r is not None]
        row = []
        for setting in ("full", "scarce"):
            for kind in ("single", "mix"):
                devs = [found[(setting, kind, d)] for d in DOMAINS]
                row.append(
                    " / ".join(f"{100 * r['metrics']['best_dev']:.1f}" if r else "-" for r in devs)
                )
        ss = students[name]
        mean = f"{100 * statistics.mean(s['best_dev'] for s in ss):.1f}" if ss else "-"
        one = sum(1 for s in ss if sum(n > 0 for n in (s.get("dev_classes") or {}).values()) <= 1)
        lines.append(f"| {name} | {' | '.join(row)} | {mean} | {one} |")
    complete = all(len(ss) == len(cells) for ss in students.values())
    chosen, excluded = pilot_choice(students) if complete else (None, {})
    lines.append("\n(cells: books / dvd best dev accuracy)")
    lines.append(f"Chosen: {chosen or 'not yet'}" + (f"; excluded: {excluded}" if excluded else ""))
    return "\n".join(lines)


STAGE_RUNNERS: dict[str, Callable[[argparse.Namespace], str]] = {
    "teachers": teachers_stage,
    "domain": domain_stage,
    "students": students_stage,
}


if __name__ == "__main__":
    main()
