"""Multi-domain text classification data: load, subsample, tokenise, batch.

`load_data(cfg)` returns a `MultiDomainData`: train / dev / (optional) test `Split`s of raw
texts with integer labels and domain ids, plus the label and domain names. Sources:

* "synthetic": a four-domain review data set generated from `data.seed` (no files, no network);
* a .csv / .tsv / .jsonl / .json / .parquet file: the training split, with 10% of each domain
  held out (seeded) as dev;
* a folder holding `train.*`, `dev.*` and optionally `test.*` (names from `data.*_split`);
* anything else: a Hugging Face hub data set name (needs a network).

Every example keeps its `id`, its row index in the split as loaded, through domain selection and
subsampling, so per-example state (Meta-KD's prototype scores, CAP's memory banks) can be indexed
by it in every process and across runs on the same data.

`encode` tokenises a split once; `collate` pads any subset of it into a batch.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtui.config import DataConfig
from kdtui.errors import KdtuiError

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SINGLE_DOMAIN = "all"
HELD_OUT_DEV_FRACTION = 0.1


@dataclass(frozen=True)
class Split:
    """Raw examples of one split. `pairs` is None for single texts."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    domains: list[int]
    ids: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, positions: Sequence[int]) -> Split:
        return Split(
            texts=[self.texts[i] for i in positions],
            pairs=None if self.pairs is None else [self.pairs[i] for i in positions],
            labels=[self.labels[i] for i in positions],
            domains=[self.domains[i] for i in positions],
            ids=[self.ids[i] for i in positions],
        )

    def domain_subset(self, domain: int) -> Split:
        return self.select([i for i, d in enumerate(self.domains) if d == domain])


@dataclass(frozen=True)
class MultiDomainData:
    train: Split
    dev: Split
    test: Split | None
    domain_names: list[str]
    label_names: list[str]
    notes: list[str] = field(default_factory=list)  # things the user should be told

    def split(self, name: str) -> Split:
        if name == "train":
            return self.train
        if name in ("dev", "validation"):
            return self.dev
        if name == "test":
            if self.test is None:
                raise KdtuiError("the data has no test split; use --split dev")
            return self.test
        raise KdtuiError(f"unknown split '{name}'; use train, dev or test")

    def domain_id(self, name: str) -> int:
        if name not in self.domain_names:
            raise KdtuiError(
                f"domain '{name}' is not in the data; domains: {', '.join(self.domain_names)}"
            )
        return self.domain_names.index(name)

    def training_domain(self, name: str) -> Split:
        """The training examples of one domain, for a model that learns from it alone."""
        split = self.train.domain_subset(self.domain_id(name))
        labels = sorted(set(split.labels))
        if len(labels) < 2:
            raise KdtuiError(
                f"domain '{name}' has a single label ({self.label_names[labels[0]]!r}) in its "
                "training data; a classifier needs two or more (fix the labels, raise "
                "data.train_fraction, or choose another domain)"
            )
        return split


def load_data(cfg: DataConfig) -> MultiDomainData:
    if cfg.source == "synthetic":
        raw, notes = synthetic_splits(cfg), []
        origins = {role: Origin(text=f"the synthetic {role} data") for role in raw}
    else:
        raw, notes, origins = _read_source(cfg)
    return _assemble(raw, cfg, notes, origins)


@dataclass(frozen=True)
class Origin:
    """Where a split's rows come from, so that a message can name the row at fault as the user
    finds it: a file and its line, or a row of something without lines."""

    file: Path | None = None
    text: str = ""  # the rows without a file: "the synthetic dev data", a hub split

    def row(self, index: int) -> str:
        """Row INDEX (0-based, as loaded: the example's id)."""
        if self.file is None:
            return f"row {index + 1} of {self.text}"
        line = _line_of(self.file, index)
        return f"{self.file} line {line}" if line is not None else f"{self.file} row {index + 1}"

    def __str__(self) -> str:
        return str(self.file) if self.file is not None else self.text


# ---------------------------------------------------------------------------------------------
# Reading files and hub data sets into plain column dicts


Columns = dict[str, list[Any]]


def _read_source(
    cfg: DataConfig,
) -> tuple[dict[str, Columns], list[str], dict[str, Origin]]:
    """{"train": columns, "dev": columns, optional "test": columns}, notes for the user, and
    where each split's rows come from (a held-out dev split: the training file)."""
    path = Path(cfg.source).expanduser()
    if path.is_file():
        splits, notes = _hold_out_dev(
            {"train": _read_file(path)}, cfg, f"{path.name} is the training split"
        )
        return splits, notes, {"train": Origin(path), "dev": Origin(path)}
    if path.is_dir():
        splits = {}
        origins: dict[str, Origin] = {}
        for role, name in (
            ("train", cfg.train_split),
            ("dev", cfg.dev_split),
            ("test", cfg.test_split),
        ):
            found = _find_split_file(path, name)
            if found is not None:
                splits[role] = _read_file(found)
                origins[role] = Origin(found)
        if "train" not in splits:
            wanted = ", ".join(f"{cfg.train_split}{ext}" for ext in FORMATS)
            raise KdtuiError(f"data folder {path} has no training file (one of: {wanted})")
        if "dev" not in splits:
            splits, notes = _hold_out_dev(splits, cfg, f"{path} has no {cfg.dev_split} file")
            return splits, notes, {**origins, "dev": origins["train"]}
        return splits, [], origins
    if path.exists():
        raise KdtuiError(f"data source {path} is neither a file nor a folder")
    if cfg.source.startswith((".", "/", "~")) or Path(cfg.source).suffix.lower() in FORMATS:
        raise KdtuiError(f"data file '{cfg.source}' does not exist")
    return _read_hub(cfg)


def _find_split_file(folder: Path, name: str) -> Path | None:
    for ext in FORMATS:
        candidate = folder / f"{name}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _read_file(path: Path) -> Columns:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise KdtuiError(
            f"data file {path} has an unsupported type '{suffix}'; use one of " + ", ".join(FORMATS)
        )
    import datasets

    datasets.disable_progress_bars()
    # datasets logs its own account of a malformed file at error level; kdtui says it once.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    kwargs: dict[str, Any] = {}
    if suffix == ".tsv":
        # Quotes are text in TSV corpora (SST-2 has unbalanced ones), not field delimiters.
        kwargs = {"delimiter": "\t", "quoting": 3}
    builder = FORMATS[suffix]
    try:
        dataset = datasets.load_dataset(
            builder, data_files=str(path), split="train", keep_in_memory=True, **kwargs
        )
        columns = dataset.to_dict()  # plain lists: a datasets Column is slow to index by row
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a malformed file
        # The parsers' own messages name neither the file nor the line ("StopIteration",
        # "Trailing data at position 82"); a second, plain reading of the text finds both.
        problem = _text_file_problem(path) or _root_cause(e)
        raise KdtuiError(f"data.source: cannot read data file {path}: {problem}") from None
    if len(dataset) == 0:
        raise KdtuiError(
            f"data.source: cannot read data file {path}: "
            f"{_text_file_problem(path) or 'it holds no examples'}"
        )
    return columns


def _text_file_problem(path: Path) -> str | None:
    """What is wrong with a text data file (.csv, .tsv, .jsonl, .json), naming the line, or
    None if this reading finds nothing. Only called once the real parser has failed."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        return None
    json_lines = suffix == ".jsonl"
    first: tuple[int, str] | None = None  # the first non-blank line: a header, or JSON
    kinds: dict[str, tuple[str, int]] = {}  # JSON lines: each key's first kind, and its line
    rows = 0
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return (
                        f"line {number} is not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1}); convert the file to UTF-8, e.g. from Latin-1: "
                        f"iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}"
                    )
                line = line.removeprefix("\ufeff") if number == 1 else line
                if not line.strip():
                    continue
                if first is None:
                    first = (number, line.strip())
                    # A .json file is JSON lines when its first line is a whole JSON value.
                    json_lines = json_lines or (suffix == ".json" and _is_json(line))
                else:
                    rows += 1
                if json_lines and (problem := _json_line_problem(line, number, kinds)):
                    return problem
    except OSError as e:
        return e.strerror or str(e)
    if first is None:
        return "it is empty (no examples)"
    if suffix in (".csv", ".tsv") and rows == 0:
        return f"it has a header line ({first[1][:80]}) but no examples below it"
    if suffix == ".json" and not json_lines:
        return _json_document_problem(path)
    return None


def _line_of(path: Path, row: int) -> int | None:
    """The line of a text data file on which row ROW (0-based, as loaded: blank lines and the
    CSV header are not rows) starts; None where rows are not lines (parquet, a JSON document)
    or the file cannot be read again. Only called to name a row in a message."""
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if suffix in (".csv", ".tsv"):
                tsv = suffix == ".tsv"
                # As the file was parsed (_read_file); a quoted field may span lines.
                reader = csv.reader(
                    f,
                    delimiter="\t" if tsv else ",",
                    quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
                )
                index, previous = -2, 0  # -1: the header
                for record in reader:
                    start, previous = previous + 1, reader.line_num
                    if record:
                        index += 1
                        if index == row:
                            return start
                return None
            if suffix not in (".jsonl", ".json"):
                return None
            index = -1
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if index == -1 and suffix == ".json" and not _is_json(line):
                    return None  # one JSON document, not a line per row
                index += 1
                if index == row:
                    return number
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _json_line_problem(line: str, number: int, kinds: dict[str, tuple[str, int]]) -> str | None:
    """What is wrong with one line of a JSON-lines file; KINDS, each key's JSON kind where it
    was first seen, is updated: the parser refuses a column whose kind changes ("changed from
    string to number in row 10", a row counted from where it cannot tell)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        why = "more text after a complete JSON value" if e.msg == "Extra data" else e.msg
        return (
            f"line {number}, column {e.colno} is not valid JSON ({why}); each line must hold "
            "one JSON object"
        )
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), type(value).__name__)
        return (
            f"line {number} holds a JSON {kind}, not an object; each line must hold one JSON "
            'object such as {"text": "...", "label": 1}'
        )
    for key, item in value.items():
        if item is None:
            continue  # null fits any column
        kind = _JSON_KINDS.get(type(item), type(item).__name__)
        seen = kinds.setdefault(key, (kind, number))
        if seen[0] != kind:
            return (
                f"line {number} holds {_a(kind)} in column '{key}' where line {seen[1]} holds "
                f"{_a(seen[0])}; a column holds one kind of value"
            )
    return None


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


_JSON_KINDS = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _json_document_problem(path: Path) -> str | None:
    """A .json file that is one JSON document (an array of objects, say) rather than lines."""
    try:
        json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        return f"line {e.lineno}, column {e.colno} is not valid JSON ({e.msg})"
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _read_hub(cfg: DataConfig) -> tuple[dict[str, Columns], list[str], dict[str, Origin]]:
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(cfg.source)
    except Exception as e:  # noqa: BLE001 - network, missing data set, bad config
        raise KdtuiError(
            f"data source '{cfg.source}' is not a local file or folder, and loading it from the "
            f"Hugging Face hub failed: {_first_line(e)}"
        ) from None
    splits: dict[str, Columns] = {}
    origins: dict[str, Origin] = {}
    for role, names in (
        ("train", (cfg.train_split,)),
        ("dev", (cfg.dev_split, "validation")),
        ("test", (cfg.test_split,)),
    ):
        for name in names:
            if name in loaded:
                splits[role] = loaded[name].to_dict()
                origins[role] = Origin(text=f"the {name} split of '{cfg.source}'")
                break
    if "train" not in splits:
        raise KdtuiError(f"hub data set '{cfg.source}' has no split '{cfg.train_split}'")
    if "dev" not in splits:
        splits, notes = _hold_out_dev(splits, cfg, f"'{cfg.source}' has no {cfg.dev_split} split")
        return splits, notes, {**origins, "dev": origins["train"]}
    return splits, [], origins


def _hold_out_dev(
    splits: dict[str, Columns], cfg: DataConfig, why: str
) -> tuple[dict[str, Columns], list[str]]:
    """Move a seeded, domain-stratified 10% of the training rows into a dev split."""
    train = splits["train"]
    n = len(next(iter(train.values())))
    domains = train.get(cfg.domain_column) if cfg.domain_column else None
    by_domain: dict[Any, list[int]] = {}
    for i in range(n):
        by_domain.setdefault(None if domains is None else str(domains[i]), []).append(i)
    rng = random.Random(cfg.seed)
    dev_rows: set[int] = set()
    for rows in by_domain.values():
        if len(rows) < 2:
            continue
        take = max(1, round(HELD_OUT_DEV_FRACTION * len(rows)))
        dev_rows.update(rng.sample(rows, take))
    if not dev_rows:
        raise KdtuiError("too few training examples to hold out a dev split; give a dev file")
    # Row indices (the example ids) stay those of the original file, so nothing is renumbered.
    keep = [i for i in range(n) if i not in dev_rows]
    dev = sorted(dev_rows)
    splits = dict(splits)
    splits["train"] = {c: [v[i] for i in keep] for c, v in train.items()}
    splits["train"][_ROW_ID] = keep
    splits["dev"] = {c: [v[i] for i in dev] for c, v in train.items()}
    splits["dev"][_ROW_ID] = dev
    note = (
        f"{why}: holding out {len(dev)} training examples "
        f"({HELD_OUT_DEV_FRACTION:.0%} per domain, seed {cfg.seed}) as dev"
    )
    return splits, [note]


_ROW_ID = "__kdtui_row_id__"  # original row index when a split was carved out of another


# ---------------------------------------------------------------------------------------------
# Columns -> Splits: validation, label and domain ids, subsampling


def _assemble(
    raw: dict[str, Columns], cfg: DataConfig, notes: list[str], origins: dict[str, Origin]
) -> MultiDomainData:
    for role, columns in raw.items():
        _check_columns(columns, cfg, role, origins[role])
    for role, columns in raw.items():
        # Before the label set: an empty cell makes a CSV column of numbers fractional.
        _check_filled(columns, cfg.label_column, "label", origins[role])
        if cfg.domain_column in columns:  # an empty domain would be a domain named 'None'
            _check_filled(columns, cfg.domain_column, "domain", origins[role])
    label_names, label_of = _label_set(raw["train"], cfg.label_column, origins["train"])
    train_domains = _domain_values(raw["train"], cfg)
    # Files: alphabetical, so the order does not depend on row order; synthetic: as configured.
    if cfg.source == "synthetic":
        domain_names = list(dict.fromkeys(train_domains))
    else:
        domain_names = sorted(set(train_domains))
    if cfg.domains:
        missing = [d for d in cfg.domains if d not in domain_names]
        if missing:
            raise KdtuiError(
                f"data.domains: {', '.join(repr(d) for d in missing)} not in the data; "
                f"domains: {', '.join(domain_names)}"
            )
        domain_names = [d for d in domain_names if d in cfg.domains]
    unknown = [d for d in cfg.subsample_domains if d not in domain_names]
    if unknown:
        raise KdtuiError(
            f"data.subsample_domains: {', '.join(repr(d) for d in unknown)} not in the data; "
            f"domains: {', '.join(domain_names)}"
        )
    subsampled = {domain_names.index(d) for d in cfg.subsample_domains} or None

    splits: dict[str, Split] = {}
    for role, columns in raw.items():
        split = _to_split(columns, cfg, role, label_of, domain_names, origins)
        if role == "train":
            split = _subsample(
                split,
                cfg.train_fraction,
                cfg.max_train_per_domain,
                cfg.seed,
                domain_names,
                only=subsampled,
            )
        elif cfg.max_eval_per_domain:
            split = _subsample(split, 1.0, cfg.max_eval_per_domain, cfg.seed, domain_names)
        if len(split) == 0:
            raise KdtuiError(f"the {role} split is empty after domain selection")
        splits[role] = split
    train = splits["train"]
    for d, name in enumerate(domain_names):
        labels = {y for y, x in zip(train.labels, train.domains, strict=True) if x == d}
        if not labels:
            raise KdtuiError(f"domain '{name}' has no training examples")
        if len(labels) == 1:
            notes.append(
                f"domain '{name}' has a single label ({label_names[labels.pop()]!r}) in the "
                "training data; it cannot be trained on alone"
            )
    return MultiDomainData(
        train=splits["train"],
        dev=splits["dev"],
        test=splits.get("test"),
        domain_names=domain_names,
        label_names=label_names,
        notes=notes,
    )


def _check_columns(columns: Columns, cfg: DataConfig, role: str, origin: Origin) -> None:
    wanted = [("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)]
    if cfg.text_pair_column:
        wanted.append(("data.text_pair_column", cfg.text_pair_column))
    # The default domain column may be absent (one domain); one the user named may not.
    if cfg.domain_column not in ("", DataConfig.domain_column):
        wanted.append(("data.domain_column", cfg.domain_column))
    present = ", ".join(c for c in columns if c != _ROW_ID)
    for key, column in wanted:
        if column not in columns:
            # One column named "text;label;domain": the file is separated by something else.
            names = [c for c in columns if c != _ROW_ID]
            other = next((sep for sep in ";\t|," if len(names) == 1 and sep in names[0]), None)
            hint = (
                f" (one column: is the file separated by {other!r}? .csv files are read as "
                "comma-separated, .tsv as tab-separated)"
                if other is not None
                else ""
            )
            raise KdtuiError(
                f"the {role} data ({origin}) has no column '{column}' ({key}); its columns: "
                f"{present}{hint}"
            )


def _label_set(
    columns: Columns, label_column: str, origin: Origin
) -> tuple[list[str], dict[Any, int]]:
    """Label names in a stable order (numbers numerically, strings alphabetically). A refusal
    names the row at fault (ORIGIN: the training file)."""
    values = columns[label_column]
    row_ids = columns.get(_ROW_ID, range(len(values)))
    kinds = [_label_kind(v) for v in values]
    odd = next((i for i, k in enumerate(kinds) if k not in ("number", "string")), None)
    if odd is not None:
        raise KdtuiError(
            f"labels must be integers or strings: {origin.row(int(row_ids[odd]))} has "
            f"{values[odd]!r} (a {kinds[odd]}) in column '{label_column}'"
        )
    other = next((i for i, k in enumerate(kinds) if k != kinds[0]), None)
    if other is not None:
        raise KdtuiError(
            f"labels mix types (number, string): {origin.row(int(row_ids[0]))} has "
            f"{values[0]!r}, {origin.row(int(row_ids[other]))} has {values[other]!r}; use all "
            "integers or all strings"
        )
    ordered: list[Any] = sorted(set(values))
    if kinds[0] == "string":
        # "pos" and "pos " would be two classes: a stray space is not a label.
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            seen = first.setdefault(value.strip(), i)
            if values[seen] != value:
                raise KdtuiError(
                    f"labels {values[seen]!r} ({origin.row(int(row_ids[seen]))}) and {value!r} "
                    f"({origin.row(int(row_ids[i]))}) differ only in spaces around them; "
                    "remove the spaces"
                )
    if len(ordered) < 2:
        raise KdtuiError(
            f"the training data ({origin}) has a single label ({ordered[0]!r}); need two or more"
        )
    return [str(v) for v in ordered], {v: i for i, v in enumerate(ordered)}


def _check_filled(columns: Columns, column: str, what: str, origin: Origin) -> None:
    """Every row has a WHAT (a label, a domain) in COLUMN."""
    values = columns[column]
    row_ids = columns.get(_ROW_ID, range(len(values)))
    for i, value in enumerate(values):
        if is_missing_label(value):
            shown = (
                "empty" if value is None or isinstance(value, float) or value == "" else repr(value)
            )
            raise KdtuiError(
                f"{origin.row(int(row_ids[i]))} has no {what} (column '{column}' is "
                f"{shown}); give it one or remove the row"
            )


def is_missing_label(value: Any) -> bool:
    """None (JSON null), an empty or blank string, or NaN (an empty CSV cell in a column of
    numbers): no label, in every format alike. A label "" would otherwise be a class."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


def _label_kind(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return "number"
    if isinstance(value, str):
        return "string"
    return {bool: "boolean", float: "fractional number"}.get(type(value), type(value).__name__)


def _domain_values(columns: Columns, cfg: DataConfig) -> list[str]:
    n = len(columns[cfg.text_column])
    if not cfg.domain_column or cfg.domain_column not in columns:
        # No domain column: the whole data set is one domain (documented in the README).
        return [SINGLE_DOMAIN] * n
    return [str(v) for v in columns[cfg.domain_column]]


def _to_split(
    columns: Columns,
    cfg: DataConfig,
    role: str,
    label_of: dict[Any, int],
    domain_names: list[str],
    origins: dict[str, Origin],
) -> Split:
    domain_index = {name: i for i, name in enumerate(domain_names)}
    texts = columns[cfg.text_column]
    pairs = columns[cfg.text_pair_column] if cfg.text_pair_column else None
    labels = columns[cfg.label_column]
    domains = _domain_values(columns, cfg)
    row_ids = columns.get(_ROW_ID, range(len(texts)))
    origin = origins[role]

    def where(i: int) -> str:
        return origin.row(int(row_ids[i]))

    keep: list[int] = []
    for i, domain in enumerate(domains):
        if domain in domain_index:
            keep.append(i)
        elif role != "train" and not cfg.domains:
            raise KdtuiError(
                f"domain {domain!r} of {where(i)} (the {role} split) has no training examples "
                f"(the training data's domains: {', '.join(domain_names)}); add training "
                "examples of it, or keep to the trained domains: "
                f"--set 'data.domains={json.dumps(domain_names)}'"
            )
    out_labels = []
    for i in keep:
        value = labels[i]
        if value not in label_of or isinstance(value, bool):
            known = ", ".join(repr(k) for k in label_of)  # repr: 0 and '0' differ
            raise KdtuiError(
                f"label {value!r} in {where(i)} (the {role} split) is not one of the training "
                f"labels ({known})"
            )
        out_labels.append(label_of[value])
    for column, values in ((cfg.text_column, texts), (cfg.text_pair_column, pairs)):
        if values is None:
            continue
        for i in keep:
            if not isinstance(values[i], str):
                raise KdtuiError(
                    f"{where(i)} (the {role} split) has no text in column '{column}' "
                    f"(got {values[i]!r})"
                )
    return Split(
        texts=[texts[i] for i in keep],
        pairs=None if pairs is None else [pairs[i] for i in keep],
        labels=out_labels,
        domains=[domain_index[domains[i]] for i in keep],
        ids=[int(row_ids[i]) for i in keep],
    )


def _subsample(
    split: Split,
    fraction: float,
    cap: int,
    seed: int,
    names: Sequence[str],
    only: set[int] | None = None,
) -> Split:
    """Per domain: at most `cap` examples, then a `fraction` of them (at least one); with
    `only`, the fraction shrinks just those domains (the cap applies to all).

    Both take prefixes of one shuffle per domain, seeded by `seed` and the domain's name: a
    domain's subset does not depend on which other domains are loaded or shrunk, and a smaller
    fraction is a subset of a larger one (a data-scarce run sees part of the full run's data,
    and a scarce teacher and its student see the same examples)."""
    if fraction >= 1.0 and not cap:
        return split
    keep: list[int] = []
    for domain in sorted(set(split.domains)):
        rows = [i for i, d in enumerate(split.domains) if d == domain]
        random.Random(f"{seed}/{names[domain]}").shuffle(rows)
        if cap:
            rows = rows[:cap]
        if fraction < 1.0 and (only is None or domain in only):
            rows = rows[: max(1, math.ceil(fraction * len(rows) - 1e-9))]
        keep.extend(rows)
    return split.select(sorted(keep))


# ---------------------------------------------------------------------------------------------
# Tokenised splits and batches


@dataclass(frozen=True)
class Encoded:
    """A tokenised split (unpadded). Index i is example i of the split it was made from."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int]
    domains: list[int]
    ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(split: Split, tokenizer: Any, max_length: int) -> Encoded:
    out = tokenizer(
        split.texts,
        split.pairs,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
    )
    input_ids = [list(x) for x in out["input_ids"]]
    types = out.get("token_type_ids")
    token_type_ids = (
        [list(t) for t in types] if types is not None else [[0] * len(x) for x in input_ids]
    )
    return Encoded(
        input_ids, token_type_ids, list(split.labels), list(split.domains), list(split.ids)
    )


def collate(encoded: Encoded, indices: Sequence[int], pad_id: int) -> dict[str, Any]:
    """Pad the examples at `indices` to the longest one: the tensors a `Batch` is made of."""
    import torch

    indices = list(indices)
    length = max((len(encoded.input_ids[i]) for i in indices), default=1)
    input_ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), length), dtype=torch.long)
    attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
    for row, i in enumerate(indices):
        ids = encoded.input_ids[i]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        token_type_ids[row, : len(ids)] = torch.tensor(encoded.token_type_ids[i])
        attention_mask[row, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "labels": torch.tensor([encoded.labels[i] for i in indices], dtype=torch.long),
        "domain_ids": torch.tensor([encoded.domains[i] for i in indices], dtype=torch.long),
        "example_ids": torch.tensor([encoded.ids[i] for i in indices], dtype=torch.long),
    }


# ---------------------------------------------------------------------------------------------
# The embedded synthetic data set


@dataclass(frozen=True)
class _DomainVocabulary:
    items: tuple[str, ...]  # neutral nouns of the domain
    positive: tuple[str, ...]  # sentiment cues that only this domain uses
    negative: tuple[str, ...]


SHARED_POSITIVE = (
    "it is great",
    "excellent value",
    "i love it",
    "highly recommended",
    "simply wonderful",
    "worth every penny",
    "very happy with it",
)
SHARED_NEGATIVE = (
    "it is terrible",
    "very disappointing",
    "a waste of money",
    "would not recommend it",
    "simply awful",
    "poor quality overall",
    "i regret buying it",
)
# Cues whose polarity depends on the domain: positive where listed, negative elsewhere. They
# are what a single-domain model cannot learn from the other domains.
DOMAIN_DEPENDENT = (
    ("the ending was unpredictable", ("books", "dvd")),
    ("it kept me up all night", ("books", "dvd")),
    ("it runs very quietly", ("electronics", "kitchen")),
    ("it is small and light", ("electronics", "kitchen")),
)
VOCABULARY = {
    "books": _DomainVocabulary(
        items=("novel", "author", "chapter", "story", "paperback", "biography", "prose"),
        positive=("a real page turner", "beautifully written", "i could not put it down"),
        negative=("i gave up after three chapters", "the prose is clumsy", "the plot drags"),
    ),
    "dvd": _DomainVocabulary(
        items=("movie", "film", "director", "cast", "soundtrack", "season", "episode"),
        positive=("brilliant acting", "a must watch", "gripping from start to finish"),
        negative=("the acting is wooden", "i fell asleep halfway", "the picture is blurry"),
    ),
    "electronics": _DomainVocabulary(
        items=("battery", "screen", "charger", "speaker", "cable", "remote", "headphones"),
        positive=("the battery lasts all day", "crisp clear sound", "easy to set up"),
        negative=("it stopped working after a week", "the battery died fast", "it overheats"),
    ),
    "kitchen": _DomainVocabulary(
        items=("blender", "knife", "pan", "kettle", "toaster", "mug", "lid"),
        positive=("easy to clean", "it heats evenly", "very sturdy"),
        negative=("it rusted after one wash", "the handle broke", "it leaks everywhere"),
    ),
}
_GENERIC_ITEMS = ("product", "purchase", "item", "thing", "gift", "order", "model")
_OPENINGS = (
    "i bought this {item} last month",
    "my sister gave me this {item}",
    "this {item} arrived on time",
    "i ordered the {item} after reading the reviews",
    "we have had this {item} for a while",
    "i picked up this {item} on sale",
)
_FILLERS = (
    "the {item} looks just like the picture",
    "shipping was quick",
    "i compared it with another {item}",
    "the box was a bit dented",
    "my friends asked about the {item}",
)


def synthetic_splits(cfg: DataConfig) -> dict[str, Columns]:
    """Train / dev / test reviews for `cfg.synthetic_domains`, determined by `cfg.seed`.

    A review opens neutrally, then carries two or three cues of its polarity drawn from shared
    cues (transfer across domains), its domain's own cues and domain-dependent cues (whose
    polarity flips between domains), sometimes one weaker cue of the opposite polarity, and
    filler; then its label is flipped with probability `synthetic_label_noise`. Unknown domain
    names get generic vocabulary and only shared cues."""
    sizes = {
        "train": cfg.synthetic_train_per_domain,
        "dev": cfg.synthetic_eval_per_domain,
        "test": cfg.synthetic_eval_per_domain,
    }
    splits: dict[str, Columns] = {}
    for s, (role, size) in enumerate(sizes.items()):
        columns: Columns = {"text": [], "label": [], "domain": []}
        for d, domain in enumerate(cfg.synthetic_domains):
            rng = random.Random(f"{cfg.seed}/{s}/{d}")
            for _ in range(size):
                label = rng.randrange(2)
                text = _review(rng, domain, label)
                if rng.random() < cfg.synthetic_label_noise:
                    label = 1 - label
                columns["text"].append(text)
                columns["label"].append(label)
                columns["domain"].append(domain)
        splits[role] = _rename(columns, cfg)
    return splits


def _rename(columns: Columns, cfg: DataConfig) -> Columns:
    # The generator's columns answer to whatever names the config asks for.
    renamed = {
        cfg.text_column: columns["text"],
        cfg.label_column: columns["label"],
    }
    if cfg.domain_column:
        renamed[cfg.domain_column] = columns["domain"]
    if cfg.text_pair_column:
        renamed[cfg.text_pair_column] = [""] * len(columns["text"])
    return renamed


def _review(rng: random.Random, domain: str, label: int) -> str:
    vocab = VOCABULARY.get(domain)
    items = vocab.items if vocab else _GENERIC_ITEMS

    def cue(polarity: int) -> str:
        kinds = ["shared", "shared", "own", "own", "dependent"] if vocab else ["shared"]
        kind = rng.choice(kinds)
        if kind == "own":
            assert vocab is not None
            return rng.choice(vocab.positive if polarity else vocab.negative)
        if kind == "dependent":
            matching = [c for c, pos in DOMAIN_DEPENDENT if (domain in pos) == bool(polarity)]
            return rng.choice(matching)
        return rng.choice(SHARED_POSITIVE if polarity else SHARED_NEGATIVE)

    sentences = [rng.choice(_OPENINGS).format(item=rng.choice(items))]
    sentences += [cue(label) for _ in range(rng.choice((2, 2, 3)))]
    if rng.random() < 0.3:
        sentences.insert(rng.randrange(1, len(sentences) + 1), "although " + cue(1 - label))
    if rng.random() < 0.5:
        sentences.insert(
            rng.randrange(1, len(sentences) + 1),
            rng.choice(_FILLERS).format(item=rng.choice(items)),
        )
    return " . ".join(sentences) + " ."


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost exception: datasets wraps the parser's precise message
    ("JSON parse error: ... in row 0") in a generic one."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
