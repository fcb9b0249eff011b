"""A catalogue of hostile and broken input across every command and file type.

Each case runs the real CLI and asserts the one-line message, exit code 2, that no new run
directory was left behind, and that an existing run beside it was not touched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kdtui.models import bundled_minilm_path
from tests.conftest import invoke

ROWS = [{"text": f"review {i}", "label": i % 2, "domain": "ab"[(i // 2) % 2]} for i in range(40)]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Path, Path], list[str]]  # (scratch folder, teacher run) -> CLI arguments
    message: str  # a substring of the one-line error


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def teacher(*extra: str) -> list[str]:
    return ["teacher", "--profile", "smoke", *extra]


def profile(text: str | bytes) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, _: teacher("--profile", str(write(tmp / "p.toml", text)))


def data(make: Callable[[Path], Path]) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, _: teacher("--data", str(make(tmp)))


def model_folder(tmp: Path, config: str | None, weights: bytes | None = None) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def truncated_model(tmp: Path, teacher_run: Path) -> Path:
    folder = tmp / "truncated"
    folder.mkdir()
    for f in (teacher_run / "model").iterdir():
        content = f.read_bytes()
        (folder / f.name).write_bytes(content[:-200] if f.suffix == ".safetensors" else content)
    return folder


def csv_rows(path: Path, extra_field_in_row: int | None = None) -> Path:
    lines = ["text,label,domain"]
    for i, r in enumerate(ROWS):
        lines.append(
            f"{r['text']},{r['label']},{r['domain']}" + (",x" if i == extra_field_in_row else "")
        )
    return write(path, "\n".join(lines) + "\n")


def resized_model(tmp: Path, teacher_run: Path) -> Path:
    """The teacher's weights under a config.json that describes other shapes."""
    folder = tmp / "resized"
    folder.mkdir()
    for f in (teacher_run / "model").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def relayered_model(tmp: Path, teacher_run: Path, layers: int) -> Path:
    """The teacher's 2-layer weights under a config.json that says LAYERS layers."""
    folder = tmp / f"layers-{layers}"
    folder.mkdir()
    for f in (teacher_run / "model").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def edited_run(tmp: Path, teacher_run: Path) -> Path:
    """A copy of the teacher run whose config.toml was edited by hand to an invalid value."""
    folder = tmp / "edited"
    for name in ("config.toml", "events.jsonl", "metrics.json"):
        write(folder / name, (teacher_run / name).read_bytes())
    for f in (teacher_run / "model").iterdir():
        write(folder / "model" / f.name, f.read_bytes())
    config = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(config.replace("max_length = 48", "max_length = 100000"))
    return folder


def relabelled_model(tmp: Path, teacher_run: Path) -> Path:
    """The teacher's model as if trained for labels neg/pos."""
    folder = tmp / "relabelled"
    for f in (teacher_run / "model").iterdir():
        write(folder / f.name, f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["kdtui_labels"] = ["neg", "pos"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def unfinished_run(tmp: Path, teacher_run: Path, failed: bool = False) -> Path:
    """The teacher run as it was before it saved its model: stopped, or failed."""
    folder = tmp / "unfinished"
    write(folder / "config.toml", (teacher_run / "config.toml").read_bytes())
    lines = (teacher_run / "events.jsonl").read_text().splitlines()
    events = [e for e in lines if '"run_finished"' not in e]
    if failed:
        events.append(json.dumps({"type": "run_failed", "time": 0, "step": 3, "error": "x"}))
    write(folder / "events.jsonl", "\n".join(events) + "\n")
    return folder


def pickled_code_model(tmp: Path) -> Path:
    """A config and a pytorch_model.bin whose unpickling would run a shell command."""
    import torch

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {tmp / 'EXPLOITED'}",))

    folder = model_folder(
        tmp, json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"]})
    )
    torch.save({"bert.embeddings.word_embeddings.weight": Exploit()}, folder / "pytorch_model.bin")
    return folder


def without_tokenizer(tmp: Path, teacher_run: Path) -> Path:
    """The teacher's model folder with its tokenizer files removed (a copy made carelessly)."""
    folder = tmp / "no-tokenizer"
    folder.mkdir()
    for f in (teacher_run / "model").iterdir():
        if not f.name.startswith("tokenizer"):
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def with_other_tokenizer(tmp: Path, teacher_run: Path) -> Path:
    """The teacher's model with a 7-word WordPiece vocabulary in place of its tokenizer."""
    folder = without_tokenizer(tmp, teacher_run)
    write(folder / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ngood\nbad\n")
    return folder


CASES = [
    # profiles and options
    Case("malformed-toml", profile("[train\nlr = "), "is not valid TOML"),
    Case(
        "profile-not-utf8", profile(b"\xff\xfe[train]\x00"), "is not UTF-8 text (line 1: byte 0xff)"
    ),
    # A byte-order mark (Windows editors write one) is read past: the error is the profile's own.
    Case("profile-with-bom", profile(b"\xef\xbb\xbf[train]\nlr = -1\n"), "train.lr must be > 0"),
    Case(
        "profile-is-a-folder",
        lambda tmp, _: teacher("--profile", str(tmp)),
        "is not a TOML file",
    ),
    Case("unknown-section", profile("[trian]\nlr = 1\n"), "did you mean 'train'"),
    Case("unknown-key", lambda *_: teacher("--set", "train.lrr=1"), "did you mean 'train.lr'"),
    Case(
        "key-under-another-section",
        profile("[train]\nsparsity = 0.9\n"),
        "unknown key 'train.sparsity': sparsity is a key of [prune]; did you mean "
        "'prune.sparsity'?",
    ),
    # A value the user did not give: the message names the file it came from.
    Case(
        "distill-teacher-run-with-an-edited-config",
        lambda tmp, run: ["distill", "--teacher", str(edited_run(tmp, run)), "--domain", "books"],
        "edited/config.toml, whose [data] distill trains on; fix it there, or override it "
        "with --set)",
    ),
    Case(
        "evaluate-run-with-an-edited-config",
        lambda tmp, run: ["evaluate", str(edited_run(tmp, run))],
        "edited/config.toml, the run ",  # the run the model comes from
    ),
    Case(
        "resume-run-with-an-edited-config",
        lambda tmp, run: ["teacher", "--resume", str(edited_run(tmp, run))],
        "edited/config.toml)",
    ),
    Case(
        "string-for-integer",
        lambda *_: teacher("--set", 'train.batch_size="8"'),
        "train.batch_size must be an integer",
    ),
    Case("table-for-number", profile("[train]\nlr = {a = 1}\n"), "train.lr must be a number"),
    Case("section-not-a-table", profile("train = 5\n"), "'train' must be a table"),
    Case(
        "huge-batch",
        lambda *_: teacher("--set", "train.batch_size=1000000000000"),
        "train.batch_size must be at most 65536",
    ),
    Case(
        "huge-length",
        lambda *_: teacher("--set", "data.max_length=100000000"),
        "data.max_length must be at most 4096",
    ),
    Case(
        "negative-cap",
        lambda *_: teacher("--set", "data.max_train_per_domain=-1"),
        "data.max_train_per_domain must be >= 0",
    ),
    Case(
        "length-beyond-the-model-positions",
        lambda *_: teacher("--set", "data.max_length=1000"),
        "data.max_length = 1000 is more than model 'tiny' can read: its position embeddings "
        "cover 512 tokens",
    ),
    Case("infinite-lr", lambda *_: teacher("--set", "train.lr=inf"), "must be a finite number"),
    Case("set-without-equals", lambda *_: teacher("--set", "train.lr"), "section.key=value"),
    # data files
    Case("data-missing", lambda *_: teacher("--data", "nope.jsonl"), "does not exist"),
    Case("data-folder-without-train", data(lambda t: t), "has no training file"),
    Case("data-unsupported-type", data(lambda t: write(t / "d.xlsx", "x")), "unsupported type"),
    Case(
        "data-not-utf8",
        data(lambda t: write(t / "d.jsonl", b'{"text": "caf\xe9", "label": 1, "domain": "a"}\n')),
        "is not UTF-8 text",
    ),
    Case(
        "data-binary-garbage",
        data(lambda t: write(t / "d.jsonl", os.urandom(2048))),
        "cannot read data file",
    ),
    Case(
        "data-garbage-parquet",
        data(lambda t: write(t / "d.parquet", b"PAR1" + bytes(range(256)) * 4)),
        "cannot read data file",
    ),
    Case("data-empty", data(lambda t: write(t / "d.csv", "")), "d.csv: it is empty (no examples)"),
    Case(
        "data-empty-jsonl",
        data(lambda t: write(t / "d.jsonl", "")),
        "d.jsonl: it is empty (no examples)",
    ),
    Case(
        "data-blank-lines-only",
        data(lambda t: write(t / "d.jsonl", "\n  \n\n")),
        "d.jsonl: it is empty (no examples)",
    ),
    Case(
        "data-csv-header-only",
        data(lambda t: write(t / "d.csv", "text,label,domain\n")),
        "d.csv: it has a header line (text,label,domain) but no examples below it",
    ),
    Case(
        "data-latin1-csv",
        data(
            lambda t: write(
                t / "d.csv", "text,label,domain\ngood,1,a\ncafé,0,a\n".encode("latin-1")
            )
        ),
        "d.csv: line 3 is not UTF-8 text (byte 0xe9 at column 4); convert the file to UTF-8",
    ),
    Case(
        "data-bad-json-line",
        data(
            lambda t: write(
                t / "d.jsonl",
                "".join(
                    json.dumps(r) + ("  x" if i == 5 else "") + "\n" for i, r in enumerate(ROWS)
                ),
            )
        ),
        "d.jsonl: line 6, column 50 is not valid JSON (more text after a complete JSON value)",
    ),
    Case(
        "data-json-line-not-an-object",
        data(lambda t: write(t / "d.jsonl", json.dumps(ROWS[0]) + "\n[1, 2]\n")),
        "d.jsonl: line 2 holds a JSON array, not an object",
    ),
    Case(
        "data-broken-json-document",
        data(
            lambda t: write(
                t / "d.json", '[\n  {"text": "a", "label": 1},\n  {"text": "b" "label": 0}\n]\n'
            )
        ),
        "d.json: line 3, column 16 is not valid JSON (Expecting ',' delimiter)",
    ),
    Case(
        "data-missing-text-column",
        data(lambda t: jsonl(t / "d.jsonl", [{"body": "x", "label": 1}] * 20)),
        "no column 'text' (data.text_column)",
    ),
    Case(
        "data-missing-label-column",
        data(lambda t: jsonl(t / "d.jsonl", [{"text": "x", "stars": 1}] * 20)),
        "no column 'label' (data.label_column)",
    ),
    Case(
        "dev-label-outside-training-labels",
        data(
            lambda t: (
                (
                    jsonl(t / "f" / "dev.jsonl", [{**ROWS[0], "label": 7}]),
                    jsonl(t / "f" / "train.jsonl", ROWS),
                )[1].parent
            )
        ),
        "f/dev.jsonl line 1 (the dev split) is not one of the training labels",
    ),
    Case(
        "mixed-label-types",
        data(
            lambda t: jsonl(
                t / "d.jsonl",
                [{**r, "label": r["label"] if i % 3 else "pos"} for i, r in enumerate(ROWS)],
            )
        ),
        "d.jsonl line 2 has 1; use all integers or all strings",
    ),
    Case(
        "empty-string-label",
        data(lambda t: jsonl(t / "d.jsonl", [*ROWS[:5], {**ROWS[5], "label": ""}, *ROWS[6:]])),
        "d.jsonl line 6 has no label (column 'label' is empty); give it one or remove the row",
    ),
    Case(
        "null-label",
        data(lambda t: jsonl(t / "d.jsonl", [*ROWS[:5], {**ROWS[5], "label": None}, *ROWS[6:]])),
        "d.jsonl line 6 has no label (column 'label' is empty)",
    ),
    Case(
        "empty-label-cell-in-csv",
        data(lambda t: write(t / "d.csv", "text,label,domain\ngood,1,a\nbad,0,b\nmeh,,a\n")),
        "d.csv line 4 has no label (column 'label' is empty)",
    ),
    Case(
        "test-domain-missing-from-train",
        data(
            lambda t: (
                (
                    jsonl(t / "f" / "test.jsonl", [{**ROWS[0], "domain": "c"}]),
                    jsonl(t / "f" / "train.jsonl", ROWS),
                )[1].parent
            )
        ),
        "f/test.jsonl line 1 (the test split) has no training examples (the training data's "
        """domains: a, b); add training examples of it, or keep to the trained domains: --set """
        """'data.domains=["a", "b"]'""",
    ),
    Case(
        "text-is-null",
        data(lambda t: jsonl(t / "d.jsonl", [*ROWS, {"text": None, "label": 1, "domain": "a"}])),
        "has no text in column 'text'",
    ),
    Case(
        "single-label",
        data(lambda t: jsonl(t / "d.jsonl", [{**r, "label": 1} for r in ROWS])),
        "single label",
    ),
    Case(
        "unknown-domain-selected",
        lambda *_: teacher("--set", "data.domains=['garden']"),
        "'garden' not in the data",
    ),
    Case(
        "data-ragged-csv-row",
        data(lambda t: csv_rows(t / "d.csv", extra_field_in_row=7)),
        "Expected 3 fields in line 9, saw 4",
    ),
    Case(
        "data-named-domain-column-missing",
        lambda tmp, _: teacher(
            "--data", str(jsonl(tmp / "d.jsonl", ROWS)), "--set", "data.domain_column=genre"
        ),
        "no column 'genre' (data.domain_column)",
    ),
    Case(
        "single-class-domain-trained-alone",
        lambda tmp, _: teacher(
            "--domain",
            "a",
            "--data",
            str(
                jsonl(
                    tmp / "d.jsonl", [{**r, "label": 0} if r["domain"] == "a" else r for r in ROWS]
                )
            ),
        ),
        "domain 'a' has a single label ('0') in its training data",
    ),
    Case(
        "teacher-domain-with-mix-method",
        lambda *_: teacher("--method", "mix", "--domain", "books"),
        "teacher.domain is for teacher.method 'single' only",
    ),
    Case(
        "single-domain-teacher-unknown-domain",
        lambda *_: teacher("--method", "single", "--domain", "garden"),
        "domain 'garden' is not in the data",
    ),
    Case(
        "meta-teacher-one-domain",
        lambda tmp, _: teacher(
            "--method",
            "meta",
            "--data",
            str(jsonl(tmp / "d.jsonl", [{**r, "domain": "a"} for r in ROWS])),
        ),
        "a meta-teacher needs at least two domains",
    ),
    # models
    Case("model-missing", lambda *_: teacher("--model", "./no/model"), "does not exist"),
    Case(
        "model-is-a-file",
        lambda tmp, _: teacher("--model", str(write(tmp / "m.bin", b"x"))),
        "is a file; give a checkpoint folder",
    ),
    Case(
        "model-without-config",
        lambda tmp, _: teacher("--model", str(model_folder(tmp, None))),
        "has no config.json",
    ),
    Case(
        "model-garbage-config",
        lambda tmp, _: teacher("--model", str(model_folder(tmp, "{not json"))),
        "is not a valid JSON file",
    ),
    Case(
        "evaluate-truncated-weights",
        lambda tmp, run: ["evaluate", str(truncated_model(tmp, run)), "--profile", "smoke"],
        "truncated/model.safetensors is truncated or damaged (incomplete metadata, file not "
        "fully covered); copy it again",
    ),
    # A config.json that disagrees with its weights: transformers would add random layers or
    # drop trained ones, each with a log line kdtui silences.
    Case(
        "evaluate-config-with-more-layers-than-the-weights",
        lambda tmp, run: ["evaluate", str(relayered_model(tmp, run, 6)), "--profile", "smoke"],
        "layers-6/model.safetensors does not match its config.json: 64 tensors of the model "
        "config.json describes are not in the file and would start random "
        "(bert.encoder.layer.2.attention.self.query.weight, ",
    ),
    Case(
        "evaluate-config-with-fewer-layers-than-the-weights",
        lambda tmp, run: ["evaluate", str(relayered_model(tmp, run, 1)), "--profile", "smoke"],
        "16 tensors in the file are not part of that model and would be dropped "
        "(bert.encoder.layer.1.attention.self.query.weight, ",
    ),
    Case(
        "teacher-model-config-disagrees-with-its-weights",
        lambda tmp, run: teacher("--model", str(relayered_model(tmp, run, 6))),
        "config.json says num_hidden_layers = 6, the file holds 2",
    ),
    Case(
        "distill-teacher-config-disagrees-with-its-weights",
        lambda tmp, run: [
            *("distill", "--profile", "smoke", "--domain", "books"),
            *("--teacher", str(relayered_model(tmp, run, 1))),
        ],
        "config.json says num_hidden_layers = 1, the file holds 2",
    ),
    Case(
        "prune-model-config-disagrees-with-its-weights",
        lambda tmp, run: [
            *("prune", "--profile", "smoke", "--model", str(relayered_model(tmp, run, 3))),
        ],
        "config.json says num_hidden_layers = 3, the file holds 2",
    ),
    Case(
        "evaluate-unknown-model-type",
        lambda tmp, _: [
            "evaluate",
            str(model_folder(tmp, '{"model_type": "nonsense", "architectures": ["X"]}')),
            "--profile",
            "smoke",
        ],
        "does not recognize this architecture",
    ),
    Case(
        "evaluate-config-with-other-shapes",
        lambda tmp, run: ["evaluate", str(resized_model(tmp, run)), "--profile", "smoke"],
        "the weights do not have the shapes its config.json describes",
    ),
    Case(
        "evaluate-pickled-code",
        lambda tmp, _: ["evaluate", str(pickled_code_model(tmp)), "--profile", "smoke"],
        "a pickle that would run code when loaded",
    ),
    Case(
        "evaluate-encoder-without-head",
        lambda *_: ["evaluate", str(bundled_minilm_path()), "--profile", "smoke"],
        "has no sequence classification head",
    ),
    Case(
        "evaluate-models-trained-for-other-labels",
        lambda tmp, run: ["evaluate", str(run), str(relabelled_model(tmp, run))],
        "relabelled was trained for labels ['neg', 'pos'] but the data has ['0', '1']; the test "
        "split is the data of ",  # the first model's, and what to do
    ),
    Case(
        "evaluate-a-stopped-run",
        lambda tmp, run: ["evaluate", str(unfinished_run(tmp, run))],
        "unfinished has no model yet: it was stopped before it finished; continue it with "
        "`kdtui teacher --resume ",
    ),
    Case(
        "export-a-failed-run",
        lambda tmp, run: ["export", str(unfinished_run(tmp, run, failed=True))],
        "unfinished has no model: it failed (`kdtui dashboard ",
    ),
    Case(
        "prune-a-stopped-teacher-run",
        lambda tmp, run: ["prune", "--profile", "smoke", "--model", str(unfinished_run(tmp, run))],
        "unfinished has no model yet: it was stopped before it finished",
    ),
    Case(
        "evaluate-split-that-is-not-there",
        lambda tmp, run: [
            "evaluate",
            str(run),
            "--split",
            "test",
            "--data",
            str(jsonl(tmp / "d.jsonl", ROWS)),
        ],
        "the data has no test split",
    ),
    Case(
        "evaluate-model-without-tokenizer",
        lambda tmp, run: ["evaluate", str(without_tokenizer(tmp, run)), "--profile", "smoke"],
        "no-tokenizer has no tokenizer (none of tokenizer.json, vocab.txt",
    ),
    Case(
        "evaluate-tokenizer-of-another-vocabulary",
        lambda tmp, run: ["evaluate", str(with_other_tokenizer(tmp, run)), "--profile", "smoke"],
        "does not match the model: it has 7 tokens, the model 30,522",
    ),
    Case(
        "evaluate-length-beyond-the-model-positions",
        lambda tmp, run: ["evaluate", str(run), "--set", "data.max_length=1000"],
        "data.max_length = 1000 is more than model",
    ),
    Case(
        "prune-model-without-tokenizer",
        lambda tmp, run: [
            *("prune", "--profile", "smoke", "--model", str(without_tokenizer(tmp, run))),
        ],
        "has no tokenizer",
    ),
    Case(
        "distill-teacher-without-tokenizer",
        lambda tmp, run: [
            *("distill", "--profile", "smoke", "--domain", "books"),
            *("--teacher", str(without_tokenizer(tmp, run))),
        ],
        "has no tokenizer",
    ),
    Case(
        "distill-student-without-tokenizer",
        lambda tmp, run: [
            *("distill", "--profile", "smoke", "--domain", "books", "--teacher", str(run)),
            *("--student", str(without_tokenizer(tmp, run))),
        ],
        "has no tokenizer",
    ),
    # run directories
    Case(
        "name-of-a-folder-that-is-not-a-run",
        lambda *_: teacher("--name", "keep"),
        "is not a kdtui run (it holds events.jsonl); choose another --name or --output-dir",
    ),
    Case(
        "force-on-a-folder-that-is-not-a-run",
        lambda *_: teacher("--name", "keep", "--force"),
        "is not a kdtui run (it holds events.jsonl); --force replaces only kdtui runs; "
        "nothing was touched",
    ),
    Case(
        "output-dir-is-a-file",
        lambda tmp, _: teacher("--output-dir", str(write(tmp / "f", "x"))),
        "is a file, not a directory",
    ),
    Case(
        "run-name-with-a-path",
        lambda *_: teacher("--name", "../../escaped"),
        "run.name must be a plain folder name",
    ),
    Case("resume-missing-run", lambda tmp, _: ["teacher", "--resume", str(tmp / "no")], "no such"),
    Case(
        "resume-not-a-run",
        lambda tmp, _: ["teacher", "--resume", str(tmp)],
        "not a kdtui run (no config.toml)",
    ),
    Case(
        "resume-with-new-options",
        lambda tmp, run: ["teacher", "--resume", str(run), "--lr", "1"],
        "--resume continues a run with the configuration it was started with",
    ),
    # distill
    Case(
        "distill-without-teacher",
        lambda *_: ["distill", "--profile", "smoke", "--domain", "books"],
        "distill needs a teacher",
    ),
    Case(
        "distill-unknown-domain",
        lambda tmp, run: ["distill", "--profile", "smoke", "--teacher", str(run), "-d", "garden"],
        "domain 'garden' is not in the data",
    ),
    Case(
        "distill-meta-from-a-plain-teacher",
        lambda tmp, run: [
            *("distill", "--profile", "smoke", "--teacher", str(run)),
            *("--domain", "books", "--method", "meta"),
        ],
        "is not a meta-teacher",
    ),
    Case(
        "distill-student-deeper-than-teacher",
        lambda tmp, run: [
            *("distill", "--profile", "smoke", "--teacher", str(run)),
            *("--domain", "books", "--student-layers", "5"),
        ],
        "deeper than the teacher",
    ),
    # prune
    Case(
        "prune-sparsity-one",
        lambda tmp, run: ["prune", "--profile", "smoke", "--model", str(run), "--sparsity", "1"],
        "prune.sparsity must be in [0, 1)",
    ),
    Case(
        "prune-sparsity-as-a-percentage",
        lambda tmp, run: ["prune", "--profile", "smoke", "--model", str(run), "--sparsity", "97"],
        "prune.sparsity must be in [0, 1), a fraction: for 97% give 0.97",
    ),
    Case(
        "epochs-zero-under-a-profile-with-max-steps",
        lambda *_: teacher("--epochs", "0"),
        "train.epochs must be > 0",
    ),
    Case(
        "prune-unknown-criterion",
        lambda tmp, run: [
            *("prune", "--profile", "smoke", "--model", str(run)),
            *("--criterion", "random"),
        ],
        "prune.criterion must be one of",
    ),
    Case(
        "prune-data-with-other-labels",
        lambda tmp, run: [
            *("prune", "--profile", "smoke", "--model", str(run), "--data"),
            str(jsonl(tmp / "d.jsonl", [{**r, "label": "xy"[r["label"]]} for r in ROWS])),
        ],
        "predicts labels ['0', '1'] but the data has ['x', 'y']",
    ),
    Case(
        "prune-model-without-head",
        lambda *_: ["prune", "--profile", "smoke", "--model", str(bundled_minilm_path())],
        "has no sequence classification head",
    ),
    # dashboard
    Case(
        "dashboard-on-a-file",
        lambda tmp, _: ["dashboard", str(write(tmp / "events.txt", "x"))],
        "is a file",
    ),
]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("teacher")
    result = invoke("teacher", "--profile", "smoke", "--output-dir", str(runs), "--name", "t")
    assert result.exit_code == 0, result.stderr
    return runs / "t"


def test_the_catalogue_is_large_enough() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path, teacher_run: Path) -> None:
    runs = tmp_path / "runs"
    keep = runs / "keep"
    keep.mkdir(parents=True)
    (keep / "events.jsonl").write_text("a run that must survive\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    teacher_before = (teacher_run / "events.jsonl").read_bytes()

    args = case.args(scratch, teacher_run)
    if args[0] in ("teacher", "distill", "prune") and "--resume" not in args:
        args = [*args, "--quiet"]
        if "--name" not in args:
            args += ["--name", "new"]
        if "--output-dir" not in args:
            args += ["--output-dir", str(runs)]
    result = invoke(*args)

    assert result.exit_code == 2, f"exit {result.exit_code}: {result.stdout}{result.stderr}"
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
    assert case.message in result.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["keep"]
    assert (keep / "events.jsonl").read_text() == "a run that must survive\n"
    assert (teacher_run / "events.jsonl").read_bytes() == teacher_before
    assert not (scratch / "EXPLOITED").exists()  # no weights file ran code


def test_force_never_touches_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    home = tmp_path / "fakehome"
    write(home / ".bashrc", "export PATH\n")
    write(home / "docs" / "notes.txt", "notes\n")
    common = ["teacher", "--profile", "smoke", "--output-dir", str(tmp_path), "--name", "fakehome"]

    for extra in ([], ["--force"]):
        result = invoke(*common, *extra, "--quiet")
        assert result.exit_code == 2, result.stderr
        assert f"{home} is not a kdtui run (it holds .bashrc, docs/)" in result.stderr
        assert "already holds a run" not in result.stderr
    assert "nothing was touched" in result.stderr
    assert (home / ".bashrc").read_text() == "export PATH\n"
    assert (home / "docs" / "notes.txt").read_text() == "notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakehome"]


def test_pruned_model_folders_are_checked_against_their_config(
    teacher_run: Path, tmp_path: Path
) -> None:
    """The folders kdtui's own loaders read (RUN/model-sparse, heads-ffn models) name the
    tensors that do not fit their config.json, as from_pretrained's folders do."""
    from safetensors.torch import load_file, save_file

    from kdtui.errors import KdtuiError
    from kdtui.methods.compact import compact
    from kdtui.models import load_any
    from kdtui.sparse import SPARSE_FILE, save_sparse

    weights = load_file(teacher_run / "model" / "model.safetensors")
    sparse = relayered_model(tmp_path, teacher_run, 1)
    (sparse / "model.safetensors").unlink()
    save_sparse(weights, sparse / SPARSE_FILE)
    with pytest.raises(KdtuiError) as refused:
        load_any(sparse)
    assert f"{sparse / SPARSE_FILE} does not match its config.json: 16 tensors in the file" in str(
        refused.value
    )
    assert "config.json says num_hidden_layers = 1, the file holds 2" in str(refused.value)

    heads = tmp_path / "heads"
    model = load_any(teacher_run / "model")
    compact(model, [[0], [1]], [list(range(16))] * 2)
    model.save_pretrained(heads)
    state = load_file(heads / "model.safetensors")
    del state["classifier.bias"]
    save_file(state, heads / "model.safetensors")
    with pytest.raises(KdtuiError) as refused:
        load_any(heads)
    assert "1 tensor of the model config.json describes is not in the file and would start " in (
        str(refused.value)
    )
    assert "(classifier.bias)" in str(refused.value)


def test_a_pre_trained_encoder_gets_a_new_head_without_complaint(tmp_path: Path) -> None:
    """What a new classifier head leaves out is no mismatch: the bundled MiniLM (no classifier)
    and a masked-LM checkpoint (no classifier or pooler, a head of its own) load."""
    from transformers import BertConfig, BertForMaskedLM, BertForTokenClassification

    from kdtui.config import ModelConfig
    from kdtui.models import load_classifier

    assert load_classifier(ModelConfig(name="minilm"), ["neg", "pos"]).num_labels == 2
    folder = tmp_path / "mlm"
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    BertForMaskedLM(config).save_pretrained(folder)
    model = load_classifier(ModelConfig(name=str(folder)), ["neg", "pos"])
    assert model.config.num_hidden_layers == 2
    # Another task's classifier (9 token labels) is replaced, as a missing one would be.
    tokens = tmp_path / "tokens"
    BertForTokenClassification(BertConfig(**config.to_dict(), num_labels=9)).save_pretrained(tokens)
    assert load_classifier(ModelConfig(name=str(tokens)), ["neg", "pos"]).num_labels == 2


def test_a_float16_checkpoint_is_loaded_as_float32(teacher_run: Path, tmp_path: Path) -> None:
    """Trained from in float16 (transformers keeps a checkpoint's dtype), teacher, distill and
    prune stopped at step 2 with a NaN loss and the advice to lower the learning rate."""
    from kdtui.config import ModelConfig
    from kdtui.models import load_any, load_classifier

    folder = tmp_path / "fp16"
    load_any(teacher_run / "model").half().save_pretrained(folder)
    for f in (teacher_run / "model").glob("tokenizer*"):
        write(folder / f.name, f.read_bytes())
    for model in (load_any(folder), load_classifier(ModelConfig(name=str(folder)), ["0", "1"])):
        assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_model_folder_inside_a_run_is_scored_on_that_run_s_data(
    teacher_run: Path, tmp_path: Path
) -> None:
    """`kdtui evaluate RUN/model` scored the default synthetic data (400 test examples) where
    `kdtui evaluate RUN` scores the run's own (48)."""
    reports = []
    for model in (teacher_run, teacher_run / "model"):
        out = tmp_path / f"{model.name}.json"
        result = invoke("evaluate", str(model), "--json", str(out))
        assert result.exit_code == 0, result.stderr
        reports.append(json.loads(out.read_text()))
    assert reports[0]["examples"] == reports[1]["examples"] == 48
    assert reports[0]["models"][0]["accuracy"] == reports[1]["models"][0]["accuracy"]
