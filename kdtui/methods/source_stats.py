"""A teacher's quality as a source of distillation, and a student's agreement with its teacher.

Pure functions on tensors, and one forward pass (`logits_and_sentence_layers`) that gathers
their inputs. What each number says (README, Meta-KD):

* margin: the mean over examples of the top-1 minus the top-2 *logit* (raw logits, no
  temperature): how decided the teacher is;
* entropy: the mean entropy (nats) of softmax(logits / T) at the KD temperature T
  (`distill.kd_temperature`), the soft targets stage 2 hands the student;
* per hidden layer l (0 = the embeddings' output, up to the last layer; every layer, so the
  ones stage 1 matches under any layer map are among them), on each example's sentence
  representation (the mean of its token states without [CLS] and padding, as Meta-KD's
  features): the variance (per dimension, across examples, population variance; then the mean
  over dimensions) and the mean pairwise cosine across examples (over every pair i ≠ j; near 1
  = the examples' representations point one way: anisotropic or collapsed);
* agreement: the share of examples whose argmax is the same for two models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdtui.data import Encoded
from kdtui.engine.evaluate import eval_forwards
from kdtui.methods.meta_kd import mean_token_states


def logit_margin(logits: torch.Tensor) -> float:
    """Mean of top-1 minus top-2 logit. (N, C) with C >= 2 -> float (nan when N = 0)."""
    if logits.shape[0] == 0:
        return float("nan")
    top = logits.float().topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).mean())


def softmax_entropy(logits: torch.Tensor, temperature: float) -> float:
    """Mean entropy in nats of softmax(logits / T). (N, C) -> float (nan when N = 0)."""
    if logits.shape[0] == 0:
        return float("nan")
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    return float(-(log_p.exp() * log_p).sum(dim=-1).mean())


def representation_variance(reps: torch.Tensor) -> float:
    """Mean over dimensions of the variance across examples (divided by N). (N, H) -> float."""
    if reps.shape[0] == 0:
        return float("nan")
    return float(reps.double().var(dim=0, unbiased=False).mean())


def mean_pairwise_cosine(reps: torch.Tensor) -> float:
    """Mean cosine over all pairs of different examples. (N, H) -> float (nan when N < 2).

    Σ_{i≠j} u_i·u_j = |Σ_i u_i|² − Σ_i |u_i|² for the unit vectors u_i, so no N×N matrix; a
    zero vector counts as cosine 0 with everything."""
    n = reps.shape[0]
    if n < 2:
        return float("nan")
    unit = F.normalize(reps.double(), dim=-1)
    total = unit.sum(dim=0)
    pairs = total.dot(total) - unit.pow(2).sum()
    return float(pairs / (n * (n - 1)))


def agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of positions where two prediction lists agree (nan for none)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions against {len(b)}")
    if not a:
        return float("nan")
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def agreement_by_domain(
    a: Sequence[int], b: Sequence[int], domains: Sequence[int], domain_names: Sequence[str]
) -> dict[str, float]:
    """{domain: agreement, ..., "all": agreement} for the domains present (the layout of
    accuracy per domain)."""
    result = {}
    for d, name in enumerate(domain_names):
        rows = [i for i, k in enumerate(domains) if k == d]
        if rows:
            result[name] = agreement([a[i] for i in rows], [b[i] for i in rows])
    result["all"] = agreement(a, b)
    return result


def source_statistics(
    logits: torch.Tensor, layers: Sequence[torch.Tensor], temperature: float
) -> dict[str, float]:
    """{"margin", "entropy", "temperature", "layer{l}_variance", "layer{l}_cosine"} of one
    model on one split: logits (N, C), each layer's sentence representations (N, H)."""
    stats = {
        "margin": logit_margin(logits),
        "entropy": softmax_entropy(logits, temperature),
        "temperature": float(temperature),
    }
    for index, reps in enumerate(layers):
        stats[f"layer{index}_variance"] = representation_variance(reps)
        stats[f"layer{index}_cosine"] = mean_pairwise_cosine(reps)
    return stats


def logits_and_sentence_layers(
    model: nn.Module,
    encoded: Encoded,
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every example's logits (N, C) and, for every hidden state the model returns, its
    sentence representations (N, H) (mean token states, `meta_kd.mean_token_states`), float32
    on the CPU. Eval mode, no gradient; the model's training mode is restored."""
    logits: list[torch.Tensor] = []
    layers: list[list[torch.Tensor]] = []
    for inputs, out in eval_forwards(
        model,
        encoded,
        range(len(encoded)),
        batch_size=batch_size,
        pad_id=pad_id,
        device=device,
        autocast=autocast,
        output_hidden_states=True,
    ):
        logits.append(out.logits.float().cpu())
        for index, hidden in enumerate(out.hidden_states):
            if index == len(layers):
                layers.append([])
            layers[index].append(mean_token_states(hidden, inputs["attention_mask"]).cpu())
    if not logits:
        return torch.zeros(0, 0), []
    return torch.cat(logits), [torch.cat(chunks) for chunks in layers]
