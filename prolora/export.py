"""Compact save/load, exact export to a standard PEFT LoRA directory, and merging into the base weights.

* ``save_adapter``/``load_adapter``: only the tensors the adapter declares (``adapter.safetensors``) plus
  ``adapter_config.json`` (method + config); bitwise round trip; written atomically (temp dir + rename).
  Both refuse non-finite weights (a diverged adapter is never saved, loaded, exported or scored), and a
  corrupt file is named in the error.
* ``export_lora``: every method expands to a rank-r LoRA per module (ΔW = scaling·B_full A_full), saved
  with PEFT's keys and config so ``peft.PeftModel.from_pretrained(base, dir)`` (and vLLM) load it as is.
* ``merge``: W ← W + scaling·B_full A_full (4-bit weights dequantized first), adapters removed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prolora.config import AdapterConfig, ConfigError
from prolora.inject import (
    CONFIG_ATTR,
    SHARED_ATTR,
    _set_module,
    adapter_layers,
    adapter_state,
    attach,
    count_trainable,
    get_config,
)
from prolora.io import write_dir_atomic
from prolora.methods import config_from_dict, get_method

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "prolora-compact/1"
PEFT_WEIGHTS = "adapter_model.safetensors"
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _check_finite(tensors: dict[str, torch.Tensor], what: str, where: str) -> None:
    bad = {k: int((~torch.isfinite(t)).sum()) for k, t in tensors.items() if t.is_floating_point()
           and not torch.isfinite(t).all()}
    if bad:
        first = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:3])
        raise ValueError(f"{what}: {sum(bad.values())} non-finite value(s) in {len(bad)} tensor(s) of {where}: {first}"
                         f"{'…' if len(bad) > 3 else ''}; the adapter diverged or the file is damaged")


def _require_attached(model: nn.Module, what: str) -> AdapterConfig:
    config = get_config(model)
    if config is None or not adapter_layers(model):
        raise ValueError(f"{what}: the model has no adapter attached (use prolora.attach(model, config) first)")
    return config


def _base_name(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "_name_or_path", None) or getattr(model, "name_or_path", None)
    return name or None


# ----------------------------------------------------------------------------------------- compact form

def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Save the tensors the adapter declares (:func:`prolora.adapter_state`) + the config, atomically.
    Returns the directory path."""
    from safetensors.torch import save_file

    config = _require_attached(model, "save_adapter")
    tensors = {k: p.detach().to("cpu").contiguous() for k, p in adapter_state(model, buffers=True).items()}
    _check_finite(tensors, "save_adapter", "the model's adapter (nothing was written)")
    meta = {"format": FORMAT, "method": config.method, "config": config.to_dict(),
            "trainable_params": count_trainable(model), "base_model_name_or_path": _base_name(model)}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt", "prolora": FORMAT})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return write_dir_atomic(directory, write)


def read_adapter_config(directory: str | os.PathLike) -> AdapterConfig:
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"load_adapter: {path} is not a directory (expected a save_adapter output)")
    cfg_file = path / ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise FileNotFoundError(f"load_adapter: {cfg_file} is missing; {path} is not a save_adapter directory")
    try:
        meta = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise ValueError(f"load_adapter: {cfg_file} is not valid JSON ({e}); the checkpoint is corrupt") from None
    if meta.get("format") != FORMAT:
        hint = " (this looks like a PEFT export: load it with peft.PeftModel)" if "peft_type" in meta else ""
        raise ValueError(f"load_adapter: {cfg_file} has format {meta.get('format')!r}, expected {FORMAT!r}{hint}")
    return config_from_dict(meta["config"])


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_adapter` directory into ``model``: attaches first on a plain base model, loads
    in place on a model that already carries the same adapter config.  Returns ``model``."""
    from safetensors.torch import load_file

    path = Path(directory)
    config = read_adapter_config(path)
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"load_adapter: {weights} is missing")
    current = get_config(model)
    if current is None:
        attach(model, config)
    elif current != config:
        raise ConfigError(f"load_adapter: {path} holds {config!r} but the model carries {current!r}; "
                          "load into a fresh base model or one attached with the same config")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for a truncated or garbled file
        raise ValueError(f"load_adapter: {weights} is not a readable safetensors file ({type(e).__name__}: {e}); "
                         "the checkpoint is corrupt or incomplete") from None
    _check_finite(tensors, "load_adapter", str(weights))
    params = adapter_state(model, buffers=True)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ConfigError(f"load_adapter: {weights} does not fit this model: missing {missing[:5]}"
                          f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                          f"{'…' if len(unexpected) > 5 else ''} (a different base model?)")
    for key, p in params.items():
        t = tensors[key]
        if t.shape != p.shape:
            raise ConfigError(f"load_adapter: {key} has shape {tuple(t.shape)} in {weights}, "
                              f"{tuple(p.shape)} in the model (a different base model?)")
        with torch.no_grad():
            p.copy_(t.to(device=p.device, dtype=p.dtype))
    return model


# ----------------------------------------------------------------------------------------- PEFT export

def vllm_rank(r: int) -> int:
    """The smallest vLLM-supported max_lora_rank >= r."""
    for cand in VLLM_RANKS:
        if cand >= r:
            return cand
    raise ValueError(f"rank {r} exceeds vLLM's largest supported LoRA rank {VLLM_RANKS[-1]}")


@torch.no_grad()
def export_lora(model: nn.Module, directory: str | os.PathLike, vllm_compatible: bool = True) -> Path:
    """Write a standard PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``).

    Each adapter becomes lora_A = A_full (r × h), lora_B = B_full (o × r).  The method's scaling goes
    into ``lora_alpha`` = scaling · r_export (PEFT and vLLM apply lora_alpha / r); when that is not an
    integer (e.g. VeRA has scaling 1, which is fine, but α/r·r_export may be fractional after padding), the
    scaling is folded into lora_B and lora_alpha = r_export.  With ``vllm_compatible`` a rank vLLM does not
    serve is zero-padded to the next supported one (same ΔW).  The original method, rank and config are
    recorded under ``prolora_export`` in the config (PEFT ignores unknown keys with a warning).
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    config = _require_attached(model, "export_lora")
    layers = adapter_layers(model)
    r = config.r
    r_exp = vllm_rank(r) if vllm_compatible else r
    scalings = {layer.scaling for layer in layers.values()}
    scaling = scalings.pop() if len(scalings) == 1 else None
    alpha = scaling * r_exp if scaling is not None else None
    fold = alpha is None or not math.isclose(alpha, round(alpha), rel_tol=0, abs_tol=1e-9)
    lora_alpha = r_exp if fold else int(round(alpha))

    tensors: dict[str, torch.Tensor] = {}
    for path, layer in layers.items():
        a, b = (t.detach().float() for t in layer.factors())
        if fold:
            b = b * layer.scaling
        if r_exp != r:
            a = torch.cat([a, a.new_zeros(r_exp - r, a.shape[1])], 0)
            b = torch.cat([b, b.new_zeros(b.shape[0], r_exp - r)], 1)
        tensors[f"base_model.model.{path}.lora_A.weight"] = a.cpu().contiguous()
        tensors[f"base_model.model.{path}.lora_B.weight"] = b.cpu().contiguous()
        for key, t in layer.extra_peft_tensors().items():
            tensors[f"base_model.model.{path}.{key}"] = t.detach().float().cpu().contiguous()
    _check_finite(tensors, "export_lora", "the model's adapter (nothing was written)")

    peft_config = LoraConfig(
        r=r_exp, lora_alpha=lora_alpha, lora_dropout=config.dropout, target_modules=list(config.target_modules),
        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=_base_name(model), inference_mode=True,
        **get_method(config.method).peft_config_fields(config))
    note: dict[str, Any] = {"method": config.method, "rank": r, "exported_rank": r_exp,
                            "zero_padded": r_exp != r, "scaling": scaling, "scaling_folded_into_B": fold,
                            "config": config.to_dict()}

    def write(tmp: Path) -> None:
        peft_config.save_pretrained(str(tmp))
        cfg_file = tmp / ADAPTER_CONFIG
        data = json.loads(cfg_file.read_text())
        data["prolora_export"] = note
        cfg_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})

    return write_dir_atomic(directory, write)


# ----------------------------------------------------------------------------------------- merge

def _dense_weight(base: nn.Module) -> tuple[torch.Tensor, torch.dtype]:
    """(fp32 weight, compute dtype) of a plain or bitsandbytes 4-bit linear."""
    w = base.weight
    quant_state = getattr(w, "quant_state", None)
    if quant_state is not None:
        import bitsandbytes.functional as bnbf

        if getattr(quant_state, "packing_format_for_cpu", False):
            raise ValueError("merge: this 4-bit weight was repacked for bitsandbytes' AVX512-BF16 CPU path by an "
                             "earlier evaluation forward (its scales are bf16-rounded now); merge into a freshly "
                             "loaded base, or load it with cpu_packed_4bit=false")

        dense = bnbf.dequantize_4bit(w.data, quant_state)
        dtype = getattr(base, "compute_dtype", None) or quant_state.dtype or torch.float32
        return dense.float(), dtype
    if w.dtype in (torch.int8, torch.uint8):
        raise NotImplementedError(f"merge: {type(base).__name__} with {w.dtype} weights is not supported")
    return w.detach().float(), w.dtype


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold ΔW = scaling·B_full A_full into every adapted weight and remove the adapters (in place).

    A 4-bit ``Linear4bit`` is dequantized (``bitsandbytes.functional.dequantize_4bit``) and replaced by a
    plain ``nn.Linear`` in its compute dtype.  Returns the plain transformers model.
    """
    _require_attached(model, "merge")
    quantized = False
    for path, layer in adapter_layers(model).items():
        base = layer.base_layer
        dense, dtype = _dense_weight(base)
        quantized |= getattr(base.weight, "quant_state", None) is not None
        new_w = layer.merged_weight(dense).to(dtype)
        bias = getattr(base, "bias", None)
        if isinstance(base, nn.Linear) and type(base) is nn.Linear:
            base.weight.data = new_w
            merged = base
        else:
            merged = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None,
                               device=new_w.device, dtype=dtype)
            merged.weight.data = new_w
            if bias is not None:
                merged.bias.data = bias.detach().to(dtype)
        merged.weight.requires_grad_(False)
        _set_module(model, path, merged)
    if hasattr(model, SHARED_ATTR):
        delattr(model, SHARED_ATTR)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    if quantized and not any(getattr(getattr(m, "weight", None), "quant_state", None) is not None
                             for m in model.modules()):
        _drop_quantization_markers(model)
    return model


def _drop_quantization_markers(model: nn.Module) -> None:
    """Every 4-bit weight is dense now: stop transformers treating the model as quantized."""
    for attr, value in (("hf_quantizer", None), ("is_loaded_in_4bit", False), ("is_quantized", False)):
        if hasattr(model, attr):
            try:
                setattr(model, attr, value)
            except (AttributeError, TypeError):
                pass
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "quantization_config", None) is not None:
        try:
            del cfg.quantization_config
        except AttributeError:
            cfg.quantization_config = None
