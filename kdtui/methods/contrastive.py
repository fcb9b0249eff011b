"""CAP's contrastive modules (Xu et al., AAAI 2022): PrC, FiC and SnC.

Each module is a memory bank of L2-normalised sentence vectors, one row per training example
(indexed by the global example id, so every process agrees on it):

* PrC: the pre-trained model's vectors, encoded once before pruning starts;
* FiC: the fine-tuned model's vectors, encoded once;
* SnC: snapshots of the model being pruned, `views` slots per example, one per pruning stage.
  A slot is written with the example's vector each time the example passes through training in
  that stage (gathered over processes), so snapshots cost no extra forward pass; the authors
  re-encode the whole training set once per epoch instead.

For each bank and each anchor b (the current model's vector of a batch example, the only place
gradients flow), the candidates are the other in-batch vectors of the global batch
(stop-gradient), the bank's views of the batch examples, and `num_negatives` vectors drawn at
random from the bank: log p(c|b) = z_b·c/τ − log Σ_c' exp(z_b·c'/τ). The unsupervised term's
positives are views of the same example, the supervised term's are candidates with the same label.

Normalisation follows the authors' code, which their loss weights (0.1 / 10 unstructured,
0.3 / 3 structured) assume: L = −Σ_b (1/|P_b|) Σ_{p∈P_b} log p(p|b) / Σ_b |P_b|, i.e. the
per-anchor mean over positives summed over anchors, divided by the number of positive pairs.

Memory: a bank holds `rows × views × hidden` fp16 values, rows = min(training examples,
`bank_examples`); beyond the cap a seeded subset of examples has bank vectors (the others still
act as anchors and in-batch candidates). MiniLM (384 wide), 65,536 rows: 48 MiB per view, so
PrC + FiC + 4 SnC views take 288 MiB; BERT-base doubles that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdtui.data import Encoded
from kdtui.engine.evaluate import eval_forwards
from kdtui.engine.hooks import BaseHook, Batch, HookContext, StepInfo, gather_rows

BANKS = ("prc", "fic", "snc")


def contrastive_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE with the authors' normalisation (module docstring).

    anchors (B, H) and candidates (M, H), both L2-normalised; positives (B, M) bool; exclude
    (B, M) bool marks candidates that are not candidates of that anchor (its own in-batch
    vector). -> scalar; 0 when no anchor has a positive."""
    total, count = contrastive_parts(anchors, candidates, positives, exclude, temperature)
    return -total / count.clamp_min(1)


def contrastive_parts(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_b mean_{p∈P_b} log p(p|b), Σ_b |P_b|): the loss is −first / second. Kept apart so
    that several processes can share the denominator."""
    positives = positives & ~exclude
    count = positives.sum(dim=1)
    has = count > 0  # anchors without a positive take no part (and cannot make NaNs)
    if not bool(has.any()):
        return anchors.sum() * 0.0, count.sum().float()
    anchors, positives, exclude, count = anchors[has], positives[has], exclude[has], count[has]
    # Outside autocast: at τ = 0.1 a bf16 product (3 significant digits) would move each
    # logit by up to ~0.04, more than the gaps between near-duplicate candidates.
    with torch.autocast(anchors.device.type, enabled=False):
        logits = anchors.float() @ candidates.float().T / temperature
    logits = logits.masked_fill(exclude, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return (per_anchor / count).sum(), count.sum().float()


class MemoryBank:
    """L2-normalised fp16 vectors: `views` slots for each of a fixed set of examples."""

    def __init__(self, ids: torch.Tensor, labels_by_id: torch.Tensor, dim: int, views: int) -> None:
        self.ids = ids.long()  # row -> example id
        self.row_of = torch.full((len(labels_by_id),), -1, dtype=torch.long)
        self.row_of[self.ids] = torch.arange(len(self.ids))
        self.labels = labels_by_id[self.ids]  # row -> label
        self.vectors = torch.zeros(len(self.ids), views, dim, dtype=torch.float16)
        self.filled = torch.zeros(len(self.ids), views, dtype=torch.bool)

    @property
    def views(self) -> int:
        return self.vectors.shape[1]

    def write(self, ids: torch.Tensor, vectors: torch.Tensor, view: int) -> None:
        rows = self.row_of[ids.cpu()]
        keep = rows >= 0
        self.vectors[rows[keep], view] = vectors.detach().cpu()[keep].to(torch.float16)
        self.filled[rows[keep], view] = True

    def views_of(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every filled view of the examples `ids`: (vectors, example ids, labels)."""
        rows = self.row_of[ids.cpu()]
        rows = rows[rows >= 0]
        row_index, view_index = torch.nonzero(self.filled[rows], as_tuple=True)
        chosen = rows[row_index]
        return self.vectors[chosen, view_index], self.ids[chosen], self.labels[chosen]

    def sample(
        self, count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`count` distinct filled entries drawn at random (all of them if there are fewer)."""
        rows, views = torch.nonzero(self.filled, as_tuple=True)
        if len(rows) > count:
            pick = torch.randperm(len(rows), generator=generator)[:count]
            rows, views = rows[pick], views[pick]
        return self.vectors[rows, views], self.ids[rows], self.labels[rows]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors, "filled": self.filled}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.vectors.copy_(state["vectors"])
        self.filled.copy_(state["filled"])


def bank_rows(ids: Sequence[int], limit: int, seed: int) -> torch.Tensor:
    """The example ids that get bank vectors: all of them, or a seeded subset of `limit`."""
    ids_t = torch.tensor(list(ids), dtype=torch.long)
    if len(ids_t) <= limit:
        return ids_t
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ids_t), generator=generator)[:limit]
    return ids_t[pick.sort().values]


def sentence_vectors(
    model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str
) -> torch.Tensor:
    """L2-normalised sentence vectors (B, H) from the last layer's states (B, T, H):
    "cls" = the pooler output (tanh(W·h_CLS + b)), or h_CLS for models without a pooler;
    "mean" = the mean over real tokens."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
    else:
        pooler = getattr(model.base_model, "pooler", None)
        pooled = pooler(hidden) if pooler is not None else hidden[:, 0]
    return F.normalize(pooled.float(), dim=-1)


@torch.no_grad()
def encode_examples(
    model: nn.Module,
    encoded: Encoded,
    *,
    pooling: str,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    process_index: int = 0,
    num_processes: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), sentence vectors (N, H)) of every example of `encoded`, in its order,
    with the model in eval mode. Each process encodes every num_processes-th example; the
    results are gathered so every process gets all of them."""
    positions = list(range(process_index, len(encoded), num_processes))
    logits, vectors = [], []
    for inputs, out in eval_forwards(
        model,
        encoded,
        positions,
        batch_size=batch_size,
        pad_id=pad_id,
        device=device,
        output_hidden_states=True,
    ):
        logits.append(out.logits.float().cpu())
        vectors.append(
            sentence_vectors(model, out.hidden_states[-1], inputs["attention_mask"], pooling).cpu()
        )
    local_logits = torch.cat(logits) if logits else torch.zeros(0, 0)
    local_vectors = torch.cat(vectors) if vectors else torch.zeros(0, 0)
    if num_processes == 1:
        return local_logits, local_vectors
    all_positions = gather_rows(torch.tensor(positions, dtype=torch.long), device)
    all_logits = gather_rows(local_logits, device)
    all_vectors = gather_rows(local_vectors, device)
    order = torch.argsort(all_positions)
    return all_logits[order], all_vectors[order]


class CapHook(BaseHook):
    """The contrastive terms `{bank}_unsup` and `{bank}_sup` for each active bank."""

    name = "cap"
    needs_hidden_states = True

    def __init__(
        self,
        *,
        banks: dict[str, MemoryBank],
        snapshots: MemoryBank | None,
        stage: Callable[[], int],
        temperature: float = 0.1,
        num_negatives: int = 4096,
        pooling: str = "cls",
        seed: int = 0,
    ) -> None:
        self.banks = dict(banks)  # fixed banks: "prc", "fic"
        self.snapshots = snapshots  # "snc", filled during training
        self.stage = stage
        self.temperature = temperature
        self.num_negatives = num_negatives
        self.pooling = pooling
        self.seed = seed
        self.step = 0
        self.calls = 0  # loss_terms calls within the current step (micro-batches)

    def setup(self, ctx: HookContext) -> None:
        self.ctx = ctx

    def loss_terms(self, batch: Batch, outputs: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        anchors = sentence_vectors(
            model, outputs.hidden_states[-1], batch.attention_mask, self.pooling
        )
        ids, labels = batch.example_ids.cpu(), batch.labels.cpu()
        in_batch, batch_ids, batch_labels = anchors.detach().cpu(), ids, labels
        if self.ctx.num_processes > 1:
            device = anchors.device
            in_batch = gather_rows(in_batch, device)
            batch_ids = gather_rows(ids, device)
            batch_labels = gather_rows(labels, device)
        # Drawn from (seed, step, micro-batch): every process draws the same negatives, and a
        # resumed run draws what the uninterrupted one did, with no generator state to keep.
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.step) * 1_009 + self.calls
        )
        self.calls += 1
        banks = dict(self.banks)
        if self.snapshots is not None:
            banks["snc"] = self.snapshots
        terms: dict[str, torch.Tensor] = {}
        for name, bank in banks.items():
            views, view_ids, view_labels = bank.views_of(batch_ids)
            drawn, drawn_ids, drawn_labels = bank.sample(self.num_negatives, generator)
            candidates = torch.cat([in_batch, views.float(), drawn.float()]).to(anchors.device)
            cand_ids = torch.cat([batch_ids, view_ids, drawn_ids])
            cand_labels = torch.cat([batch_labels, view_labels, drawn_labels])
            exclude = torch.zeros(len(ids), len(cand_ids), dtype=torch.bool)
            exclude[:, : len(batch_ids)] = ids[:, None] == batch_ids[None, :]
            same_example = ids[:, None] == cand_ids[None, :]
            same_label = labels[:, None] == cand_labels[None, :]
            device = anchors.device
            for kind, positives in (("unsup", same_example), ("sup", same_label)):
                total, count = contrastive_parts(
                    anchors, candidates, positives.to(device), exclude.to(device), self.temperature
                )
                terms[f"{name}_{kind}"] = self._normalise(total, count, len(ids), len(batch_ids))
        if self.snapshots is not None:
            # After the loss: this step's vector is a snapshot for later steps, not a positive now.
            self.snapshots.write(batch_ids, in_batch, self.stage() % self.snapshots.views)
        return terms

    def _normalise(
        self, total: torch.Tensor, count: torch.Tensor, local: int, everyone: int
    ) -> torch.Tensor:
        """−total / count, with count summed over processes: the loop scales each process's
        term by its share of the batch (local / everyone) and sums the gradients, so undoing the
        share here makes the result the single-process loss of the whole batch."""
        if self.ctx.num_processes == 1:
            return -total / count.clamp_min(1)
        import torch.distributed as dist

        count = count.detach().clone()
        dist.all_reduce(count)
        return -total / count.clamp_min(1) * (everyone / local)

    def after_step(self, info: StepInfo) -> Mapping[str, float]:
        self.step = info.step
        self.calls = 0
        return {}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step}
        if self.snapshots is not None:
            state["snc"] = self.snapshots.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.step = int(state["step"])
        if self.snapshots is not None and "snc" in state:
            self.snapshots.load_state_dict(state["snc"])
