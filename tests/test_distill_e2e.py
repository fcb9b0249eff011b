"""`kdtui teacher --method meta` then `kdtui distill` through the real CLI on the smoke profile:
run directories, loss terms, resume after SIGKILL, evaluate on a student, and bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdtui.config import DataConfig
from kdtui.data import load_data
from kdtui.events import Eval, Histogram, Message, RunFinished, RunStarted, Step
from tests.conftest import events_of, invoke, kill_when, metrics_of

DOMAINS = ["books", "dvd", "electronics", "kitchen"]


def _teacher(runs: Path, name: str, *options: str) -> Path:
    result = invoke(
        "teacher", "--profile", "smoke", "--output-dir", str(runs), "--name", name, "--quiet",
        *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return runs / name


def _distill(runs: Path, name: str, teacher: Path, *options: str) -> object:
    return invoke(
        "distill", "--profile", "smoke", "--teacher", str(teacher), "--output-dir", str(runs),
        "--name", name, *options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def meta_teacher(runs: Path) -> Path:
    return _teacher(runs, "meta", "--method", "meta")


@pytest.fixture(scope="module")
def mix_teacher(runs: Path) -> Path:
    return _teacher(runs, "mix", "--method", "mix")


def test_meta_teacher_run(meta_teacher: Path) -> None:
    events = events_of(meta_teacher)
    histograms = [e for e in events if isinstance(e, Histogram)]
    assert sorted(h.domain for h in histograms) == sorted(DOMAINS)
    assert all(sum(h.counts) == 48 and h.name == "prototype_score" for h in histograms)
    assert all(h.edges[0] >= 0 for h in histograms)  # weights never reverse the loss
    assert any(isinstance(e, Message) and "prototype scores: raw" in e.text for e in events)
    steps = [e for e in events if isinstance(e, Step)]
    assert steps and all(set(s.losses) == {"ce", "domain_adv", "domain_cls"} for s in steps)
    # the loop weighs the adversarial term by γ1 = teacher.domain_loss_weight (0.5)
    for s in steps:
        expected = s.losses["ce"] + 0.5 * s.losses["domain_adv"] + s.losses["domain_cls"]
        assert s.loss == pytest.approx(expected, rel=1e-5)
        # the domain head's diagnostics, every step
        assert {"domain/acc_true", "domain/acc_corrupted", "domain/adv_chance"} <= set(s.metrics)
        assert 0 <= s.metrics["domain/acc_true"] <= 1
        assert s.metrics["domain/adv_chance"] > 0
    # evaluation steps carry each term's gradient norm on the model: the task and the
    # adversary reach the encoder, the head's own loss does not (stopped features)
    graded = [s for s in steps if "grad/ce" in s.metrics]
    assert graded and all(s.metrics["grad/domain_adv"] > 0 for s in graded)
    assert all(s.metrics["grad/domain_cls"] == 0 for s in graded)
    assert isinstance(events[-1], RunFinished)

    scores = load_file(meta_teacher / "prototype_scores.safetensors")
    assert len(scores["ids"]) == 4 * 48 and torch.isfinite(scores["scores"]).all()
    assert bool((scores["scores"] >= 0).all())
    for d in range(4):  # teacher.score_normalization = "domain-mean"
        assert scores["scores"][scores["domains"] == d].mean().item() == pytest.approx(1.0)
    assert (meta_teacher / "model" / "domain_head.safetensors").is_file()
    metrics = metrics_of(meta_teacher)  # a meta-teacher's statistics as a source, too
    assert {"source/margin", "source/entropy", "source/layer2_cosine"} <= set(metrics)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(meta_teacher / "model")
    assert model.config.num_labels == 2


def test_distill_all_domains(runs: Path, meta_teacher: Path) -> None:
    result = _distill(runs, "all", meta_teacher, "--domain", "all")
    assert result.exit_code == 0, result.stderr
    run = runs / "all"
    assert "students (meta)" in result.stdout

    metrics = metrics_of(run)
    assert metrics["method"] == "meta" and set(metrics["domains"]) == set(DOMAINS)
    for domain, m in metrics["domains"].items():
        assert m["model"] == f"domains/{domain}/model"
        assert (run / m["model"] / "model.safetensors").is_file()
        assert set(m["test"]) == {*DOMAINS, "all"}
        # agreement with the teacher: its own domain and all, dev and test; its dev classes
        for key in ("agreement/dev", "agreement/test", "agreement/dev_all", "agreement/test_all"):
            assert 0 <= m[key] <= 1, key
        assert sum(m["dev_classes"].values()) == 12  # smoke: 12 dev examples per domain
        assert set(m["dev_classes"]) == {"0", "1"}
    summary = (run / "summary.md").read_text()
    assert all(f"| {d} |" in summary for d in DOMAINS)

    events = events_of(run)
    (started,) = [e for e in events if isinstance(e, RunStarted)]
    steps = [e for e in events if isinstance(e, Step)]
    # smoke: 48 examples per domain, batch 8 -> 6 steps per stage, two stages, four domains
    assert started.total_steps == 48 and [s.step for s in steps] == list(range(1, 49))
    stage1 = [s for s in steps if "hidden_mse" in s.losses]
    stage2 = [s for s in steps if "soft_ce" in s.losses]
    assert len(stage1) == len(stage2) == 24
    # Each stage logs its terms' gradient norms at its end (the evaluation cadence), stage 1 too.
    graded = [s for s in stage1 if "grad/hidden_mse" in s.metrics]
    assert graded and all(
        s.metrics["grad/hidden_mse"] > 0 and "grad/domain_kl" in s.metrics for s in graded
    )
    assert any("grad/soft_ce" in s.metrics for s in stage2)
    for s in stage1:
        assert set(s.losses) == {"hidden_mse", "attention_mse", "domain_kl"}
        terms = s.losses
        expected = terms["hidden_mse"] + terms["attention_mse"] + 0.5 * terms["domain_kl"]
        assert s.loss == pytest.approx(expected, rel=1e-5)  # γ2 = distill.domain_weight
    evals = [e for e in events if isinstance(e, Eval)]
    assert evals and all(set(e.accuracy) == {*DOMAINS, "all"} for e in evals)
    assert metrics["domains"]["books"]["best_dev"] == max(
        e.accuracy["books"] for e in evals if e.step <= 12
    )

    # `kdtui evaluate RUN` on a --domain all run scores every domain's student.
    report = run / "report.json"
    evaluated = invoke(
        "evaluate", str(run), "--json", str(report), "--set", "evaluate.latency_repeats=1"
    )
    assert evaluated.exit_code == 0, evaluated.stderr
    scored = json.loads(report.read_text())["models"]
    assert [m["model"] for m in scored] == [str(run / "domains" / d) for d in sorted(DOMAINS)]
    for m in scored:
        domain = Path(m["model"]).name
        assert m["accuracy"][domain] == pytest.approx(metrics["domains"][domain]["test"][domain])
        # each student's agreement with the teacher its run records, on the evaluated split
        assert m["teacher"] == str(meta_teacher) and "margin" in m["source"]
        own = metrics["domains"][domain]
        assert m["agreement"][domain] == pytest.approx(own["agreement/test"])
        assert m["agreement"]["all"] == pytest.approx(own["agreement/test_all"])


def test_meta_kd_without_expertise_weights_keeps_its_domain_term(
    runs: Path, meta_teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`distill.expertise_weights=false` (an ablation) sets every λ_i to 1 in both stages and
    keeps the rest of Meta-KD: the teacher's domain head and the domain_kl term."""
    from kdtui.methods import meta_kd

    built: dict[str, dict] = {}
    for hook in ("IntermediateDistillHook", "PredictionDistillHook"):
        cls = getattr(meta_kd, hook)

        def recording(
            self: object, *a: object, _cls: type = cls, _name: str = hook, **kw: object
        ) -> None:
            built[_name] = kw
            _cls.__init__(self, *a, **kw)

        monkeypatch.setattr(meta_kd, hook, type(hook, (cls,), {"__init__": recording}))
    result = _distill(
        runs, "uniform", meta_teacher, "--domain", "books", "--quiet",
        "--set", "distill.expertise_weights=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    stage1, stage2 = built["IntermediateDistillHook"], built["PredictionDistillHook"]
    assert stage1["use_expertise_weights"] is False and stage1["teacher_domain_head"] is not None
    assert stage2["weights"] == "none"
    steps = [e for e in events_of(runs / "uniform") if isinstance(e, Step)]
    assert any("domain_kl" in s.losses for s in steps)
    assert metrics_of(runs / "uniform")["method"] == "meta"


def test_baselines_from_a_mix_teacher_then_evaluate(runs: Path, mix_teacher: Path) -> None:
    result = _distill(runs, "vanilla", mix_teacher, "--domain", "dvd", "--quiet")
    assert result.exit_code == 0, result.stderr
    metrics = metrics_of(runs / "vanilla")
    assert metrics["method"] == "vanilla"  # the default for a teacher without a domain head
    finished = next(e for e in events_of(runs / "vanilla") if isinstance(e, RunFinished))
    for key in ("agreement/dev", "agreement/test"):  # one student: at the top level
        assert finished.metrics[key] == metrics[key] and 0 <= metrics[key] <= 1
    losses = {k for e in events_of(runs / "vanilla") if isinstance(e, Step) for k in e.losses}
    assert losses == {"hidden_mse", "attention_mse", "soft_ce"}

    report = runs / "report.json"
    evaluated = invoke("evaluate", str(runs / "vanilla"), "--json", str(report))
    assert evaluated.exit_code == 0, evaluated.stderr
    import json

    (model,) = json.loads(report.read_text())["models"]
    assert model["accuracy"] == pytest.approx(metrics["test"])
    config = json.loads((runs / "vanilla" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1  # the smoke student: one layer of the teacher's two

    result = _distill(runs, "logits", mix_teacher, "--domain", "dvd", "--method", "logits")
    assert result.exit_code == 0, result.stderr
    losses = {k for e in events_of(runs / "logits") if isinstance(e, Step) for k in e.losses}
    assert losses == {"soft_ce"}


def test_an_authors_meta_teacher_and_its_students(runs: Path) -> None:
    """teacher.domain_loss = "authors": its term in the events and config, its head saved with
    the domain embedding, and a student whose data holds only its domain reads it."""
    teacher = _teacher(runs, "authors", "--method", "meta", "--domain-loss", "authors")
    config = (teacher / "config.toml").read_text()
    assert 'domain_loss = "authors"' in config and "domain_head_lr = 0.0" in config
    steps = [e for e in events_of(teacher) if isinstance(e, Step)]
    assert steps and all(set(s.losses) == {"ce", "domain_corrupted"} for s in steps)
    for s in steps:  # γ1 = teacher.domain_loss_weight (0.5)
        assert s.loss == pytest.approx(s.losses["ce"] + 0.5 * s.losses["domain_corrupted"])
        assert {"domain/acc_true", "domain/acc_corrupted", "domain/adv_chance"} <= set(s.metrics)
    graded = [s for s in steps if "grad/ce" in s.metrics]
    assert graded and all(s.metrics["grad/domain_corrupted"] > 0 for s in graded)
    head = load_file(teacher / "model" / "domain_head.safetensors")
    assert head["embedding.weight"].shape == (4, 32)

    result = _distill(
        runs, "from-authors", teacher, "--domain", "dvd", "--quiet", "--set", "data.domains=dvd"
    )
    assert result.exit_code == 0, result.stderr
    student = runs / "from-authors"
    stage1 = [e for e in events_of(student) if isinstance(e, Step) and "domain_kl" in e.losses]
    assert stage1 and all(s.losses["domain_kl"] >= 0 for s in stage1)
    metrics = metrics_of(student)
    assert metrics["method"] == "meta" and 0 <= metrics["agreement/test"] <= 1


# ---------------------------------------------------------------------------------------------
# Resume: SIGKILL mid-distillation, then --resume, ends exactly like an uninterrupted run

LONGER = [
    "--domain", "books", "--quiet",
    "--set", "distill.intermediate_epochs=2", "--set", "distill.prediction_epochs=2",
    "--set", "train.checkpoint_every=4", "--set", "train.eval_every=6",
]  # fmt: skip


def test_sigkill_in_each_stage_then_resume_equals_uninterrupted(
    runs: Path, meta_teacher: Path
) -> None:
    result = _distill(runs, "full", meta_teacher, *LONGER)
    assert result.exit_code == 0, result.stderr

    # Killed in stage 1, resumed and killed again in stage 2 (stage 1 finished: it must be
    # skipped, not rerun), then resumed to the end. Books: 6 steps per epoch, 12 per stage.
    run = runs / "killed"
    argv = [
        "distill", "--profile", "smoke", "--teacher", str(meta_teacher),
        "--output-dir", str(runs), "--name", "killed", *LONGER,
    ]  # fmt: skip
    kill_when(argv, run / "checkpoints" / "stage1" / "step-00000004")
    kill_when(
        ["distill", "--resume", str(run), "--quiet"],
        run / "checkpoints" / "stage2" / "step-00000004",
    )
    assert not (run / "metrics.json").exists(), "kill came too late"
    resumed = invoke("distill", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr

    started = [e for e in events_of(run) if isinstance(e, RunStarted)]
    assert [e.resumed_from_step for e in started][0] == 0
    assert started[1].resumed_from_step >= 4 and started[2].resumed_from_step >= 16
    steps = [e.step for e in events_of(run) if isinstance(e, Step)]
    assert steps[-1] == 24 and set(steps) == set(range(1, 25))

    assert metrics_of(run) == metrics_of(runs / "full")
    full = load_file(runs / "full" / "model" / "model.safetensors")
    again = load_file(run / "model" / "model.safetensors")
    assert full.keys() == again.keys()
    assert all(torch.equal(full[k], again[k]) for k in full)


# ---------------------------------------------------------------------------------------------
# Data-scarce setting


def test_subsample_domains_shrinks_only_the_target_domain() -> None:
    base = DataConfig(synthetic_train_per_domain=40, synthetic_eval_per_domain=4)
    scarce = load_data(replace(base, train_fraction=0.25, subsample_domains=("dvd",))).train
    counts = {d: scarce.domains.count(i) for i, d in enumerate(DOMAINS)}
    assert counts == {"books": 40, "dvd": 10, "electronics": 40, "kitchen": 40}
    everywhere = load_data(replace(base, train_fraction=0.25)).train
    dvd = DOMAINS.index("dvd")
    assert scarce.domain_subset(dvd).ids == everywhere.domain_subset(dvd).ids

    # with a cap, the cap applies to every domain first and the fraction to the capped data,
    # so the scarce examples are a subset of the full (capped) run's
    capped = load_data(replace(base, max_train_per_domain=20)).train
    both = load_data(
        replace(base, max_train_per_domain=20, train_fraction=0.25, subsample_domains=("dvd",))
    ).train
    assert [both.domains.count(i) for i in range(4)] == [20, 5, 20, 20]
    assert set(both.ids) <= set(capped.ids)


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2, no run directory left behind


def _refused(result: object, runs: Path, name: str, *fragments: str) -> None:
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line
    assert not (runs / name).exists()


def test_bad_distill_input(runs: Path, meta_teacher: Path, mix_teacher: Path) -> None:
    result = _distill(runs, "bad", meta_teacher, "--domain", "toys")
    _refused(result, runs, "bad", "domain 'toys' is not in the data", "books")

    result = _distill(runs, "bad", mix_teacher, "--domain", "books", "--method", "meta")
    _refused(result, runs, "bad", "not a meta-teacher", "kdtui teacher --method meta")

    result = _distill(runs, "bad", meta_teacher, "--domain", "books", "--student-layers", "3")
    _refused(result, runs, "bad", "deeper than the teacher", "layer_map")

    result = _distill(
        runs, "bad", meta_teacher, "--domain", "books", "--set", "distill.layer_map=[[1, 5]]"
    )
    _refused(result, runs, "bad", "teacher layer 5 is out of range 0..2")

    result = _distill(
        runs, "bad", meta_teacher, "--domain", "books", "--set", "data.subsample_domains=toys"
    )
    _refused(result, runs, "bad", "data.subsample_domains")


def test_a_deeper_student_with_a_layer_map_or_logits_only_is_fine(
    runs: Path, mix_teacher: Path
) -> None:
    result = _distill(
        runs, "deep", mix_teacher, "--domain", "books", "--student-layers", "3", "--quiet",
        "--set", "distill.layer_map=[[0, 0], [3, 2]]",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # Logits only, more than twice the teacher's depth: layers start from teacher layers 0,0,0,1,1.
    result = _distill(
        runs, "deeper", mix_teacher, "--domain", "books", "--student-layers", "5", "--quiet",
        "--method", "logits",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = json.loads((runs / "deeper" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 5


def test_a_student_with_another_tokenizer_is_refused(
    runs: Path, meta_teacher: Path, tmp_path: Path
) -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from kdtui.models import save_classifier

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    config = BertConfig(
        vocab_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=2,
    )  # fmt: skip
    save_classifier(
        BertForSequenceClassification(config), tokenizer, tmp_path / "student", ["0", "1"]
    )
    result = _distill(
        runs, "bad", meta_teacher, "--domain", "books", "--student", str(tmp_path / "student")
    )
    _refused(result, runs, "bad", "different tokenizer")


def test_a_meta_teacher_needs_two_domains(runs: Path) -> None:
    result = invoke(
        "teacher", "--profile", "smoke", "--method", "meta", "--output-dir", str(runs),
        "--name", "one", "--set", "data.synthetic_domains=[\"books\"]",
    )  # fmt: skip
    _refused(result, runs, "one", "at least two domains")


def test_student_options_width_init_checkpoint_and_fraction(runs: Path, mix_teacher: Path) -> None:
    common = ["--domain", "books", "--method", "logits", "--quiet"]
    narrow = _distill(runs, "narrow", mix_teacher, *common, "--student-hidden", "16")
    assert narrow.exit_code == 0, narrow.stderr
    config = json.loads((runs / "narrow" / "model" / "config.json").read_text())
    assert config["hidden_size"] == 16

    teacher_emb = load_file(mix_teacher / "model" / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    distance = {}
    for init in ("teacher", "random"):
        result = _distill(runs, f"init-{init}", mix_teacher, *common, "--student-init", init)
        assert result.exit_code == 0, result.stderr
        student = load_file(runs / f"init-{init}" / "model" / "model.safetensors")
        distance[init] = float((student[key] - teacher_emb[key]).abs().mean())
    assert distance["random"] > 5 * distance["teacher"]  # a copy stays near, a new one does not

    # A given student checkpoint (here the narrow one) is trained further, on half the data.
    again = _distill(
        runs, "from-narrow", mix_teacher, *common, "--student", str(runs / "narrow"),
        "--train-fraction", "0.5",
    )  # fmt: skip
    assert again.exit_code == 0, again.stderr
    config = json.loads((runs / "from-narrow" / "model" / "config.json").read_text())
    assert config["hidden_size"] == 16
    started = [e for e in events_of(runs / "from-narrow") if isinstance(e, RunStarted)][0]
    full = [e for e in events_of(runs / "narrow") if isinstance(e, RunStarted)][0]
    assert started.total_steps * 2 == full.total_steps  # 24 of 48 books examples
