"""bitsandbytes 4-bit layers on the CPU: one code path on every CPU by default.

bitsandbytes (0.50) runs a ``Linear4bit`` forward on the CPU in one of two ways:

* **portable**: dequantize the NF4 weight to the compute dtype, then ``F.linear`` — the path of every
  CPU, and the only one in training;
* **packed**: on a CPU with AVX512-BF16, the first forward in eval mode without grad *repacks the weight
  in place* into a blocked layout (its absmax cast to bfloat16) and every later forward runs a fused
  kernel in bfloat16.  The repacking asserts ``out_features % 32 == 0`` ("N must be divisible by
  block_n") and needs ``in_features`` to be a multiple of the quantisation block size (64), so a model
  with an MLP width of 176 cannot be evaluated at all on such a machine; and where it runs, its outputs
  differ from the portable path's by bfloat16 rounding.

A score must not depend on which CPU computed it, so :func:`configure` (called by
:func:`prolora.models.load_base_model` for every 4-bit model on the CPU) switches every ``Linear4bit`` to the
portable path unless ``packed=True`` is asked for.  With ``packed=True`` every layer the packed kernel can
take uses it, and each layer it cannot take stays on the portable path (named in the report and in one
printed note) instead of crashing.  The report says what ran; the recipes record it with every result.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

SWITCH = "support_avx512bf16_for_cpu"  # bitsandbytes' per-layer flag that enables the packed path
DEFAULT_BLOCK_N = 32  # bitsandbytes' row block of the packed layout (the default of its block_n argument)
DEFAULT_BLOCKSIZE = 64  # bitsandbytes' default 4-bit quantisation block size


def has_packed_path() -> bool:
    """Whether this CPU (and this bitsandbytes) has the packed AVX512-BF16 4-bit path."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())


def block_n() -> int:
    """The row block of bitsandbytes' packed layout, read from the library (falls back to 32)."""
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu
    except ImportError:
        return DEFAULT_BLOCK_N
    param = inspect.signature(_convert_weight_packed_for_cpu).parameters.get("block_n")
    return int(param.default) if param is not None and isinstance(param.default, int) else DEFAULT_BLOCK_N


def why_unpackable(in_features: int, out_features: int, blocksize: int = DEFAULT_BLOCKSIZE) -> str | None:
    """Why bitsandbytes' packed CPU path cannot take a layer of this shape, or None if it can."""
    n = block_n()
    if out_features % n:
        return f"out_features={out_features} is not a multiple of {n}"
    if in_features % blocksize:
        return f"in_features={in_features} is not a multiple of the quantisation block size {blocksize}"
    return None


def _is_4bit(module: nn.Module) -> bool:
    return getattr(getattr(module, "weight", None), "quant_state", None) is not None and hasattr(module, SWITCH)


def configure(model: nn.Module, packed: bool = False, log=print) -> dict[str, Any]:
    """Choose the CPU path of every bitsandbytes 4-bit layer of ``model`` (in place); returns the report
    ``{"cpu_avx512_bf16", "requested", "path", "packed_layers", "portable_layers": {path: why}}``, also kept
    as ``model.prolora_cpu_4bit``.  ``path`` is ``portable`` (every layer), ``packed`` (every layer) or
    ``mixed``.  Layers on another device are left alone."""
    available = has_packed_path()
    portable: dict[str, str] = {}
    packed_layers = 0
    for name, module in model.named_modules():
        if not _is_4bit(module) or module.weight.device.type != "cpu":
            continue
        if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            raise RuntimeError(f"{name}: this 4-bit weight was already repacked for the AVX512-BF16 CPU path "
                               "by an earlier forward; configure the CPU path right after loading the model")
        why = None
        if not packed:
            why = "portable path requested (model.cpu_packed_4bit=false)"
        elif not available:
            why = "this CPU has no AVX512-BF16 packed path"
        else:
            blocksize = int(getattr(module.weight.quant_state, "blocksize", DEFAULT_BLOCKSIZE))
            why = why_unpackable(int(module.in_features), int(module.out_features), blocksize)
        setattr(module, SWITCH, why is None)
        if why is None:
            packed_layers += 1
        else:
            portable[name] = why
    path = "portable" if not packed_layers else ("packed" if not portable else "mixed")
    report = {"cpu_avx512_bf16": available, "requested": "packed" if packed else "portable", "path": path,
              "packed_layers": packed_layers, "portable_layers": portable if packed else {}}
    if packed and available and portable and log:
        shown = "; ".join(f"{k} ({v})" for k, v in list(portable.items())[:3])
        more = f" and {len(portable) - 3} more" if len(portable) > 3 else ""
        log(f"note: {len(portable)} 4-bit layer(s) cannot take bitsandbytes' packed CPU path and run on the "
            f"portable one: {shown}{more}")
    model.prolora_cpu_4bit = report
    return report


def report(model: nn.Module) -> dict[str, Any] | None:
    """The report :func:`configure` left on ``model`` (None for a model it never saw)."""
    return getattr(model, "prolora_cpu_4bit", None)
