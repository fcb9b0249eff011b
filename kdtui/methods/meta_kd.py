"""Meta-KD (Pan et al., ACL 2021): pure functions and the three hooks the recipes plug in.

The formulas and the authors' defaults are in ../shared/METHODS.md (section Meta-KD). Here:

* instance-level transferable knowledge: `embed_for_prototypes` (pre-trained encoder),
  `prototype_scores` t_i (variant "class", the paper's, is the default; "centroid" is the
  simpler form of the authors' public code);
* the meta-teacher: `MetaTeacherHook` — per-instance t_i-weighted cross-entropy plus the
  transferable domain-adversarial loss against corrupted (in-batch permuted) domain labels,
  through a `DomainHead` saved next to the model (`save_domain_head` / `load_domain_head`);
* meta-distillation: `expertise_weights` λ_i, `uniform_layer_map` / `parse_layer_map`,
  `IntermediateDistillHook` (stage 1) and `PredictionDistillHook` (stage 2).

Choices the paper leaves open, and why:

* Sentence features for prototypes and domain heads are the mean of the last layer's token
  states without [CLS], as in the authors' code, but with the padding masked (their code
  averages the padding in, so a sentence's features depend on the batch's longest sentence).
* The meta-teacher's classifier is the model's own Hugging Face head (pooler + linear), not the
  authors' ReLU(pooler) head, so `RUN/model` loads as a plain sequence classifier; the domain
  head lives in `domain_head.safetensors` beside it and only distillation reads it.
* The student's domain representation: the paper gives the student a domain representation
  but a student head of its own, trained only to imitate the teacher's vector, could match it
  from the (single, fixed) target domain's embedding alone and teach the encoder nothing. So
  the student's last-layer features, mapped to the teacher's width by the same learned
  projection as the hidden-state loss, go through the teacher's *frozen* domain head (with the
  target domain's embedding): both vectors come from one function, the MSE compares like with
  like, and its gradient reaches only the student and the projection.
* Attention is matched on the pre-softmax scores Q·Kᵀ/√d (TinyBERT, Meta-KD), recomputed
  from each layer's input hidden state with that layer's own query/key projections
  (`attention_scores`). What `output_attentions` returns (eager attention only, in
  transformers 5) is the probabilities *after* attention dropout: in training mode the
  student's maps would carry dropout's zeros and 1/(1−p) rescaling, and probabilities of
  ~1/T give an MSE too small to matter. Masked entries are zeroed on both sides (`losses.py`).
* Every stage-1 MSE is computed per instance first and then weighted by λ_i (METHODS.md: the
  authors' code averages over the batch first, which turns λ_i into a batch-level scale).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdtui.engine.hooks import BaseHook, Batch, HookContext, gather_micro_batch
from kdtui.errors import KdtuiError
from kdtui.methods.losses import (
    attention_mse_per_instance,
    masked_mse_per_instance,
    soft_cross_entropy,
    weighted_mean,
)

DOMAIN_HEAD_FILE = "domain_head.safetensors"
INIT_STD = 0.02  # BERT's initializer_range: new heads start on the encoder's scale


# ---------------------------------------------------------------------------------------------
# Instance-level transferable knowledge: prototype scores


def mean_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states without [CLS] (position 0) and padding. (B, T, H), (B, T) ->
    (B, H). A sentence that is only [CLS] gets zeros."""
    mask = attention_mask.to(torch.float32).clone()
    mask[:, 0] = 0.0
    count = mask.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (hidden.float() * mask.unsqueeze(-1)).sum(dim=1) / count


@torch.no_grad()
def embed_for_prototypes(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
) -> torch.Tensor:
    """E(x) for every example of `batches` (dicts from `kdtui.data.collate`), in order: the
    encoder's (`model.base_model`) last layer, `mean_token_states`. Eval mode, no gradient;
    the model's training mode is restored. -> (N, H) float32 on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    try:
        for batch in batches:
            inputs = {
                k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")
            }
            hidden = model.base_model(**inputs).last_hidden_state
            chunks.append(mean_token_states(hidden, inputs["attention_mask"]).cpu())
    finally:
        model.train(was_training)
    if not chunks:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(chunks)


def prototype_scores(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    domains: torch.Tensor,
    *,
    num_domains: int,
    num_labels: int,
    variant: str = "class",
    alpha: float = 0.5,
    zeta: float = 0.5,
) -> torch.Tensor:
    """Prototype score t_i of every instance. (N, H), (N,), (N,) -> (N,).

    "class" (the paper, the default): with p_m^k the mean embedding of class m in domain k,
        t_i = α·cos(E_i, p_{y_i}^{k_i}) + ζ·mean_{k'≠k_i} cos(E_i, p_{y_i}^{k'}),
    the mean running over the other domains that have instances of class y_i (0 if none).
    "centroid" (the authors' public code): with c^k the mean embedding of domain k,
        t_i = α·cos(E_i, c^{k_i}) + ζ·cos(E_i, mean_{k'≠k_i} c^{k'}),
    the class ignored; α = ζ = 0.5 is their mean of the two cosines. Prototypes include
    instance i itself, as in the formula."""
    e = embeddings.float()
    n = e.shape[0]
    rows = torch.arange(n)
    others = torch.arange(num_domains)[None, :] != domains[:, None]  # (N, K)
    if variant == "class":
        sums = torch.zeros(num_domains, num_labels, e.shape[1])
        sums.index_put_((domains, labels), e, accumulate=True)
        counts = torch.zeros(num_domains, num_labels)
        counts.index_put_((domains, labels), torch.ones(n), accumulate=True)
        prototypes = sums / counts.clamp_min(1.0)[..., None]
        # (N, K): cosine of instance i with its own class's prototype in every domain
        cos = F.cosine_similarity(e[:, None, :], prototypes[:, labels].transpose(0, 1), dim=-1)
        own = cos[rows, domains]
        other_mask = others & (counts[:, labels].T > 0)
        other = (cos * other_mask).sum(dim=1) / other_mask.sum(dim=1).clamp_min(1)
        return alpha * own + zeta * other
    if variant == "centroid":
        sums = torch.zeros(num_domains, e.shape[1]).index_add_(0, domains, e)
        counts = torch.zeros(num_domains).index_add_(0, domains, torch.ones(n))
        centroids = sums / counts.clamp_min(1.0)[:, None]
        own = F.cosine_similarity(e, centroids[domains], dim=-1)
        other_mask = (others & (counts[None, :] > 0)).float()
        other_centroid = other_mask @ centroids / other_mask.sum(dim=1, keepdim=True).clamp_min(1)
        return alpha * own + zeta * F.cosine_similarity(e, other_centroid, dim=-1)
    raise ValueError(f"unknown prototype variant {variant!r}")


def expertise_weights(scores: torch.Tensor, gold_probability: torch.Tensor) -> torch.Tensor:
    """Domain-expertise weight λ_i = (1 + t_i) · 1 / (1 + exp((1 − p_T(y_i|x_i))²)). (B,) -> (B,)

    Between 0.27·(1 + t_i) (the teacher is sure of a wrong label) and 0.5·(1 + t_i) (sure of
    the right one)."""
    p = gold_probability.float()
    return (1.0 + scores.float()) / (1.0 + torch.exp((1.0 - p) ** 2))


def gold_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p(y_i | x_i) at temperature 1. (B, C), (B,) -> (B,)."""
    return F.softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)


def lookup_scores(table: torch.Tensor | None, example_ids: torch.Tensor) -> torch.Tensor:
    """t_i by example id from a table indexed by id (zeros where there is no table)."""
    if table is None:
        return torch.zeros(example_ids.shape[0], device=example_ids.device)
    return table.to(example_ids.device)[example_ids]


# ---------------------------------------------------------------------------------------------
# Feature-level transferable knowledge: the domain head and the meta-teacher


class DomainHead(nn.Module):
    """Meta-KD's domain head: a learned domain embedding D(k) added to the sentence features,
    dense + tanh (the domain representation d), and a linear domain classifier on d."""

    def __init__(self, num_domains: int, hidden: int, domain_names: Sequence[str] = ()) -> None:
        super().__init__()
        self.domain_names = list(domain_names) or [str(k) for k in range(num_domains)]
        self.embedding = nn.Embedding(num_domains, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_domains)

    def init_weights(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for weight in (self.embedding.weight, self.dense.weight, self.classifier.weight):
                nn.init.normal_(weight, 0.0, INIT_STD, generator=generator)
            nn.init.zeros_(self.dense.bias)
            nn.init.zeros_(self.classifier.bias)

    def represent(self, features: torch.Tensor, domain_ids: torch.Tensor) -> torch.Tensor:
        """d = tanh(W·(features + D(k)) + b). (B, H), (B,) -> (B, H)."""
        return torch.tanh(self.dense(features.float() + self.embedding(domain_ids)))

    def forward(self, features: torch.Tensor, domain_ids: torch.Tensor) -> torch.Tensor:
        """Domain logits. (B, H), (B,) -> (B, K)."""
        return self.classifier(self.represent(features, domain_ids))


def save_domain_head(head: DomainHead, folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / DOMAIN_HEAD_FILE
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
        str(path),
        metadata={"domains": json.dumps(head.domain_names)},
    )
    return path


def load_domain_head(folder: Path) -> DomainHead | None:
    """The domain head saved with a meta-teacher's model, or None (not a meta-teacher)."""
    from safetensors import safe_open

    path = Path(folder) / DOMAIN_HEAD_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            names = json.loads((f.metadata() or {}).get("domains", "[]"))
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
        num_domains, hidden = state["embedding.weight"].shape
    except Exception as e:  # noqa: BLE001 - any decoding failure means a damaged file
        raise KdtuiError(f"cannot read the domain head {path}: {e}") from None
    head = DomainHead(int(num_domains), int(hidden), names)
    head.load_state_dict(state)
    return head


def corrupt_domain_labels(domain_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch's domain labels in a random order (Meta-KD's corrupted domain labels)."""
    order = torch.randperm(domain_ids.shape[0], generator=generator)
    return domain_ids[order.to(domain_ids.device)]


class MetaTeacherHook(BaseHook):
    """Meta-teacher loss, mean_i t_i·(CE(y_i, f(x_i)) + γ1·CE(ỹ_i, g(x_i, k_i))) with ỹ the
    permuted domain labels, as two named terms: "ce" and "domain_adv" (the loop applies γ1
    through its weights). No gradient reversal: the corrupted labels alone push the shared
    features toward domain invariance. The permutation's generator is part of the state, so
    a resumed run draws the same permutations."""

    name = "meta_teacher"
    needs_hidden_states = True

    def __init__(
        self,
        *,
        num_domains: int,
        hidden: int,
        prototype_scores_by_example_id: torch.Tensor,
        domain_names: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        self.head = DomainHead(num_domains, hidden, domain_names)
        self.head.init_weights(seed)
        self.scores = prototype_scores_by_example_id.float()
        self.generator = torch.Generator().manual_seed(seed)

    def setup(self, ctx: HookContext) -> None:
        super().setup(ctx)
        self.head.to(ctx.device)
        self.scores = self.scores.to(ctx.device)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def loss_terms(self, batch: Batch, outputs: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        t = lookup_scores(self.scores, batch.example_ids)
        ce = F.cross_entropy(outputs.logits.float(), batch.labels, reduction="none")
        features = mean_token_states(outputs.hidden_states[-1], batch.attention_mask)
        # Permute the global batch with the same generator in every process, then take this
        # process's rows: several processes corrupt the labels exactly as one process would.
        everyone = corrupt_domain_labels(
            gather_micro_batch(batch.domain_ids, self.ctx), self.generator
        )
        corrupted = everyone[self.ctx.process_index :: self.ctx.num_processes].to(
            batch.domain_ids.device
        )
        domain_logits = self.head(features, batch.domain_ids)
        adversarial = F.cross_entropy(domain_logits.float(), corrupted, reduction="none")
        return {"ce": weighted_mean(ce, t), "domain_adv": weighted_mean(adversarial, t)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "head" in state:
            self.head.load_state_dict(state["head"])
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def export(self, folder: Path, data: Any) -> None:
        """Save the domain head next to the model (the teacher recipe calls this)."""
        save_domain_head(self.head, folder)


# ---------------------------------------------------------------------------------------------
# Meta-distillation


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """[(student hidden index, teacher hidden index)] for m = 0..L_S (0 = embeddings): student
    m ↔ teacher m·L_T/L_S (rounded half up when it does not divide), so the embeddings match the
    embeddings and the last layer the last layer. Attention of student layer m is matched to the
    attention of the teacher layer it maps to."""
    if student_layers > teacher_layers:
        raise KdtuiError(
            f"the student ({student_layers} layers) is deeper than the teacher "
            f"({teacher_layers}); a uniform layer mapping needs student layers <= teacher layers "
            "(give distill.layer_map, or a shallower student)"
        )
    if student_layers < 1:
        raise KdtuiError("the student needs at least one layer")
    return [
        (m, (2 * m * teacher_layers + student_layers) // (2 * student_layers))
        for m in range(student_layers + 1)
    ]


def parse_layer_map(
    pairs: Sequence[Sequence[Any]], *, student_layers: int, teacher_layers: int
) -> list[tuple[int, int]]:
    """Validate a profile's `distill.layer_map` ([[student, teacher], ...], hidden-state indices
    with 0 = embeddings). Layer 0 (embeddings, no attention) pairs only with layer 0."""
    if not pairs:
        raise KdtuiError("distill.layer_map is empty; give [[student, teacher], ...] pairs")
    result: list[tuple[int, int]] = []
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair):
            raise KdtuiError(
                f"distill.layer_map: {list(pair)} is not a [student_layer, teacher_layer] pair"
            )
        s, t = int(pair[0]), int(pair[1])
        if not 0 <= s <= student_layers:
            raise KdtuiError(
                f"distill.layer_map: student layer {s} is out of range 0..{student_layers}"
            )
        if not 0 <= t <= teacher_layers:
            raise KdtuiError(
                f"distill.layer_map: teacher layer {t} is out of range 0..{teacher_layers}"
            )
        if (s == 0) != (t == 0):
            raise KdtuiError(
                f"distill.layer_map: [{s}, {t}] pairs the embeddings (layer 0) with a "
                "transformer layer; layer 0 matches only layer 0"
            )
        if any(s == earlier for earlier, _ in result):
            raise KdtuiError(f"distill.layer_map: student layer {s} is mapped twice")
        result.append((s, t))
    return result


def self_attention(model: nn.Module, layer: int) -> nn.Module:
    """The self-attention block of encoder layer `layer` (0-based) of a BERT-style model."""
    try:
        block = model.base_model.encoder.layer[layer].attention.self
        block.query, block.key, block.attention_head_size  # noqa: B018 - checks the layout
    except (AttributeError, IndexError, TypeError):
        raise KdtuiError(
            f"attention distillation needs a BERT-style encoder (encoder.layer[i].attention.self "
            f"with query/key projections); {type(model).__name__} has none at layer {layer}: "
            "use --method logits"
        ) from None
    return block


def attention_scores(model: nn.Module, layer: int, layer_input: torch.Tensor) -> torch.Tensor:
    """Pre-softmax attention scores Q·Kᵀ/√d of encoder layer `layer` (0-based), recomputed from
    its input hidden state (`hidden_states[layer]` of the model's output). (B, T, H) ->
    (B, heads, T, T). softmax(scores + mask) is the layer's attention map."""
    block = self_attention(model, layer)
    b, t, _ = layer_input.shape
    size = block.attention_head_size
    query = block.query(layer_input).view(b, t, -1, size).transpose(1, 2)
    key = block.key(layer_input).view(b, t, -1, size).transpose(1, 2)
    scaling = getattr(block, "scaling", size**-0.5)
    return torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


class IntermediateDistillHook(BaseHook):
    """Stage 1 (TinyBERT style, Meta-KD weighted). Named terms, each mean_i λ_i·X_i:

    * "hidden_mse": Σ over matched layers of MSE_i(W·H^S_m, H^T_g(m)), W a learned projection
      (a hook parameter; it starts as the identity when the widths agree);
    * "attention_mse": Σ over matched layers m ≥ 1 of the attention-score MSE_i;
    * "domain_mse" (with a teacher domain head): MSE_i(d^S, d^T), the loop's weight is γ2.

    λ_i = expertise_weights(t_i, p_T(y_i|x_i)) with `use_expertise_weights`, else 1 (vanilla).
    The teacher runs in eval mode without gradient."""

    name = "intermediate"
    needs_hidden_states = True  # attention scores are recomputed from them (no eager needed)

    def __init__(
        self,
        *,
        teacher: nn.Module,
        layer_map: Sequence[tuple[int, int]],
        student_hidden: int,
        teacher_hidden: int,
        teacher_domain_head: DomainHead | None = None,
        head_domain_of: torch.Tensor | None = None,
        prototype_scores_by_example_id: torch.Tensor | None = None,
        use_expertise_weights: bool = False,
        seed: int = 0,
    ) -> None:
        self.teacher = teacher
        self.layer_map = list(layer_map)
        self.domain_head = teacher_domain_head
        # data domain id -> the head's domain index (the student's data may order domains
        # differently from the teacher's); None = the same ids
        self.head_domain_of = head_domain_of
        self.scores = prototype_scores_by_example_id
        self.use_expertise_weights = use_expertise_weights
        self.projection = nn.Linear(student_hidden, teacher_hidden)
        with torch.no_grad():
            if student_hidden == teacher_hidden:
                self.projection.weight.copy_(torch.eye(teacher_hidden))
            else:
                generator = torch.Generator().manual_seed(seed)
                nn.init.normal_(self.projection.weight, 0.0, INIT_STD, generator=generator)
            nn.init.zeros_(self.projection.bias)

    def setup(self, ctx: HookContext) -> None:
        super().setup(ctx)
        for s, t in self.layer_map:
            if s > 0:  # a clear error before the first step, not a stack trace inside it
                self_attention(ctx.model, s - 1)
                self_attention(self.teacher, t - 1)
        _freeze(self.teacher)
        self.teacher.to(ctx.device)
        if self.domain_head is not None:
            _freeze(self.domain_head)
            self.domain_head.to(ctx.device)
        if self.head_domain_of is not None:
            self.head_domain_of = self.head_domain_of.to(ctx.device)
        self.projection.to(ctx.device)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.projection.parameters())

    def loss_terms(self, batch: Batch, outputs: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher_out = self.teacher(**batch.model_inputs(), output_hidden_states=True)
        mask = batch.attention_mask
        weights = None
        if self.use_expertise_weights:
            weights = expertise_weights(
                lookup_scores(self.scores, batch.example_ids),
                gold_probability(teacher_out.logits, batch.labels),
            )
        s_hidden, t_hidden = outputs.hidden_states, teacher_out.hidden_states
        hidden = sum(
            masked_mse_per_instance(self.projection(s_hidden[s].float()), t_hidden[t], mask)
            for s, t in self.layer_map
        )
        attention = torch.zeros(len(batch), device=mask.device)
        for s, t in self.layer_map:
            if s == 0:
                continue
            with torch.no_grad():
                t_scores = attention_scores(self.teacher, t - 1, t_hidden[t - 1])
            s_scores = attention_scores(model, s - 1, s_hidden[s - 1])
            attention = attention + attention_mse_per_instance(s_scores, t_scores, mask)
        terms = {
            "hidden_mse": weighted_mean(hidden, weights),
            "attention_mse": weighted_mean(attention, weights),
        }
        if self.domain_head is not None:
            domains = batch.domain_ids
            if self.head_domain_of is not None:
                domains = self.head_domain_of[domains]
            student_features = self.projection(mean_token_states(s_hidden[-1], mask))
            d_student = self.domain_head.represent(student_features, domains)
            with torch.no_grad():
                d_teacher = self.domain_head.represent(
                    mean_token_states(t_hidden[-1], mask), domains
                )
            per_instance = ((d_student - d_teacher) ** 2).mean(dim=-1)
            terms["domain_mse"] = weighted_mean(per_instance, weights)
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {
            "projection": {
                k: v.detach().cpu().clone() for k, v in self.projection.state_dict().items()
            }
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "projection" in state:
            self.projection.load_state_dict(state["projection"])


class PredictionDistillHook(BaseHook):
    """Stage 2: "soft_ce" = mean_i w_i·(−Σ_c p_T(c|x_i; T) log p_S(c|x_i; T)), with w_i = λ_i
    for `weights="expertise"` and 1 for "none". The teacher's logits come from `cached_logits`
    (a table indexed by example id: the teacher's forward dominates a step on a CPU) or from a
    forward in eval mode without gradient."""

    name = "prediction"

    def __init__(
        self,
        *,
        teacher: nn.Module | None,
        temperature: float,
        weights: str = "none",
        prototype_scores_by_example_id: torch.Tensor | None = None,
        cached_logits: torch.Tensor | None = None,
    ) -> None:
        if weights not in ("none", "expertise"):
            raise ValueError(f"unknown weights {weights!r}")
        if teacher is None and cached_logits is None:
            raise ValueError("need a teacher or cached logits")
        self.teacher = teacher
        self.temperature = temperature
        self.weights = weights
        self.scores = prototype_scores_by_example_id
        self.cached = cached_logits

    def setup(self, ctx: HookContext) -> None:
        super().setup(ctx)
        if self.cached is not None:
            self.cached = self.cached.to(ctx.device)
        elif self.teacher is not None:
            _freeze(self.teacher)
            self.teacher.to(ctx.device)

    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[batch.example_ids]
        assert self.teacher is not None
        with torch.no_grad():
            return self.teacher(**batch.model_inputs()).logits.float()

    def loss_terms(self, batch: Batch, outputs: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        teacher_logits = self.teacher_logits(batch)
        weights = None
        if self.weights == "expertise":
            weights = expertise_weights(
                lookup_scores(self.scores, batch.example_ids),
                gold_probability(teacher_logits, batch.labels),
            )
        return {
            "soft_ce": soft_cross_entropy(outputs.logits, teacher_logits, self.temperature, weights)
        }
