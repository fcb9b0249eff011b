"""Knowledge distillation from a frozen teacher's logits (Hinton et al.), as CAP uses it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdtui.engine.hooks import BaseHook, Batch, HookContext
from kdtui.methods.losses import kd_kl


class KdHook(BaseHook):
    """The `kd` term: T² · KL(p_teacher ‖ p_student) at temperature T.

    With `logits_by_id` (the teacher's eval-mode logits of every training example, indexed by
    example id) the teacher never runs during training: in eval mode its logits do not change,
    so the cache gives the same term at a fraction of the cost."""

    name = "kd"

    def __init__(
        self,
        *,
        temperature: float,
        teacher: nn.Module | None = None,
        logits_by_id: torch.Tensor | None = None,
    ) -> None:
        if teacher is None and logits_by_id is None:
            raise ValueError("KdHook needs a teacher or its cached logits")
        self.temperature = temperature
        self.teacher = teacher
        self.logits_by_id = logits_by_id

    def setup(self, ctx: HookContext) -> None:
        self.ctx = ctx
        if self.logits_by_id is None and self.teacher is not None:
            self.teacher.to(ctx.device).eval()

    def loss_terms(self, batch: Batch, outputs: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.logits_by_id is not None:
            teacher_logits = self.logits_by_id[batch.example_ids.cpu()].to(outputs.logits.device)
        else:
            assert self.teacher is not None
            with torch.no_grad():
                teacher_logits = self.teacher(**batch.model_inputs()).logits
        return {"kd": kd_kl(outputs.logits, teacher_logits, self.temperature)}
