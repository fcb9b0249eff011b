"""Meta-KD against its baselines (the paper's table rows) through the real CLI, with a protocol
fixed before running, several student seeds, and paired intervals.

Rows, for a target domain D (each student learns from D's training data only, is selected on
D's dev split and tested on D's test split):
  student alone   `kdtui teacher --method single --domain D --model STUDENT` (no KD)
  KD single       `kdtui distill --method vanilla` from a teacher fine-tuned on D alone
  KD mix          `kdtui distill --method vanilla` from a teacher fine-tuned on all domains mixed
  Meta-KD         `kdtui distill --method meta` from a meta-teacher (`kdtui teacher --method meta`)
A diagnostic row, not in the table by default (--rows vanilla-meta,meta): `kdtui distill
--method vanilla` from the same meta-teacher, so that Meta-KD minus it is what Meta-KD's own
distillation (the λ weights and the domain term) adds, with the teacher held fixed.

Protocol (fixed before the first real run; every number below is an option's default):
* Teachers: MiniLM-L6, length 64, batch 16, lr 5e-5. Every teacher (mix, meta and single-domain,
  in both settings) trains the same number of optimiser steps, --teacher-steps 200 (0.57 epoch
  of the four domains, 2.3 epochs of one domain at full data, 11 epochs of 20% of one), with
  --evals 4 dev evaluations evenly spaced, selected on dev: all domains for mix and meta, D for
  the single-domain teacher. Teachers are trained once with seed --seed and shared by the
  student seeds they feed (so the intervals cover student training, not teacher training).
* Students: MiniLM's first 2 layers with a new classifier head (one checkpoint per student
  seed: the seed also draws the head). One budget for every row, in optimiser steps, the same in
  every row of a setting: at full data, KD rows --stage1-steps 50 of intermediate-layer
  distillation, then --stage2-steps 150 of prediction distillation (2.3 epochs of a domain), and
  the student alone trains for the 200 steps of the two stages together; in the data-scarce
  setting every student trains --scarce-student-scale 0.5 of these steps (25 + 75, or 100
  alone: still 5.7 epochs of its 280 examples). Every student has --evals 4 dev evaluations
  (over stage 2 for KD, over its whole run alone; KD runs also keep the stage's last step, 2
  steps after its fourth evaluation) and the best one is tested. The step budget is the largest
  that fits the time limit below. The student learning rate, one for every row, --student-lr
  1e-3, was chosen on dev by a pilot (bench/results/metakd-pilot.json): KD from the
  single-domain teacher for books, seed 43, this budget, lr 1e-4 / 3e-4 / 1e-3, the highest
  mean over the two settings of the run's best dev accuracy (0.59 / 0.72 / 0.73). The student
  alone (no teacher: another objective) had the same pilot on its own row, --alone-lr 3e-4
  (0.59 / 0.73 / 0.59; at 1e-3 it predicted one class at full data). The first
  protocol used 1e-4, not chosen on dev: its students had not left the majority class in
  the data-scarce setting (every row at 50.5 on books) and spent half the full-data budget
  there (records in bench/results/metakd-lr1e-4/; `--student-lr 1e-4 --alone-lr 1e-4
  --records` that folder prints its tables).
* Seeds: --seeds 3 student seeds per row (seed + 1, seed + 2, ...), the same seeds for every row.
* Settings: full data on every domain; and the data-scarce setting, where D keeps 20% of its
  training data (`data.train_fraction=0.2`, `data.subsample_domains=D`: 280 examples) and the
  other domains stay whole. Teachers that see D (mix, meta, single) are retrained per target
  domain in the data-scarce setting. To fit ~3 hours on 2 shared cores at `run.threads=1`, both
  settings use two target domains, --domains books,dvd (the first two in alphabetical order,
  chosen before any result); the teachers still see all four domains.
* Statistics (bench/stats.py): a row's mean over seeds of its average test accuracy over the
  target domains, with a 95% t-interval over seeds; Meta-KD minus each baseline as a paired
  difference over the same seeds and the same test examples (all target domains' test examples
  together), with a 95% paired-bootstrap interval resampling seeds and examples (10,000 draws).
  Test accuracy is read only to fill the table; nothing is chosen on it.

Protocol v2 (issue "a meta-teacher that teaches"; settings chosen on dev by
bench/metakd_pilot.py before this table, records in bench/results/metakd-v2/):

    python bench/metakd.py --teacher-epochs 2 --teacher-min-steps 200 --teacher-seeds 2 \
        --stage1-steps 150 --stage2-steps 450 --student-lr 3e-4 --bf16 --jobs 2 \
        --set run.threads=1 --records bench/results/metakd-v2 --output-dir OUT

* Teachers: 2 epochs of their own training data (the teacher pilot) and at least 200 steps
  (2 epochs of a 20% domain are 34 steps, after which the pilot's single-domain teachers were at
  chance on dev; 200 steps is the first protocol's budget, which took them to 75.8 / 78.4),
  with kdtui's default domain term (the authors', γ1 0.5: the domain-term pilot). At full data
  every teacher kind is trained with 2 seeds (42, 142) and every student seed learns from each,
  so a row has 6 units (teacher seed x student seed) and its intervals cover the teacher's draw;
  the student alone has no teacher, so its 3 runs pair with both teacher seeds' units (its own
  interval is over its 3 runs). The data-scarce setting keeps one teacher seed (42).
* Students: 150 + 450 steps at lr 3e-4 for the KD rows (the student budget pilot); the student
  alone trains 600 steps at --alone-lr 3e-4; the data-scarce setting scales both by 0.5.
* Diagnostic rows, run after the table with the same records (`--rows
  meta,vanilla-meta,meta-nodomain,meta-uniform,mix,mix-tinit,meta-tinit --teacher-seeds 1`),
  selecting nothing: Meta-KD from a meta-teacher trained without its domain term
  (teacher.domain_loss_weight=0), Meta-KD with λ_i = 1 (distill.expertise_weights=false: the
  prototype scores still weight the meta-teacher's own loss), plain KD from the meta-teacher, and
  KD mix / Meta-KD with kdtui's default student start (the teacher's layers copied, no --student)
  instead of the shared pre-trained MiniLM layers.

Wall time of the default table, measured: 333 min summed over its runs (teachers 131 min,
students 202 min) at `run.threads=1`, run two or three processes at a time on 2 shared cores;
the first estimate, 3.2 hours of one core, was too low.

Resuming: every finished run writes one small JSON record (command, wall time, metrics, dev
curve, per-example test correctness) to --records (default bench/results/metakd/), meant to be
committed as results come in; its metrics include a teacher's statistics as a source
(source/...), a student's agreement with its teacher (agreement/...) and its dev classes, which
`pilot_choice`, the rule for pilots, reads. A run with a record is never rerun, so a later
session resumes from the records alone; an interrupted run resumes from its run folder under
--output-dir; a teacher whose record exists but whose run folder is gone is retrained
(deterministic on CPU) only if a student still needs it. A record made with another command is
an error. Once its record is written, a run's checkpoints/ and best/ are deleted: they only
serve --resume, which leaves a finished run as it is, and a student run keeps ~720 MiB of them
(the 48 students would fill ~35 GiB); model/ stays, for the students a teacher feeds.

    python bench/metakd.py --set run.threads=1                     # the table (~5.5 core-hours)
    python bench/metakd.py --model tiny --data synthetic --teacher-steps 12 --stage1-steps 4 \\
        --stage2-steps 8 --lr 1e-3 --student-lr 1e-3 --max-length 48 \\
        --set data.synthetic_train_per_domain=48 --set data.synthetic_eval_per_domain=12 \\
        --output-dir /tmp/metakd-smoke --records /tmp/metakd-smoke/records   # ~9 min; --jobs 2: ~5

The table is printed and written to OUTPUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import add_cpu_seconds, claim_cores, cores, cpu_seconds, run_timed  # noqa: E402
from bench.stats import fmt_diff, fmt_mean_ci, paired_bootstrap  # noqa: E402
from kdtui.checkpoint import write_text_atomic  # noqa: E402
from kdtui.events import Eval  # noqa: E402
from kdtui.rundir import RunInfo  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazon-4domains"
ROWS = {
    "alone": "student alone",
    "single": "KD single-domain teacher",
    "mix": "KD mix teacher",
    "vanilla-meta": "KD meta-teacher (no λ, no domain term)",
    "meta-nodomain": "Meta-KD, meta-teacher without its domain term (γ1 = 0)",
    "meta-uniform": "Meta-KD without expertise weights (λ = 1)",
    "mix-tinit": "KD mix teacher, student copied from its teacher",
    "meta-tinit": "Meta-KD, student copied from its teacher",
    "meta": "Meta-KD",
}
PROTOCOL_ROWS = ("alone", "single", "mix", "meta")  # the table; the others are diagnostics
TEACHER_OF = {
    "single": "single",
    "mix": "mix",
    "vanilla-meta": "meta",
    "meta-nodomain": "meta-nodomain",
    "meta-uniform": "meta",
    "mix-tinit": "mix",
    "meta-tinit": "meta",
    "meta": "meta",
}
# Each teacher kind's `kdtui teacher` options (besides model, data, seed and budget).
TEACHER_OPTIONS = {
    "single": ["--method", "single"],
    "mix": ["--method", "mix"],
    "meta": ["--method", "meta"],
    "meta-nodomain": ["--method", "meta", "--set", "teacher.domain_loss_weight=0"],
}
META_ROWS = ("meta", "meta-nodomain", "meta-uniform", "meta-tinit")  # distill --method meta
# Paired differences besides "Meta-KD minus row", printed when both rows ran: each isolates one
# thing (the teacher as a source, or the student's start) with everything else held fixed.
PAIRS = (
    ("vanilla-meta", "mix", "KD: meta-teacher minus mix teacher (the teacher as a source)"),
    ("mix-tinit", "mix", "KD mix: teacher's layers minus MiniLM's layers (the student's start)"),
    ("meta-tinit", "meta", "Meta-KD: teacher's layers minus MiniLM's layers (the student's start)"),
    ("meta-tinit", "mix-tinit", "teacher's layers: Meta-KD minus KD mix"),
)
OUT = "{OUT}"  # stands for --output-dir in recorded commands


def main() -> None:
    args = parser().parse_args()
    check_args(args)
    threads = [int(s.split("=", 1)[1]) for s in args.overrides if s.startswith("run.threads=")]
    claim_cores(args.jobs, (threads[-1] if threads else 0) or cores())
    bench = Bench(args)
    started = time.monotonic()
    tables = []
    for setting in args.settings.split(","):
        if setting not in ("full", "scarce"):
            sys.exit(f"--settings: unknown {setting!r}; choose full, scarce")
        tables.append(bench.setting(setting))
        print(tables[-1], flush=True)
    minutes = (time.monotonic() - started) / 60
    text = "\n".join(tables) + f"\nWall time of this invocation: {minutes:.1f} min\n"
    text += f"Sum of all recorded runs: {bench.recorded_minutes():.1f} min\n"
    (bench.out / "table.md").write_text(text, encoding="utf-8")
    print(text.splitlines()[-2])
    print(text.splitlines()[-1])
    print(f"written: {bench.out / 'table.md'}")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="data folder, or 'synthetic'")
    parser.add_argument("--model", default="minilm", help="teacher model (and student source)")
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-steps", type=int, default=200, help="every teacher")
    parser.add_argument(
        "--teacher-epochs",
        type=float,
        default=0.0,
        help="every teacher's budget in epochs of its own training data (replaces --teacher-steps)",
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast for every run (the first tables ran fp32)",
    )
    parser.add_argument(
        "--student-tag",
        default="",
        help="appended to every student's run name, so students of several pilot settings share"
        " one --records folder and its teachers",
    )
    parser.add_argument("--stage1-steps", type=int, default=50, help="KD intermediate stage")
    parser.add_argument("--stage2-steps", type=int, default=150, help="KD prediction stage")
    parser.add_argument(
        "--scarce-student-scale",
        type=float,
        default=0.5,
        help="student steps in the data-scarce setting, as a fraction of the full-data ones",
    )
    parser.add_argument("--evals", type=int, default=4, help="dev evaluations of every run")
    parser.add_argument("--lr", type=float, default=5e-5, help="teacher learning rate")
    parser.add_argument("--student-lr", type=float, default=1e-3, help="KD rows; chosen on dev")
    parser.add_argument("--alone-lr", type=float, default=3e-4, help="student alone; chosen on dev")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds per row")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time (2 on two cores, with run.threads=1)"
    )
    parser.add_argument("--seed", type=int, default=42, help="teachers' seed; students seed+1..")
    parser.add_argument(
        "--teacher-seeds",
        type=int,
        default=1,
        help="teachers per kind at full data: seeds --seed, --seed + 100, ...; every student"
        " seed learns from each, so the intervals cover the teacher's draw",
    )
    parser.add_argument(
        "--teacher-min-steps",
        type=int,
        default=0,
        help="with --teacher-epochs: at least this many steps for every teacher (train.min_steps)",
    )
    parser.add_argument("--fraction", type=float, default=0.2, help="data-scarce setting")
    parser.add_argument("--settings", default="full,scarce", help="full, scarce or both")
    parser.add_argument("--domains", default="books,dvd", help="target domains; 'all' = every")
    parser.add_argument(
        "--rows",
        default=",".join(PROTOCOL_ROWS),
        help="alone, single, mix, meta; or vanilla-meta, a diagnostic: plain KD from the"
        " meta-teacher, which tells Meta-KD's distillation (λ, domain term) from its teacher",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="extra section.key=value for every command (repeatable)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bench-metakd"))
    parser.add_argument("--records", type=Path, default=REPO / "bench" / "results" / "metakd")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if args.data != "synthetic" and not Path(args.data).exists():
        sys.exit(
            f"data not found: {args.data}\n"
            "give --data PATH (a folder with train/dev/test files) or --data synthetic"
        )
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        sys.exit(f"--rows: any of {', '.join(ROWS)}; got {args.rows}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.output_dir.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.records = args.records.resolve()
        self.records.mkdir(parents=True, exist_ok=True)
        self.rows = [r for r in ROWS if r in args.rows.split(",")]
        self.seeds = [args.seed + 1 + i for i in range(args.seeds)]
        self.teacher_seeds = [args.seed + 100 * i for i in range(args.teacher_seeds)]
        self.domains, self.train_counts = self._domains()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- data and student checkpoints -----------------------------------------------------------

    def _config(self) -> Any:
        """The configuration the runs' commands resolve to, as kdtui resolves them (--data is
        an option, --set an override)."""
        from kdtui.resolver import resolve

        options = {"data.source": self.args.data}
        return resolve(overrides=self.args.overrides, options=options).config

    def _domains(self) -> tuple[list[str], dict[str, int]]:
        from kdtui.data import load_data

        data = load_data(self._config().data)
        self.label_names = data.label_names
        counts = {d: data.train.domains.count(i) for i, d in enumerate(data.domain_names)}
        if self.args.domains == "all":
            return data.domain_names, counts
        wanted = [d for d in self.args.domains.split(",") if d]
        unknown = [d for d in wanted if d not in data.domain_names]
        if unknown:
            sys.exit(f"--domains: {unknown} not in the data ({data.domain_names})")
        return wanted, counts

    def student_init_name(self, seed: int) -> str:
        a = self.args
        return f"student-init-{a.model.replace('/', '_')}-{a.student_layers}L-seed{seed}"

    def student_init(self, seed: int) -> Path:
        """The first k layers of the pre-trained model with a head drawn from `seed`."""
        folder = self.out / self.student_init_name(seed)
        # One lock for every seed: building a student draws from torch's global RNG, which two
        # threads would interleave (measured: --jobs 2 gave other initial heads than --jobs 1).
        with self._lock("student-init"):
            if not (folder / "config.json").is_file():
                self._write_student_init(folder, seed)
        return folder

    def _write_student_init(self, folder: Path, seed: int) -> None:
        a = self.args
        from dataclasses import replace

        from kdtui.checkpoint import atomic_folder
        from kdtui.models import build_student, load_classifier, load_tokenizer, save_classifier

        model_cfg = replace(self._config().model, name=a.model)
        base = load_classifier(model_cfg, self.label_names, seed=seed)
        student = build_student(
            base, num_layers=a.student_layers, init_layers=list(range(a.student_layers)), seed=seed
        )
        with atomic_folder(folder) as tmp:
            save_classifier(student, load_tokenizer(model_cfg), tmp, self.label_names)

    # -- one setting ----------------------------------------------------------------------------

    def setting(self, setting: str) -> str:
        """Run (or read the records of) every run of a setting; returns its table. With --jobs N,
        N students (each after its teacher) run at a time; a run two of them need is run once."""
        # Every (teacher seed, student seed) pair is one unit of a row; the student alone has
        # no teacher, so its units repeat per teacher seed (they pair with the KD rows' units).
        t_seeds = self.teacher_seeds if setting == "full" else self.teacher_seeds[:1]
        students: dict[str, dict[str, list[dict]]] = {r: {} for r in self.rows}
        teachers: dict[str, dict[str, list[dict]]] = {k: {} for k in TEACHER_OPTIONS}

        def one(t_seed: int, domain: str, row: str, seed: int) -> tuple[dict | None, dict]:
            kind = TEACHER_OF.get(row)
            teacher = self.teacher(setting, kind, domain, t_seed) if kind else None
            return teacher, self.student(setting, row, domain, seed, teacher, t_seed)

        order = [
            (t, d, r, s)
            for t in t_seeds
            for d in self.domains
            for r in self.rows
            for s in self.seeds
        ]
        pool = ThreadPoolExecutor(max_workers=self.args.jobs)
        try:
            done = [f.result() for f in [pool.submit(one, *task) for task in order]]
        finally:  # a failed run stops the table: nothing queued starts after it
            pool.shutdown(wait=True, cancel_futures=True)
        for (_, domain, row, _), (teacher, student) in zip(order, done, strict=True):
            if teacher is not None:
                known = teachers[TEACHER_OF[row]].setdefault(domain, [])
                if teacher["name"] not in [t["name"] for t in known]:
                    known.append(teacher)
            students[row].setdefault(domain, []).append(student)
        return self.render(setting, students, teachers, len(t_seeds))

    def _data(self, setting: str, domain: str) -> list[str]:
        """Options every command of a (setting, target domain) shares."""
        a = self.args
        options = [
            "--data", a.data, "--batch-size", str(a.batch_size),
            "--set", f"data.max_length={a.max_length}", "--bf16" if a.bf16 else "--no-bf16",
        ]  # fmt: skip
        if setting == "scarce":
            options += [
                "--set", f"data.train_fraction={a.fraction}",
                "--set", f"data.subsample_domains={domain}",
            ]  # fmt: skip
        for text in a.overrides:
            options += ["--set", text]
        return options

    def teacher(self, setting: str, kind: str, domain: str, seed: int | None = None) -> dict:
        """A teacher's record. At full data the teachers that see every domain serve every
        target domain. The first teacher seed keeps the names of the first tables."""
        a = self.args
        seed = a.seed if seed is None else seed
        shared = setting == "full" and kind != "single"
        name = f"{setting}/teacher-{kind}" if shared else f"{setting}/{domain}/teacher-{kind}"
        name += f"-seed{seed}" if seed != a.seed else ""
        command = ["teacher", *TEACHER_OPTIONS[kind]]
        if kind == "single":
            command += ["--domain", domain]
        command += [
            "--model", a.model, "--lr", str(a.lr), "--seed", str(seed),
            *self.teacher_budget(setting, kind, "" if shared else domain),
            *self._data(setting, "" if shared else domain),
        ]  # fmt: skip
        return self.run(name, command)

    def teacher_budget(self, setting: str, kind: str, domain: str) -> list[str]:
        """--max-steps (the first tables: one step count for every teacher) or --epochs of the
        teacher's own training data, with --evals dev evaluations over it."""
        a = self.args
        if not a.teacher_epochs:
            steps = a.teacher_steps
            return [
                "--max-steps",
                str(steps),
                "--set",
                f"train.eval_every={max(1, steps // a.evals)}",
            ]
        counts = dict(self.train_counts)
        if setting == "scarce" and domain:
            counts[domain] = self._scarce_count(domain)
        examples = counts[domain] if kind == "single" else sum(counts.values())
        from kdtui.config import TrainConfig
        from kdtui.engine.loop import total_steps

        budget = TrainConfig(
            batch_size=a.batch_size, epochs=a.teacher_epochs, min_steps=a.teacher_min_steps
        )
        every = max(1, total_steps(budget, examples) // a.evals)
        floor = ["--set", f"train.min_steps={a.teacher_min_steps}"] if a.teacher_min_steps else []
        return ["--epochs", f"{a.teacher_epochs:g}", *floor, "--set", f"train.eval_every={every}"]

    def student(
        self,
        setting: str,
        row: str,
        domain: str,
        seed: int,
        teacher: dict | None,
        teacher_seed: int | None = None,
    ) -> dict:
        a = self.args
        other_seed = teacher is not None and teacher_seed not in (None, a.seed)
        of_teacher = f"-t{teacher_seed}" if other_seed else ""
        name = f"{setting}/{domain}/{row}-seed{seed}{of_teacher}{a.student_tag}"
        init = f"{OUT}/{self.student_init_name(seed)}"
        lr = a.alone_lr if row == "alone" else a.student_lr
        data = [
            *self._data(setting, domain),
            "--seed", str(seed), "--lr", str(lr),
            "--set", f"data.domains={domain}",
        ]  # fmt: skip
        stage1, stage2 = self.student_steps(setting)
        if row == "alone":
            steps = stage1 + stage2
            command = [
                "teacher", "--method", "single", "--domain", domain, "--model", init,
                "--max-steps", str(steps),
                "--set", f"train.eval_every={max(1, steps // a.evals)}", *data,
            ]  # fmt: skip
            return self.run(name, command, seed=seed)
        assert teacher is not None
        examples = self.train_counts[domain]
        if setting == "scarce":
            examples = self._scarce_count(domain)
        per_epoch = max(1, examples // a.batch_size)
        # epochs that give exactly the wanted steps (the loop takes ceil(per_epoch * epochs))
        copied = row.endswith("-tinit")  # kdtui's default student: the teacher's layers
        start = ["--student-layers", str(a.student_layers)] if copied else ["--student", init]
        command = [
            "distill", "--teacher", f"{OUT}/{teacher['name']}", "--domain", domain,
            "--method", "meta" if row in META_ROWS else "vanilla", *start,
            "--set", f"distill.intermediate_epochs={(stage1 - 0.5) / per_epoch!r}",
            "--set", f"distill.prediction_epochs={(stage2 - 0.5) / per_epoch!r}",
            "--set", f"train.eval_every={max(1, stage2 // a.evals)}", *data,
        ]  # fmt: skip
        if row == "meta-uniform":
            command += ["--set", "distill.expertise_weights=false"]
        return self.run(name, command, needs=teacher, seed=None if copied else seed)

    def student_steps(self, setting: str) -> tuple[int, int]:
        """(stage 1, stage 2) optimiser steps of every student of a setting."""
        a = self.args
        scale = a.scarce_student_scale if setting == "scarce" else 1.0
        return max(1, round(scale * a.stage1_steps)), max(1, round(scale * a.stage2_steps))

    def _scarce_count(self, domain: str) -> int:
        from dataclasses import replace

        from kdtui.data import load_data

        cfg = replace(
            self._config().data, train_fraction=self.args.fraction, subsample_domains=(domain,)
        )
        data = load_data(cfg)
        return data.train.domains.count(data.domain_names.index(domain))

    # -- runs and their records -----------------------------------------------------------------

    def folder(self, record: dict) -> Path:
        """A run's folder, retraining it if only its record is left (a student needs it)."""
        folder = self.out / record["name"]
        with self._lock(record["name"]):
            if not (folder / "model" / "config.json").is_file():
                self._execute(record["name"], record["command"])
        return folder

    def _lock(self, name: str) -> threading.Lock:
        """One lock per run (and one for building student checkpoints): with --jobs, a job that
        needs a run another job is running waits for it, then reads its record."""
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def record_path(self, name: str) -> Path:
        return self.records / (name.replace("/", "__") + ".json")

    def recorded_minutes(self) -> float:
        total = 0.0
        for path in self.records.glob("*.json"):
            total += json.loads(path.read_text())["wall_s"]
        return total / 60

    def run(
        self, name: str, command: list[str], needs: dict | None = None, seed: int | None = None
    ) -> dict:
        """The record of one kdtui run: read it, or run (resume) the command and write it.
        Commands name folders under --output-dir as {OUT}/..., so records do not depend on
        where the run folders are."""
        with self._lock(name):
            return self._run(name, command, needs, seed)

    def _run(self, name: str, command: list[str], needs: dict | None, seed: int | None) -> dict:
        path = self.record_path(name)
        if path.is_file():
            record = json.loads(path.read_text())
            if record["command"] != command:
                sys.exit(
                    f"{path} was made with another command than this benchmark now runs;"
                    " move it away (or use another --records) and rerun"
                )
            return record
        if needs is not None:
            self.folder(needs)
        if seed is not None:
            self.student_init(seed)
        wall = self._execute(name, command)
        record = self._record(name, command, wall)
        write_text_atomic(path, json.dumps(record, separators=(",", ":")) + "\n")
        for spent in ("checkpoints", "best"):
            shutil.rmtree(self.out / name / spent, ignore_errors=True)
        return record

    def _execute(self, name: str, command: list[str]) -> float:
        folder = self.out / name
        command = [part.replace(OUT, str(self.out)) for part in command]
        argv = [*command, "--output-dir", str(folder.parent), "--name", folder.name, "--quiet"]
        written = RunInfo(folder)
        if written.config_file.is_file():
            if written.finished():  # finished, record not yet written
                recorded = folder / "wall_s"
                if recorded.is_file():
                    return float(recorded.read_text())
                return written.active_seconds()
            argv = [command[0], "--resume", str(folder), "--quiet"]
        spent = written.active_seconds()  # a killed run's earlier attempts left no wall_s
        folder.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] kdtui {' '.join(argv)}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = folder.with_name(f"{folder.name}.log")  # beside the run folder
        done = run_timed([sys.executable, "-m", "kdtui", *argv], log=log, env=env)
        add_cpu_seconds(folder, done.cpu_s)
        if done.returncode != 0:
            sys.exit(f"kdtui {command[0]} failed ({done.returncode}) for {name}; see {log}")
        wall = done.wall_s + spent
        (folder / "wall_s").write_text(f"{wall}\n")
        return wall

    def _record(self, name: str, command: list[str], wall: float) -> dict:
        written = RunInfo(self.out / name)
        metrics = written.metrics()
        dev = [[e.step, e.accuracy] for e in written.events() if isinstance(e, Eval)]
        return {
            "name": name,
            "command": command,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu_seconds(self.out / name), 1),
            "metrics": recorded_metrics(metrics),
            "dev": dev,
            "test_correct": written.correct_by_domain(),
        }

    # -- the table ------------------------------------------------------------------------------

    def render(
        self,
        setting: str,
        students: dict[str, dict[str, list[dict]]],
        teachers: dict[str, dict[str, list[dict]]],
        teacher_seeds: int = 1,
    ) -> str:
        a = self.args
        title = (
            "Full data"
            if setting == "full"
            else f"Data-scarce: {a.fraction:.0%} of the target domain's training data"
        )
        domains = self.domains
        drawn = f"{len(self.seeds)} student seeds"
        if teacher_seeds > 1:
            drawn += f" x {teacher_seeds} teacher seeds"
        lines = [
            f"### {title} ({drawn}; test accuracy %, mean ± 95% interval)",
            "",
            "| row | " + " | ".join(domains) + " | average | Meta-KD minus row [95%] | wall time |",
            "| --- | " + " | ".join("---:" for _ in domains) + " | ---: | ---: | ---: |",
        ]

        def correct(row: str, domain: str) -> list[list[int]]:
            return [[int(c) for c in r["test_correct"][domain]] for r in students[row][domain]]

        def joined(row: str) -> list[list[int]]:  # per unit: every target domain's examples
            per_domain = [correct(row, d) for d in domains]
            return [sum((p[s] for p in per_domain), []) for s in range(len(per_domain[0]))]

        def distinct(row: str) -> list[dict[str, dict]]:  # per distinct unit: domain -> record
            per_domain = [students[row][d] for d in domains]
            units = [dict(zip(domains, u, strict=True)) for u in zip(*per_domain, strict=True)]
            return list({tuple(r["name"] for r in u.values()): u for u in units}.values())

        for row in self.rows:
            cells = [fmt_mean_ci([_acc(u[d], d) for u in distinct(row)]) for d in domains]
            average = fmt_mean_ci(
                [sum(_acc(u[d], d) for d in domains) / len(domains) for u in distinct(row)]
            )
            diff = (
                fmt_diff(paired_bootstrap(joined("meta"), joined(row)))
                if row != "meta" and "meta" in self.rows
                else "-"
            )
            runs = [r for u in distinct(row) for r in u.values()]
            kind = TEACHER_OF.get(row)
            if kind:  # a teacher shared by several domains counts once
                shared = [t for ts in teachers[kind].values() for t in ts]
                runs += list({t["name"]: t for t in shared}.values())
            minutes = sum(r["wall_s"] for r in runs) / 60
            lines.append(
                f"| {ROWS[row]} | {' | '.join(cells)} | {average} | {diff} | {minutes:.1f} min |"
            )
        pairs = [(a, b, what) for a, b, what in PAIRS if a in self.rows and b in self.rows]
        if pairs:
            lines += ["", "| paired difference | points [95%] |", "| --- | ---: |"]
            for a, b, what in pairs:
                lines.append(f"| {what} | {fmt_diff(paired_bootstrap(joined(a), joined(b)))} |")
        seeds = ", ".join(str(s) for s in self.teacher_seeds[:teacher_seeds])
        each = "one run each, seed" if teacher_seeds == 1 else "one run per seed, seeds"
        lines += ["", f"Teachers on the target domain's test split ({each} {seeds}):", ""]
        for kind, by_domain in teachers.items():
            if by_domain:
                accs = ", ".join(
                    f"{d} " + " / ".join(f"{100 * _acc(t, d):.1f}" for t in ts)
                    for d, ts in by_domain.items()
                )
                lines.append(f"- {kind}: {accs}")
        return "\n".join(lines) + "\n"


# What a record keeps of a run's metrics.json: the selection and test results, a teacher's
# statistics as a source (source/...), a student's agreement with its teacher (agreement/...)
# and its classes on its domain's dev (dev_classes, which the pilot rule reads).
RECORDED = ("steps", "best_step", "best_dev", "stopped_early", "test", "dev_classes")
RECORDED_PREFIXES = ("source/", "agreement/")


def recorded_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k in RECORDED or k.startswith(RECORDED_PREFIXES)}


def pilot_choice(settings: dict[str, list[dict[str, Any]]]) -> tuple[str | None, dict[str, str]]:
    """The pilot rule, fixed before any pilot run. SETTINGS maps each candidate setting (a
    budget, a learning rate, a domain-loss weight) to the metrics of the students trained under
    it (a record's "metrics": best_dev on the student's own domain, dev_classes).

    1. A setting under which any student ends (its selected model) predicting one class for
       every dev example of its domain — it learned only the class prior — is not eligible;
       nor is a setting without students, or one whose student has no dev_classes.
    2. Among the eligible settings, the highest mean best dev accuracy over its students wins;
       a tie goes to the setting given first.

    Returns (the chosen setting or None when none is eligible, {excluded setting: why})."""
    excluded: dict[str, str] = {}
    means: dict[str, float] = {}
    for name, students in settings.items():
        classes = [s.get("dev_classes") for s in students]
        if not students or any(not c for c in classes):
            excluded[name] = "no students with dev_classes"
        elif any(sum(n > 0 for n in c.values()) <= 1 for c in classes):
            excluded[name] = "a student predicts one class on its dev"
        else:
            means[name] = sum(s["best_dev"] for s in students) / len(students)
    chosen = max(means, key=lambda n: means[n]) if means else None
    return chosen, excluded


def _acc(record: dict, domain: str) -> float:
    text = record["test_correct"][domain]
    return sum(c == "1" for c in text) / len(text) if text else math.nan


if __name__ == "__main__":
    main()
