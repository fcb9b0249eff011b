"""Pure loss functions shared by the methods. Shapes: B batch, C classes, T tokens, H width."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton KD: T² · KL(p_T ‖ p_S) at temperature T, mean over the batch. (B, C) -> scalar.

    The T² factor keeps gradient magnitudes comparable across temperatures (CAP uses it)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    return kl.mean() * t * t


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft CE −Σ p_T log p_S at temperature T (Meta-KD's prediction stage, no T² factor).

    (B, C), (B, C), optional per-instance weights (B,) -> scalar (weighted mean over B)."""
    t = temperature
    p_t = F.softmax(teacher_logits.float() / t, dim=-1)
    per_instance = -(p_t * F.log_softmax(student_logits.float() / t, dim=-1)).sum(dim=-1)
    return weighted_mean(per_instance, weights)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """mean_i w_i · v_i (plain mean when weights is None). (B,), (B,) -> scalar."""
    if weights is None:
        return values.mean()
    return (weights.to(values.dtype) * values).mean()


def masked_mse_per_instance(
    a: torch.Tensor, b: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error per instance over its real tokens and features. (B, T, ...) -> (B,).

    `token_mask` (B, T) is 1 for real tokens; padded positions count neither in the sum nor in
    the mean, so a short sentence is not diluted by padding."""
    diff = (a.float() - b.float()) ** 2
    per_token = diff.flatten(start_dim=2).mean(dim=-1) if diff.dim() > 2 else diff
    if token_mask is None:
        return per_token.mean(dim=-1)
    mask = token_mask.to(per_token.dtype)
    return (per_token * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)


def attention_mse_per_instance(
    student_attention: torch.Tensor, teacher_attention: torch.Tensor, token_mask: torch.Tensor
) -> torch.Tensor:
    """Attention MSE per instance (TinyBERT / Meta-KD), on scores or maps alike.
    (B, heads, T, T) x2, (B, T) -> (B,).

    Entries whose query or key is padding are set to 0 on both sides and left out of the mean,
    so the loss of a short sentence is the mean over its real (query, key) pairs and heads. When
    the student has fewer heads than the teacher (a narrower student), the head-averaged
    attention is compared: there is no head-to-head correspondence to match."""
    s, t = student_attention.float(), teacher_attention.float()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
    mask = token_mask.to(s.dtype)
    pairs = (mask[:, :, None] * mask[:, None, :])[:, None]  # (B, 1, T, T)
    squared = ((s * pairs - t * pairs) ** 2).sum(dim=(1, 2, 3))
    count = pairs.sum(dim=(1, 2, 3)) * s.shape[1]
    return squared / count.clamp_min(1.0)
