"""Predictions sharded over processes and gathered in split order, and accuracy per domain from
them, so every process gets the same result."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from kdtui.data import Encoded, collate

ALL = "all"


def eval_forwards(
    model: nn.Module,
    encoded: Encoded,
    indices: Sequence[int],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: bool = False,
    **forward: Any,
) -> Iterator[tuple[dict[str, torch.Tensor], Any]]:
    """(inputs, outputs) of the model's forward over the examples INDICES, batch by batch, in
    eval mode without gradient (FORWARD: extra arguments, e.g. output_hidden_states); the
    model's training mode is restored when the batches end or the caller stops."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(indices), batch_size):
            batch = collate(encoded, indices[start : start + batch_size], pad_id)
            inputs = {
                k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")
            }
            with (
                torch.no_grad(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast),
            ):
                outputs = model(**inputs, **forward)
            yield inputs, outputs
    finally:
        model.train(was_training)


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
    chunks = [
        out.logits.float().cpu()
        for _, out in eval_forwards(
            model,
            encoded,
            indices,
            batch_size=batch_size,
            pad_id=pad_id,
            device=device,
            autocast=autocast,
        )
    ]
    if not chunks:
        return torch.zeros(0, 0)
    return torch.cat(chunks)


def predictions_in_order(
    model: nn.Module,
    encoded: Encoded,
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
    gather: Callable[[list[int]], list[int]] | None = None,
) -> list[int]:
    """The predicted class of every example of `encoded`, in split order, on every process.

    Each process predicts its shard (every num_processes-th example); `gather` concatenates the
    shards' lists in process order (accelerate's gather_object)."""
    indices = list(range(process_index, len(encoded), num_processes))
    mine: list[int] = []
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
        mine = logits.argmax(dim=-1).tolist()
    if num_processes == 1 or gather is None:
        return mine
    shards = gather([(process_index, mine)])  # type: ignore[list-item]
    result = [0] * len(encoded)
    for rank, shard in shards:  # type: ignore[misc]
        result[rank::num_processes] = shard
    return result


def accuracy_of_predictions(
    predictions: Sequence[int], encoded: Encoded, domain_names: Sequence[str]
) -> dict[str, float]:
    """{domain: accuracy, ..., "all": accuracy over all examples} for domains present."""
    counts = torch.zeros(len(domain_names), 2, dtype=torch.float64)
    if len(encoded):
        correct = (torch.tensor(list(predictions)) == torch.tensor(encoded.labels)).double()
        domains = torch.tensor(encoded.domains)
        counts[:, 0].index_add_(0, domains, correct)
        counts[:, 1].index_add_(0, domains, torch.ones_like(correct))
    return accuracy_from_counts(counts, domain_names)


def accuracy_from_counts(counts: torch.Tensor, domain_names: Sequence[str]) -> dict[str, float]:
    result: dict[str, float] = {}
    for d, name in enumerate(domain_names):
        if counts[d, 1] > 0:
            result[name] = float(counts[d, 0] / counts[d, 1])
    total = counts[:, 1].sum()
    result[ALL] = float(counts[:, 0].sum() / total) if total > 0 else float("nan")
    return result
