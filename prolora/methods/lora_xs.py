"""LoRA-XS (Bałazy et al. 2024, arXiv 2405.17604): a trainable r × r matrix between frozen factors taken from the
truncated SVD of the base weight.

With W₀ ≈ U_r Σ_r V_rᵀ the rank-r truncated SVD of the (out × in) base weight::

    ΔW = s · B R A,     B = U_r (o × r), A = Σ_r V_rᵀ (r × h): frozen;   R (r × r): trained,  s = α/r

    x ──A──▶ (r) ──R──▶ (r) ──B──▶ (o)          the adapter term of the forward, three thin matmuls

Trainable parameters per module: r² (independent of the layer's width), so LoRA r2's budget on LLaMA2-7B
(4,997,120) buys r = 149.

What the official code (github MohammadrezaBanaei/LoRA-XS) does that the paper does not say:

* the SVD is sklearn's randomized ``TruncatedSVD`` (10 power iterations, 10 extra columns, ``random_state=42``) of
  Wᵀ, in the weight's dtype on the CPU; Σ goes into the INPUT-side factor (A = Σ_r V_rᵀ, B = U_r);
* R starts as N(0, 1e-5²), not zero, so ΔW is tiny but not 0 at the start;
* ``lora_alpha = r`` (s = 1), no dropout (its scripts), and only full-precision linears are supported.

Here: ``svd="randomized"`` (default) is ``torch.svd_lowrank`` with the same 10 iterations and 10 extra columns,
seeded with ``svd_seed`` (42) so a run is repeatable; ``svd="exact"`` is ``torch.linalg.svd``.  A 4-bit base is
DEQUANTIZED first (bitsandbytes' ``dequantize_4bit``: the NF4 values the forward multiplies by) and decomposed in
fp32 on the weight's device.  ``alpha`` defaults to r (s = 1).  Because SVD signs and rounding differ between
LAPACK builds and devices, and a trained R is valid only with the exact factors it was trained with, A and B are
saved with the adapter (``adapter_buffers``); loading restores them, never recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from prolora.config import AdapterConfig, ConfigError, invalid, is_int, is_number
from prolora.methods._dense import dense_weight, why_unreadable
from prolora.methods._rows import CompactForm, linear
from prolora.methods.base import AdapterLayer, Method
from prolora.methods.registry import register

SVD_METHODS = ("randomized", "exact")


@dataclass
class LoRAXSConfig(AdapterConfig):
    """LoRA-XS: the rank r of the frozen SVD factors (r² trained per module) and how the SVD is computed."""

    method: ClassVar[str] = "lora_xs"

    alpha: float | None = field(default=None, metadata={"help": "scaling numerator (null: r, i.e. s = 1 as the "
                                                                 "authors' code)"})
    svd: str = field(default="randomized", metadata={
        "help": "randomized (torch.svd_lowrank, as the authors' sklearn TruncatedSVD) | exact (torch.linalg.svd)"})
    svd_niter: int = field(default=10, metadata={"help": "power iterations of the randomized SVD"})
    svd_oversample: int = field(default=10, metadata={"help": "extra columns of the randomized SVD"})
    svd_seed: int = field(default=42, metadata={"help": "seed of the randomized SVD's projection"})
    init_std: float = field(default=1e-5, metadata={"help": "std of R's normal init (the authors' 1e-5)"})

    def __post_init__(self) -> None:
        c = "LoRAXSConfig"
        if self.alpha is None and is_int(self.r):
            self.alpha = float(self.r)
        super().__post_init__()
        if self.svd not in SVD_METHODS:
            raise invalid(c, "svd", self.svd, f"unknown SVD (known: {list(SVD_METHODS)})", "use svd=randomized")
        for key, low in (("svd_niter", 0), ("svd_oversample", 0), ("svd_seed", 0)):
            v = getattr(self, key)
            if not is_int(v) or v < low:
                raise invalid(c, key, v, f"must be an integer >= {low}", f"use e.g. {key}=10")
        if not is_number(self.init_std) or self.init_std < 0:
            raise invalid(c, "init_std", self.init_std, "must be a number >= 0", "use e.g. init_std=1e-5")
        self.init_std = float(self.init_std)


@torch.no_grad()
def svd_factors(weight: torch.Tensor, config: LoRAXSConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(A = Σ_r V_rᵀ (r × h), B = U_r (o × r)) of an fp32 (o × h) weight."""
    r = config.r
    if config.svd == "exact":
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        u, s, v = u[:, :r], s[:r], vh[:r].t()
    else:
        q = min(r + config.svd_oversample, *weight.shape)
        devices = [weight.device] if weight.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.svd_seed)
            u, s, v = torch.svd_lowrank(weight, q=q, niter=config.svd_niter)
        u, s, v = u[:, :r], s[:r], v[:, :r]
    return (s.unsqueeze(1) * v.t()).contiguous(), u.contiguous()


class LoRAXSLayer(CompactForm, AdapterLayer):
    """``R`` (r × r) trained; ``A_svd`` (r × h) and ``B_svd`` (o × r) frozen buffers saved with the adapter."""

    adapter_params = ("R",)
    adapter_buffers = ("A_svd", "B_svd")

    def __init__(self, base_layer: nn.Module, config: LoRAXSConfig, path: str, shared=None):
        super().__init__(base_layer, config, path, shared)
        r, h, o = config.r, self.in_features, self.out_features
        self.scaling = config.alpha / r
        self.R = self._param(r, r)
        if self._device.type == "meta":
            a, b = torch.empty(r, h, device="meta"), torch.empty(o, r, device="meta")
        else:
            a, b = svd_factors(dense_weight(base_layer).to(self._device), config)
            nn.init.normal_(self.R, 0.0, config.init_std)
        self.register_buffer("A_svd", a)
        self.register_buffer("B_svd", b)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.R @ self.A_svd, self.B_svd

    def compact_tensors(self) -> dict[str, torch.Tensor]:
        return {"A": self.A_svd, "R": self.R, "B": self.B_svd}

    def compact_output(self, x: torch.Tensor, base_out: torch.Tensor,
                       tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """s · B(R(A x)): three thin matmuls, no (r × h) product formed; each tensor one adapter's or stacked
        per row (:mod:`prolora.methods._rows`)."""
        out = linear(linear(linear(x, tensors["A"]), tensors["R"]), tensors["B"])
        return out * self.scaling if self.scaling != 1.0 else out

    def delta_output(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """The compact form in training too: the three thin matmuls are as fast as R·A's expanded product here
        (``python -m scripts.bench_methods``: 0.86-1.01 of it) and build no (r × h) matrix."""
        return self.compact_output(self.dropout(x.to(self.R.dtype)), base_out, self.compact_tensors())


@register
class LoRAXS(Method):
    name = "lora_xs"
    config_cls = LoRAXSConfig
    layer_cls = LoRAXSLayer

    @classmethod
    def check_target(cls, config: LoRAXSConfig, path: str, module: nn.Module) -> None:
        h, o = int(module.in_features), int(module.out_features)
        if config.r > min(h, o):
            raise ConfigError(f"LoRAXSConfig.r={config.r} is invalid for layer {path} ({h}->{o}): the SVD of its weight "
                              f"has only {min(h, o)} singular vectors; use r <= {min(h, o)}", field="r",
                              value=config.r, config="LoRAXSConfig")
        why = why_unreadable(module)
        if why:
            raise ConfigError(f"LoRAXSConfig.target_modules: layer {path} cannot take LoRA-XS: {why}",
                              field="target_modules", config="LoRAXSConfig")
