"""DoRA (Liu et al. 2024, arXiv 2402.09353): weight-decomposed low-rank adaptation, as PEFT's ``use_dora=True``.

The adapted weight is a magnitude times a direction; the direction is the base weight plus a LoRA update::

    W' = m ⊙ (W₀ + s·B A) / ‖W₀ + s·B A‖        ‖·‖: the L2 norm of each OUTPUT row (one per output feature),
                                                 m (o): trained, initialised to ‖W₀‖ (so W' = W₀ at the start)
                                                 A (r × h), B (o × r): LoRA's factors and init (B = 0), s = α/r

so the layer's output, with f = m / ‖W₀ + s·B A‖ (the norm DETACHED from the graph, the paper's §4.3), is::

    y = W₀x + [(f − 1) ⊙ W₀x + f ⊙ s·B(A x)]          ← the adapter's term (``delta_output``)

Trainable parameters per module: r(h + o) + o.

What the official code (github NVlabs/DoRA, and PEFT's port, the oracle here) does that the paper does not say:

* the paper writes W ∈ ℝ^{d×k} and normalises "each column"; the code normalises each row of PyTorch's
  (out × in) weight (``torch.linalg.norm(W, dim=1)``), i.e. one magnitude per OUTPUT feature;
* with dropout, the dropped-out input feeds both terms: (f − 1) ⊙ W₀·dropout(x) is a second pass through the
  frozen layer (here ``base_layer(dropout(x))`` minus its bias), f ⊙ s·B A dropout(x) the LoRA term; without
  dropout (or in eval) the base output already computed is reused;
* the norm is computed from the dequantized 4-bit weight on every training forward (it changes with B A).

Compact form: at inference f depends only on the adapter, so it is computed once per output feature and cached
(invalidated when A, B or m change in place) and the term costs the LoRA matmuls plus one scale; training
recomputes ‖W₀ + s·B A‖ each forward, as PEFT does.  Merge: W' above.  Export: PEFT's DoRA format
(``lora_A``, ``lora_B``, ``lora_magnitude_vector``, ``use_dora: true``), which stock PEFT loads as is; vLLM serves
DoRA only merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prolora.config import AdapterConfig, ConfigError
from prolora.methods._dense import dense_weight, why_unreadable
from prolora.methods.base import AdapterLayer, Method
from prolora.methods.registry import register


@dataclass
class DoRAConfig(AdapterConfig):
    """DoRA: LoRA's fields (r, alpha, dropout, target_modules) plus a trained magnitude per output feature."""

    method: ClassVar[str] = "dora"


class DoRALayer(AdapterLayer):
    """``lora_A`` (r × h), ``lora_B`` (o × r), ``magnitude`` (o); the factor f is cached at inference only."""

    adapter_params = ("lora_A", "lora_B", "magnitude")

    def __init__(self, base_layer: nn.Module, config: DoRAConfig, path: str, shared=None):
        super().__init__(base_layer, config, path, shared)
        self.scaling = config.alpha / config.r
        self.lora_A = self._param(config.r, self.in_features)
        self.lora_B = self._param(self.out_features, config.r)
        self.magnitude = self._param(self.out_features)
        self._cache: tuple[tuple, torch.Tensor] | None = None
        if not self.lora_A.is_meta:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # LoRA's A init, the same RNG use
            with torch.no_grad():
                self.magnitude.copy_(torch.linalg.norm(dense_weight(base_layer).to(self._device), dim=1))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B

    def weight_norm(self, dense: torch.Tensor) -> torch.Tensor:
        """‖W₀ + s·B A‖ per output row, detached (the paper's §4.3)."""
        with torch.no_grad():
            lora = self.scaling * (self.lora_B @ self.lora_A)
            return torch.linalg.norm(dense.to(lora.device) + lora, dim=1)

    def factor(self) -> torch.Tensor:
        """f = m / ‖W₀ + s·B A‖ (o): differentiable in m; cached while no gradient is recorded."""
        if torch.is_grad_enabled():
            self._cache = None
            return self.magnitude / self.weight_norm(dense_weight(self.base_layer))
        key = (self.lora_A._version, self.lora_B._version, self.magnitude._version, self.magnitude.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.magnitude / self.weight_norm(dense_weight(self.base_layer)))
        return self._cache[1]

    def delta_output(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """(f − 1) ⊙ W₀x' + f ⊙ s·B(A x') with x' = dropout(x) (W₀x' = ``base_out`` minus bias without dropout)."""
        dropped = self.training and not isinstance(self.dropout, nn.Identity) and self.dropout.p > 0
        xd = self.dropout(x) if dropped else x
        base = self.base_layer(xd) if dropped else base_out
        bias = getattr(self.base_layer, "bias", None)
        base = base.float() - (bias.float() if bias is not None else 0.0)
        f = self.factor()
        lora = F.linear(F.linear(xd.to(self.lora_A.dtype), self.lora_A), self.lora_B) * self.scaling
        return (f - 1) * base + f * lora

    def merged_weight(self, dense: torch.Tensor) -> torch.Tensor:
        """W' = f ⊙ (W₀ + s·B A), row-wise."""
        with torch.no_grad():
            lora = (self.scaling * (self.lora_B @ self.lora_A)).to(dense.device)
            norm = torch.linalg.norm(dense + lora, dim=1)
            return (self.magnitude.to(dense.device) / norm).unsqueeze(1) * (dense + lora)

    def extra_peft_tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_magnitude_vector": self.magnitude}


@register
class DoRA(Method):
    name = "dora"
    config_cls = DoRAConfig
    layer_cls = DoRALayer

    @classmethod
    def check_target(cls, config: DoRAConfig, path: str, module: nn.Module) -> None:
        why = why_unreadable(module)
        if why:
            raise ConfigError(f"DoRAConfig.target_modules: layer {path} cannot take DoRA: {why}; DoRA needs the base "
                              "weight's row norms, so target plain or 4-bit linears only", field="target_modules",
                              config="DoRAConfig")

    @classmethod
    def peft_config_fields(cls, config: DoRAConfig) -> dict[str, Any]:
        return {"use_dora": True}
