"""Meta-KD's pieces against hand computations: prototype scores and their normalisation, λ_i,
the corrupted-label adversarial loss and the domain head's diagnostics, the layer mapping,
attention probabilities, and every distillation loss term."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdtui.config import ModelConfig
from kdtui.engine.hooks import Batch, HookContext, StepInfo
from kdtui.errors import KdtuiError
from kdtui.layout import self_attention
from kdtui.methods.losses import attention_mse_per_instance
from kdtui.methods.meta_kd import (
    DOMAIN_HEAD_FILE,
    DomainHead,
    IntermediateDistillHook,
    MetaTeacherHook,
    PredictionDistillHook,
    attention_probabilities,
    attention_scores,
    corrupt_domain_labels,
    embed_for_prototypes,
    expertise_weights,
    load_domain_head,
    mean_token_states,
    normalise_scores,
    parse_layer_map,
    prototype_scores,
    save_domain_head,
    uniform_layer_map,
)
from kdtui.models import build_student, load_classifier

R = 1 / math.sqrt(1.25)  # cos between (1, 0) and (1, 0.5)


def test_mean_token_states_skips_cls_and_padding() -> None:
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 4.0], [7.0, 7.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert torch.allclose(mean_token_states(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_class_prototype_scores_by_hand() -> None:
    # domain 0: a=(1,0) y0, b=(0,1) y1, c=(1,1) y0 -> p0^0=(1,.5), p1^0=(0,1)
    # domain 1: d=(0,1) y0, e=(1,0) y1           -> p0^1=(0,1),  p1^1=(1,0)
    # domain 2: f=(1,1) y1 (no class 0)          -> p1^2=(1,1)
    e = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 1], [1, 0], [1, 1]])
    labels = torch.tensor([0, 1, 0, 0, 1, 1])
    domains = torch.tensor([0, 0, 0, 1, 1, 2])
    alpha, zeta = 0.6, 0.4
    s2 = 1 / math.sqrt(2)
    expected = [
        alpha * R + zeta * 0.0,  # a: other domains with class 0: only domain 1
        alpha * 1.0 + zeta * (0.0 + s2) / 2,  # b: p1^1=(1,0) -> 0, p1^2=(1,1) -> 1/√2
        alpha * (1.5 / (math.sqrt(2) * math.sqrt(1.25))) + zeta * s2,
        alpha * 1.0 + zeta * 0.5 * R,  # d: own p0^1=(0,1); other p0^0=(1,.5)
        alpha * 1.0 + zeta * (0.0 + s2) / 2,  # e: own (1,0); others p1^0=(0,1), p1^2=(1,1)
        alpha * 1.0 + zeta * (s2 + s2) / 2,  # f: own (1,1); others (0,1), (1,0)
    ]
    got = prototype_scores(
        e, labels, domains, num_domains=3, num_labels=2, variant="class", alpha=alpha, zeta=zeta
    )
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_centroid_prototype_scores_by_hand() -> None:
    # centroids: c0 = mean((2,0),(0,2)) = (1,1); c1 = mean((3,0),(1,0)) = (2,0); c2 = (0,1)
    e = torch.tensor([[2.0, 0], [0, 2], [3, 0], [1, 0], [0, 1]])
    labels = torch.tensor([0, 1, 1, 0, 1])  # ignored by this variant
    domains = torch.tensor([0, 0, 1, 1, 2])
    alpha, zeta = 0.3, 0.7
    s2 = 1 / math.sqrt(2)
    expected = [
        alpha * s2 + zeta * R,  # others' mean centroid (1, .5)
        alpha * s2 + zeta * 0.5 * R,
        alpha * 1.0 + zeta * 0.5 * R,  # others' mean centroid (.5, 1)
        alpha * 1.0 + zeta * 0.5 * R,
        alpha * 1.0 + zeta * 0.5 / math.sqrt(2.5),  # others' mean centroid (1.5, .5)
    ]
    got = prototype_scores(
        e, labels, domains, num_domains=3, num_labels=2, variant="centroid", alpha=alpha, zeta=zeta
    )
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_expertise_weights_follow_the_formula() -> None:
    t = torch.tensor([0.0, 0.5, -0.2, 0.9])
    p = torch.tensor([1.0, 0.0, 0.3, 0.75])
    expected = [
        (1 + ti) / (1 + math.exp((1 - pi) ** 2))
        for ti, pi in zip(t.tolist(), p.tolist(), strict=True)
    ]
    assert torch.allclose(expertise_weights(t, p), torch.tensor(expected), atol=1e-6)
    assert expertise_weights(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(0.5)


def test_normalised_scores_are_never_negative_and_weigh_domains_alike() -> None:
    raw = torch.tensor([-0.2, 0.1, 0.3, 0.5, 0.5, -0.1, 0.0, 0.0])
    domains = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    clamped = normalise_scores(raw, domains, num_domains=5, mode="clamp")
    assert clamped.tolist() == pytest.approx([0.0, 0.1, 0.3, 0.5, 0.5, 0.0, 0.0, 0.0])
    used = normalise_scores(raw, domains, num_domains=5)  # "domain-mean"
    # domain 0: clamped (0, .1, .3), mean 4/30 -> (0, .75, 2.25); domain 1: (1, 1);
    # domains 2 and 3 have nothing above 0: weight 1 each, not 0
    assert used.tolist() == pytest.approx([0.0, 0.75, 2.25, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert bool((used >= 0).all())
    for d in range(4):
        assert used[domains == d].mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown score normalization"):
        normalise_scores(raw, domains, num_domains=5, mode="none")


# ---------------------------------------------------------------------------------------------
# Tiny models and a batch


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    model = load_classifier(ModelConfig(name="tiny", tiny_layers=2), ["neg", "pos"], seed=3)
    model.eval()  # no dropout: the hand computations below see the same forward
    return model


def _batch() -> Batch:
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 7))
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 3:] = 0
    ids[mask == 0] = 0
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=torch.zeros_like(ids),
        labels=torch.tensor([0, 1, 1, 0]),
        domain_ids=torch.tensor([0, 1, 2, 1]),
        example_ids=torch.tensor([3, 0, 2, 1]),
    )


def _ctx(model: torch.nn.Module) -> HookContext:
    return HookContext(model, 10, lambda e: None, torch.device("cpu"))


def test_embed_for_prototypes_is_the_masked_mean_of_the_last_layer(tiny) -> None:
    batch = _batch()
    inputs = batch.model_inputs()
    got = embed_for_prototypes(tiny, [{**inputs}, {**inputs}])
    hidden = tiny(**inputs, output_hidden_states=True).hidden_states[-1]
    for row in range(4):
        real = int(batch.attention_mask[row].sum())
        expected = hidden[row, 1:real].mean(dim=0)
        assert torch.allclose(got[row], expected, atol=1e-5)
    assert got.shape == (8, tiny.config.hidden_size)


def test_corrupted_domain_labels_are_a_permutation_and_resumable() -> None:
    domains = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3, 0, 1, 2, 3])
    generator = torch.Generator().manual_seed(5)
    first = corrupt_domain_labels(domains, generator)
    assert sorted(first.tolist()) == sorted(domains.tolist())
    assert not torch.equal(first, domains)

    hook = MetaTeacherHook(
        num_domains=4, hidden=8, prototype_scores_by_example_id=torch.ones(4), seed=1
    )
    saved = hook.state_dict()
    draws = [corrupt_domain_labels(domains, hook.generator) for _ in range(3)]
    again = MetaTeacherHook(
        num_domains=4, hidden=8, prototype_scores_by_example_id=torch.ones(4), seed=99
    )
    again.load_state_dict(saved)
    assert all(torch.equal(d, corrupt_domain_labels(domains, again.generator)) for d in draws)
    assert torch.equal(again.head.dense.weight, hook.head.dense.weight)


def test_meta_teacher_terms_by_hand_and_who_learns_from_which(tiny) -> None:
    batch = _batch()
    scores = torch.tensor([0.9, 0.5, 0.2, 0.7])  # by example id
    hook = MetaTeacherHook(
        num_domains=3, hidden=tiny.config.hidden_size, prototype_scores_by_example_id=scores
    )
    hook.setup(_ctx(tiny))
    shadow = torch.Generator().manual_seed(0)
    shadow.set_state(hook.generator.get_state())
    outputs = tiny(**batch.model_inputs(), output_hidden_states=True)
    terms = hook.loss_terms(batch, outputs, tiny)
    assert set(terms) == {"ce", "domain_adv", "domain_cls"}

    t = scores[batch.example_ids]
    ce = F.cross_entropy(outputs.logits, batch.labels, reduction="none")
    assert terms["ce"].item() == pytest.approx((t * ce).mean().item(), rel=1e-5)
    features = mean_token_states(outputs.hidden_states[-1], batch.attention_mask)
    head = hook.head
    logits = head.classifier(torch.tanh(head.dense(features)))
    # the corrupted-label CE averaged over all 4! permutations of the batch's domain labels
    every = [
        F.cross_entropy(logits, batch.domain_ids[list(order)], reduction="none")
        for order in itertools.permutations(range(4))
    ]
    adv = torch.stack(every).mean(dim=0)
    assert terms["domain_adv"].item() == pytest.approx((t * adv).mean().item(), rel=1e-5)
    permuted = batch.domain_ids[torch.randperm(4, generator=shadow)]  # drawn, for diagnostics
    guess = logits.argmax(dim=-1)
    metrics = hook.after_step(StepInfo(step=1, total_steps=1, epoch=0.0))
    assert metrics["domain/acc_corrupted"] == pytest.approx((guess == permuted).float().mean())
    assert metrics["domain/acc_true"] == pytest.approx((guess == batch.domain_ids).float().mean())
    cls = F.cross_entropy(logits, batch.domain_ids)
    assert terms["domain_cls"].item() == pytest.approx(cls.item(), rel=1e-5)

    encoder = tiny.base_model.encoder.layer[-1].output.dense.weight
    tiny.zero_grad()
    terms["domain_adv"].backward(retain_graph=True)  # the encoder plays against the frozen head
    assert encoder.grad is not None and encoder.grad.abs().sum() > 0
    assert all(p.grad is None for p in hook.parameters())
    tiny.zero_grad()
    terms["domain_cls"].backward()  # the head learns the true domains from stopped features
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hook.parameters())
    assert encoder.grad is None
    tiny.zero_grad()


# The authors' domain loss (teacher.domain_loss = "authors")


def _fresh_tiny() -> torch.nn.Module:
    """A tiny model of this test's own: the module's `tiny` is frozen by the distillation
    tests."""
    return load_classifier(ModelConfig(name="tiny", tiny_layers=2), ["neg", "pos"], seed=3)


def test_authors_domain_loss_by_hand_and_who_learns_from_it() -> None:
    model = _fresh_tiny().eval()  # no dropout anywhere: the hand computation sees the same
    batch = _batch()  # domains 0, 1, 2, 1 of 4: domain 3 is not in the batch
    scores = torch.tensor([0.9, 0.5, 0.2, 0.7])  # by example id
    hook = MetaTeacherHook(
        num_domains=4,
        hidden=model.config.hidden_size,
        prototype_scores_by_example_id=scores,
        domain_loss="authors",
        dropout=0.1,
        seed=5,
    )
    hook.setup(_ctx(model))
    assert hook.lr is None  # one optimiser at train.lr, as the authors'
    shadow = torch.Generator().manual_seed(0)
    shadow.set_state(hook.generator.get_state())
    outputs = model(**batch.model_inputs(), output_hidden_states=True)
    terms = hook.loss_terms(batch, outputs, model)
    assert set(terms) == {"ce", "domain_corrupted"}
    assert not hook.head.training  # the head's dropout follows the model's mode

    t = scores[batch.example_ids]
    ce = F.cross_entropy(outputs.logits, batch.labels, reduction="none")
    assert terms["ce"].item() == pytest.approx((t * ce).mean().item(), rel=1e-5)
    # EasyNLP: domain_classifier(dropout(tanh(corrupt_dense(domain_embedding(k) + mean tokens))))
    head = hook.head
    assert head.embedding is not None
    features = mean_token_states(outputs.hidden_states[-1], batch.attention_mask)
    inputs = head.embedding.weight[batch.domain_ids] + features
    logits = inputs @ head.dense.weight.T + head.dense.bias
    logits = torch.tanh(logits) @ head.classifier.weight.T + head.classifier.bias
    shuffled = batch.domain_ids[torch.randperm(4, generator=shadow)]  # one permutation
    expected = (t * F.cross_entropy(logits, shuffled, reduction="none")).mean()
    assert terms["domain_corrupted"].item() == pytest.approx(expected.item(), rel=1e-5)

    # The whole model minimises it: encoder, domain embedding (the batch's domains' rows only)
    # and the head; the task's CE does not reach the head.
    encoder = model.base_model.encoder.layer[-1].output.dense.weight
    model.zero_grad()
    terms["ce"].backward(retain_graph=True)
    assert all(p.grad is None for p in hook.parameters())
    model.zero_grad()
    terms["domain_corrupted"].backward()
    assert encoder.grad is not None and encoder.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hook.parameters())
    rows = head.embedding.weight.grad.abs().sum(dim=1)
    assert (rows[:3] > 0).all() and rows[3] == 0

    model.train()  # training: the head drops out as the encoder does
    hook.loss_terms(batch, model(**batch.model_inputs(), output_hidden_states=True), model)
    assert hook.head.training and hook.head.dropout == 0.1


def test_authors_corrupted_labels_are_the_batch_labels_shuffled() -> None:
    """One torch.randperm of the batch's domain labels: each position draws each label with its
    share of the batch (the true label included), and the labels' counts are kept."""
    domains = torch.tensor([0, 1, 1, 2, 2, 2, 3, 3])
    share = torch.tensor([1, 2, 3, 2]) / 8
    hook = MetaTeacherHook(
        num_domains=4,
        hidden=8,
        prototype_scores_by_example_id=torch.ones(8),
        domain_loss="authors",
        seed=2,
    )
    draws = torch.stack([corrupt_domain_labels(domains, hook.generator) for _ in range(4000)])
    assert all(sorted(d.tolist()) == sorted(domains.tolist()) for d in draws[:50])
    for position in range(8):
        frequency = torch.bincount(draws[:, position], minlength=4) / len(draws)
        assert torch.allclose(frequency, share, atol=0.03)
    same = (draws == domains).float().mean()  # Σ_k share_k², the true label is not avoided
    assert same.item() == pytest.approx(float((share**2).sum()), abs=0.02)


def test_authors_head_round_trip_and_what_distillation_reads(tmp_path: Path) -> None:
    head = DomainHead(3, 32, ["books", "dvd", "kitchen"], domain_embedding=True, dropout=0.1)
    head.init_as_authors(4)
    assert head.embedding is not None and head.embedding.weight.std() > 0.5  # N(0, 1)
    bound = 1 / math.sqrt(32)
    assert head.dense.weight.abs().max() <= bound and head.dense.bias.abs().max() > 0
    save_domain_head(head, tmp_path)
    loaded = load_domain_head(tmp_path)
    assert loaded is not None and loaded.kind == "authors"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in head.state_dict().items())
    with pytest.raises(ValueError, match="domain_ids"):
        loaded(torch.zeros(2, 32))

    # A student whose data holds only dvd (its domain id 0) reads the head's dvd embedding (1).
    model = _fresh_tiny().eval()
    with pytest.raises(ValueError, match="head_domain_ids"):
        IntermediateDistillHook(
            teacher=model, layer_map=[(0, 0)], student_hidden=32, teacher_hidden=32,
            teacher_domain_head=loaded,
        )  # fmt: skip
    hook = IntermediateDistillHook(
        teacher=model, layer_map=[(0, 0)], student_hidden=32, teacher_hidden=32,
        teacher_domain_head=loaded, head_domain_ids=[1],
    )  # fmt: skip
    hook.setup(_ctx(model))
    batch = replace(_batch(), domain_ids=torch.zeros(4, dtype=torch.long))
    out = model(**batch.model_inputs(), output_hidden_states=True)
    terms = hook.loss_terms(batch, out, model)
    features = mean_token_states(out.hidden_states[-1], batch.attention_mask)
    p_t = torch.softmax(loaded(features, torch.ones(4, dtype=torch.long)), dim=-1)
    assert hook.student_domain_head is not None
    log_p_s = torch.log_softmax(hook.student_domain_head(features), dim=-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(dim=-1).mean()
    assert terms["domain_kl"].item() == pytest.approx(kl.item(), rel=1e-5)


class _Outputs:
    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden_states = (hidden,)
        self.logits = torch.zeros(hidden.shape[0], 2)


def test_domain_head_diagnostics_follow_what_the_head_learns() -> None:
    # Crafted features: each domain's sentences point one way, so the domain is in the features
    # and a head that learns finds it; the corrupted labels stay unpredictable.
    num_domains, width, size = 4, 8, 32
    directions = 3.0 * torch.eye(width)[:num_domains]
    generator = torch.Generator().manual_seed(0)
    hook = MetaTeacherHook(
        num_domains=num_domains,
        hidden=width,
        prototype_scores_by_example_id=torch.full((size,), 0.5),
        seed=3,
    )
    hook.setup(_ctx(torch.nn.Linear(1, 1)))
    optimizer = torch.optim.Adam(hook.parameters(), lr=1e-2)

    def step() -> dict[str, float]:
        domains = torch.arange(size) % num_domains
        hidden = directions[domains][:, None, :].repeat(1, 3, 1)
        hidden = hidden + 0.3 * torch.randn(hidden.shape, generator=generator)
        batch = Batch(
            input_ids=torch.zeros(size, 3, dtype=torch.long),
            attention_mask=torch.ones(size, 3, dtype=torch.long),
            token_type_ids=torch.zeros(size, 3, dtype=torch.long),
            labels=torch.zeros(size, dtype=torch.long),
            domain_ids=domains,
            example_ids=torch.arange(size),
        )
        terms = hook.loss_terms(batch, _Outputs(hidden.requires_grad_()), hook.head)
        optimizer.zero_grad()
        (terms["domain_cls"] + terms["domain_adv"]).backward()
        optimizer.step()
        metrics = dict(hook.after_step(StepInfo(step=1, total_steps=1, epoch=0.0)))
        return {**metrics, "domain_adv": terms["domain_adv"].item()}

    first = step()
    for _ in range(60):
        last = step()
    chance = 0.5 * math.log(num_domains)
    assert first["domain/adv_chance"] == pytest.approx(chance)
    assert first["domain/acc_true"] <= 0.5  # a new head guesses
    assert first["domain_adv"] == pytest.approx(chance, abs=0.05)  # ... and is at chance
    assert last["domain/acc_true"] == 1.0  # it has learned the domains
    assert last["domain/acc_corrupted"] < 0.6  # ... which the corrupted labels are not
    assert last["domain_adv"] > chance + 0.5  # so confusing it is a real loss for the encoder
    assert hook.after_step(StepInfo(step=2, total_steps=2, epoch=0.0)) == {}  # reset per step


def test_domain_head_round_trip(tmp_path: Path) -> None:
    head = DomainHead(3, 8, ["a", "b", "c"])
    head.init_weights(4)
    save_domain_head(head, tmp_path)
    loaded = load_domain_head(tmp_path)
    assert loaded is not None and loaded.domain_names == ["a", "b", "c"]
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in head.state_dict().items())
    assert load_domain_head(tmp_path / "elsewhere") is None
    # a head saved by an earlier kdtui (with a domain embedding) still loads
    from safetensors.torch import save_file

    older = tmp_path / "older"
    older.mkdir()
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    save_file({**state, "embedding.weight": torch.zeros(3, 8)}, str(older / DOMAIN_HEAD_FILE))
    loaded = load_domain_head(older)
    assert loaded is not None and torch.equal(loaded.dense.weight, head.dense.weight)


# ---------------------------------------------------------------------------------------------
# Layer mapping


def test_uniform_layer_map() -> None:
    assert uniform_layer_map(6, 2) == [(0, 0), (1, 3), (2, 6)]
    assert uniform_layer_map(6, 3) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert uniform_layer_map(6, 4) == [(0, 0), (1, 2), (2, 3), (3, 5), (4, 6)]
    assert uniform_layer_map(4, 4) == [(i, i) for i in range(5)]
    with pytest.raises(KdtuiError, match="deeper than the teacher"):
        uniform_layer_map(2, 3)


def test_parse_layer_map() -> None:
    assert parse_layer_map([[0, 0], [2, 6]], student_layers=2, teacher_layers=6) == [
        (0, 0),
        (2, 6),
    ]
    bad = {
        "out of range 0..2": [[3, 3]],
        "teacher layer 7 is out of range": [[1, 7]],
        "layer 0 matches only layer 0": [[0, 2]],
        "mapped twice": [[1, 2], [1, 3]],
        "not a \\[student_layer, teacher_layer\\] pair": [[1, 2, 3]],
        "is empty": [],
    }
    for message, pairs in bad.items():
        with pytest.raises(KdtuiError, match=message):
            parse_layer_map(pairs, student_layers=2, teacher_layers=6)


# ---------------------------------------------------------------------------------------------
# Distillation loss terms


def test_attention_mse_by_hand() -> None:
    s = torch.tensor([[[[1.0, 5.0], [7.0, 9.0]]]])  # (B=1, heads=1, T=2, T=2)
    t = torch.tensor([[[[3.0, -1.0], [0.0, 0.0]]]])
    assert attention_mse_per_instance(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(4.0)
    full = ((1 - 3) ** 2 + (5 + 1) ** 2 + 7**2 + 9**2) / 4
    assert attention_mse_per_instance(s, t, torch.tensor([[1, 1]])).item() == pytest.approx(full)
    two_heads = torch.cat([t, t + 2], dim=1)  # a student with fewer heads: head-averaged maps
    got = attention_mse_per_instance(s, two_heads, torch.tensor([[1, 1]]))
    assert got.item() == pytest.approx(((s - (t + 1)) ** 2).mean().item())


def test_attention_probabilities_by_hand() -> None:
    scores = torch.tensor([[[[1.0, 2.0, 50.0], [0.0, math.log(3.0), -7.0], [4.0, 4.0, 4.0]]]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: no query attends to it
    got = attention_probabilities(scores, mask)
    e = math.e
    expected = [[1 / (1 + e), e / (1 + e), 0.0], [0.25, 0.75, 0.0], [0.5, 0.5, 0.0]]
    assert got[0, 0].tolist() == [pytest.approx(row, abs=1e-6) for row in expected]
    # padding's query row (the last) and key column are left out of the MSE: only the 2x2 block
    teacher = torch.zeros_like(got)
    block = sum(v**2 for row in expected[:2] for v in row[:2]) / 4
    assert attention_mse_per_instance(got, teacher, mask).item() == pytest.approx(block)


def test_recomputed_attention_scores_give_the_models_attention_maps() -> None:
    model = load_classifier(
        ModelConfig(name="tiny"), ["neg", "pos"], attn_implementation="eager", seed=1
    )
    model.eval()
    batch = _batch()
    out = model(**batch.model_inputs(), output_hidden_states=True, output_attentions=True)
    additive = (1.0 - batch.attention_mask[:, None, None, :].float()) * torch.finfo().min
    for layer in range(model.config.num_hidden_layers):
        scores = attention_scores(self_attention(model, layer), out.hidden_states[layer])
        maps = torch.softmax(scores + additive, dim=-1)
        assert torch.allclose(maps, out.attentions[layer], atol=1e-5)
        probs = attention_probabilities(scores, batch.attention_mask)
        assert torch.allclose(probs, out.attentions[layer], atol=1e-5)


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(a.shape[0]):
        real = mask[i].bool()
        rows.append(((a[i][real] - b[i][real]) ** 2).mean())
    return torch.stack(rows)


@pytest.mark.parametrize("attention", ["probs", "scores"])
def test_intermediate_terms_by_hand(tiny, attention: str) -> None:
    student = build_student(tiny, num_layers=1, seed=2)
    student.eval()
    with torch.no_grad():  # a student that differs from the teacher layer it was copied from
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    head = DomainHead(3, tiny.config.hidden_size)
    head.init_weights(0)
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4])
    layer_map = uniform_layer_map(2, 1)  # [(0, 0), (1, 2)]
    hook = IntermediateDistillHook(
        teacher=tiny,
        layer_map=layer_map,
        student_hidden=student.config.hidden_size,
        teacher_hidden=tiny.config.hidden_size,
        teacher_domain_head=head,
        prototype_scores_by_example_id=scores,
        use_expertise_weights=True,
        attention=attention,
    )
    hook.setup(_ctx(student))
    with torch.no_grad():  # a projection that is not the identity
        hook.projection.weight.mul_(1.5)
        hook.projection.bias.fill_(0.1)
    assert hook.student_domain_head is not None
    assert set(hook.parameters()) == {
        *hook.projection.parameters(),
        *hook.student_domain_head.parameters(),
    }
    batch = _batch()
    mask = batch.attention_mask
    out = student(**batch.model_inputs(), output_hidden_states=True)
    terms = hook.loss_terms(batch, out, student)

    with torch.no_grad():
        t_out = tiny(**batch.model_inputs(), output_hidden_states=True)
    p = torch.softmax(t_out.logits, dim=-1)[torch.arange(4), batch.labels]
    lam = (1 + scores[batch.example_ids]) / (1 + torch.exp((1 - p) ** 2))
    proj = hook.projection
    hidden = _masked_mse(proj(out.hidden_states[0]), t_out.hidden_states[0], mask)
    hidden = hidden + _masked_mse(proj(out.hidden_states[1]), t_out.hidden_states[2], mask)
    assert terms["hidden_mse"].item() == pytest.approx((lam * hidden).mean().item(), rel=1e-4)

    s_scores = attention_scores(self_attention(student, 0), out.hidden_states[0])
    t_scores = attention_scores(self_attention(tiny, 1), t_out.hidden_states[1])
    per_example = []
    for i in range(4):
        n = int(mask[i].sum())  # real tokens only: softmax over them, then compare
        s_i, t_i = s_scores[i, :, :n, :n], t_scores[i, :, :n, :n]
        if attention == "probs":
            s_i, t_i = s_i.softmax(dim=-1), t_i.softmax(dim=-1)
        per_example.append(((s_i - t_i) ** 2).mean())
    expected = (lam * torch.stack(per_example)).mean()
    assert terms["attention_mse"].item() == pytest.approx(expected.item(), rel=1e-4)

    def sentence(h: torch.Tensor) -> torch.Tensor:
        return torch.stack([h[i, 1 : int(mask[i].sum())].mean(dim=0) for i in range(4)])

    p_t = torch.softmax(
        head.classifier(torch.tanh(head.dense(sentence(t_out.hidden_states[-1])))), -1
    )
    log_p_s = torch.log_softmax(hook.student_domain_head(sentence(out.hidden_states[-1])), -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(dim=-1)
    assert terms["domain_kl"].item() == pytest.approx((lam * kl).mean().item(), rel=1e-4)

    total = sum(terms.values())
    total.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert hook.student_domain_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())  # the teacher is frozen
    assert all(p.grad is None for p in head.parameters())
    assert not tiny.training


def test_vanilla_intermediate_has_no_weights_and_no_domain_term(tiny) -> None:
    hook = IntermediateDistillHook(
        teacher=tiny,
        layer_map=[(i, i) for i in range(3)],
        student_hidden=tiny.config.hidden_size,
        teacher_hidden=tiny.config.hidden_size,
    )
    hook.setup(_ctx(tiny))
    batch = _batch()
    out = tiny(**batch.model_inputs(), output_hidden_states=True)
    terms = hook.loss_terms(batch, out, tiny)
    assert set(terms) == {"hidden_mse", "attention_mse"}
    # the identity projection and a student equal to its teacher: nothing to learn
    assert terms["hidden_mse"].item() == pytest.approx(0.0, abs=1e-10)
    assert terms["attention_mse"].item() == pytest.approx(0.0, abs=1e-10)


def test_prediction_term_by_hand_cached_or_not(tiny) -> None:
    batch = _batch()
    student_logits = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-1.0, 2.0], [0.0, 0.0]])
    with torch.no_grad():
        teacher_logits = tiny(**batch.model_inputs()).logits
    T = 2.0
    soft_ce = -(
        torch.softmax(teacher_logits / T, -1) * torch.log_softmax(student_logits / T, -1)
    ).sum(-1)
    scores = torch.tensor([0.4, 0.3, 0.2, 0.1])
    p = torch.softmax(teacher_logits, -1)[torch.arange(4), batch.labels]
    lam = (1 + scores[batch.example_ids]) / (1 + torch.exp((1 - p) ** 2))

    class Out:
        logits = student_logits

    plain = PredictionDistillHook(teacher=tiny, temperature=T)
    plain.setup(_ctx(tiny))
    assert plain.loss_terms(batch, Out, tiny)["soft_ce"].item() == pytest.approx(
        soft_ce.mean().item(), rel=1e-5
    )
    cache = torch.zeros(4, 2)
    cache[batch.example_ids] = teacher_logits
    weighted = PredictionDistillHook(
        teacher=None,
        temperature=T,
        weights="expertise",
        prototype_scores_by_example_id=scores,
        cached_logits=cache,
    )
    weighted.setup(_ctx(tiny))
    assert weighted.loss_terms(batch, Out, tiny)["soft_ce"].item() == pytest.approx(
        (lam * soft_ce).mean().item(), rel=1e-5
    )
