"""Exact trainable-parameter counts on the meta device (no weights: seconds even for 70B), per module
type, and the sharing-rate solver for a budget.

The counts come from attaching the real adapter layers to a meta-device model, so they cannot drift
from what training uses.  LLaMA2-7B reference (SPEC §3): LoRA r8 = 19,988,480; PRoLoRA r8 u1 m=n=7 =
4,999,520 (⌈h/m⌉ chunks; the paper's h/m formula gives 4,997,120 = LoRA r2).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from prolora.config import SEVEN_MODULES, AdapterConfig, LoRAConfig, PRoLoRAConfig
from prolora.inject import SHARED_ATTR, adapter_layers, attach, count_trainable, find_targets
from prolora.methods.prolora import trainable_per_module


def meta_model(model_name_or_model: str | nn.Module) -> nn.Module:
    """A fresh meta-device skeleton: ``llama2_7b``/``llama2_13b``/``llama2_70b``/``tiny`` or a model's
    shapes (a transformers model is rebuilt from its config; others are deep-copied onto meta)."""
    from prolora.models import LLAMA2_CONFIGS, meta_llama2, tiny_llama_config

    if isinstance(model_name_or_model, str):
        name = model_name_or_model
        if name in LLAMA2_CONFIGS:
            return meta_llama2(name)
        if name in ("tiny", "tiny_pretrained"):  # same shapes: the pretrained one is built from this config
            from transformers import LlamaForCausalLM

            with torch.device("meta"):
                return LlamaForCausalLM(tiny_llama_config())
        raise ValueError(f"unknown model {name!r}; known: {sorted(LLAMA2_CONFIGS) + ['tiny']} or pass a model")
    model = model_name_or_model
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(type(model), "_from_config"):
        with torch.device("meta"):
            return type(model)._from_config(cfg)
    return copy.deepcopy(model).to("meta")


def count_for(model_name_or_model: str | nn.Module, config: AdapterConfig) -> int:
    """Trainable parameters ``config`` adds to the model (a name or a model; counted on the meta device)."""
    model = meta_model(model_name_or_model)
    attach(model, config)
    return count_trainable(model)


def count_by_module_type(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of an attached model per adapted module type (``q_proj`` …), plus
    ``shared`` for the model-level shared modules (Tied LoRA's A/B/u; VeRA's are frozen)."""
    out: OrderedDict[str, int] = OrderedDict()
    for layer in adapter_layers(model).values():
        n = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        out[layer.module_type] = out.get(layer.module_type, 0) + n
    shared = getattr(model, SHARED_ATTR, None)
    if shared is not None:
        out["shared"] = sum(p.numel() for p in shared.parameters() if p.requires_grad)
    return dict(out)


def module_instances(model: nn.Module) -> dict[str, int]:
    """How many adapted layers of each module type an attached model has."""
    out: OrderedDict[str, int] = OrderedDict()
    for layer in adapter_layers(model).values():
        out[layer.module_type] = out.get(layer.module_type, 0) + 1
    return dict(out)


def target_shapes(model_name_or_model: str | nn.Module,
                  target_modules: list[str] | tuple[str, ...] = SEVEN_MODULES) -> list[tuple[str, int, int]]:
    """``[(path, h, o)]`` of the target linears."""
    model = meta_model(model_name_or_model) if isinstance(model_name_or_model, str) else model_name_or_model
    layers = adapter_layers(model)
    if layers:  # an attached model: its adapted linears' shapes
        return [(p, m.in_features, m.out_features) for p, m in layers.items() if m.module_type in target_modules]
    return [(p, int(m.in_features), int(m.out_features)) for p, m in find_targets(model, list(target_modules))]


@dataclass(frozen=True)
class SharingSolution:
    """m (= n) for a budget.  ``count``: the real trainable count at that m (⌈h/m⌉ chunks, what attach
    gives); ``paper_count``: the paper's u(h+o) + (h+o)(r−u)/m formula (may be fractional);
    ``exact``: the chosen counting meets ``target_count`` exactly (else it is the nearest count under it)."""

    m: int
    count: int
    target_count: int
    exact: bool
    counting: str
    paper_count: float

    @property
    def n(self) -> int:
        return self.m

    @property
    def status(self) -> str:
        return "exact" if self.exact else "under"


def solve_sharing(model: str | nn.Module, r: int, u: int, target: int | dict[str, int] | None = None, *,
                  lora_rank: int | None = None, counting: str = "paper",
                  target_modules: list[str] | tuple[str, ...] = SEVEN_MODULES) -> SharingSolution:
    """The sharing rate m = n that spends a budget with PRoLoRA(r, u) (share along hidden).

    ``target``: a parameter count (int), ``{"params": N}`` or ``{"lora_rank": k}`` (the count of LoRA
    rank k on the same modules); ``lora_rank=k`` is a shorthand.  ``counting="paper"`` uses the paper's
    h/m (so r8 u1 → m7 meets LoRA r2 exactly, u + (r−u)/m = k); ``counting="ceil"`` uses the real
    ⌈h/m⌉ chunks (r8 u1 m7 is then 2,400 over LoRA r2 on 7B, so the answer is m8, under).  Returns the
    smallest m whose count meets the target exactly, else the one with the largest count under it.
    """
    if counting not in ("paper", "ceil"):
        raise ValueError(f"counting={counting!r}: use 'paper' (h/m) or 'ceil' (⌈h/m⌉)")
    if isinstance(target, dict):
        unknown = set(target) - {"params", "lora_rank"}
        if unknown or len(target) != 1:
            raise ValueError(f"target={target!r}: give exactly one of {{'params': N}} or {{'lora_rank': k}}")
        lora_rank = target.get("lora_rank", lora_rank)
        target = target.get("params")
    if (target is None) == (lora_rank is None):
        raise ValueError("solve_sharing: give a target parameter count or a LoRA rank (lora_rank=k), not both")
    shapes = [(h, o) for _, h, o in target_shapes(model, target_modules)]
    sum_ho = sum(h + o for h, o in shapes)
    target_count = int(target) if target is not None else int(lora_rank) * sum_ho
    max_m = min(min(h, o) for h, o in shapes)

    def paper(m: int) -> Fraction:
        return u * sum_ho + Fraction((r - u) * sum_ho, m)

    def ceil(m: int) -> int:
        cfg = PRoLoRAConfig(r=r, u=u, m=m, n=m, target_modules=list(target_modules))
        return sum(trainable_per_module(cfg, h, o) for h, o in shapes)

    # Both countings are non-increasing in m, so the first m at or under the target is the answer.
    best: tuple[int, Fraction | int] | None = None
    exact = False
    for m in range(1, max_m + 1 if r > u else 2):
        c = paper(m) if counting == "paper" else ceil(m)
        if c <= target_count:
            best, exact = (m, c), c == target_count
            break
    if best is None:
        raise ValueError(f"no m <= {max_m} brings PRoLoRA(r={r}, u={u}) to <= {target_count:,} parameters "
                         f"(the u unshared ranks alone cost {u * sum_ho:,}): lower u or r")
    m = best[0]
    return SharingSolution(m=m, count=ceil(m), target_count=target_count, exact=exact, counting=counting,
                           paper_count=float(paper(m)))


def lora_equivalent_rank(model: str | nn.Module, count: int,
                         target_modules: list[str] | tuple[str, ...] = SEVEN_MODULES) -> float:
    """``count`` in units of one LoRA rank on ``target_modules`` (the paper's budgets use all seven)."""
    per_rank = sum(h + o for _, h, o in target_shapes(model, target_modules))
    return count / per_rank


def lora_count(model: str | nn.Module, r: int, **kw: Any) -> int:
    return count_for(model, LoRAConfig(r=r, **kw))
