"""LoRA (Hu et al. 2021, arXiv 2106.09685), the reference every other method reduces to.

.. math::

    h = W_0 x + \\frac{\\alpha}{r} B A x, \\qquad A \\in \\mathbb{R}^{r \\times h},\\; B \\in \\mathbb{R}^{o \\times r}

Init as PEFT: A ~ kaiming_uniform_(a=√5) i.e. U(−1/√h, 1/√h); B = 0, so ΔW = 0 at the start.
Trainable parameters per module: r (h + o).  Its factors are its parameters, so its expanded form is its compact
form: ``scaling · (x Aᵀ) Bᵀ``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prolora.config import AdapterConfig
from prolora.methods._rows import CompactForm, linear
from prolora.methods.base import AdapterLayer, Method
from prolora.methods.registry import register


@dataclass
class LoRAConfig(AdapterConfig):
    """LoRA (Hu et al. 2021): ΔW = (alpha/r) B A, A Kaiming-uniform (PEFT's a=√5), B = 0."""

    method: ClassVar[str] = "lora"


class LoRALayer(CompactForm, AdapterLayer):
    adapter_params = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module, config: LoRAConfig, path: str, shared=None):
        super().__init__(base_layer, config, path, shared)
        self.scaling = config.alpha / config.r
        self.lora_A = self._param(config.r, self.in_features)
        self.lora_B = self._param(self.out_features, config.r)
        if not self.lora_A.is_meta:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B

    def compact_tensors(self) -> dict[str, torch.Tensor]:
        return {"A": self.lora_A, "B": self.lora_B}

    def compact_output(self, x: torch.Tensor, base_out: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        out = linear(linear(x, t["A"]), t["B"])
        return out * self.scaling if self.scaling != 1.0 else out


@register
class LoRA(Method):
    name = "lora"
    config_cls = LoRAConfig
    layer_cls = LoRALayer
