"""The Meta-KD parts of `kdtui teacher --method meta`: prototype scores from the pre-trained
encoder (normalised into weights >= 0), then the meta-teacher hook (weighted CE + transferable
domain-adversarial loss: the confusion game, or the authors' shuffled-label cross-entropy)."""

from __future__ import annotations

from typing import Any

import torch

from kdtui.data import MultiDomainData, Split, collate, encode
from kdtui.engine.hooks import Hook
from kdtui.events import Histogram, Message
from kdtui.recipes.common import RunContext, save_scores


def meta_teacher_hooks(
    ctx: RunContext, data: MultiDomainData, train_split: Split, model: Any, tokenizer: Any
) -> tuple[list[Hook], dict[str, float]]:
    """Score every training example with the still pre-trained encoder, then build the hook."""
    from kdtui.methods.meta_kd import MetaTeacherHook, normalise_scores

    cfg = ctx.config
    raw = compute_prototype_scores(ctx, data, train_split, model, tokenizer)
    domains = torch.tensor(train_split.domains)
    scores = normalise_scores(
        raw, domains, num_domains=len(data.domain_names), mode=cfg.teacher.score_normalization
    )
    if ctx.is_main:
        save_scores(ctx.run.scores_file, train_split, scores, data.domain_names)
        ctx.run.log(Message(level="info", text=describe_scores(raw, scores, domains, data)))
        for d, name in enumerate(data.domain_names):
            domain_scores = scores[domains == d]
            if len(domain_scores):
                counts, edges = torch.histogram(domain_scores.float(), bins=20)
                ctx.run.log(
                    Histogram(
                        name="prototype_score",
                        domain=name,
                        edges=edges.tolist(),
                        counts=[int(c) for c in counts],
                    )
                )
    by_id = torch.zeros(max(train_split.ids) + 1)
    by_id[torch.tensor(train_split.ids)] = scores
    hook = MetaTeacherHook(
        num_domains=len(data.domain_names),
        hidden=model.config.hidden_size,
        prototype_scores_by_example_id=by_id,
        domain_names=data.domain_names,
        seed=cfg.run.seed,
        head_lr=cfg.teacher.domain_head_lr or None,
        domain_loss=cfg.teacher.domain_loss,
        # the authors' head drops out at the encoder's hidden dropout rate
        dropout=float(getattr(model.config, "hidden_dropout_prob", 0.0) or 0.0),
    )
    # The hook returns unweighted terms; γ1 weighs the domain term the encoder learns from.
    term = "domain_corrupted" if cfg.teacher.domain_loss == "authors" else "domain_adv"
    return [hook], {term: cfg.teacher.domain_loss_weight}


def describe_scores(
    raw: torch.Tensor, used: torch.Tensor, domains: torch.Tensor, data: MultiDomainData
) -> str:
    """One line for the events: the raw scores' range and how many were below 0, and each
    domain's share of the total weight before and after normalisation."""

    def shares(values: torch.Tensor) -> str:
        total = float(values.clamp_min(0).sum()) or 1.0
        return " ".join(
            f"{name} {100 * float(values[domains == d].clamp_min(0).sum()) / total:.0f}%"
            for d, name in enumerate(data.domain_names)
        )

    return (
        f"prototype scores: raw {float(raw.min()):.3f}..{float(raw.max()):.3f} "
        f"({int((raw < 0).sum())} below 0), used {float(used.min()):.3f}..{float(used.max()):.3f}; "
        f"weight share raw (clamped) {shares(raw)}, used {shares(used)}"
    )


def compute_prototype_scores(
    ctx: RunContext, data: MultiDomainData, split: Split, model: Any, tokenizer: Any
) -> torch.Tensor:
    from kdtui.methods.meta_kd import embed_for_prototypes, prototype_scores

    cfg = ctx.config
    encoded = encode(split, tokenizer, cfg.data.max_length)
    pad_id = tokenizer.pad_token_id or 0
    size = cfg.train.eval_batch_size

    def batches() -> Any:
        for start in range(0, len(encoded), size):
            yield collate(encoded, range(start, min(start + size, len(encoded))), pad_id)

    embeddings = embed_for_prototypes(model, batches())
    return prototype_scores(
        embeddings,
        torch.tensor(split.labels),
        torch.tensor(split.domains),
        num_domains=len(data.domain_names),
        num_labels=len(data.label_names),
        variant=cfg.teacher.prototype,
        alpha=cfg.teacher.alpha,
        zeta=cfg.teacher.zeta,
    )
