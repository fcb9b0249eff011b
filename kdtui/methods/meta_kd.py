"""Meta-KD (Pan et al., ACL 2021): pure functions and the three hooks the recipes plug in.

The formulas, the authors' defaults and where kdtui departs from them are in the README
(section Meta-KD). Here:

* instance-level transferable knowledge: `embed_for_prototypes` (pre-trained encoder),
  `prototype_scores` t_i (variant "class", the paper's, is the default; "centroid" is the
  simpler form of the authors' public code);
* the meta-teacher: `MetaTeacherHook` — per-instance t_i-weighted cross-entropy plus the
  transferable domain-adversarial loss against corrupted (in-batch permuted) domain labels,
  as a confusion game (`teacher.domain_loss = "confusion"`, the default) or as the authors
  wrote it ("authors"), through a `DomainHead` saved next to the model (`save_domain_head` /
  `load_domain_head`);
* meta-distillation: `expertise_weights` λ_i, `uniform_layer_map` / `parse_layer_map`,
  `IntermediateDistillHook` (stage 1) and `PredictionDistillHook` (stage 2).

Choices the paper leaves open, and why:

* Sentence features for prototypes and domain heads are the mean of the last layer's token
  states without [CLS], as in the authors' code, but with the padding masked (their code
  averages the padding in, so a sentence's features depend on the batch's longest sentence).
* Prototype scores are clamped at 0 and divided by their domain's mean (`normalise_scores`,
  `teacher.score_normalization`): a raw t_i < 0 would make the teacher climb that example's
  loss, and the raw cosines sit on an arbitrary, domain-dependent offset (MiniLM: t in
  −0.08..0.57, domains 21–29% of the total weight), which would weigh domains unevenly and make
  1 + t_i in λ_i almost constant. After it every domain's mean weight is 1 and the ranking
  inside a domain, which is what the paper's score expresses, is kept.
* The meta-teacher's classifier is the model's own Hugging Face head (pooler + linear), not the
  authors' ReLU(pooler) head, so `RUN/model` loads as a plain sequence classifier; the domain
  head lives in `domain_head.safetensors` beside it and only distillation reads it.
* The transferable domain-adversarial loss as the authors wrote it ("authors"; EasyNLP's
  MetaTeacherForSequenceClassification, files in the README): the head reads the true domain's
  embedding plus the mean token states (dense, tanh, dropout, linear; PyTorch's default
  initialisation), and the whole model — encoder, embedding, head — minimises
  t_i·(CE + γ1·CE to the batch's domain labels shuffled by one permutation) under one optimiser
  (γ1 = 0.5 in their script). kdtui's departures: the mean masks the padding (as everywhere
  here), and the permutation is of the global batch, not of each process's share.
* The same loss as a two-player game (domain confusion, the default). In the
  authors' code one head is trained on the corrupted labels *and* reads the true domain's
  embedding: the best it can do against random labels is a constant guess, so it stays at chance
  (measured: ln 4 from the first step on MiniLM), learns nothing about domains, and sends the
  encoder a gradient that is noise (orthogonal to the task's). Here the domain head (dense + tanh
  + linear, no domain embedding, which would give the answer away) learns the *true* domain from
  the sentence features with the encoder's gradient stopped ("domain_cls"), and the encoder,
  through the head's frozen weights, learns to make it predict the corrupted labels
  ("domain_adv", γ1, t-weighted as in the paper). Its expectation over the permutations is the
  cross-entropy to the batch's domain mix (the confusion loss of Tzeng et al., 2015), which is
  computed exactly: one sampled permutation gives every example a random target, whose
  gradient noise was 2-5x the task's gradient on MiniLM (measured) and drowned the task.
  The permutation is still drawn, for the diagnostics. So the head learns, its accuracy on
  the true labels says how much domain the features still carry, and "domain_adv" sits above
  its chance value mean(t)·ln K exactly when there is domain to remove (diagnostics in each
  step's metrics).
* What the student learns from the domain head: the teacher's domain posterior
  p_T(k | x) (its head on its features; an authors' head on the embedding of the example's
  domain plus its features, as EasyNLP's meta-distillation runs the teacher's domain embedding
  on the batch's domains), matched by a small head of the student's own (linear,
  no tanh, as the authors' student head) on the student's features, KL per instance ("domain_kl",
  weight γ2). The posterior says how much an example of the target domain reads like each of the
  other domains, which a student that sees one domain cannot learn from its data or its labels,
  and a vector of K numbers is not a restatement of the hidden-state MSE. (The authors' student
  matches an H-wide vector made by linear maps of the mean token states, the hidden MSE again.)
* Attention (`distill.attention`): "probs" (the default) matches the attention probabilities
  after softmax, as EasyNLP's official Meta-KD does (what its BERT returns; its `<= -1e2`
  filter is a TinyBERT leftover that never fires on probabilities); "scores" matches the
  pre-softmax scores Q·Kᵀ/√d as TinyBERT does. Both are recomputed from each layer's input
  hidden state with the layer's own query/key projections (`attention_scores`), without
  attention dropout (what `output_attentions` returns in training mode carries dropout's zeros
  and rescaling). On MiniLM the scores' MSE is ~3,000x the probabilities' and its gradient
  ~300x the hidden-state term's, so with "scores" stage 1 is only about attention (README,
  Meta-KD). Entries whose query or key is padding are 0 on both sides (`losses.py`).
* Every stage-1 term is computed per instance first and then weighted by λ_i (the
  authors' code averages over the batch first, which turns λ_i into a batch-level scale).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdtui.config import ATTENTION_TARGETS
from kdtui.engine.hooks import BaseHook, Batch, HookContext, StepInfo, gather_micro_batch
from kdtui.errors import KdtuiError
from kdtui.layout import encoder_layers, layout_of, self_attention
from kdtui.methods.losses import (
    attention_mse_per_instance,
    masked_mse_per_instance,
    soft_cross_entropy,
    weighted_mean,
)
from kdtui.rundir import DOMAIN_HEAD_FILE

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


SCORE_NORMALIZATIONS = ("domain-mean", "clamp")


def normalise_scores(
    scores: torch.Tensor, domains: torch.Tensor, *, num_domains: int, mode: str = "domain-mean"
) -> torch.Tensor:
    """Prototype scores the losses can use as weights: never below 0. (N,), (N,) -> (N,).

    "clamp": max(t_i, 0). "domain-mean": max(t_i, 0) divided by the mean of its domain's
    clamped scores, so every domain's mean weight is 1 (a domain whose scores are all 0 gets 1
    everywhere: no information is no reason to drop it)."""
    if mode not in SCORE_NORMALIZATIONS:
        raise ValueError(f"unknown score normalization {mode!r}")
    clamped = scores.float().clamp_min(0.0)
    if mode == "clamp":
        return clamped
    sums = torch.zeros(num_domains).index_add_(0, domains, clamped)
    counts = torch.zeros(num_domains).index_add_(0, domains, torch.ones_like(clamped))
    means = sums / counts.clamp_min(1.0)
    result = clamped / means[domains].clamp_min(1e-12)
    return torch.where(means[domains] > 0, result, torch.ones_like(result))


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
    """The meta-teacher's domain head: sentence features -> dense + tanh -> domain logits.

    For the confusion game (the default) it has no domain embedding: it is trained to
    *recognise* the domain from the features, and an embedding of the true domain in its input
    would hand it the answer. The authors' head (`domain_embedding=True`, EasyNLP's
    `MetaTeacherForSequenceClassification`) adds the true domain's embedding to the features
    and applies dropout after the tanh."""

    def __init__(
        self,
        num_domains: int,
        hidden: int,
        domain_names: Sequence[str] = (),
        *,
        domain_embedding: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.domain_names = list(domain_names) or [str(k) for k in range(num_domains)]
        self.embedding = nn.Embedding(num_domains, hidden) if domain_embedding else None
        self.dense = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_domains)
        self.dropout = dropout

    @property
    def kind(self) -> str:
        """The teacher.domain_loss this head was made for."""
        return "confusion" if self.embedding is None else "authors"

    def init_weights(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for weight in (self.dense.weight, self.classifier.weight):
                nn.init.normal_(weight, 0.0, INIT_STD, generator=generator)
            nn.init.zeros_(self.dense.bias)
            nn.init.zeros_(self.classifier.bias)

    def init_as_authors(self, seed: int) -> None:
        """PyTorch's default initialisation, which the authors' head keeps (their Application
        has no init of its own), drawn from `seed`: embedding N(0, 1), linear weights and biases
        U(±1/√fan_in)."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if self.embedding is not None:
                nn.init.normal_(self.embedding.weight, 0.0, 1.0, generator=generator)
            for linear in (self.dense, self.classifier):
                bound = 1.0 / math.sqrt(linear.in_features)
                nn.init.uniform_(linear.weight, -bound, bound, generator=generator)
                nn.init.uniform_(linear.bias, -bound, bound, generator=generator)

    def forward(
        self, features: torch.Tensor, domain_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Domain logits. (B, H), (B,) -> (B, K); `domain_ids` only for a head with a domain
        embedding (ignored otherwise)."""
        x = features.float()
        if self.embedding is not None:
            if domain_ids is None:
                raise ValueError("this domain head reads the true domain: give domain_ids")
            x = x + self.embedding(domain_ids)
        hidden = torch.tanh(self.dense(x))
        if self.dropout > 0:
            hidden = F.dropout(hidden, self.dropout, self.training)
        return self.classifier(hidden)

    def frozen_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The same logits with the head's weights treated as constants: the gradient reaches
        only the features (the encoder's side of the adversarial game)."""
        hidden = torch.tanh(
            F.linear(features.float(), self.dense.weight.detach(), self.dense.bias.detach())
        )
        return F.linear(hidden, self.classifier.weight.detach(), self.classifier.bias.detach())


def save_domain_head(head: DomainHead, folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / DOMAIN_HEAD_FILE
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
        str(path),
        metadata={"domains": json.dumps(head.domain_names), "domain_loss": head.kind},
    )
    return path


def load_domain_head(folder: Path) -> DomainHead | None:
    """The domain head saved with a meta-teacher's model, or None (not a meta-teacher). Its
    domain embedding is read only for a head saved as the authors' (metadata domain_loss); a
    head saved by an earlier kdtui also holds one, which is no longer read."""
    from safetensors import safe_open

    path = Path(folder) / DOMAIN_HEAD_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
        names = json.loads(metadata.get("domains", "[]"))
        authors = metadata.get("domain_loss") == "authors"
        num_domains, hidden = state["classifier.weight"].shape
        head = DomainHead(int(num_domains), int(hidden), names, domain_embedding=authors)
        if not authors:
            state = {k: v for k, v in state.items() if not k.startswith("embedding.")}
        head.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - any decoding failure means a damaged file
        raise KdtuiError(f"cannot read the domain head {path}: {e}") from None
    return head


DOMAIN_LOSSES = ("confusion", "authors")  # teacher.domain_loss


def corrupt_domain_labels(domain_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch's domain labels in a random order (Meta-KD's corrupted domain labels)."""
    order = torch.randperm(domain_ids.shape[0], generator=generator)
    return domain_ids[order.to(domain_ids.device)]


class MetaTeacherHook(BaseHook):
    """Meta-teacher loss as named terms (the loop weighs them; module docstring for why). With
    `domain_loss="confusion"` (the default):

    * "ce" = mean_i t_i·CE(y_i, f(x_i));
    * "domain_adv" = mean_i t_i·E_π[CE(ỹ_i, g(x_i))], ỹ = the batch's domain labels permuted by
      π, i.e. the CE to the batch's domain mix, through the head's frozen weights: only the
      encoder learns from it (weight γ1);
    * "domain_cls" = mean_i CE(k_i, g(sg(x_i))), the head learning the true domains from
      features whose gradient is stopped: only the head learns from it.

    With `domain_loss="authors"` (EasyNLP's meta-teacher), "ce" and
    * "domain_corrupted" = mean_i t_i·CE(ỹ_i, g(x_i, k_i)), one sampled permutation ỹ, g the head
      on the true domain's embedding plus the features, dropout after its tanh when the model
      trains: the encoder and the head (embedding included) both minimise it (weight γ1).

    `after_step` returns the head's accuracy on the true and on the corrupted labels and the
    domain term's chance value mean(t)·ln K over the step's examples. The permutation's
    generator is part of the state, so a resumed run draws the same permutations."""

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
        head_lr: float | None = None,
        domain_loss: str = "confusion",
        dropout: float = 0.0,
    ) -> None:
        if domain_loss not in DOMAIN_LOSSES:
            raise ValueError(f"unknown domain loss {domain_loss!r}")
        self.domain_loss = domain_loss
        if domain_loss == "authors":
            self.head = DomainHead(
                num_domains, hidden, domain_names, domain_embedding=True, dropout=dropout
            )
            self.head.init_as_authors(seed)
        else:
            self.head = DomainHead(num_domains, hidden, domain_names)
            self.head.init_weights(seed)
        self.scores = prototype_scores_by_example_id.float()
        self.generator = torch.Generator().manual_seed(seed)
        self.lr = head_lr
        self._tally = torch.zeros(4)  # examples, right (true), right (corrupted), sum of t

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
        global_domains = gather_micro_batch(batch.domain_ids, self.ctx)
        everyone = corrupt_domain_labels(global_domains, self.generator)
        corrupted = everyone[self.ctx.process_index :: self.ctx.num_processes].to(
            batch.domain_ids.device
        )
        if self.domain_loss == "authors":
            self.head.train(model.training)  # its dropout acts when the model's does
            logits = self.head(features, batch.domain_ids)
            self._count(batch, logits, corrupted, t)
            shuffled = F.cross_entropy(logits, corrupted, reduction="none")
            return {"ce": weighted_mean(ce, t), "domain_corrupted": weighted_mean(shuffled, t)}
        recognised = self.head(features.detach())
        # The corrupted-label CE averaged over every permutation of the batch's labels is the CE
        # to the batch's domain mix; computed exactly, it drops the noise one sampled
        # permutation adds (a random target per example: a gradient as large as the signal).
        num_domains = self.head.classifier.out_features
        mix = F.one_hot(global_domains, num_domains).float().mean(dim=0).to(features.device)
        log_p = F.log_softmax(self.head.frozen_logits(features), dim=-1)
        adversarial = -(mix * log_p).sum(dim=-1)
        self._count(batch, recognised, corrupted, t)
        return {
            "ce": weighted_mean(ce, t),
            "domain_adv": weighted_mean(adversarial, t),
            "domain_cls": F.cross_entropy(recognised, batch.domain_ids),
        }

    @torch.no_grad()
    def _count(
        self, batch: Batch, logits: torch.Tensor, corrupted: torch.Tensor, t: torch.Tensor
    ) -> None:
        guess = logits.argmax(dim=-1)
        self._tally += torch.tensor(
            [
                len(batch),
                float((guess == batch.domain_ids).sum()),
                float((guess == corrupted).sum()),
                float(t.sum()),
            ]
        )

    def after_step(self, info: StepInfo) -> Mapping[str, float]:
        n, right_true, right_corrupted, t_sum = self._tally.tolist()
        self._tally.zero_()
        if n == 0:
            return {}
        num_domains = self.head.classifier.out_features
        return {
            "domain/acc_true": right_true / n,
            "domain/acc_corrupted": right_corrupted / n,
            "domain/adv_chance": t_sum / n * math.log(num_domains),
        }

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


def attention_scores(block: nn.Module, layer_input: torch.Tensor) -> torch.Tensor:
    """Pre-softmax attention scores Q·Kᵀ/√d of a BERT-style self-attention BLOCK
    (`kdtui.layout.self_attention`, with `query` and `key`), recomputed from the layer's input
    hidden state (`hidden_states[layer]` of the model's output). (B, T, H) -> (B, heads, T, T).
    softmax(scores + mask) is the layer's attention map. Any family: `attention_scorer`."""
    return _plain_scores(block.query, block.key, block, block.attention_head_size, layer_input)


def _plain_scores(
    query: nn.Module, key: nn.Module, block: nn.Module, size: int, layer_input: torch.Tensor
) -> torch.Tensor:
    b, t, _ = layer_input.shape
    q = query(layer_input).view(b, t, -1, size).transpose(1, 2)
    k = key(layer_input).view(b, t, -1, size).transpose(1, 2)
    scaling = getattr(block, "scaling", size**-0.5)
    return torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling


def _deberta_scores(
    encoder: nn.Module, block: nn.Module, layer_input: torch.Tensor
) -> torch.Tensor:
    """DeBERTa-v2/v3's scores as its DisentangledSelfAttention computes them: content Q·Kᵀ and
    the relative-position terms (c2p, p2c), each over √(d·terms); no dropout."""
    b, t, _ = layer_input.shape
    heads = block.num_attention_heads
    query = block.transpose_for_scores(block.query_proj(layer_input), heads)
    key = block.transpose_for_scores(block.key_proj(layer_input), heads)
    factor = 1 + ("c2p" in block.pos_att_type) + ("p2c" in block.pos_att_type)
    scale = torch.sqrt(torch.tensor(query.size(-1), dtype=torch.float) * factor)
    scores = torch.bmm(query, key.transpose(-1, -2) / scale.to(dtype=query.dtype))
    if block.relative_attention:
        relative_pos = encoder.get_rel_pos(layer_input)
        scores = scores + block.disentangled_attention_bias(
            query, key, relative_pos, encoder.get_rel_embedding(), factor
        )
    return scores.view(b, heads, t, t).float()


def _rotary_scores(
    query: nn.Module, key: nn.Module, rotary: nn.Module, block: nn.Module, x: torch.Tensor
) -> torch.Tensor:
    """Q·Kᵀ·scale after the rotary position embedding (NomicBERT), positions 0..T-1 as the
    model numbers them without position_ids."""
    import importlib

    b, t, _ = x.shape
    size = block.head_dim
    q = query(x).view(b, t, -1, size).transpose(1, 2)
    k = key(x).view(b, t, -1, size).transpose(1, 2)
    cos, sin = rotary(x, torch.arange(t, device=x.device)[None])
    # the family's own function: it knows which half of each head is rotated how
    rotate = importlib.import_module(type(block).__module__).apply_rotary_pos_emb
    q, k = rotate(q, k, cos, sin)
    return torch.matmul(q.float(), k.float().transpose(-1, -2)) * block.scaling


# The score kdtui gives a key outside a local attention window: softmax gives it 0, as the
# model's mask does; the "scores" target reads it as 0 on both sides (`outside_windows_zeroed`).
OUTSIDE_WINDOW = torch.finfo(torch.float32).min


def _modernbert_scores(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ModernBERT's scores: its attention reads the pre-normed input through one fused [Q; K; V]
    projection, with rotary positions of the layer's type, and a local layer sees only keys
    within config.sliding_window positions of the query."""
    import importlib

    attention = layer.attn
    x = layer.attn_norm(x)
    b, t, _ = x.shape
    qkv = attention.Wqkv(x).view(b, t, 3, -1, attention.head_dim)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    positions = torch.arange(t, device=x.device)
    cos, sin = model.base_model.rotary_emb(x, positions[None], layer.attention_type)
    rotate = importlib.import_module(type(attention).__module__).apply_rotary_pos_emb
    q, k = rotate(q, k, cos, sin)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attention.head_dim**-0.5
    scores = scores.float()  # under bf16 autocast the fill below would round to -inf
    if layer.attention_type == "sliding_attention":
        distance = (positions[:, None] - positions[None, :]).abs()
        scores = scores.masked_fill(distance > model.config.sliding_window, OUTSIDE_WINDOW)
    return scores


def outside_windows_zeroed(scores: torch.Tensor) -> torch.Tensor:
    """Scores with the keys outside a local window at 0 (as padding is in the loss), so that
    the "scores" target compares numbers, not the fill."""
    return scores.masked_fill(scores == OUTSIDE_WINDOW, 0.0)


def attention_scorer(model: nn.Module, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The pre-softmax attention scores of MODEL's encoder layer LAYER (0-based) as a function
    of the layer's input hidden state, (B, T, H) -> (B, heads, T, T), for the families whose
    layout says how (`Layout.scores`); a KdtuiError naming the family and the way out for the
    others."""
    layout = layout_of(model)
    block = self_attention(model, layer)
    if layout.scores == "plain":
        parent = encoder_layers(model)[layer]
        query, key = parent.get_submodule(layout.query), parent.get_submodule(layout.key)
        size = int(getattr(block, layout.head_size))
        return lambda x: _plain_scores(query, key, block, size, x)
    if layout.scores == "deberta":
        encoder = model.base_model.encoder
        return lambda x: _deberta_scores(encoder, block, x)
    if layout.scores == "modernbert":
        parent = encoder_layers(model)[layer]
        return lambda x: _modernbert_scores(model, parent, x)
    if layout.scores == "rotary":
        parent = encoder_layers(model)[layer]
        query, key = parent.get_submodule(layout.query), parent.get_submodule(layout.key)
        rotary = model.base_model.rotary_emb
        return lambda x: _rotary_scores(query, key, rotary, block, x)
    raise KdtuiError(
        f"attention distillation does not support {layout.family} yet: "
        f"{layout.scores_refusal}; use --method logits"
    )


def check_attention_distillation(model: nn.Module) -> None:
    """A clear error, before anything trains, where stage 1 cannot recompute MODEL's
    attention."""
    try:
        layout_of(model)
    except KdtuiError as e:
        raise KdtuiError(f"attention distillation: {e}; use --method logits") from None
    attention_scorer(model, 0)


def attention_probabilities(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """softmax over the keys of pre-softmax scores, padded keys left out (probability 0).
    (B, heads, T, T), (B, T) -> (B, heads, T, T): the layer's attention map without dropout."""
    keys = attention_mask[:, None, None, :].to(torch.bool)
    return torch.softmax(scores.float().masked_fill(~keys, torch.finfo(torch.float32).min), dim=-1)


def _cpu_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


class IntermediateDistillHook(BaseHook):
    """Stage 1 (TinyBERT style, Meta-KD weighted). Named terms, each mean_i λ_i·X_i:

    * "hidden_mse": Σ over matched layers of MSE_i(W·H^S_m, H^T_g(m)), W a learned projection
      (a hook parameter; it starts as the identity when the widths agree);
    * "attention_mse": Σ over matched layers m ≥ 1 of the attention MSE_i, on the probabilities
      (`attention="probs"`) or the pre-softmax scores ("scores");
    * "domain_kl" (with a teacher domain head): KL(p_T(·|x_i) ‖ p_S(·|x_i)) between the
      teacher's domain posterior (its frozen head on its features; an authors' head also reads
      the embedding of the example's domain, `head_domain_ids` mapping the data's domain ids to
      the head's) and the student's own domain head (linear, a hook parameter) on the student's
      features; the loop's weight is γ2.

    λ_i = expertise_weights(t_i, p_T(y_i|x_i)) with `use_expertise_weights`, else 1 (vanilla).
    The teacher runs in eval mode without gradient."""

    name = "intermediate"
    needs_hidden_states = True  # attention is recomputed from them (no eager attention needed)

    def __init__(
        self,
        *,
        teacher: nn.Module,
        layer_map: Sequence[tuple[int, int]],
        student_hidden: int,
        teacher_hidden: int,
        teacher_domain_head: DomainHead | None = None,
        head_domain_ids: Sequence[int] = (),
        prototype_scores_by_example_id: torch.Tensor | None = None,
        use_expertise_weights: bool = False,
        attention: str = "probs",
        seed: int = 0,
    ) -> None:
        if attention not in ATTENTION_TARGETS:
            raise ValueError(f"unknown attention target {attention!r}")
        self.teacher = teacher
        self.layer_map = list(layer_map)
        self.attention = attention
        self.domain_head = teacher_domain_head
        head = teacher_domain_head
        if head is not None and head.embedding is not None and not head_domain_ids:
            raise ValueError("an authors' domain head reads domains: give head_domain_ids")
        # the data's domain id -> the head's (the student's data may hold only its domain)
        self.head_domain_ids = torch.tensor(list(head_domain_ids), dtype=torch.long)
        self.scores = prototype_scores_by_example_id
        self.use_expertise_weights = use_expertise_weights
        generator = torch.Generator().manual_seed(seed)
        self.projection = nn.Linear(student_hidden, teacher_hidden)
        with torch.no_grad():
            if student_hidden == teacher_hidden:
                self.projection.weight.copy_(torch.eye(teacher_hidden))
            else:
                nn.init.normal_(self.projection.weight, 0.0, INIT_STD, generator=generator)
            nn.init.zeros_(self.projection.bias)
        self.student_domain_head: nn.Linear | None = None
        if teacher_domain_head is not None:
            num_domains = teacher_domain_head.classifier.out_features
            self.student_domain_head = nn.Linear(student_hidden, num_domains)
            with torch.no_grad():
                nn.init.normal_(self.student_domain_head.weight, 0.0, INIT_STD, generator=generator)
                nn.init.zeros_(self.student_domain_head.bias)

    def setup(self, ctx: HookContext) -> None:
        super().setup(ctx)
        # Found once, here: a clear error before the first step rather than a stack trace inside
        # it, and no layout probe per step. Layer m's attention reads hidden_states[m - 1].
        self.student_attention = {
            s: attention_scorer(ctx.model, s - 1) for s, _ in self.layer_map if s > 0
        }
        self.teacher_attention = {
            t: attention_scorer(self.teacher, t - 1) for s, t in self.layer_map if s > 0
        }
        _freeze(self.teacher)
        self.teacher.to(ctx.device)
        if self.domain_head is not None:
            _freeze(self.domain_head)
            self.domain_head.to(ctx.device)
        self.head_domain_ids = self.head_domain_ids.to(ctx.device)
        self.projection.to(ctx.device)
        if self.student_domain_head is not None:
            self.student_domain_head.to(ctx.device)

    def parameters(self) -> list[nn.Parameter]:
        heads = [self.projection, self.student_domain_head]
        return [p for head in heads if head is not None for p in head.parameters()]

    def _attention(self, scorer: Callable[..., Any], layer_input: torch.Tensor, mask: Any) -> Any:
        scores = scorer(layer_input)
        if self.attention == "probs":
            return attention_probabilities(scores, mask)
        return outside_windows_zeroed(scores)

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
                t_attention = self._attention(self.teacher_attention[t], t_hidden[t - 1], mask)
            s_attention = self._attention(self.student_attention[s], s_hidden[s - 1], mask)
            attention = attention + attention_mse_per_instance(s_attention, t_attention, mask)
        terms = {
            "hidden_mse": weighted_mean(hidden, weights),
            "attention_mse": weighted_mean(attention, weights),
        }
        if self.domain_head is not None and self.student_domain_head is not None:
            with torch.no_grad():
                domain_ids = None
                if self.domain_head.embedding is not None:
                    domain_ids = self.head_domain_ids[batch.domain_ids]
                log_p_t = F.log_softmax(
                    self.domain_head(mean_token_states(t_hidden[-1], mask), domain_ids), dim=-1
                )
            log_p_s = F.log_softmax(
                self.student_domain_head(mean_token_states(s_hidden[-1], mask)), dim=-1
            )
            per_instance = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
            terms["domain_kl"] = weighted_mean(per_instance, weights)
        return terms

    def state_dict(self) -> dict[str, Any]:
        state = {"projection": _cpu_copy(self.projection)}
        if self.student_domain_head is not None:
            state["domain_head"] = _cpu_copy(self.student_domain_head)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "projection" in state:
            self.projection.load_state_dict(state["projection"])
        if "domain_head" in state and self.student_domain_head is not None:
            self.student_domain_head.load_state_dict(state["domain_head"])


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
