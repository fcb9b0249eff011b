"""Pruning hooks: unstructured (weights) and structured (attention heads, FFN neurons).

Unstructured: every Linear of the encoder (query, key, value, attention output, intermediate,
output) gets a binary mask; the Linear's forward uses `weight * mask`, so training sees exactly
the pruned model. Criteria:

* magnitude: keep the largest |W|; pruned weights are also zeroed in place, so they stay pruned;
* movement: learned scores S (one per weight), keep the top-k; the mask's gradient passes
  straight through to S (dL/dS = W * dL/dW'), so S learns how much each weight moves away from 0;
* soft movement: the same scores with an L1 term on σ(S) (term `l1`: the mean over matrices of
  the mean σ(S), times the schedule's ramp, so λ grows from 0 to prune.l1_weight as the authors
  ramp it). Two masks: "calibrated" (default) keeps the top-k of S every step, so the sparsity
  reached is exactly the scheduled one; "threshold" (the authors') keeps a weight while
  σ(S) > τ(t), τ rising on the cubic schedule from 0 to `final_threshold`, so nothing is cut until
  a score has really fallen and the sparsity reached follows from λ and the run's length (the
  requested sparsity then only caps each matrix).

Score initialisation: "constant" (S = 0, the authors', who prune the *pre-trained* model with
2 epochs before any cut) or "magnitude" (S = |W| / mean|W| per matrix). From an already
fine-tuned model the average W·∂L/∂W is about zero, so after a short warm-up zero-initialised
scores rank weights no better than a random mask and the model collapses (measured); seeded from
magnitude, the first cuts are magnitude's and movement then reorders them.

`scope` "matrix" gives every Linear the scheduled sparsity; "global" ranks all of them together
(per-matrix sparsity then varies). The schedule is cubic (Zhu & Gupta; Sanh et al.): nothing is
pruned during warm-up, then sparsity s_f · (1 − (1 − progress)³) — the kept fraction
thr_f + (thr_i − thr_f)(1 − progress)³ with thr_i = 1 — then s_f for the cool-down. Masks are
recomputed after every optimiser step from the post-step weights or scores.

Diagnostics (step metrics `prune/*`, every `DIAG_EVERY`-th of the run and at the first cut):
overlap of the kept weights with magnitude's choice of as many weights per matrix, against what
a random mask would give; the scores' spread; the median |∂L/∂S| as Adam sees it (after
clipping), against Adam's eps (below it the scores no longer move); the share of mask entries
that flipped at the last refresh. A warning event names the cause when scores carry no signal at
the first cut.

Structured: heads and FFN neurons get masks multiplied into the attention context (before the
attention output projection) and into the intermediate activations. Importance of a unit is
Σ|∂L/∂mask| accumulated over the training steps since the previous round (the training loss,
no extra passes), normalised per layer (L2); rounds of `step_fraction` sparsity each, evenly
spaced between warm-up and cool-down, re-training in between. The same fraction of heads and of
FFN neurons goes (the authors' rule); neurons then top up the count so the sparsity of the
encoder's parameters matches the target. At least one head and one neuron stay in every layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdtui.engine.hooks import BaseHook, Batch, HookContext, StepInfo
from kdtui.errors import KdtuiError
from kdtui.events import LayerSparsity, Message
from kdtui.layout import FFN_GATE, FFN_MATRICES, encoder_layers, encoder_linears, layout_of

CRITERIA = ("magnitude", "movement", "soft-movement")
SCORE_INITS = ("magnitude", "constant")
SOFT_MASKS = ("calibrated", "threshold")
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which the loop uses
# Diagnostics are computed on this many evenly spaced steps of a run (plus the first cut).
DIAG_POINTS = 100
# Kept-set agreement with magnitude, rescaled so a random mask gives 0 and magnitude's own 1;
# below this the scores carry no signal (warning).
NO_SIGNAL_AGREEMENT = 0.05
# Points of the cubic schedule (share of the pruning span) at which per-layer sparsity is logged.
LOG_POINTS = (0.25, 0.5, 0.75)
# A model below this share of its teacher's dev accuracy while the schedule is still cutting
# gets a warning. In the 97% budget pilot every 1-epoch run (ending at 86-87% of the teacher's
# dev) crossed it, but so did 3 of the 4 3-epoch runs, which ended at 91-92%: a drop while
# cutting often partly comes back in the cool-down, so the warning says so rather than calling
# the run lost.
DROP_WARNING = 0.85


def cubic_ramp(step: int, *, total: int, warmup: int, cooldown: int) -> float:
    """The cubic schedule's share of its final value after `step` optimiser steps: 0 during
    warm-up, 1 − (1 − progress)³ while pruning, 1 in the cool-down. Sparsity (calibrated),
    τ (threshold mask, from τ_i = 0) and soft movement's λ all follow it."""
    end = total - cooldown
    if step >= end:
        return 1.0
    if step <= warmup:
        return 0.0
    progress = (step - warmup) / (end - warmup)
    return 1.0 - (1.0 - progress) ** 3


def cubic_sparsity(step: int, *, total: int, warmup: int, cooldown: int, final: float) -> float:
    """Target sparsity after `step` optimiser steps (the masks used by step `step + 1`)."""
    return final * cubic_ramp(step, total=total, warmup=warmup, cooldown=cooldown)


def topk_masks(scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Boolean masks keeping exactly the `keep` highest scores over all tensors together.

    Ties at the threshold are broken by position, so the count is exact even when many scores
    are equal (scores start at 0)."""
    flat = torch.cat([s.detach().flatten() for s in scores])
    n = flat.numel()
    if keep >= n:
        keep_flat = torch.ones(n, dtype=torch.bool, device=flat.device)
    elif keep <= 0:
        keep_flat = torch.zeros(n, dtype=torch.bool, device=flat.device)
    else:
        threshold = flat.float().kthvalue(n - keep).values  # the largest pruned score
        keep_flat = flat > threshold
        missing = keep - int(keep_flat.sum())
        if missing > 0:
            tied = torch.nonzero(flat == threshold).flatten()[:missing]
            keep_flat[tied] = True
    masks, offset = [], 0
    for s in scores:
        masks.append(keep_flat[offset : offset + s.numel()].view_as(s))
        offset += s.numel()
    return masks


def _keep_count(n: int, sparsity: float) -> int:
    return n - round(sparsity * n)


def zero_pruned(weight: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero WEIGHT where KEEP is False, in place. torch.where, not weight * keep: a product
    leaves -0.0 for negative weights, which the bit-exact sparse format must store as values."""
    weight.copy_(torch.where(keep, weight, torch.zeros_like(weight)))


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> None:
    """One-shot magnitude pruning, no training: zero the SPARSITY share of each encoder
    matrix's weights with the smallest magnitude (the count and ties as a magnitude run's
    per-matrix masks)."""
    for linear in encoder_linears(model).values():
        weight = linear.weight
        zero_pruned(weight, topk_masks([weight.abs()], _keep_count(weight.numel(), sparsity))[0])


class UnstructuredPruner(BaseHook):
    """Masks every encoder Linear's weights on the cubic schedule (see the module docstring)."""

    name = "pruner"

    def __init__(
        self,
        *,
        criterion: str,
        target_sparsity: float,
        total_steps: int,
        warmup_steps: int,
        cooldown_steps: int,
        scope: str = "matrix",
        score_lr: float = 1e-2,
        score_init: str = "magnitude",
        soft_mask: str = "calibrated",
        final_threshold: float = 0.1,
        stages: int = 1,
    ) -> None:
        if criterion not in CRITERIA:
            raise KdtuiError(f"unknown pruning criterion '{criterion}'; use {', '.join(CRITERIA)}")
        if score_init not in SCORE_INITS:
            raise KdtuiError(f"unknown score init '{score_init}'; use {', '.join(SCORE_INITS)}")
        if soft_mask not in SOFT_MASKS:
            raise KdtuiError(f"unknown soft mask '{soft_mask}'; use {', '.join(SOFT_MASKS)}")
        self.criterion = criterion
        self.target = target_sparsity
        self.total = total_steps
        self.warmup = warmup_steps
        self.cooldown = cooldown_steps
        self.scope = scope
        self.stages = max(1, stages)
        self.lr = score_lr if criterion != "magnitude" else None
        self.score_init = score_init
        # Only soft movement has a threshold mode; movement is always a top-k.
        self.thresholded = criterion == "soft-movement" and soft_mask == "threshold"
        self.final_threshold = final_threshold
        self.step = 0
        self.linears: dict[str, nn.Linear] = {}
        self.masks: dict[str, torch.Tensor] = {}  # float, the weight's dtype: 1 keep, 0 pruned
        self.scores: dict[str, nn.Parameter] = {}
        self._logged: set[int] = set()
        self.flipped = 0.0  # share of mask entries changed by the last refresh
        self.first_cut: int | None = None  # step of the first refresh that pruned anything
        self.diag_every = max(1, total_steps // DIAG_POINTS)

    # -- setup ---------------------------------------------------------------------------------

    def setup(self, ctx: HookContext) -> None:
        self.ctx = ctx
        self.linears = encoder_linears(ctx.model)
        for name, linear in self.linears.items():
            self.masks[name] = torch.ones_like(linear.weight, requires_grad=False)
            if self.criterion != "magnitude":
                self.scores[name] = nn.Parameter(self._initial_scores(linear.weight))
            _route_forward(linear, self._weight_fn(name))
        end = self.total - self.cooldown
        span = max(1, end - self.warmup)
        self.log_steps = {min(end, self.warmup + 1), end}
        self.log_steps |= {self.warmup + max(1, round(q * span)) for q in LOG_POINTS}
        self._refresh()

    @torch.no_grad()
    def _initial_scores(self, weight: torch.Tensor) -> torch.Tensor:
        if self.score_init == "constant":
            return torch.zeros_like(weight)  # the authors' `mask_init constant, mask_scale 0`
        magnitude = weight.detach().abs().float()
        return (magnitude / magnitude.mean().clamp_min(1e-12)).to(weight.dtype)

    def _weight_fn(self, name: str) -> Callable[[], torch.Tensor]:
        linear = self.linears[name]

        def effective() -> torch.Tensor:
            mask = self.masks[name]
            if self.criterion == "magnitude":
                return linear.weight * mask
            scores = self.scores[name]
            # Straight-through: the value is the hard mask, the gradient reaches the scores.
            return linear.weight * (mask + scores - scores.detach())

        return effective

    def parameters(self) -> list[nn.Parameter]:
        return list(self.scores.values())

    # -- training ------------------------------------------------------------------------------

    def loss_terms(self, batch: Batch, outputs: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.criterion != "soft-movement":
            return {}
        means = [torch.sigmoid(s).mean() for s in self.scores.values()]
        # λ ramps with the schedule (λ_f · τ(t)/τ_f in the authors' code): no pull on the scores
        # before they have had a chance to separate.
        return {"l1": self.ramp() * torch.stack(means).mean()}

    def after_step(self, info: StepInfo) -> Mapping[str, float]:
        self.step = info.step
        diagnose = info.step % self.diag_every == 0
        if self.scores and diagnose:
            grad_median = self._grad_median()  # before _refresh: the gradient of this step
        self._refresh()
        if info.step in self.log_steps and info.step not in self._logged:
            self._logged.add(info.step)
            self.ctx.log(LayerSparsity(step=info.step, layers=self.layer_sparsity()))
        metrics = {"sparsity/actual": self.actual_sparsity()}
        if not self.thresholded:
            metrics["sparsity/target"] = self.target_now()
        else:
            metrics["prune/threshold"] = self.final_threshold * self.ramp()
        if self.criterion == "soft-movement":
            metrics["prune/l1_ramp"] = self.ramp()
        first_cut = self.first_cut is None and metrics["sparsity/actual"] > 0
        if first_cut:
            self.first_cut = info.step
        if self.scores and (diagnose or first_cut):
            metrics.update(self.diagnostics())
            if diagnose:
                metrics["prune/grad_median"] = grad_median
            if first_cut:
                self._warn_if_no_signal(metrics)
        return metrics

    def ramp(self) -> float:
        return cubic_ramp(self.step, total=self.total, warmup=self.warmup, cooldown=self.cooldown)

    def final_step(self) -> int:
        """The first step whose masks have the final sparsity (threshold masks: the final τ)."""
        return self.total - self.cooldown

    def target_now(self) -> float:
        return self.target * self.ramp()

    def stage(self) -> int:
        """Index of the pruning stage the next step belongs to: the schedule up to the end of
        pruning cut into `stages` equal parts (SnC keeps one snapshot view per stage)."""
        end = max(1, self.total - self.cooldown)
        return min(self.stages - 1, self.stages * self.step // end)

    @torch.no_grad()
    def _refresh(self) -> None:
        names = list(self.linears)
        if self.thresholded:
            masks = self._threshold_masks(names)
        else:
            masks = self._topk_masks(names, self.target_now())
        changed = total = 0
        for name, mask in zip(names, masks, strict=True):
            new = mask.to(self.masks[name].dtype)
            changed += int((new != self.masks[name]).sum())
            total += new.numel()
            self.masks[name] = new
            if self.criterion == "magnitude":
                # Zeroed weights get no gradient through the mask, so they stay pruned.
                zero_pruned(self.linears[name].weight, mask)
        self.flipped = changed / max(1, total)

    def _importance(self, names: list[str]) -> list[torch.Tensor]:
        if self.criterion == "magnitude":
            return [self.linears[n].weight.abs() for n in names]
        return [self.scores[n] for n in names]

    def _topk_masks(self, names: list[str], sparsity: float) -> list[torch.Tensor]:
        importance = self._importance(names)
        if sparsity == 0:
            return [torch.ones_like(i, dtype=torch.bool) for i in importance]
        if self.scope == "global":
            total = sum(i.numel() for i in importance)
            return topk_masks(importance, _keep_count(total, sparsity))
        return [topk_masks([i], _keep_count(i.numel(), sparsity))[0] for i in importance]

    def _threshold_masks(self, names: list[str]) -> list[torch.Tensor]:
        """Keep σ(S) > τ(t); a matrix never loses more than the requested sparsity (the authors
        keep at least 0.5% of each matrix the same way)."""
        tau = self.final_threshold * self.ramp()
        masks = []
        for name in names:
            scores = self.scores[name]
            mask = torch.sigmoid(scores) > tau
            floor = _keep_count(scores.numel(), self.target)
            if int(mask.sum()) < floor:
                mask = topk_masks([scores], floor)[0]
            masks.append(mask)
        return masks

    # -- diagnostics ---------------------------------------------------------------------------

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Whether the scores carry a signal (see the module docstring): overlap of the kept
        weights with magnitude's choice of as many weights per matrix, and a random mask's."""
        kept = both = expected = 0.0
        spreads = []
        for name, linear in self.linears.items():
            mask = self.masks[name].bool()
            k = int(mask.sum())
            n = mask.numel()
            by_magnitude = topk_masks([linear.weight.abs()], k)[0]
            kept += k
            both += int((mask & by_magnitude).sum())
            expected += k * k / n  # a random k-subset shares k·k/n with any other k-subset
            spreads.append(float(self.scores[name].float().std()))
        return {
            "prune/overlap_magnitude": both / kept if kept else 1.0,
            "prune/overlap_random": expected / kept if kept else 1.0,
            "prune/score_std": sum(spreads) / len(spreads),
            "prune/flipped": self.flipped,
        }

    @torch.no_grad()
    def _grad_median(self) -> float:
        """Median |∂L/∂S| over every 97th score (enough for a median, and cheap)."""
        grads = [
            s.grad.detach().flatten()[::97] for s in self.scores.values() if s.grad is not None
        ]
        if not grads:
            return 0.0
        return float(torch.cat(grads).abs().float().median())

    def _warn_if_no_signal(self, metrics: Mapping[str, float]) -> None:
        overlap = metrics["prune/overlap_magnitude"]
        random = metrics["prune/overlap_random"]
        agreement = (overlap - random) / (1 - random) if random < 1 else 1.0
        if agreement >= NO_SIGNAL_AGREEMENT:
            return
        self.ctx.log(
            Message(
                level="warning",
                text=f"pruning started at step {self.step} with scores that carry no signal: the "
                f"kept weights overlap magnitude's choice {overlap:.3f}, a random mask "
                f"{random:.3f} (score spread {metrics['prune/score_std']:.2g}); the model is "
                f"likely to collapse. Seed the scores from the weights (prune.score_init = "
                f"magnitude) or give them a longer warm-up (prune.warmup_ratio, more steps)",
            )
        )

    def diagnosis(self) -> str:
        """A likely cause and a setting to change, for the engine's collapse warning."""
        if self.criterion == "magnitude":
            return (
                f"at {self.actual_sparsity():.0%} sparsity the remaining weights cannot hold the "
                "task at this budget: prune less (--sparsity) or train longer (--epochs)"
            )
        if self.scores:
            d = self.diagnostics()
            return (
                f"at {self.actual_sparsity():.0%} sparsity, kept weights overlap magnitude's "
                f"choice {d['prune/overlap_magnitude']:.3f} (a random mask: "
                f"{d['prune/overlap_random']:.3f}); if that is close to random, the scores carried "
                "no signal: prune.score_init = magnitude, a longer prune.warmup_ratio or more steps"
            )
        return ""

    # -- reporting -----------------------------------------------------------------------------

    @torch.no_grad()
    def _zero_counts(self) -> dict[str, tuple[int, int]]:
        counts = {}
        for name, linear in self.linears.items():
            effective = linear.weight * self.masks[name]
            counts[name] = (
                effective.numel() - int(torch.count_nonzero(effective)),
                linear.weight.numel(),
            )
        return counts

    def actual_sparsity(self) -> float:
        counts = self._zero_counts().values()
        return sum(z for z, _ in counts) / sum(n for _, n in counts)

    def layer_sparsity(self) -> dict[str, float]:
        return {name: z / n for name, (z, n) in self._zero_counts().items()}

    # -- resume --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "masks": {n: m.bool().cpu() for n, m in self.masks.items()},
            "scores": {n: s.detach().cpu() for n, s in self.scores.items()},
            "logged": sorted(self._logged),
            "flipped": self.flipped,
            "first_cut": self.first_cut,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.step = int(state["step"])
        for name, mask in state["masks"].items():
            self.masks[name] = mask.to(self.masks[name].device, self.masks[name].dtype)
        for name, scores in state["scores"].items():
            self.scores[name].copy_(scores)
        self._logged = set(state.get("logged", []))
        self.flipped = float(state.get("flipped", 0.0))
        self.first_cut = state.get("first_cut")

    # -- the end -------------------------------------------------------------------------------

    @torch.no_grad()
    def finalize(self) -> float:
        """Write the masks into the weights (pruned = +0.0) and give every Linear its plain
        forward back; returns the sparsity reached."""
        for name, linear in self.linears.items():
            keep = self.masks[name].bool()
            zero_pruned(linear.weight, keep)
            _restore_forward(linear)
        self.masks = {n: torch.ones_like(m) for n, m in self.masks.items()}
        self.scores = {}
        self.criterion = "magnitude"  # plain weights from here on
        return self.actual_sparsity()


def _route_forward(linear: nn.Linear, weight: Callable[[], torch.Tensor]) -> None:
    """Make the Linear compute with `weight()` (its masked weight). Parameters and state_dict
    keys stay those of a plain Linear, so checkpoints hold the raw weights."""
    linear.forward = lambda x: F.linear(x, weight(), linear.bias)  # type: ignore[method-assign]


def _restore_forward(linear: nn.Linear) -> None:
    if "forward" in vars(linear):
        del linear.forward


# ---------------------------------------------------------------------------------------------
# Structured: heads and FFN neurons


class StructuredPruner(BaseHook):
    """Removes attention heads and FFN neurons by gradient importance, in rounds."""

    name = "pruner"

    def __init__(
        self,
        *,
        target_sparsity: float,
        total_steps: int,
        warmup_steps: int,
        cooldown_steps: int,
        step_fraction: float = 0.1,
    ) -> None:
        self.target = target_sparsity
        self.total = total_steps
        self.warmup = warmup_steps
        self.cooldown = cooldown_steps
        self.step_fraction = step_fraction
        self.step = 0
        self.rounds_done = 0
        self._handles: list[Any] = []
        self.schedule = self._rounds()

    def final_step(self) -> int:
        """The step of the last pruning round (0 without rounds)."""
        return self.schedule[-1][0] if self.schedule else 0

    def setup(self, ctx: HookContext) -> None:
        self.ctx = ctx
        self.layers = encoder_layers(ctx.model)
        self.layout = layout_of(ctx.model)
        shape = structure_shape(ctx.model)
        self.heads, self.head_size = shape["heads"], shape["head_size"]
        self.neurons, self.hidden = shape["intermediate"], shape["hidden"]
        n_layers = len(self.layers)
        device = ctx.device
        self.head_mask = torch.ones(n_layers, self.heads, device=device, requires_grad=True)
        self.ffn_mask = torch.ones(n_layers, self.neurons, device=device, requires_grad=True)
        self.head_importance = torch.zeros(n_layers, self.heads, device=device)
        self.ffn_importance = torch.zeros(n_layers, self.neurons, device=device)
        costs = unit_costs(ctx.model)
        self.encoder_params = costs["encoder"]
        self.head_cost, self.neuron_cost = costs["head"], costs["neuron"]
        check_structured_target(ctx.model, self.target)
        for i, layer in enumerate(self.layers):
            # The heads' context and the activated neurons are the inputs of these two.
            attn_out = layer.get_submodule(self.layout.attn_out)
            ffn_out = layer.get_submodule(self.layout.ffn_out)
            self._handles.append(attn_out.register_forward_pre_hook(self._mask_heads(i)))
            self._handles.append(ffn_out.register_forward_pre_hook(self._mask_neurons(i)))

    def _rounds(self) -> list[tuple[int, float]]:
        """(step, sparsity) of each pruning round: evenly spaced from the end of warm-up, the
        last one leaving a share of the pruning span plus the cool-down for re-training."""
        if self.target == 0:
            return []
        count = max(1, math.ceil(self.target / self.step_fraction - 1e-9))
        end = self.total - self.cooldown
        span = max(0, end - self.warmup)
        rounds = []
        for r in range(count):
            step = max(1, self.warmup + (r * span) // count)
            rounds.append((step, min(self.target, (r + 1) * self.step_fraction)))
        return rounds

    def _mask_heads(self, layer: int) -> Callable[..., Any]:
        def pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            (context,) = args
            shape = context.shape
            heads = context.view(*shape[:-1], self.heads, self.head_size)
            return ((heads * self.head_mask[layer][:, None]).view(shape),)

        return pre_hook

    def _mask_neurons(self, layer: int) -> Callable[..., Any]:
        def pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            (activations,) = args
            return (activations * self.ffn_mask[layer],)

        return pre_hook

    def parameters(self) -> list[nn.Parameter]:
        return []  # the masks are not trained; only their gradients are read

    def after_step(self, info: StepInfo) -> Mapping[str, float]:
        self.step = info.step
        with torch.no_grad():
            for mask, importance in (
                (self.head_mask, self.head_importance),
                (self.ffn_mask, self.ffn_importance),
            ):
                if mask.grad is not None:
                    if self.ctx.num_processes > 1:
                        import torch.distributed as dist

                        # The whole batch's gradient, as one process would see it.
                        dist.all_reduce(mask.grad)
                    importance += mask.grad.abs()
                    mask.grad = None
        while self.rounds_done < len(self.schedule) and self.schedule[self.rounds_done][0] <= (
            info.step
        ):
            self._prune_round(self.schedule[self.rounds_done][1])
            self.rounds_done += 1
            self.ctx.log(LayerSparsity(step=info.step, layers=self.layer_sparsity()))
        return {"sparsity/target": self.target_now(), "sparsity/actual": self.actual_sparsity()}

    def target_now(self) -> float:
        return self.schedule[self.rounds_done - 1][1] if self.rounds_done else 0.0

    def stage(self) -> int:
        return self.rounds_done

    @torch.no_grad()
    def _prune_round(self, sparsity: float) -> None:
        n_layers = len(self.layers)
        prunable = n_layers * (self.heads * self.head_cost + self.neurons * self.neuron_cost)
        fraction = min(1.0, sparsity * self.encoder_params / prunable)
        removed_heads = int((self.head_mask == 0).sum())
        want_heads = min(round(fraction * n_layers * self.heads), n_layers * (self.heads - 1))
        want_heads = max(want_heads, removed_heads)
        self._remove(self.head_mask, self.head_importance, want_heads - removed_heads)
        removed_heads = int((self.head_mask == 0).sum())
        removed_neurons = int((self.ffn_mask == 0).sum())
        left = sparsity * self.encoder_params - removed_heads * self.head_cost
        want_neurons = min(
            max(0, math.ceil(left / self.neuron_cost - 1e-9)), n_layers * (self.neurons - 1)
        )
        want_neurons = max(want_neurons, removed_neurons)
        self._remove(self.ffn_mask, self.ffn_importance, want_neurons - removed_neurons)
        self.head_importance.zero_()
        self.ffn_importance.zero_()

    @staticmethod
    def _remove(mask: torch.Tensor, importance: torch.Tensor, count: int) -> None:
        """Zero `count` more entries of `mask`, lowest layer-normalised importance first, never
        the last one of a layer."""
        if count <= 0:
            return
        kept = mask.detach() > 0
        scores = torch.where(kept, importance, torch.zeros_like(importance))
        scores = scores / (scores.norm(dim=1, keepdim=True) + 1e-20)
        order = sorted(
            ((float(scores[layer, unit]), layer, unit) for layer, unit in kept.nonzero().tolist())
        )
        left = kept.sum(dim=1).tolist()
        for _, layer, unit in order:
            if count == 0:
                break
            if left[layer] <= 1:
                continue
            mask[layer, unit] = 0.0
            left[layer] -= 1
            count -= 1

    def actual_sparsity(self) -> float:
        removed = int((self.head_mask == 0).sum()) * self.head_cost
        removed += int((self.ffn_mask == 0).sum()) * self.neuron_cost
        return removed / self.encoder_params

    def layer_sparsity(self) -> dict[str, float]:
        result = {}
        for i in range(len(self.layers)):
            heads = float((self.head_mask[i] == 0).float().mean())
            neurons = float((self.ffn_mask[i] == 0).float().mean())
            for name, path in self.layout.matrices().items():
                by_neuron = name in (*FFN_MATRICES, FFN_GATE)
                result[f"layer.{i}.{path}"] = neurons if by_neuron else heads
        return result

    def kept(self) -> tuple[list[list[int]], list[list[int]]]:
        """Kept head indices and kept neuron indices per layer."""
        heads = [torch.nonzero(row > 0).flatten().tolist() for row in self.head_mask]
        neurons = [torch.nonzero(row > 0).flatten().tolist() for row in self.ffn_mask]
        return heads, neurons

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "rounds_done": self.rounds_done,
            "head_mask": self.head_mask.detach().cpu(),
            "ffn_mask": self.ffn_mask.detach().cpu(),
            "head_importance": self.head_importance.cpu(),
            "ffn_importance": self.ffn_importance.cpu(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.step = int(state["step"])
        self.rounds_done = int(state["rounds_done"])
        self.head_mask.copy_(state["head_mask"])
        self.ffn_mask.copy_(state["ffn_mask"])
        self.head_importance.copy_(state["head_importance"])
        self.ffn_importance.copy_(state["ffn_importance"])

    def detach(self) -> None:
        """Remove the mask hooks (before the masked units are physically removed)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def structure_shape(model: nn.Module) -> dict[str, int]:
    """Heads, head size, FFN width and hidden width of a (not yet compacted) encoder. Read from
    the output projections' inputs (the heads' context, the activated neurons), which every
    layout has, fused or GLU."""
    layer = encoder_layers(model)[0]
    layout = layout_of(model)
    size = int(getattr(layer.get_submodule(layout.attention), layout.head_size))
    attn_out = layer.get_submodule(layout.attn_out)
    ffn_out = layer.get_submodule(layout.ffn_out)
    return {
        "heads": int(attn_out.in_features) // size,
        "head_size": size,
        "intermediate": int(ffn_out.in_features),
        "hidden": int(ffn_out.out_features),
    }


def unit_costs(model: nn.Module) -> dict[str, int]:
    """Encoder parameters, and the parameters one head / one FFN neuron owns: a head its rows
    of the query, key and value projections (with biases; DeBERTa's unshared relative-position
    projections too) and its columns of the attention output; a neuron its rows of the FFN
    input (two in a GLU, with biases) and its column of the output projection. For BERT:
    4·d·hidden + 3·d per head and 2·hidden + 1 per neuron."""
    shape = structure_shape(model)
    layers = encoder_layers(model)
    layout = layout_of(model)
    layer = layers[0]
    size, heads = shape["head_size"], shape["heads"]
    head = shape["hidden"] * size  # its columns of the attention output
    for path in [*layout.head_matrices(), *layout.head_rows]:
        linear = _linear_or_none(layer, path)
        if linear is not None:
            rows_per_head = linear.out_features // heads
            head += rows_per_head * (linear.in_features + (linear.bias is not None))
    neurons = shape["intermediate"]
    neuron = shape["hidden"]  # its column of the FFN output
    for path in (layout.ffn_in, layout.ffn_gate):
        if path:
            linear = layer.get_submodule(path)
            neuron += (
                linear.out_features // neurons * (linear.in_features + (linear.bias is not None))
            )
    return {
        "encoder": sum(p.numel() for layer in layers for p in layer.parameters()),
        "head": head,
        "neuron": neuron,
    }


def _linear_or_none(layer: nn.Module, path: str) -> nn.Linear | None:
    try:
        module = layer.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear) else None


def max_structured_sparsity(model: nn.Module) -> float:
    """The largest encoder sparsity heads-ffn can reach keeping one head and one FFN neuron per
    layer (LayerNorms and output biases always stay)."""
    shape = structure_shape(model)
    costs = unit_costs(model)
    per_layer = (shape["heads"] - 1) * costs["head"] + (shape["intermediate"] - 1) * costs["neuron"]
    return len(encoder_layers(model)) * per_layer / costs["encoder"]


def check_structured_target(model: nn.Module, target: float) -> None:
    """Refuse a heads-ffn target that would remove every head of a layer."""
    limit = max_structured_sparsity(model)
    if target > limit + 1e-9:
        raise KdtuiError(
            f"prune.sparsity {target:g} with structure heads-ffn would remove every head of a "
            f"layer: at least one head and one FFN neuron stay in each layer, so at most "
            f"{limit:.1%} of this encoder's parameters can go"
        )


class DropWatch(BaseHook):
    """Warns once when dev accuracy falls below `fraction` of the teacher's while the pruner is
    still cutting: the run is heading for a collapse that the cool-down rarely repairs, and the
    user can stop it and give a longer budget long before it ends."""

    name = "drop_watch"

    def __init__(
        self, pruner: Any, *, teacher_dev: float, fraction: float = DROP_WARNING, fix: str = ""
    ) -> None:
        self.pruner = pruner
        self.teacher_dev = teacher_dev
        self.fraction = fraction
        self.fix = fix  # what to change, named by the recipe (it knows the defaults)
        self.warned = False

    def after_eval(self, step: int, accuracy: Mapping[str, float]) -> None:
        dev = accuracy.get("all")
        cutting = step < self.pruner.final_step()
        if self.warned or not cutting or dev is None or dev >= self.fraction * self.teacher_dev:
            return
        self.warned = True
        self.ctx.log(
            Message(
                level="warning",
                text=f"dev accuracy {dev:.1%} at step {step}, at {self.pruner.target_now():.0%} "
                f"sparsity on the way to {self.pruner.target:.0%}, is below "
                f"{self.fraction:.0%} of the teacher's {self.teacher_dev:.1%} while the schedule "
                "is still cutting. The cool-down often wins part of such a drop back; if the "
                "run ends too far below the teacher, the budget was too short for this sparsity"
                + (f": {self.fix}" if self.fix else ""),
            )
        )

    def state_dict(self) -> dict[str, Any]:
        return {"warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warned = bool(state.get("warned", False))
