"""Accuracy per domain, sharded over processes and summed, so every process gets the result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kdtui.data import Encoded, collate

ALL = "all"


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    encoded: Encoded,
    indices: Sequence[int],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: bool = False,
) -> torch.Tensor:
    """Logits (len(indices), C) in eval mode; the model's training mode is restored after."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(indices), batch_size):
            batch = collate(encoded, indices[start : start + batch_size], pad_id)
            inputs = {
                k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")
            }
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                chunks.append(model(**inputs).logits.float().cpu())
    finally:
        model.train(was_training)
    if not chunks:
        return torch.zeros(0, 0)
    return torch.cat(chunks)


def accuracy_by_domain(
    model: nn.Module,
    encoded: Encoded,
    domain_names: Sequence[str],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """{domain: accuracy, ..., "all": accuracy over all examples} for domains present.

    Each process predicts its shard (every num_processes-th example); `reduce` sums the
    (correct, total) counts over processes."""
    indices = list(range(process_index, len(encoded), num_processes))
    counts = torch.zeros(len(domain_names), 2, dtype=torch.float64)
    if indices:
        logits = predict_logits(
            model,
            encoded,
            indices,
            batch_size=batch_size,
            pad_id=pad_id,
            device=device,
            autocast=autocast,
        )
        predictions = logits.argmax(dim=-1)
        labels = torch.tensor([encoded.labels[i] for i in indices])
        domains = torch.tensor([encoded.domains[i] for i in indices])
        correct = (predictions == labels).double()
        counts[:, 0].index_add_(0, domains, correct)
        counts[:, 1].index_add_(0, domains, torch.ones_like(correct))
    if reduce is not None:
        counts = reduce(counts)
    return accuracy_from_counts(counts, domain_names)


def accuracy_from_counts(counts: torch.Tensor, domain_names: Sequence[str]) -> dict[str, float]:
    result: dict[str, float] = {}
    for d, name in enumerate(domain_names):
        if counts[d, 1] > 0:
            result[name] = float(counts[d, 0] / counts[d, 1])
    total = counts[:, 1].sum()
    result[ALL] = float(counts[:, 0].sum() / total) if total > 0 else float("nan")
    return result


def model_summary(model: nn.Module) -> dict[str, Any]:
    params = [p for p in model.parameters()]
    return {
        "parameters": int(sum(p.numel() for p in params)),
        "nonzero_parameters": int(sum(int(torch.count_nonzero(p)) for p in params)),
    }
