"""Which numeric precision a run trains in: bf16 autocast where the hardware computes bf16
natively, fp32 elsewhere.

Why "natively" matters: on a CPU without AVX512-BF16 or AMX, PyTorch emulates bf16 and a 512x512
bf16 matmul ran 12x slower than fp32 (measured on an AVX2-only EPYC); with AVX512-BF16 a MiniLM
training step ran 1.6x faster than fp32. The README's Speed section has the parity and speed-up
measurements behind the "auto" default.

What stays fp32 under autocast, and why: parameters, optimiser state, pruning scores and masks
(autocast only lowers the inputs of matrix products; masks are thresholds on fp32 scores), every
loss's softmax / log-softmax (`methods/losses.py` casts logits to fp32 first), and CAP's
contrastive similarities (`methods/contrastive.py`: at τ = 0.1 bf16's 3 significant digits would
move each logit by up to ~0.04).
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX)."""
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def native_bf16(device: Any) -> bool:
    """Whether DEVICE (a torch.device or its type name) computes bf16 natively."""
    import torch

    kind = getattr(device, "type", device)
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: Any) -> str:
    """ "bf16" or "fp32": what PRECISION ("auto", "bf16" or "fp32") means on DEVICE."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    return precision
