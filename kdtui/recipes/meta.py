"""The Meta-KD parts of `kdtui teacher --method meta`: prototype scores from the pre-trained
encoder, then the meta-teacher hook (weighted CE + transferable domain-adversarial loss)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdtui.data import MultiDomainData, Split, collate, encode
from kdtui.engine.hooks import Hook
from kdtui.events import Histogram
from kdtui.recipes.common import RunContext

SCORES_FILE = "prototype_scores.safetensors"


def meta_teacher_hooks(
    ctx: RunContext, data: MultiDomainData, train_split: Split, model: Any, tokenizer: Any
) -> tuple[list[Hook], dict[str, float]]:
    """Score every training example with the still pre-trained encoder, then build the hook."""
    from kdtui.methods.meta_kd import MetaTeacherHook

    cfg = ctx.config
    scores = compute_prototype_scores(ctx, data, train_split, model, tokenizer)
    if ctx.is_main:
        save_scores(ctx.run.path / SCORES_FILE, train_split, scores, data.domain_names)
        for d, name in enumerate(data.domain_names):
            domain_scores = scores[torch.tensor(train_split.domains) == d]
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
    )
    # The hook returns unweighted terms; γ1 weighs the adversarial one in the loop.
    return [hook], {"domain_adv": cfg.teacher.domain_loss_weight}


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


def save_scores(path: Path, split: Split, scores: torch.Tensor, domain_names: list[str]) -> None:
    save_file(
        {
            "ids": torch.tensor(split.ids, dtype=torch.long),
            "domains": torch.tensor(split.domains, dtype=torch.long),
            "scores": scores.float().contiguous(),
        },
        str(path),
        metadata={"domains": ",".join(domain_names)},
    )


def load_scores(path: Path) -> dict[str, torch.Tensor] | None:
    return load_file(str(path)) if path.is_file() else None
