"""A teacher's statistics as a source and a student's agreement with its teacher, against hand
computations; and the benchmark's pilot rule (bench/metakd.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from bench.metakd import pilot_choice, recorded_metrics
from bench.metakd_pilot import epochs_choice
from kdtui.config import ModelConfig
from kdtui.data import Encoded
from kdtui.methods.meta_kd import mean_token_states
from kdtui.methods.source_stats import (
    agreement,
    agreement_by_domain,
    logit_margin,
    logits_and_sentence_layers,
    mean_pairwise_cosine,
    representation_variance,
    softmax_entropy,
    source_statistics,
)
from kdtui.models import load_classifier


def test_margin_is_top1_minus_top2_logit() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [3.0, 3.0, 0.0]])
    assert logit_margin(logits) == pytest.approx((2.0 + 0.5 + 0.0) / 3)
    assert math.isnan(logit_margin(torch.zeros(0, 2)))


def test_entropy_at_the_kd_temperature_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [3.0, 3.0]])
    p = 1 / (1 + math.exp(-1.0))  # softmax of (2, 0) / 2 = (1, 0)
    first = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert softmax_entropy(logits, 2.0) == pytest.approx((first + math.log(2)) / 2, rel=1e-6)
    # a higher temperature flattens the targets: more entropy, at most ln C
    assert softmax_entropy(logits, 1.0) < softmax_entropy(logits, 2.0) < math.log(2)


def test_layer_variance_by_hand() -> None:
    reps = torch.tensor([[1.0, 5.0], [3.0, 5.0]])  # variances across examples: 1 and 0
    assert representation_variance(reps) == pytest.approx(0.5)
    assert representation_variance(torch.ones(4, 3)) == 0.0  # collapsed: one point


def test_mean_pairwise_cosine_by_hand() -> None:
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert mean_pairwise_cosine(torch.stack([e1, 3 * e1])) == pytest.approx(1.0)  # same way
    assert mean_pairwise_cosine(torch.stack([e1, e2])) == pytest.approx(0.0)  # orthogonal
    assert mean_pairwise_cosine(torch.stack([e1, -e1])) == pytest.approx(-1.0)
    # pairs (1,2) = 1, (1,3) = (2,3) = 0: 1/3
    assert mean_pairwise_cosine(torch.stack([e1, e1, e2])) == pytest.approx(1 / 3)
    assert math.isnan(mean_pairwise_cosine(e1[None]))
    reps = torch.randn(7, 5, generator=torch.Generator().manual_seed(0)).double()
    reps[3] = 0.0  # a zero vector has cosine 0 with everything
    pairs = [
        0.0 if i == 3 or j == 3 else F.cosine_similarity(reps[i], reps[j], dim=0).item()
        for i, j in itertools.permutations(range(7), 2)
    ]
    assert mean_pairwise_cosine(reps) == pytest.approx(sum(pairs) / len(pairs), abs=1e-9)


def test_agreement_by_hand() -> None:
    student, teacher = [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]
    assert agreement(student, teacher) == pytest.approx(3 / 5)
    by_domain = agreement_by_domain(student, teacher, [0, 0, 1, 1, 1], ["books", "dvd", "toys"])
    assert by_domain == pytest.approx({"books": 1.0, "dvd": 1 / 3, "all": 3 / 5})
    with pytest.raises(ValueError):
        agreement([0, 1], [0])


def test_source_statistics_of_a_model_on_a_split() -> None:
    model = load_classifier(ModelConfig(name="tiny", tiny_layers=2), ["neg", "pos"], seed=3)
    generator = torch.Generator().manual_seed(1)
    lengths = [5, 3, 7, 4, 6]
    ids = [torch.randint(1000, 2000, (n,), generator=generator).tolist() for n in lengths]
    encoded = Encoded(
        input_ids=ids,
        token_type_ids=[[0] * n for n in lengths],
        labels=[0, 1, 0, 1, 0],
        domains=[0, 0, 1, 1, 1],
        ids=list(range(5)),
    )
    model.train()
    logits, layers = logits_and_sentence_layers(
        model, encoded, batch_size=2, pad_id=0, device=torch.device("cpu")
    )
    assert model.training  # restored
    assert logits.shape == (5, 2) and len(layers) == 3  # embeddings + 2 layers
    model.eval()
    for i, n in enumerate(lengths):  # one example alone: no padding
        out = model(input_ids=torch.tensor([ids[i]]), output_hidden_states=True)
        assert torch.allclose(logits[i], out.logits[0], atol=1e-5)
        for layer, hidden in enumerate(out.hidden_states):
            expected = mean_token_states(hidden, torch.ones(1, n))[0]
            assert torch.allclose(layers[layer][i], expected, atol=1e-5)
    stats = source_statistics(logits, layers, 2.0)
    assert set(stats) == {
        "margin",
        "entropy",
        "temperature",
        *(f"layer{k}_{what}" for k in range(3) for what in ("variance", "cosine")),
    }
    assert stats["layer2_cosine"] == pytest.approx(mean_pairwise_cosine(layers[2]))


# ---------------------------------------------------------------------------------------------
# The benchmark: what a record keeps, and the pilot rule


def test_a_record_keeps_the_source_statistics_and_agreement() -> None:
    metrics = {
        "best_dev": 0.7,
        "test": {"books": 0.7},
        "source/margin": 1.2,
        "agreement/test": 0.9,
        "dev_classes": {"neg": 3, "pos": 4},
        "model": "model",
        "timings": {},
    }
    kept = recorded_metrics(metrics)
    assert set(kept) == {"best_dev", "test", "source/margin", "agreement/test", "dev_classes"}


def test_the_pilot_rule_excludes_a_setting_with_a_one_class_student() -> None:
    def student(dev: float, neg: int, pos: int) -> dict:
        return {"best_dev": dev, "dev_classes": {"neg": neg, "pos": pos}}

    settings = {
        # the best mean, but one of its students predicts "neg" for every dev example
        "lr1e-3": [student(0.80, 6, 6), student(0.50, 12, 0), student(0.82, 5, 7)],
        "lr3e-4": [student(0.70, 6, 6), student(0.68, 7, 5), student(0.69, 4, 8)],
        "lr1e-4": [student(0.60, 6, 6), student(0.61, 7, 5), student(0.62, 5, 7)],
        "empty": [],
    }
    chosen, excluded = pilot_choice(settings)
    assert chosen == "lr3e-4"
    assert set(excluded) == {"lr1e-3", "empty"} and "one class" in excluded["lr1e-3"]
    # no eligible setting: nothing is chosen
    assert pilot_choice({"a": [student(0.9, 0, 12)]}) == (
        None,
        {"a": "a student predicts one class on its dev"},
    )
    # a tie goes to the setting given first
    tie = {"x": [student(0.7, 6, 6)], "y": [student(0.7, 5, 7)]}
    assert pilot_choice(tie)[0] == "x"


def test_the_teacher_budget_rule_takes_the_smallest_budget_near_the_best() -> None:
    assert epochs_choice({1.0: 0.850, 2.0: 0.870, 3.0: 0.872}) == 2.0
    assert epochs_choice({1.0: 0.868, 2.0: 0.870, 3.0: 0.872}) == 1.0  # 0.4 points below
    assert epochs_choice({1.0: 0.860, 2.0: 0.866, 3.0: 0.872}) == 3.0  # 0.6 below: not near
