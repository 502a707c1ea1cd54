"""The frozen base weight as a dense fp32 matrix, for the methods built from it (LoRA-XS's SVD factors, DoRA's
magnitude and weight norm).

A 4-bit ``Linear4bit`` is dequantized with bitsandbytes' own ``dequantize_4bit`` (the same NF4 values its forward
multiplies by, and what PEFT's DoRA reads); a plain linear's weight is cast to fp32.  Weights that cannot be read
this way (8-bit, or a 4-bit weight repacked for bitsandbytes' AVX512-BF16 CPU kernel) are named before any work by
:func:`why_unreadable`.
"""

from __future__ import annotations

import torch
from torch import nn


def why_unreadable(base: nn.Module) -> str | None:
    """Why :func:`dense_weight` cannot read ``base``'s weight (None when it can)."""
    w = getattr(base, "weight", None)
    if w is None:
        return f"{type(base).__name__} has no weight"
    quant_state = getattr(w, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "packing_format_for_cpu", False):
        return ("its 4-bit weight was repacked for bitsandbytes' AVX512-BF16 CPU kernel (bf16-rounded scales); "
                "load the base with cpu_packed_4bit=false")
    if quant_state is None and w.dtype in (torch.int8, torch.uint8):
        return f"{type(base).__name__} holds {w.dtype} weights (8-bit bases are not supported)"
    return None


@torch.no_grad()
def dense_weight(base: nn.Module) -> torch.Tensor:
    """``base.weight`` as an fp32 (out × in) tensor on its device (4-bit NF4/FP4 dequantized)."""
    why = why_unreadable(base)
    if why:
        raise ValueError(f"cannot read the base weight of {type(base).__name__}: {why}")
    w = base.weight
    quant_state = getattr(w, "quant_state", None)
    if quant_state is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(w.data, quant_state).float()
    return w.detach().float()
