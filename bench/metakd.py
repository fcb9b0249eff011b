"""Meta-KD against its baselines (METHODS.md), on the same data, budget and seed, through the real
CLI: test accuracy of a small single-domain student per domain, the average, and wall time per row.

Rows, for every target domain D:
  student alone   `kdtui teacher --method single --domain D --model STUDENT` (no KD)
  KD single       `kdtui teacher --method single --domain D`, then `kdtui distill --method vanilla`
  KD mix          `kdtui teacher --method mix`, then `kdtui distill --method vanilla`
  Meta-KD         `kdtui teacher --method meta`, then `kdtui distill --method meta`
Every student starts from the same checkpoint STUDENT: the first --student-layers layers of the
pre-trained --model with a seeded new classifier head, written once into the output folder.
KD rows run both distillation stages (intermediate layers, then predictions); the student alone
trains for as many epochs as the two stages together. Every command gets the same seed.

Budget: the mix and meta teachers train --teacher-epochs over their data. At fraction f the
single-domain teacher and every student train 1/f times the epochs, i.e. as many steps as at
full data (one epoch of 20% of a domain is 17 steps here, after which a single-domain teacher is
still at chance, measured), and students are evaluated on their domain's dev every full-data
epoch's worth of steps. --teacher-min-steps puts a floor under every teacher.

Settings: full data, and data-scarce fractions (--fractions 1,0.2): at fraction f < 1 the target
domain D keeps a seeded f of its training data (`data.train_fraction=f`,
`data.subsample_domains=D`) and the other domains stay whole, for teachers and students alike;
every teacher that sees D is therefore trained once per target domain. Models are selected on
dev only; test accuracy is read from each run's metrics.json.

    python bench/metakd.py                           # ../shared/data/amazon-4domains, MiniLM
    python bench/metakd.py --model tiny --data synthetic --student-layers 1 --max-length 48 \\
        --intermediate-epochs 1 --prediction-epochs 1 --lr 1e-3 --student-lr 1e-3 \\
        --set data.synthetic_train_per_domain=48 --set data.synthetic_eval_per_domain=12

Runs already finished under --output-dir are reused, interrupted ones resumed, so the command can
be rerun after a crash; a run made with other options (OUTPUT/commands.json) is an error. The
table is printed and written to OUTPUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazon-4domains"
ROWS = ("student alone", "KD single-domain teacher", "KD mix teacher", "Meta-KD")
ROW_KEYS = dict(zip(("alone", "single", "mix", "meta"), ROWS, strict=True))  # for --rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="data folder, or 'synthetic'")
    parser.add_argument("--model", default="minilm", help="teacher model (and student source)")
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--teacher-min-steps", type=int, default=0, help="floor for every teacher")
    parser.add_argument("--intermediate-epochs", type=float, default=1.0, help="KD stage 1")
    parser.add_argument("--prediction-epochs", type=float, default=2.0, help="KD stage 2")
    parser.add_argument("--lr", type=float, default=5e-5, help="teacher learning rate")
    parser.add_argument("--student-lr", type=float, default=1e-4)
    parser.add_argument("--fractions", default="1,0.2", help="target-domain training fractions")
    parser.add_argument("--domains", default="", help="comma-separated; default: all")
    parser.add_argument(
        "--rows",
        default=",".join(ROW_KEYS),
        help="which rows, comma-separated: alone, single, mix, meta (default: all four)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--max-train-per-domain", type=int, default=0, help="cap per domain (0: all), seeded"
    )
    parser.add_argument(
        "--teacher-eval-per-domain",
        type=int,
        default=0,
        help="teachers' dev/test cap per domain (0: all); students always use the full splits",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast (slow on CPUs without native bf16)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="extra section.key=value for every command (repeatable)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bench-metakd"))
    args = parser.parse_args()
    if args.data != "synthetic" and not Path(args.data).exists():
        sys.exit(
            f"data not found: {args.data}\n"
            "give --data PATH (a folder with train/dev/test files) or --data synthetic"
        )
    bench = Bench(args)
    fractions = [float(f) for f in args.fractions.split(",")]
    tables = []
    started = time.monotonic()
    for fraction in fractions:
        results = bench.setting(fraction)
        tables.append(render(results, fraction, bench.domains))
        print(tables[-1], flush=True)
    text = "\n".join(tables)
    text += f"\nTotal wall time: {(time.monotonic() - started) / 60:.1f} min (this invocation)\n"
    (args.output_dir / "table.md").write_text(text, encoding="utf-8")
    print(f"written: {args.output_dir / 'table.md'}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.output_dir.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.times_file = self.out / "times.json"
        self.times: dict[str, float] = (
            json.loads(self.times_file.read_text()) if self.times_file.is_file() else {}
        )
        # The command behind each run: a finished run is reused only for the same command.
        self.commands_file = self.out / "commands.json"
        self.commands: dict[str, list[str]] = (
            json.loads(self.commands_file.read_text()) if self.commands_file.is_file() else {}
        )
        self.domains = self._domains()
        unknown = [k for k in args.rows.split(",") if k not in ROW_KEYS]
        if unknown:
            sys.exit(f"--rows: unknown {unknown}; choose from {', '.join(ROW_KEYS)}")
        self.rows = [ROW_KEYS[k] for k in ROW_KEYS if k in args.rows.split(",")]
        self.student = self._student_init()

    # -- data and the shared student checkpoint ------------------------------------------------

    def _data_config(self) -> object:
        from kdtui.config import build_config
        from kdtui.profile import parse_override

        merged: dict = {"data": {"source": self.args.data}}
        for text in self.args.overrides:
            (section, key), value = parse_override(text)
            merged.setdefault(section, {})[key] = value
        return build_config(merged)

    def _domains(self) -> list[str]:
        from kdtui.data import load_data

        data = load_data(self._data_config().data)
        self.label_names = data.label_names
        wanted = [d for d in self.args.domains.split(",") if d]
        unknown = [d for d in wanted if d not in data.domain_names]
        if unknown:
            sys.exit(f"--domains: {unknown} not in the data ({data.domain_names})")
        return wanted or data.domain_names

    def _student_init(self) -> Path:
        """The first k layers of the pre-trained model, a seeded new head: every row's student."""
        folder = (
            self.out
            / f"student-init-{self.args.model.replace('/', '_')}-{self.args.student_layers}L"
        )
        if (folder / "config.json").is_file():
            return folder
        from dataclasses import replace

        from kdtui.models import build_student, load_classifier, load_tokenizer, save_classifier

        config = self._data_config()
        model_cfg = replace(config.model, name=self.args.model)
        base = load_classifier(model_cfg, self.label_names, seed=self.args.seed)
        student = build_student(
            base,
            num_layers=self.args.student_layers,
            init_layers=list(range(self.args.student_layers)),
            seed=self.args.seed,
        )
        save_classifier(student, load_tokenizer(model_cfg), folder, self.label_names)
        return folder

    # -- budget ----------------------------------------------------------------------------------

    def _train_counts(self, fraction: float, domain: str) -> dict[str, int]:
        """Training examples per domain in a setting (after the cap and the target's fraction)."""
        from dataclasses import replace

        from kdtui.data import load_data

        cfg = self._data_config().data
        cfg = replace(cfg, max_train_per_domain=self.args.max_train_per_domain)
        if fraction < 1:
            cfg = replace(cfg, train_fraction=fraction, subsample_domains=(domain,))
        data = load_data(cfg)
        return {d: data.train.domains.count(i) for i, d in enumerate(data.domain_names)}

    def _teacher_steps(self, examples: int) -> int:
        """--teacher-epochs over `examples`, but at least --teacher-min-steps."""
        a = self.args
        per_epoch = max(1, examples // a.batch_size)
        return max(math.ceil(a.teacher_epochs * per_epoch), a.teacher_min_steps)

    # -- one setting (a training fraction of the target domain) ---------------------------------

    def setting(self, fraction: float) -> dict[str, dict[str, float]]:
        """{row: {domain: test accuracy of the domain's student, "_time": seconds}}."""
        tag = "full" if fraction >= 1 else f"frac{fraction:g}"
        a = self.args
        full_counts = self._train_counts(1.0, "")
        rows = self.rows
        accuracy: dict[str, dict[str, float]] = {row: {} for row in rows}
        used: dict[str, set[str]] = {row: set() for row in rows}  # runs whose time a row pays
        shared: dict[str, str] = {}
        shared_methods = [m for m in ("mix", "meta") if ROW_KEYS[m] in rows]
        if fraction >= 1:  # one mix and one meta teacher serve every domain
            steps = self._teacher_steps(sum(full_counts.values()))
            for method in shared_methods:
                shared[method] = self.run(
                    f"{tag}/teacher-{method}",
                    ["teacher", "--method", method, "--max-steps", str(steps)],
                    self._data(1.0, ""),
                )
        for domain in self.domains:
            data = self._data(fraction, domain)
            counts = full_counts if fraction >= 1 else self._train_counts(fraction, domain)
            if fraction < 1:  # the teachers see the scarce target domain: one set per domain
                steps = self._teacher_steps(sum(counts.values()))
                for method in shared_methods:
                    shared[method] = self.run(
                        f"{tag}/{domain}/teacher-{method}",
                        ["teacher", "--method", method, "--max-steps", str(steps)],
                        data,
                    )
            # The single-domain teacher and the student alone are the same command on D.
            on_domain = ["teacher", "--method", "single", "--domain", domain]
            single = ""
            if ROW_KEYS["single"] in rows:
                steps = self._teacher_steps(full_counts[domain])  # 1/f epochs
                single = self.run(
                    f"{tag}/{domain}/teacher-single", [*on_domain, "--max-steps", str(steps)], data
                )
            # Students: their own domain only (its dev picks them, its test ranks them); at
            # fraction f they train 1/f times the epochs, i.e. as many steps as at full data,
            # and are evaluated every full-data epoch's worth of steps.
            scale = 1.0 / fraction if fraction < 1 else 1.0
            eval_every = max(1, full_counts[domain] // a.batch_size)
            student_data = [
                *data,
                "--set",
                f"data.domains={domain}",
                "--set",
                "data.max_eval_per_domain=0",
                "--set",
                f"train.eval_every={eval_every}",
            ]
            alone = ""
            if ROW_KEYS["alone"] in rows:
                alone = self.run(
                    f"{tag}/{domain}/student-alone",
                    [
                        *on_domain,
                        "--model",
                        str(self.student),
                        "--epochs",
                        str(scale * (a.intermediate_epochs + a.prediction_epochs)),
                        "--lr",
                        str(a.student_lr),
                    ],
                    student_data,
                    teacher=False,
                )
            kd = {
                "KD single-domain teacher": (single, "vanilla", "single"),
                "KD mix teacher": (shared.get("mix"), "vanilla", "mix"),
                "Meta-KD": (shared.get("meta"), "meta", "meta"),
            }
            runs = {"student alone": [alone]} if alone else {}
            for row, (teacher, method, kind) in kd.items():
                if row not in rows:
                    continue
                distilled = self._distill(tag, domain, teacher, method, kind, student_data, scale)
                runs[row] = [teacher, distilled]
            for row, names in runs.items():
                accuracy[row][domain] = test_accuracy(self.out / names[-1], domain)
                used[row].update(names)  # a teacher shared by all domains counts once
        return {
            row: {**accuracy[row], "_time": sum(self.times[n] for n in used[row])} for row in rows
        }

    def _distill(
        self,
        tag: str,
        domain: str,
        teacher: str,
        method: str,
        kind: str,
        data: list[str],
        scale: float,
    ) -> str:
        a = self.args
        return self.run(
            f"{tag}/{domain}/distill-{kind}",
            [
                "distill",
                "--teacher",
                str(self.out / teacher),
                "--domain",
                domain,
                "--method",
                method,
                "--student",
                str(self.student),
                "--lr",
                str(a.student_lr),
                "--set",
                f"distill.intermediate_epochs={scale * a.intermediate_epochs}",
                "--set",
                f"distill.prediction_epochs={scale * a.prediction_epochs}",
            ],
            data,
            teacher=False,
        )

    def _data(self, fraction: float, domain: str) -> list[str]:
        """Options every command of a target domain shares: data, length, seed, batch."""
        a = self.args
        options = [
            "--data",
            a.data,
            "--seed",
            str(a.seed),
            "--batch-size",
            str(a.batch_size),
            "--set",
            f"data.max_length={a.max_length}",
            "--set",
            "train.eval_every=0",
        ]
        if a.max_train_per_domain:
            options += ["--set", f"data.max_train_per_domain={a.max_train_per_domain}"]
        if fraction < 1:
            options += [
                "--set",
                f"data.train_fraction={fraction}",
                "--set",
                f"data.subsample_domains={domain}",
            ]
        options += ["--bf16" if a.bf16 else "--no-bf16"]
        for text in a.overrides:
            options += ["--set", text]
        return options

    def run(self, name: str, command: list[str], data: list[str], teacher: bool = True) -> str:
        """Run (or reuse, or resume) one kdtui command into OUTPUT/name; returns name."""
        a = self.args
        folder = self.out / name
        if teacher:
            data = [*data, "--set", f"data.max_eval_per_domain={a.teacher_eval_per_domain}"]
            command = [*command, "--model", a.model, "--lr", str(a.lr)]
        argv = [
            *command,
            *data,
            "--output-dir",
            str(folder.parent),
            "--name",
            folder.name,
            "--quiet",
        ]
        recorded = self.commands.get(name)
        if recorded is not None and recorded != argv and (folder / "config.toml").is_file():
            sys.exit(
                f"{folder} was run with other options than this benchmark now asks for;"
                " move it away (or use another --output-dir) and rerun"
            )
        if (folder / "metrics.json").is_file() and name in self.times:
            return name
        self.commands[name] = argv
        self.commands_file.write_text(json.dumps(self.commands, indent=1) + "\n")
        if (folder / "config.toml").is_file():  # interrupted: continue it
            argv = [command[0], "--resume", str(folder), "--quiet"]
        folder.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] kdtui {' '.join(argv)}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "kdtui", *argv], env=env, cwd=REPO)
        if done.returncode != 0:
            sys.exit(f"kdtui {command[0]} failed ({done.returncode}) for {name}")
        self.times[name] = self.times.get(name, 0.0) + time.monotonic() - start
        self.times_file.write_text(json.dumps(self.times, indent=1) + "\n")
        return name


def test_accuracy(run: Path, domain: str) -> float:
    metrics = json.loads((run / "metrics.json").read_text())
    if "test" not in metrics and "domains" in metrics:
        metrics = metrics["domains"][domain]
    return float(metrics["test"][domain])


def render(results: dict[str, dict[str, float]], fraction: float, domains: list[str]) -> str:
    title = "full data" if fraction >= 1 else f"data-scarce: {fraction:.0%} of the target domain"
    lines = [
        f"### {title}",
        "",
        "| row | " + " | ".join(domains) + " | average | wall time |",
        "| --- | " + " | ".join("---:" for _ in domains) + " | ---: | ---: |",
    ]
    for row, values in results.items():
        accs = [values[d] for d in domains]
        cells = " | ".join(f"{100 * v:.1f}" for v in accs)
        average = 100 * sum(accs) / len(accs)
        lines.append(f"| {row} | {cells} | {average:.1f} | {values['_time'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
