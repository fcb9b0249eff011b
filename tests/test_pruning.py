"""CAP's building blocks on a tiny random BERT: schedule, masks, exact sparsity, structured
pruning and physical removal, the sparse file format, the contrastive loss and memory banks."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from kdtui.engine.hooks import Batch, HookContext, StepInfo
from kdtui.errors import KdtuiError
from kdtui.events import LayerSparsity
from kdtui.layout import encoder_linears
from kdtui.methods.compact import STRUCTURE_KEY, compact, load_compact
from kdtui.methods.contrastive import (
    CapHook,
    MemoryBank,
    bank_rows,
    contrastive_loss,
    sentence_vectors,
)
from kdtui.methods.pruning import (
    StructuredPruner,
    UnstructuredPruner,
    cubic_sparsity,
    magnitude_prune,
    max_structured_sparsity,
    topk_masks,
)
from kdtui.sparse import SPARSE_FILE, load_sparse, load_sparse_model, save_sparse


def tiny_bert(seed: int = 0, heads: int = 4, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=48,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def batch_of(size: int = 8, length: int = 10, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (size, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[: size // 2, length - 3 :] = 0
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=torch.zeros_like(ids),
        labels=torch.randint(0, 2, (size,), generator=generator),
        domain_ids=torch.zeros(size, dtype=torch.long),
        example_ids=torch.arange(size) + seed * size,
    )


def context(model: torch.nn.Module, total: int, events: list | None = None) -> HookContext:
    sink = events.append if events is not None else (lambda e: None)
    return HookContext(model, total, sink, torch.device("cpu"))


def train_steps(model, hook, steps: int, lr: float = 1e-2) -> list[dict[str, float]]:
    """A minimal loop with the engine's order: forward, loss terms, backward, step, after_step."""
    params = [*model.parameters(), *hook.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr)
    metrics = []
    for step in range(1, steps + 1):
        batch = batch_of(seed=step % 3)
        outputs = model(**batch.model_inputs())
        loss = torch.nn.functional.cross_entropy(outputs.logits, batch.labels)
        for value in hook.loss_terms(batch, outputs, model).values():
            loss = loss + 0.01 * value
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        metrics.append(dict(hook.after_step(StepInfo(step, steps, 0.0))))
    return metrics


# -- schedule and masks -----------------------------------------------------------------------


def test_cubic_schedule_keeps_everything_then_follows_the_cube_then_holds() -> None:
    kw = dict(total=100, warmup=10, cooldown=20, final=0.9)
    assert cubic_sparsity(0, **kw) == 0.0
    assert cubic_sparsity(10, **kw) == 0.0
    # keep fraction thr_f + (thr_i - thr_f)(1 - progress)^3 with thr_i = 1, thr_f = 0.1
    progress = (45 - 10) / (80 - 10)
    keep = 0.1 + (1 - 0.1) * (1 - progress) ** 3
    assert cubic_sparsity(45, **kw) == pytest.approx(1 - keep)
    assert cubic_sparsity(80, **kw) == 0.9
    assert cubic_sparsity(100, **kw) == 0.9
    values = [cubic_sparsity(s, **kw) for s in range(101)]
    assert values == sorted(values)


def test_topk_masks_keep_an_exact_count_even_with_ties() -> None:
    scores = [torch.zeros(4, 5), torch.zeros(3)]  # every score tied
    masks = topk_masks(scores, 7)
    assert sum(int(m.sum()) for m in masks) == 7
    scores = [torch.tensor([[3.0, 1.0], [2.0, 2.0]]), torch.tensor([2.0, 0.0])]
    masks = topk_masks(scores, 3)
    assert sum(int(m.sum()) for m in masks) == 3
    assert masks[0][0, 0] and not masks[0][0, 1] and not masks[1][1]
    assert int(topk_masks([torch.randn(10)], 0)[0].sum()) == 0
    assert int(topk_masks([torch.randn(10)], 10)[0].sum()) == 10


@pytest.mark.parametrize("criterion", ["magnitude", "movement", "soft-movement"])
@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_every_criterion_reaches_the_requested_sparsity(criterion: str, scope: str) -> None:
    model = tiny_bert()
    pruner = UnstructuredPruner(
        criterion=criterion,
        target_sparsity=0.97,
        total_steps=12,
        warmup_steps=2,
        cooldown_steps=3,
        scope=scope,
    )
    events: list = []
    pruner.setup(context(model, 12, events))
    metrics = train_steps(model, pruner, 12)
    targets = [m["sparsity/target"] for m in metrics]
    assert targets[0] == 0.0 and targets[-1] == 0.97 and targets == sorted(targets)
    for m in metrics:
        assert abs(m["sparsity/actual"] - m["sparsity/target"]) < 0.005
    layers = pruner.layer_sparsity()
    assert set(layers) == set(encoder_linears(model))
    if scope == "matrix":
        assert all(abs(v - 0.97) < 0.005 for v in layers.values())
    logged = [e.step for e in events if isinstance(e, LayerSparsity)]
    assert logged == sorted(set(logged)) and 3 <= len(logged) <= 6
    assert logged[0] == 3 and logged[-1] == 9  # first pruned step, end of pruning
    reached = pruner.finalize()
    assert abs(reached - 0.97) < 0.005


def test_the_forward_uses_the_masked_weights_and_scores_learn_straight_through() -> None:
    model = tiny_bert()
    pruner = UnstructuredPruner(
        criterion="movement", target_sparsity=0.5, total_steps=4, warmup_steps=0, cooldown_steps=0
    )
    pruner.setup(context(model, 4))
    train_steps(model, pruner, 2)
    batch = batch_of()
    explicit = copy.deepcopy(model)
    for name, linear in encoder_linears(explicit).items():
        del linear.forward  # a plain Linear again, with the mask written into its weight
        linear.weight.data *= pruner.masks[name]
    with torch.no_grad():
        expected = explicit(**batch.model_inputs()).logits
        assert torch.allclose(model(**batch.model_inputs()).logits, expected, atol=1e-6)
    model.zero_grad()
    model(**batch.model_inputs()).logits.sum().backward()
    name, linear = next(iter(pruner.linears.items()))
    # dL/dS = W * dL/dW' where W' = W * mask; pruned weights still get a score gradient.
    grad_effective = linear.weight.grad / pruner.masks[name].clamp_min(1e-30)
    kept = pruner.masks[name].bool()
    assert torch.allclose(
        pruner.scores[name].grad[kept], (linear.weight * grad_effective)[kept], atol=1e-6
    )
    assert pruner.scores[name].grad[~kept].abs().sum() > 0


def test_finalize_writes_exact_zeros_and_keeps_the_outputs() -> None:
    model = tiny_bert()
    pruner = UnstructuredPruner(
        criterion="soft-movement",
        target_sparsity=0.9,
        total_steps=6,
        warmup_steps=1,
        cooldown_steps=1,
    )
    pruner.setup(context(model, 6))
    train_steps(model, pruner, 6)
    batch = batch_of()
    with torch.no_grad():
        before = model(**batch.model_inputs()).logits
        masks = {n: m.clone() for n, m in pruner.masks.items()}
        pruner.finalize()
        after = model(**batch.model_inputs()).logits
    assert torch.allclose(before, after, atol=1e-6)
    for name, linear in encoder_linears(model).items():
        assert "forward" not in vars(linear)
        pruned = linear.weight[masks[name] == 0]
        assert torch.equal(pruned.view(torch.int32), torch.zeros_like(pruned).view(torch.int32))


def test_magnitude_prune_zeroes_the_smallest_weights_of_each_matrix() -> None:
    model = tiny_bert()
    before = {name: linear.weight.clone() for name, linear in encoder_linears(model).items()}
    magnitude_prune(model, 0.9)
    for name, linear in encoder_linears(model).items():
        weight, original = linear.weight, before[name]
        kept = weight != 0
        assert int(kept.sum()) == weight.numel() - round(0.9 * weight.numel())
        assert torch.equal(weight[kept], original[kept])
        assert original[kept].abs().min() >= original[~kept].abs().max()
        pruned = weight[~kept]  # +0.0, never -0.0: the sparse format stores a -0.0 as a value
        assert torch.equal(pruned.view(torch.int32), torch.zeros_like(pruned).view(torch.int32))


def test_pruner_state_round_trips() -> None:
    model = tiny_bert()
    kwargs = dict(criterion="movement", target_sparsity=0.8, total_steps=8, warmup_steps=1)
    pruner = UnstructuredPruner(**kwargs, cooldown_steps=1)
    pruner.setup(context(model, 8))
    train_steps(model, pruner, 4)
    state = pruner.state_dict()
    other = UnstructuredPruner(**kwargs, cooldown_steps=1)
    other.setup(context(copy.deepcopy(model), 8))
    other.load_state_dict(state)
    assert other.step == 4 and other.target_now() == pruner.target_now()
    for name in pruner.masks:
        assert torch.equal(other.masks[name], pruner.masks[name])
        assert torch.equal(other.scores[name], pruner.scores[name])


# -- structured --------------------------------------------------------------------------------


def test_structured_pruning_removes_units_in_rounds_and_keeps_a_head_per_layer() -> None:
    model = tiny_bert(heads=4)
    pruner = StructuredPruner(
        target_sparsity=0.6, total_steps=12, warmup_steps=2, cooldown_steps=2, step_fraction=0.2
    )
    events: list = []
    pruner.setup(context(model, 12, events))
    assert [s for s, _ in pruner.schedule] == [2, 4, 7]
    metrics = train_steps(model, pruner, 12)
    assert metrics[-1]["sparsity/target"] == 0.6
    assert abs(metrics[-1]["sparsity/actual"] - 0.6) < 0.005
    heads, neurons = pruner.kept()
    assert all(len(h) >= 1 for h in heads) and all(len(n) >= 1 for n in neurons)
    assert sum(len(h) for h in heads) < 8
    assert [e.step for e in events if isinstance(e, LayerSparsity)] == [2, 4, 7]


def test_an_impossible_structured_target_is_a_clear_error() -> None:
    model = tiny_bert(heads=4)
    limit = max_structured_sparsity(model)
    pruner = StructuredPruner(
        target_sparsity=min(0.99, limit + 0.05), total_steps=4, warmup_steps=0, cooldown_steps=0
    )
    with pytest.raises(KdtuiError, match="would remove every head of a layer"):
        pruner.setup(context(model, 4))


def test_compacting_keeps_outputs_and_the_loader_rebuilds_it(tmp_path: Path) -> None:
    model = tiny_bert(heads=4).eval()
    pruner = StructuredPruner(
        target_sparsity=0.5, total_steps=6, warmup_steps=1, cooldown_steps=1, step_fraction=0.25
    )
    pruner.setup(context(model, 6))
    train_steps(model, pruner, 6)
    model.eval()
    batch = batch_of()
    with torch.no_grad():
        masked = model(**batch.model_inputs()).logits
    params_before = sum(p.numel() for p in model.parameters())
    pruner.detach()
    structure = compact(model, *pruner.kept())
    with torch.no_grad():
        compacted = model(**batch.model_inputs()).logits
    assert torch.allclose(masked, compacted, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < params_before
    assert getattr(model.config, STRUCTURE_KEY) == structure
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.out_features == 8 * len(structure["heads"][0])
    assert layer.intermediate.dense.out_features == structure["intermediate_sizes"][0]

    model.save_pretrained(tmp_path)
    loaded = load_compact(tmp_path)
    with torch.no_grad():
        again = loaded(**batch.model_inputs()).logits
    assert torch.equal(again, compacted)

    from kdtui.models import load_any

    with torch.no_grad():
        assert torch.equal(load_any(tmp_path)(**batch.model_inputs()).logits, compacted)


# -- the sparse format ------------------------------------------------------------------------


def sparse_state(sparsity: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    weight[torch.rand_like(weight) < sparsity] = 0.0
    weight[0, :4] = -0.0  # a negative zero must come back as one
    weight[1, 0] = -0.0
    weight[1, 1] = 1e-30
    return {
        "encoder.weight": weight,
        "dense.weight": torch.randn(16, 16),
        "bias": torch.zeros(7),
        "ids": torch.arange(5),
        "scalar": torch.tensor(3.5),
    }


def test_sparse_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = sparse_state(0.97)
    save_sparse(state, tmp_path / SPARSE_FILE)
    loaded = load_sparse(tmp_path / SPARSE_FILE)
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        if tensor.is_floating_point():
            assert torch.equal(loaded[name].view(torch.int32), tensor.view(torch.int32))
        else:
            assert torch.equal(loaded[name], tensor)


def test_the_same_weights_give_the_same_sparse_file_in_every_process(tmp_path: Path) -> None:
    # safetensors orders metadata keys at random per process; the file must not depend on it.
    code = (
        "import sys, torch; from pathlib import Path; from kdtui.sparse import save_sparse;"
        "g = torch.Generator().manual_seed(0); w = torch.randn(64, 64, generator=g);"
        "w[torch.rand(64, 64, generator=g) < 0.9] = 0;"
        "save_sparse({'a.weight': w, 'b': torch.ones(3)}, Path(sys.argv[1]))"
    )
    files = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in files:
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert len({path.read_bytes() for path in files}) == 1


def test_at_97_percent_a_matrix_takes_at_most_a_tenth_of_its_dense_size(tmp_path: Path) -> None:
    state = sparse_state(0.97)
    sizes = save_sparse(state, tmp_path / SPARSE_FILE)
    assert sizes["encoder.weight"]["stored"] <= 0.10 * sizes["encoder.weight"]["dense"]
    assert sizes["dense.weight"]["stored"] == sizes["dense.weight"]["dense"]  # dense stays dense
    half = save_sparse(state, tmp_path / "half.safetensors", values="float16")
    assert half["encoder.weight"]["stored"] < sizes["encoder.weight"]["stored"]
    rounded = load_sparse(tmp_path / "half.safetensors")["dense.weight"]
    assert rounded.dtype == torch.float32
    assert torch.allclose(rounded, state["dense.weight"], atol=1e-2)


def test_a_sparse_model_folder_loads_with_the_same_outputs(tmp_path: Path) -> None:
    model = tiny_bert().eval()
    with torch.no_grad():
        for linear in encoder_linears(model).values():
            linear.weight[torch.rand_like(linear.weight) < 0.9] = 0.0
    model.config.save_pretrained(tmp_path)
    save_sparse(model.state_dict(), tmp_path / SPARSE_FILE)
    loaded = load_sparse_model(tmp_path)
    batch = batch_of()
    with torch.no_grad():
        assert torch.equal(
            loaded(**batch.model_inputs()).logits, model(**batch.model_inputs()).logits
        )


# -- contrastive ------------------------------------------------------------------------------


def test_contrastive_loss_matches_a_hand_computed_example() -> None:
    s = 1 / math.sqrt(2)
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [-1.0, 0.0]])
    # Candidate 0 is anchor 0's own in-batch vector, candidate 1 anchor 1's.
    exclude = torch.tensor([[True, False, False, False], [False, True, False, False]])
    positives = torch.tensor([[False, False, True, False], [True, False, True, True]])
    tau = 0.5
    # Anchor 0: candidates 1, 2, 3 with dot products 0, s, -1; positive: candidate 2.
    z0 = math.exp(0 / tau) + math.exp(s / tau) + math.exp(-1 / tau)
    lp0 = [s / tau - math.log(z0)]
    # Anchor 1: candidates 0, 2, 3 with dot products 0, s, 0; positives: 0, 2, 3.
    z1 = math.exp(0) + math.exp(s / tau) + math.exp(0)
    lp1 = [0 - math.log(z1), s / tau - math.log(z1), 0 - math.log(z1)]
    # The authors' normalisation: per-anchor means summed, over the number of positive pairs.
    expected = -(sum(lp0) / 1 + sum(lp1) / 3) / 4
    got = contrastive_loss(anchors, candidates, positives, exclude, tau)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    no_positive = torch.zeros_like(positives)
    assert float(contrastive_loss(anchors, candidates, no_positive, exclude, tau)) == 0.0


def test_memory_bank_views_samples_and_cap() -> None:
    labels_by_id = torch.tensor([0, 1, 0, 1, -1, 1])
    bank = MemoryBank(torch.tensor([0, 1, 2, 3, 5]), labels_by_id, dim=2, views=2)
    vectors = torch.nn.functional.normalize(torch.randn(3, 2), dim=-1)
    bank.write(torch.tensor([0, 2, 5]), vectors, view=1)
    got, ids, labels = bank.views_of(torch.tensor([2, 3, 5]))
    assert ids.tolist() == [2, 5] and labels.tolist() == [0, 1]
    assert torch.allclose(got.float(), vectors[1:], atol=1e-3)  # fp16 storage
    drawn, drawn_ids, _ = bank.sample(2, torch.Generator().manual_seed(0))
    assert len(drawn) == 2 and set(drawn_ids.tolist()) <= {0, 2, 5}
    assert len(bank.sample(10, torch.Generator().manual_seed(0))[0]) == 3
    assert bank.vectors.dtype == torch.float16
    rows = bank_rows(range(1000), 100, seed=1)
    assert len(rows) == 100 and rows.tolist() == sorted(set(rows.tolist()))


def test_cap_hook_terms_snapshots_and_state() -> None:
    model = tiny_bert()
    batch = batch_of()
    labels_by_id = torch.zeros(64, dtype=torch.long)
    labels_by_id[: len(batch)] = batch.labels
    rows = torch.arange(64)
    with torch.no_grad():
        out = model(**batch.model_inputs(), output_hidden_states=True)
        vectors = sentence_vectors(model, out.hidden_states[-1], batch.attention_mask, "cls")
    fic = MemoryBank(rows, labels_by_id, 32, 1)
    fic.write(batch.example_ids, vectors, 0)
    snapshots = MemoryBank(rows, labels_by_id, 32, 2)
    hook = CapHook(banks={"fic": fic}, snapshots=snapshots, stage=lambda: 1, num_negatives=4)
    hook.setup(context(model, 4))
    outputs = model(**batch.model_inputs(), output_hidden_states=True)
    terms = hook.loss_terms(batch, outputs, model)
    assert set(terms) == {"fic_unsup", "fic_sup", "snc_unsup", "snc_sup"}
    assert float(terms["snc_unsup"].detach()) == 0.0  # no snapshot yet
    assert all(torch.isfinite(v) for v in terms.values())
    terms["fic_unsup"].backward()
    assert model.bert.pooler.dense.weight.grad is not None
    assert bool(snapshots.filled[: len(batch), 1].all()) and not bool(snapshots.filled[:, 0].any())
    again = hook.loss_terms(batch, model(**batch.model_inputs(), output_hidden_states=True), model)
    assert float(again["snc_unsup"].detach()) > 0
    state = hook.state_dict()
    other = CapHook(
        banks={"fic": fic}, snapshots=MemoryBank(rows, labels_by_id, 32, 2), stage=lambda: 1
    )
    other.load_state_dict(state)
    assert other.snapshots is not None
    assert torch.equal(other.snapshots.vectors, snapshots.vectors)


# -- score initialisation, the authors' soft movement, diagnostics and warnings ---------------


def test_magnitude_seeded_scores_rank_like_magnitude_at_the_first_cut() -> None:
    model = tiny_bert()
    pruner = UnstructuredPruner(
        criterion="movement",
        target_sparsity=0.5,
        total_steps=10,
        warmup_steps=0,
        cooldown_steps=0,
        score_init="magnitude",
    )
    pruner.setup(context(model, 10))
    for name, linear in pruner.linears.items():
        scores = pruner.scores[name]
        assert float(scores.detach().mean()) == pytest.approx(1.0, rel=1e-5)  # per matrix
        by_scores = topk_masks([scores], linear.weight.numel() // 2)[0]
        by_magnitude = topk_masks([linear.weight.abs()], linear.weight.numel() // 2)[0]
        assert torch.equal(by_scores, by_magnitude)
    constant = UnstructuredPruner(
        criterion="movement",
        target_sparsity=0.5,
        total_steps=10,
        warmup_steps=0,
        cooldown_steps=0,
        score_init="constant",
    )
    constant.setup(context(tiny_bert(), 10))
    assert all(float(s.detach().abs().sum()) == 0 for s in constant.scores.values())


def test_threshold_soft_movement_follows_the_authors_schedule() -> None:
    """τ(t) = τ_f (1 − (1 − p)³) from τ_i = 0 and λ(t) = λ_f τ(t)/τ_f, hand-computed; a
    weight is kept while σ(S) > τ(t); a matrix never goes past the requested sparsity."""
    model = tiny_bert()
    pruner = UnstructuredPruner(
        criterion="soft-movement",
        target_sparsity=0.75,
        total_steps=100,
        warmup_steps=20,
        cooldown_steps=30,
        score_init="constant",
        soft_mask="threshold",
        final_threshold=0.1,
    )
    pruner.setup(context(model, 100))
    assert pruner.ramp() == 0.0 and pruner.actual_sparsity() == 0.0
    name = next(iter(pruner.scores))
    scores = pruner.scores[name]
    with torch.no_grad():
        scores.zero_()
        scores.view(-1)[:10] = -2.5  # σ = 0.0759
        scores.view(-1)[10:20] = -2.0  # σ = 0.1192
    pruner.step = 45  # progress (45 − 20) / (70 − 20) = 0.5
    tau = 0.1 * (1 - 0.5**3)  # 0.0875
    assert pruner.ramp() == pytest.approx(1 - 0.5**3)
    pruner._refresh()
    mask = pruner.masks[name].view(-1)
    assert mask[:10].sum() == 0 and mask[10:].all()  # 0.0759 < τ = 0.0875 < 0.1192
    batch = batch_of()
    terms = pruner.loss_terms(batch, model(**batch.model_inputs()), model)
    means = torch.stack([torch.sigmoid(s).mean() for s in pruner.scores.values()]).mean()
    assert float(terms["l1"].detach()) == pytest.approx((1 - 0.5**3) * float(means.detach()))
    metrics = pruner.after_step(StepInfo(45, 100, 0.0))
    assert metrics["prune/threshold"] == pytest.approx(tau)
    assert "sparsity/target" not in metrics  # the sparsity reached is what the scores decide
    with torch.no_grad():
        scores.fill_(-10.0)  # every σ far below τ: the cap keeps 25% of the matrix
    pruner._refresh()
    assert pruner.masks[name].mean().item() == pytest.approx(0.25, abs=0.01)


def test_calibrated_soft_movement_ramps_lambda_and_hits_the_sparsity() -> None:
    model = tiny_bert()
    pruner = UnstructuredPruner(
        criterion="soft-movement",
        target_sparsity=0.9,
        total_steps=12,
        warmup_steps=2,
        cooldown_steps=3,
    )
    pruner.setup(context(model, 12))
    batch = batch_of()
    outputs = model(**batch.model_inputs())
    assert float(pruner.loss_terms(batch, outputs, model)["l1"].detach()) == 0.0  # λ = 0 in warm-up
    metrics = train_steps(model, pruner, 12)
    assert [m["prune/l1_ramp"] for m in metrics][-1] == 1.0
    assert abs(metrics[-1]["sparsity/actual"] - 0.9) < 0.005


def test_diagnostics_match_a_hand_made_mask() -> None:
    model = tiny_bert(layers=1)
    pruner = UnstructuredPruner(
        criterion="movement", target_sparsity=0.5, total_steps=10, warmup_steps=0, cooldown_steps=0
    )
    pruner.setup(context(model, 10))
    kept = both = expected = 0
    for i, (name, linear) in enumerate(pruner.linears.items()):
        n = linear.weight.numel()
        order = linear.weight.abs().flatten().argsort(descending=True)
        mask = torch.zeros(n)
        if i % 2 == 0:
            mask[order[: n // 2]] = 1  # magnitude's own choice
            both += n // 2
        else:
            mask[order[n // 2 :]] = 1  # exactly the weights magnitude drops
        pruner.masks[name] = mask.view_as(linear.weight)
        kept += n // 2
        expected += (n // 2) ** 2 / n
    d = pruner.diagnostics()
    assert d["prune/overlap_magnitude"] == pytest.approx(both / kept)
    assert d["prune/overlap_random"] == pytest.approx(expected / kept)
    spreads = [float(s.detach().std()) for s in pruner.scores.values()]
    assert d["prune/score_std"] == pytest.approx(sum(spreads) / len(spreads))
    old = {n: m.clone() for n, m in pruner.masks.items()}
    pruner._refresh()  # back to the scores' (= magnitude's) top half
    flipped = sum(int((pruner.masks[n] != old[n]).sum()) for n in old)
    assert pruner.flipped == pytest.approx(flipped / sum(m.numel() for m in old.values()))
    assert pruner.flipped > 0


def _first_cut_warnings(score_init: str) -> list[str]:
    events: list = []
    model = tiny_bert()
    pruner = UnstructuredPruner(
        criterion="movement",
        target_sparsity=0.5,
        total_steps=20,
        warmup_steps=2,
        cooldown_steps=2,
        score_init=score_init,
    )
    pruner.setup(context(model, 20, events))
    metrics = train_steps(model, pruner, 4, lr=1e-5)
    assert any("prune/overlap_magnitude" in m for m in metrics)
    return [e.text for e in events if getattr(e, "level", "") == "warning"]


def test_scores_without_signal_at_the_first_cut_raise_a_warning() -> None:
    (warning,) = _first_cut_warnings("constant")  # zero scores: the cut follows position
    assert "no signal" in warning and "prune.score_init = magnitude" in warning
    assert _first_cut_warnings("magnitude") == []
