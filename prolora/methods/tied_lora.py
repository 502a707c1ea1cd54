"""Tied LoRA (Renduchintala et al. 2023, arXiv 2311.09578), the TL6-style variant the PRoLoRA paper
compares with: on q, k, v only, with

.. math::

    \\Delta W_t^{(\\ell)} = \\frac{\\alpha}{r}\\, \\mathrm{diag}(v_t^{(\\ell)})\\, B_t\\, \\mathrm{diag}(u^{(\\ell)})\\, A,
    \\qquad t \\in \\{q, k, v\\}

* A (r × d): ONE matrix shared by q, k, v and by all layers (d = hidden size, the common input width);
* B_t (o_t × r): one per projection t, shared by all layers (o_t = d for q; the k/v width under GQA);
* u^(ℓ) (r): per layer, shared by that layer's q, k, v — the parameter ``layer_scale``;
* v_t^(ℓ) (o_t): per layer and projection (the "3d" vector of the paper: one d-vector per q/k/v) — the
  parameter ``out_scale`` (the paper's u/v are named apart from PRoLoRA's ``u``, its unshared ranks).

Init: A and every B_t Kaiming-uniform like PEFT's LoRA A (a = √5, bound 1/√fan_in: 1/√d for A, 1/√r
for B_t), u = 1, v = 0, so ΔW = 0 at the start while every factor is nonzero and gets gradients
(the frozen-B-at-zero LoRA trick would not work here: B is shared).  Scaling s = α/r.

A, B_q, B_k, B_v and the per-layer u's live in ``model.prolora_shared["tied_lora"]`` (counted once);
each q/k/v layer holds its own v.  As a rank-r LoRA: A_full = diag(u) A, B_full = diag(v_t) B_t; compact form:
``s · v_t ⊙ ((u ⊙ (x Aᵀ)) B_tᵀ)``.
Trainable parameters: r·d + r·Σ_t o_t + L·(r + Σ_t o_t) for L layers (4,595,712 on LLaMA2-7B at r = 256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from prolora.config import AdapterConfig, ConfigError, invalid
from prolora.methods._rows import CompactForm, linear, scale
from prolora.methods.base import AdapterLayer, Method, SharedModule, weight_device
from prolora.methods.registry import register

QKV_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")


@dataclass
class TiedLoRAConfig(AdapterConfig):
    """Tied LoRA on q/k/v (one A tied across them), rank 256 by default as in the paper's Table 2."""

    method: ClassVar[str] = "tied_lora"

    r: int = field(default=256, metadata={"help": "rank of the tied A (r × d) and of each B_t"})
    target_modules: list[str] = field(default_factory=lambda: list(QKV_MODULES),
                                      metadata={"help": "the projections A is tied across: q/k/v only"})

    def __post_init__(self) -> None:
        super().__post_init__()
        extra = [t for t in self.target_modules if t not in QKV_MODULES]
        if extra:
            raise invalid("TiedLoRAConfig", "target_modules", self.target_modules,
                      f"Tied LoRA ties one A across q/k/v, so it only adapts {list(QKV_MODULES)} (got {extra})",
                      f"use target_modules={list(QKV_MODULES)}")


def layer_key(path: str) -> str:
    """ParameterDict key of the layer (parent module path) a q/k/v projection belongs to."""
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return parent.replace(".", "__") or "root"


class TiedLoRAShared(SharedModule):
    adapter_params = ("A", "B", "layer_scale")

    def __init__(self, config: TiedLoRAConfig, d: int, outs: dict[str, int], layers: list[str],
                 device: torch.device):
        super().__init__()
        meta = device.type == "meta"

        def param(*shape):
            return nn.Parameter(torch.empty(*shape, dtype=torch.float32, device=device))

        self.A = param(config.r, d)
        self.B = nn.ParameterDict({t: param(o, config.r) for t, o in outs.items()})
        self.layer_scale = nn.ParameterDict({key: param(config.r) for key in layers})  # the paper's u^(l)
        if not meta:
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            for t in outs:
                nn.init.kaiming_uniform_(self.B[t], a=math.sqrt(5))
            for key in layers:
                nn.init.ones_(self.layer_scale[key])


class TiedLoRALayer(CompactForm, AdapterLayer):
    adapter_params = ("out_scale",)

    def __init__(self, base_layer: nn.Module, config: TiedLoRAConfig, path: str, shared: TiedLoRAShared):
        super().__init__(base_layer, config, path, shared)
        self.scaling = config.alpha / config.r
        self.layer_key = layer_key(path)
        self.out_scale = self._param(self.out_features)  # the paper's v_t^(l); zeros: ΔW = 0 at the start

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.shared.layer_scale[self.layer_key]
        b = self.shared.B[self.module_type]
        return u.unsqueeze(1) * self.shared.A, self.out_scale.unsqueeze(1) * b

    def compact_tensors(self) -> dict[str, torch.Tensor]:
        return {"A": self.shared.A, "B": self.shared.B[self.module_type],
                "u": self.shared.layer_scale[self.layer_key], "v": self.out_scale}

    def compact_output(self, x: torch.Tensor, base_out: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        out = scale(linear(scale(linear(x, t["A"]), t["u"]), t["B"]), t["v"])
        return out * self.scaling if self.scaling != 1.0 else out


@register
class TiedLoRA(Method):
    name = "tied_lora"
    config_cls = TiedLoRAConfig
    layer_cls = TiedLoRALayer

    @classmethod
    def create_shared(cls, model, config: TiedLoRAConfig, targets):
        d = None
        outs: dict[str, int] = {}
        layers: list[str] = []
        for path, module in targets:
            mtype = path.rsplit(".", 1)[-1]
            h, o = int(module.in_features), int(module.out_features)
            if d is None:
                d = h
            if h != d:
                raise ConfigError(
                    f"TiedLoRAConfig.target_modules: layer {path} has in_features={h} but the tied A is {d} wide; "
                    "Tied LoRA needs one input width for all of q/k/v: drop it from target_modules")
            if outs.setdefault(mtype, o) != o:
                raise ConfigError(
                    f"TiedLoRAConfig.target_modules: layer {path} has out_features={o} but B_{mtype} is "
                    f"{outs[mtype]} tall (B is shared across layers): drop {mtype!r} from target_modules")
            key = layer_key(path)
            if key not in layers:
                layers.append(key)
        return TiedLoRAShared(config, d, outs, layers, weight_device(targets[0][1]))
