"""How methods plug into the one training loop.

A method is a `Hook`: it may add trainable parameters (a projection, a domain head, pruning
scores), returns *named, unweighted* loss terms for a batch, may act after each optimiser step
(apply masks, move a schedule) and returns metrics to log, may watch the dev evaluations, and
carries state for resume. The loop weights the terms (`weights[name]`, default 1), sums, logs
each one, and steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from kdtui.events import Event


@dataclass
class Batch:
    """One batch on the model's device. `example_ids` are global ids (the index of each
    example in its split), the same in every process: CAP's memory banks index by them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor
    domain_ids: torch.Tensor
    example_ids: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class HookContext:
    """What a hook may use during setup: the (unwrapped) model, the run's event log, the
    number of optimiser steps, and the process layout."""

    model: nn.Module
    total_steps: int
    log: Callable[[Event], None]
    device: torch.device
    process_index: int = 0
    num_processes: int = 1


@dataclass
class StepInfo:
    step: int  # optimiser steps completed
    total_steps: int
    epoch: float


class Hook(Protocol):
    name: str
    needs_hidden_states: bool
    needs_attentions: bool

    def setup(self, ctx: HookContext) -> None: ...

    def parameters(self) -> list[nn.Parameter]: ...

    def loss_terms(
        self, batch: Batch, outputs: Any, model: nn.Module
    ) -> dict[str, torch.Tensor]: ...

    def after_step(self, info: StepInfo) -> Mapping[str, float]: ...

    def after_eval(self, step: int, accuracy: Mapping[str, float]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BaseHook:
    """No-op defaults; a method overrides what it needs."""

    name = "hook"
    needs_hidden_states = False
    needs_attentions = False
    lr: float | None = None  # peak learning rate of this hook's parameters; None = train.lr

    def setup(self, ctx: HookContext) -> None:
        self.ctx = ctx

    def parameters(self) -> list[nn.Parameter]:
        return []

    def loss_terms(self, batch: Batch, outputs: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def after_step(self, info: StepInfo) -> Mapping[str, float]:
        return {}

    def after_eval(self, step: int, accuracy: Mapping[str, float]) -> None:
        """Called after each dev evaluation with the optimiser steps done and the accuracy
        (overall under "all", and per domain)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class CrossEntropyHook(BaseHook):
    """Plain supervised fine-tuning: the `ce` term on the gold labels."""

    name = "ce"

    def loss_terms(self, batch: Batch, outputs: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        return {"ce": nn.functional.cross_entropy(outputs.logits.float(), batch.labels)}


def gather_rows(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Concatenate a tensor's rows over processes (rank order); row counts may differ."""
    import torch.distributed as dist

    world = dist.get_world_size()
    local = tensor.to(device)
    count = torch.tensor([local.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = max(int(c) for c in counts)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)]).cpu()


def gather_micro_batch(tensor: torch.Tensor, ctx: HookContext) -> torch.Tensor:
    """A micro-batch tensor's rows from every process, in the order a single process would
    have them (on CPU). The loop gives process r rows r, r + world, ... of each micro-batch,
    so a hook that draws something per position of the batch (a permutation) can draw it over
    the global batch and take its own rows: then several processes draw what one would."""
    if ctx.num_processes == 1:
        return tensor.cpu()
    positions = torch.arange(tensor.shape[0]) * ctx.num_processes + ctx.process_index
    everything = gather_rows(tensor, tensor.device)
    return everything[torch.argsort(gather_rows(positions, tensor.device))]
