"""Loading multi-domain data from every file format, the synthetic generator, and bad input."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from kdtui.config import DataConfig
from kdtui.data import collate, encode, load_data, synthetic_splits
from kdtui.errors import KdtuiError

ROWS = [
    {"text": f"review number {i}, with a comma", "label": ["neg", "pos"][i % 2], "domain": d}
    for i, d in enumerate(["books", "dvd", "kitchen"] * 10)
]


def _write(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        columns = list(rows[0])

        def cell(v: object) -> str:
            text = str(v)
            return f'"{text}"' if sep == "," and "," in text else text

        lines = [sep.join(columns)] + [sep.join(cell(r[c]) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _folder(tmp_path: Path, suffix: str = ".jsonl") -> Path:
    _write(tmp_path / f"train{suffix}", ROWS)
    _write(tmp_path / f"dev{suffix}", ROWS[:9])
    _write(tmp_path / f"test{suffix}", ROWS[:6])
    return tmp_path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_every_file_format_loads_the_same_examples(tmp_path: Path, suffix: str) -> None:
    data = load_data(DataConfig(source=str(_folder(tmp_path, suffix))))
    assert data.domain_names == ["books", "dvd", "kitchen"]
    assert data.label_names == ["neg", "pos"]
    assert data.train.texts == [r["text"] for r in ROWS]
    assert data.train.labels == [i % 2 for i in range(30)]
    assert data.train.ids == list(range(30))
    assert len(data.dev) == 9 and data.test is not None and len(data.test) == 6
    assert data.notes == []


def test_a_single_file_holds_out_a_stratified_seeded_dev_split(tmp_path: Path) -> None:
    path = _write(tmp_path / "all.csv", ROWS)
    data = load_data(DataConfig(source=str(path)))
    assert len(data.dev) == 3  # 10% of each domain's 10 rows
    assert sorted(data.dev.domains) == [0, 1, 2]
    assert sorted(data.train.ids + data.dev.ids) == list(range(30))  # ids are file rows
    assert data.test is None
    assert "holding out 3 training examples" in data.notes[0]
    again = load_data(DataConfig(source=str(path)))
    assert again.dev.ids == data.dev.ids
    assert load_data(DataConfig(source=str(path), seed=1)).dev.ids != data.dev.ids


def test_text_pairs_custom_columns_and_integer_labels(tmp_path: Path) -> None:
    rows = [
        {"premise": f"p{i}", "hypothesis": f"h{i}", "gold": i % 3, "genre": ["a", "b"][i % 2]}
        for i in range(12)
    ]
    _write(tmp_path / "train.jsonl", rows)
    _write(tmp_path / "dev_matched.jsonl", rows[:6])
    cfg = DataConfig(
        source=str(tmp_path),
        text_column="premise",
        text_pair_column="hypothesis",
        label_column="gold",
        domain_column="genre",
        dev_split="dev_matched",
    )
    data = load_data(cfg)
    assert data.label_names == ["0", "1", "2"]
    assert data.train.pairs == [f"h{i}" for i in range(12)]
    assert data.domain_names == ["a", "b"]


def test_no_domain_column_means_one_domain(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(20)]
    _write(tmp_path / "train.jsonl", rows)
    _write(tmp_path / "dev.jsonl", rows[:4])
    data = load_data(DataConfig(source=str(tmp_path)))
    assert data.domain_names == ["all"]
    assert set(data.train.domains) == {0}


def test_domain_selection_fraction_and_cap_are_seeded_per_domain(tmp_path: Path) -> None:
    source = str(_folder(tmp_path))
    data = load_data(DataConfig(source=source, domains=("dvd", "kitchen")))
    assert data.domain_names == ["dvd", "kitchen"]
    assert all(ROWS[i]["domain"] in ("dvd", "kitchen") for i in data.train.ids)
    scarce = load_data(DataConfig(source=source, train_fraction=0.2))
    assert [scarce.train.domains.count(d) for d in range(3)] == [2, 2, 2]
    assert len(scarce.dev) == 9  # only training data is subsampled
    capped = load_data(DataConfig(source=source, max_train_per_domain=3, max_eval_per_domain=1))
    assert [capped.train.domains.count(d) for d in range(3)] == [3, 3, 3]
    assert len(capped.dev) == 3
    assert load_data(DataConfig(source=source, train_fraction=0.2)).train.ids == scarce.train.ids
    other = load_data(DataConfig(source=source, train_fraction=0.2, seed=5))
    assert other.train.ids != scarce.train.ids


def test_synthetic_data_is_deterministic_multi_domain_and_noisy() -> None:
    cfg = DataConfig(synthetic_train_per_domain=200, synthetic_eval_per_domain=50)
    data = load_data(cfg)
    assert data.domain_names == ["books", "dvd", "electronics", "kitchen"]
    assert data.label_names == ["0", "1"]
    assert [data.train.domains.count(d) for d in range(4)] == [200] * 4
    assert len(data.dev) == 200 and data.test is not None and len(data.test) == 200
    assert load_data(cfg).train.texts == data.train.texts
    assert load_data(replace(cfg, seed=1)).train.texts != data.train.texts
    # Each split's reviews are drawn afresh: a test review rarely repeats a training one.
    assert len(set(data.test.texts) & set(data.train.texts)) <= 0.01 * len(data.test)
    # Shared cues carry across domains, domain cues do not appear elsewhere.
    books = " ".join(t for t, d in zip(data.train.texts, data.train.domains, strict=True) if d == 0)
    kitchen = " ".join(
        t for t, d in zip(data.train.texts, data.train.domains, strict=True) if d == 3
    )
    assert "highly recommended" in books and "highly recommended" in kitchen
    assert "page turner" in books and "page turner" not in kitchen
    # Label noise: with 0.2 noise, about a fifth of labels disagree with the noiseless ones.
    clean = synthetic_splits(replace(cfg, synthetic_label_noise=0.0))["train"]["label"]
    noisy = synthetic_splits(replace(cfg, synthetic_label_noise=0.2))["train"]["label"]
    flipped = sum(a != b for a, b in zip(clean, noisy, strict=True)) / len(clean)
    assert 0.12 < flipped < 0.28


def test_encode_and_collate_pad_and_keep_ids() -> None:
    from transformers import AutoTokenizer

    from kdtui.models import bundled_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_path()))
    data = load_data(DataConfig(synthetic_train_per_domain=4, synthetic_eval_per_domain=2))
    encoded = encode(data.train, tokenizer, max_length=12)
    assert max(len(x) for x in encoded.input_ids) <= 12
    batch = collate(encoded, [3, 0], pad_id=0)
    lengths = [len(encoded.input_ids[3]), len(encoded.input_ids[0])]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["example_ids"].tolist() == [encoded.ids[3], encoded.ids[0]]


@pytest.mark.parametrize(
    ("setup", "cfg", "message"),
    [
        (lambda p: None, {"source": "missing.csv"}, "data file 'missing.csv' does not exist"),
        (
            lambda p: (p / "d").mkdir(),
            {"source": "{p}/d"},
            "has no training file",
        ),
        (
            lambda p: (p / "x.txt").write_text("hi"),
            {"source": "{p}/x.txt"},
            "unsupported type '.txt'",
        ),
        (
            lambda p: _write(p / "t.jsonl", ROWS),
            {"source": "{p}/t.jsonl", "text_column": "body"},
            r"no column 'body' \(data.text_column\); its columns: text, label, domain",
        ),
        (
            lambda p: _write(p / "t.jsonl", ROWS),
            {"source": "{p}/t.jsonl", "domains": ("garden",)},
            "data.domains: 'garden' not in the data",
        ),
        (
            lambda p: _write(p / "t.jsonl", [{**r, "label": "pos"} for r in ROWS]),
            {"source": "{p}/t.jsonl"},
            "single label",
        ),
        (
            lambda p: _write(
                p / "t.jsonl", [{**r, "label": i % 2 or "x"} for i, r in enumerate(ROWS)]
            ),
            {"source": "{p}/t.jsonl"},
            "labels mix types|cannot read",
        ),
        (
            lambda p: (p / "t.jsonl").write_text('{"text": "a", "label": 1\n{broken'),
            {"source": "{p}/t.jsonl"},
            "cannot read data file",
        ),
        (
            lambda p: (p / "t.csv").write_text(""),
            {"source": "{p}/t.csv"},
            "cannot read data file|holds no examples",
        ),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path: Path, setup, cfg: dict, message: str) -> None:
    setup(tmp_path)
    values = {k: v.format(p=tmp_path) if isinstance(v, str) else v for k, v in cfg.items()}
    with pytest.raises(KdtuiError, match=message):
        load_data(DataConfig(**values))


def test_dev_labels_outside_the_training_labels(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", ROWS)
    _write(tmp_path / "dev.jsonl", [{**ROWS[0], "label": "meh"}])
    with pytest.raises(
        KdtuiError, match=r"label 'meh' in \S+/dev.jsonl line 1 \(the dev split\) is not one of"
    ):
        load_data(DataConfig(source=str(tmp_path)))


@pytest.mark.parametrize(
    ("suffix", "row_at"),
    [
        (".jsonl", "line 7"),
        (".csv", "line 8"),
        (".tsv", "line 8"),
        (".json", "row 7"),
        (".parquet", "row 7"),
    ],  # fmt: skip
)
@pytest.mark.parametrize("label", ["", "  ", None])
def test_an_empty_label_is_a_missing_label_in_every_format(
    tmp_path: Path, suffix: str, row_at: str, label: str | None
) -> None:
    """An empty string became a class of its own in JSONL (a 3-class model, exit 0) while an
    empty CSV cell was refused; now both are refused, naming the file and the line."""
    if suffix in (".csv", ".tsv") and label is None:
        label = ""  # an empty cell is how a CSV says null
    rows = [{**r, "label": label} if i == 6 else r for i, r in enumerate(ROWS)]
    path = _write(tmp_path / f"train{suffix}", rows)
    with pytest.raises(KdtuiError) as refused:
        load_data(DataConfig(source=str(path)))
    assert f"{path} {row_at} has no label (column 'label' is " in str(refused.value)


def test_label_refusals_name_the_line_past_blank_lines_and_in_a_held_out_dev(
    tmp_path: Path,
) -> None:
    # A blank line before the bad row: rows and lines part ways.
    lines = [json.dumps(r) for r in ROWS]
    lines.insert(2, "")
    lines[11] = json.dumps({**ROWS[10], "label": None})
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    # Whichever split the row is held out into, the line is the file's.
    for seed in range(4):
        with pytest.raises(KdtuiError, match=f"{path} line 12 has no label"):
            load_data(DataConfig(source=str(path), seed=seed))
    lines[11] = json.dumps({**ROWS[10], "label": 1})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        KdtuiError, match="line 12 holds a number in column 'label' where line 1 holds a string"
    ):
        load_data(DataConfig(source=str(path)))
    floats = tmp_path / "f.jsonl"
    floats.write_text(
        "".join(json.dumps({**r, "label": i % 2 + 0.5}) + "\n" for i, r in enumerate(ROWS))
    )
    with pytest.raises(KdtuiError, match=f"{floats} line 1 has 0.5 \\(a fractional number\\)"):
        load_data(DataConfig(source=str(floats)))


def test_a_domain_missing_from_train_says_how_to_keep_to_the_trained_ones(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", ROWS)
    _write(tmp_path / "dev.jsonl", ROWS)
    _write(tmp_path / "test.jsonl", [*ROWS[:3], {**ROWS[3], "domain": "garden"}])
    with pytest.raises(KdtuiError) as refused:
        load_data(DataConfig(source=str(tmp_path)))
    assert str(refused.value) == (
        f"domain 'garden' of {tmp_path / 'test.jsonl'} line 4 (the test split) has no training "
        "examples (the training data's domains: books, dvd, kitchen); add training examples of "
        """it, or keep to the trained domains: --set 'data.domains=["books", "dvd", "kitchen"]'"""
    )
    kept = load_data(DataConfig(source=str(tmp_path), domains=("books", "dvd", "kitchen")))
    assert kept.test is not None and len(kept.test) == 3


def test_blank_lines_are_skipped_and_extra_columns_ignored(tmp_path: Path) -> None:
    rows = [{**r, "stars": 5, "note": "extra"} for r in ROWS]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps(r) + ("\n" if i % 4 == 0 else "") for i, r in enumerate(rows)) + "\n\n"
    )
    csv = _write(tmp_path / "d.csv", rows)
    csv.write_text(csv.read_text().replace("\n", "\n\n", 5))
    for path in (jsonl, csv):
        data = load_data(DataConfig(source=str(path)))
        assert len(data.train) + len(data.dev) == len(ROWS), path.name
        assert sorted(data.train.texts + data.dev.texts) == sorted(r["text"] for r in ROWS)


def test_a_single_label_domain_is_reported_and_cannot_be_trained_alone(tmp_path: Path) -> None:
    rows = [{**r, "label": "pos"} if r["domain"] == "dvd" else r for r in ROWS]
    data = load_data(DataConfig(source=str(_write(tmp_path / "d.jsonl", rows))))
    assert any("domain 'dvd' has a single label ('pos')" in note for note in data.notes)
    assert len(set(data.training_domain("books").labels)) == 2
    with pytest.raises(KdtuiError, match="domain 'dvd' has a single label"):
        data.training_domain("dvd")
    with pytest.raises(KdtuiError, match="domain 'garden' is not in the data"):
        data.training_domain("garden")


def test_an_unreadable_data_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "d.jsonl", ROWS)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: simulate what a user would meet
        import builtins

        real_open = builtins.open

        def denied(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(KdtuiError, match="Permission denied") as error:
        load_data(DataConfig(source=str(path)))
    assert str(path) in str(error.value)


def test_labels_that_differ_only_in_spaces_are_refused(tmp_path: Path) -> None:
    """'pos' and 'pos ' were two classes of a 3-class model."""
    rows = [{**r, "label": "pos "} if i in (3, 9, 15) else r for i, r in enumerate(ROWS)]
    path = _write(tmp_path / "train.jsonl", rows)
    _write(tmp_path / "dev.jsonl", ROWS)
    with pytest.raises(KdtuiError) as refused:
        load_data(DataConfig(source=str(tmp_path)))
    assert str(refused.value) == (
        f"labels 'pos' ({path} line 2) and 'pos ' ({path} line 4) differ only in spaces around "
        "them; remove the spaces"
    )


def test_a_label_of_another_kind_than_the_training_labels_is_shown_as_such(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "train.jsonl", [{**r, "label": str(i % 2)} for i, r in enumerate(ROWS)])
    _write(tmp_path / "dev.jsonl", [{**ROWS[0], "label": 0}])
    with pytest.raises(KdtuiError, match=r"label 0 in .* training labels \('0', '1'\)"):
        load_data(DataConfig(source=str(tmp_path)))


def test_a_row_without_a_domain_is_refused(tmp_path: Path) -> None:
    """A null domain became a domain named 'None'."""
    path = _write(
        tmp_path / "d.jsonl", [{**r, "domain": None} if i == 4 else r for i, r in enumerate(ROWS)]
    )
    with pytest.raises(
        KdtuiError, match=f"{path} line 5 has no domain \\(column 'domain' is empty\\)"
    ):
        load_data(DataConfig(source=str(path)))


def test_a_csv_separated_by_semicolons_says_so(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text;label;domain\n" + "".join(f"t {i};{i % 2};a\n" for i in range(20)))
    with pytest.raises(KdtuiError, match="is the file separated by ';'"):
        load_data(DataConfig(source=str(path)))
