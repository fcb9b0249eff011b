"""Encoders other than BERT through kdtui.layout, on tiny random models built offline from
transformers' config classes: each family's layout, a full-depth student that is its teacher,
heads-ffn removal that computes what masking computed, the sparse file, recomputed attention
maps, attention implementations, and clear refusals (ALBERT, unknown layouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    NomicBertConfig,
    PretrainedConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from kdtui.errors import KdtuiError
from kdtui.layout import (
    BERT,
    DEBERTA_V2,
    DISTILBERT,
    MODERNBERT,
    NOMIC_BERT,
    attn_implementation_for,
    encoder_layers,
    encoder_linears,
    layout_of,
)
from kdtui.methods.compact import compact, load_compact
from kdtui.methods.meta_kd import attention_probabilities, attention_scorer
from kdtui.methods.pruning import StructuredPruner, unit_costs
from kdtui.models import build_student, load_trained, save_classifier
from kdtui.sparse import SPARSE_FILE, load_sparse_model, save_sparse

HIDDEN, FFN, HEADS, LAYERS, VOCAB = 32, 48, 4, 3, 120
COMMON = {"num_labels": 2, "max_position_embeddings": 64}
BERT_LIKE = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": FFN,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def config_of(arch: str, vocab: int = VOCAB) -> PretrainedConfig:
    """A tiny random config of ARCH (dropout off, so that train and eval mode agree)."""
    bert_like = {**BERT_LIKE, "vocab_size": vocab, **COMMON}
    if arch == "bert":
        return BertConfig(**bert_like)
    if arch == "roberta":
        return RobertaConfig(**bert_like, pad_token_id=1)
    if arch == "xlm-roberta":
        return XLMRobertaConfig(**bert_like, pad_token_id=1)
    if arch == "electra":  # narrower embeddings: the encoder reads them through a projection
        return ElectraConfig(**bert_like, embedding_size=16)
    if arch == "distilbert":
        return DistilBertConfig(
            vocab_size=vocab, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
            dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, pad_token_id=0,
            **COMMON,
        )  # fmt: skip
    if arch in ("deberta-v2", "deberta-v2-unshared"):
        # v3's settings: relative attention with buckets, no absolute positions
        return DebertaV2Config(
            **bert_like, relative_attention=True, pos_att_type=["p2c", "c2p"],
            position_buckets=8, max_relative_positions=16, norm_rel_ebd="layer_norm",
            position_biased_input=False, share_att_key=arch == "deberta-v2", pooler_dropout=0.0,
            pooler_hidden_size=HIDDEN, pad_token_id=0,
        )  # fmt: skip
    if arch == "modernbert":
        return ModernBertConfig(
            vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=FFN, global_attn_every_n_layers=2,
            local_attention=4, pad_token_id=0, bos_token_id=101, eos_token_id=102,
            cls_token_id=101, sep_token_id=102, **COMMON,
        )  # fmt: skip
    if arch == "nomic-bert":
        return NomicBertConfig(**{**bert_like, "pad_token_id": 0})
    if arch == "albert":
        return AlbertConfig(**bert_like, embedding_size=16)
    raise ValueError(arch)


SUPPORTED = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert"]
STRUCTURES = [*SUPPORTED, "deberta-v2-unshared", "nomic-bert"]
FAMILIES = {"distilbert": DISTILBERT, "modernbert": MODERNBERT, "nomic-bert": NOMIC_BERT}
FAMILIES |= {"deberta-v2": DEBERTA_V2, "deberta-v2-unshared": DEBERTA_V2}


class _NoTokenizer:
    """save_classifier's tokenizer, where a test has none to save."""

    def save_pretrained(self, folder: Path) -> None:
        pass


def tiny(arch: str, seed: int = 0, attn: str | None = None) -> nn.Module:
    torch.manual_seed(seed)
    config = config_of(arch)
    if attn is not None:
        config._attn_implementation = attn
    return AutoModelForSequenceClassification.from_config(config).eval()


def inputs(size: int = 4, length: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with padding at the end of half the rows (all models here pad with id 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (size, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[: size // 2, length - 3 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def outputs(model: nn.Module, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model(**inputs(), output_hidden_states=True, **kwargs)


@pytest.mark.parametrize("arch", STRUCTURES)
def test_each_family_has_its_layout_and_matrices(arch: str) -> None:
    model = tiny(arch)
    layout = layout_of(model)
    assert layout is FAMILIES.get(arch, BERT)
    assert len(encoder_layers(model)) == LAYERS
    linears = encoder_linears(model)
    assert len(linears) == LAYERS * len(layout.matrices())
    names = {k: v for k, v in model.state_dict().items() if k.endswith(".weight")}
    for name, linear in linears.items():
        # the names kdtui writes are the model's own state-dict names, under its layers
        (key,) = [k for k in names if k.endswith(f".{name.removeprefix('layer.')}.weight")]
        assert names[key] is linear.weight or torch.equal(names[key], linear.weight)


@pytest.mark.parametrize("arch", [*SUPPORTED, "nomic-bert"])
def test_a_full_depth_student_is_its_teacher(arch: str) -> None:
    """Every weight outside the layers is copied (ELECTRA's embeddings_project, DistilBERT's
    pre_classifier, DeBERTa's rel_embeddings, encoder LayerNorm and pooler, ModernBERT's
    final_norm and head): the student computes exactly what the teacher computes."""
    teacher = tiny(arch, seed=0)
    student = build_student(teacher, num_layers=LAYERS, seed=123).eval()
    t_out, s_out = outputs(teacher), outputs(student)
    assert torch.equal(s_out.hidden_states[-1], t_out.hidden_states[-1])
    assert torch.equal(s_out.logits, t_out.logits)


@pytest.mark.parametrize("arch", [*SUPPORTED, "nomic-bert"])
def test_a_shallower_student_copies_the_chosen_layers(arch: str, tmp_path: Path) -> None:
    teacher = tiny(arch, seed=0)
    student = build_student(teacher, num_layers=2, init_layers=[0, 2], seed=5).eval()
    t_layers, s_layers = encoder_layers(teacher), encoder_layers(student)
    for s, t in ((0, 0), (1, 2)):
        for (name, a), (_, b) in zip(
            s_layers[s].state_dict().items(), t_layers[t].state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    assert torch.isfinite(outputs(student).logits).all()
    # it saves and loads back (ModernBERT's per-layer layer_types follow the kept layers)
    student.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(outputs(loaded).logits, outputs(student).logits)
    if arch == "modernbert":
        types = teacher.config.layer_types
        assert loaded.config.layer_types == [types[0], types[2]]


def test_a_modernbert_student_first_layer_has_no_attention_norm() -> None:
    """ModernBERT's layer 0 has no attention norm: a later teacher layer copied there keeps
    everything else of it and leaves its norm out."""
    teacher = tiny("modernbert", seed=0)
    student = build_student(teacher, num_layers=1, init_layers=[1], seed=5).eval()
    copied = encoder_layers(student)[0].state_dict()
    source = encoder_layers(teacher)[1].state_dict()
    assert "attn_norm.weight" in source and "attn_norm.weight" not in copied
    assert all(torch.equal(value, source[name]) for name, value in copied.items())


def test_a_narrower_distilbert_student_has_a_narrower_ffn() -> None:
    student = build_student(tiny("distilbert"), num_layers=1, hidden_size=16)
    assert student.config.dim == 16 and student.config.hidden_dim == 64
    assert encoder_layers(student)[0].ffn.lin1.out_features == 64
    assert torch.isfinite(outputs(student).logits).all()


def test_a_narrower_deberta_student_has_a_narrower_pooler() -> None:
    student = build_student(tiny("deberta-v2"), num_layers=1, hidden_size=16)
    assert student.pooler.dense.in_features == 16
    assert torch.isfinite(outputs(student).logits).all()


@pytest.mark.parametrize("arch", STRUCTURES)
def test_heads_ffn_removal_computes_what_masking_computed(arch: str, tmp_path: Path) -> None:
    model = tiny(arch)
    pruner = StructuredPruner(target_sparsity=0.5, total_steps=4, warmup_steps=0, cooldown_steps=0)
    from kdtui.engine.hooks import HookContext

    pruner.setup(HookContext(model, 4, lambda e: None, torch.device("cpu")))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in range(LAYERS):
            pruner.head_mask[layer, torch.randperm(HEADS, generator=generator)[:2]] = 0.0
            pruner.ffn_mask[layer, torch.randperm(FFN, generator=generator)[: FFN // 3]] = 0.0
    masked = outputs(model).logits
    before = sum(p.numel() for p in model.parameters())
    removed = (
        2 * LAYERS * unit_costs(model)["head"] + FFN // 3 * LAYERS * unit_costs(model)["neuron"]
    )
    pruner.detach()
    compact(model, *pruner.kept())
    compacted = outputs(model).logits
    assert torch.allclose(masked, compacted, atol=1e-5), (masked - compacted).abs().max()
    # a head's and a neuron's parameter counts are what removing them removes
    assert before - sum(p.numel() for p in model.parameters()) == removed
    save_classifier(model, _NoTokenizer(), tmp_path, ["negative", "positive"])
    loaded = load_compact(tmp_path)
    assert torch.equal(outputs(loaded).logits, compacted)


@pytest.mark.parametrize("arch", [*SUPPORTED, "nomic-bert"])
def test_a_sparse_model_file_round_trips(arch: str, tmp_path: Path) -> None:
    model = tiny(arch)
    with torch.no_grad():
        for linear in encoder_linears(model).values():
            linear.weight[torch.rand_like(linear.weight) < 0.9] = 0.0
    model.config.save_pretrained(tmp_path)
    save_sparse(model.state_dict(), tmp_path / SPARSE_FILE)
    loaded = load_sparse_model(tmp_path)
    assert torch.equal(outputs(loaded).logits, outputs(model).logits)


@pytest.mark.parametrize(
    "arch", ["bert", "electra", "distilbert", "deberta-v2", "deberta-v2-unshared"]
)
def test_recomputed_attention_is_the_models_attention(arch: str) -> None:
    """What attention distillation matches: softmax of the recomputed scores is the map the
    model's eager attention returns, for every query that is not padding."""
    model = tiny(arch, attn="eager")
    out = outputs(model, output_attentions=True)
    mask = inputs()["attention_mask"]
    for layer in range(LAYERS):
        scores = attention_scorer(model, layer)(out.hidden_states[layer])
        probs = attention_probabilities(scores, mask)
        rows = mask.bool()[:, None, :, None].expand_as(probs)
        assert torch.allclose(probs[rows], out.attentions[layer][rows], atol=1e-5)


def test_attention_implementation_per_family(tmp_path: Path) -> None:
    assert attn_implementation_for("bert") == "sdpa"
    assert attn_implementation_for("distilbert") == "sdpa"
    assert attn_implementation_for("deberta-v2") == "eager"
    assert attn_implementation_for("deberta-v2", "sdpa") == "sdpa"  # forced
    assert attn_implementation_for("some-new-encoder") is None  # transformers chooses
    model = tiny("deberta-v2")
    model.save_pretrained(tmp_path)
    loaded = load_trained(tmp_path)  # transformers refuses sdpa for DeBERTa
    assert loaded.config._attn_implementation == "eager"
    assert torch.equal(outputs(loaded).logits, outputs(model).logits)


def test_albert_is_refused_by_name_with_what_works_instead() -> None:
    torch.manual_seed(0)
    model = AlbertForSequenceClassification(config_of("albert"))
    with pytest.raises(KdtuiError, match="ALBERT shares one set of layer weights") as error:
        layout_of(model)
    assert "--method logits" in str(error.value)
    with pytest.raises(KdtuiError, match="cannot build a student from this teacher.*ALBERT"):
        build_student(model, num_layers=1)


class _Unknown(nn.Module):
    """A classifier whose encoder kdtui does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.config = BertConfig(num_hidden_layers=1)
        self.transformer = nn.ModuleList([nn.Linear(4, 4)])

    @property
    def base_model(self) -> nn.Module:
        return self


def test_an_unknown_family_is_a_clear_error_when_a_student_is_built() -> None:
    with pytest.raises(KdtuiError, match="has another one.*--student PATH"):
        build_student(_Unknown(), num_layers=1)
