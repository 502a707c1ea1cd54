"""VeRA (Kopiczko et al. 2023, arXiv 2310.11454): vector-based random matrix adaptation.

.. math::

    h = W_0 x + \\Lambda_b B \\Lambda_d A x, \\qquad \\Lambda_b = \\mathrm{diag}(\\lambda_b),\\;
    \\Lambda_d = \\mathrm{diag}(\\lambda_d)

A (r × h) and B (o × r) are frozen and random, ONE pair per module type (``q_proj``, ``down_proj``, …)
shared by every layer, regenerated from ``projection_seed`` (seed of a type = projection_seed +
crc32(type name)) with PEFT-VeRA's Kaiming-uniform (a = √5, fan-in of each matrix); they are
non-persistent buffers of ``model.prolora_shared["vera"]`` and are never saved.  Trainable per module:
λ_d (r, init ``d_init`` = 0.1) and λ_b (o, init 0, so ΔW = 0 at the start).  No α/r scaling.

As a rank-r LoRA: A_full = diag(λ_d) A, B_full = diag(λ_b) B, scaling 1.  Compact form (no scaled copy of the
pair): ``λ_b ⊙ ((λ_d ⊙ (x Aᵀ)) Bᵀ)``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from prolora.config import AdapterConfig, ConfigError, invalid, is_int, is_number
from prolora.methods._rows import CompactForm, linear, scale
from prolora.methods.base import AdapterLayer, Method, SharedModule, kaiming_bound, weight_device
from prolora.methods.registry import register


@dataclass
class VeRAConfig(AdapterConfig):
    """VeRA's fields: ``d_init`` (λ_d's initial value) and ``projection_seed`` (regenerates the frozen pairs).
    ``alpha`` is accepted for a uniform schema and ignored (VeRA has no α/r scaling)."""

    method: ClassVar[str] = "vera"

    r: int = field(default=256, metadata={"help": "rank of the frozen random pair A (r × h), B (o × r)"})
    d_init: float = field(default=0.1, metadata={"help": "initial value of every λ_d"})
    projection_seed: int = field(default=0, metadata={"help": "seed that regenerates the frozen pairs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_number(self.d_init):
            raise invalid("VeRAConfig", "d_init", self.d_init, "d_init must be a number", "use e.g. d_init=0.1")
        self.d_init = float(self.d_init)
        if not is_int(self.projection_seed) or self.projection_seed < 0:
            raise invalid("VeRAConfig", "projection_seed", self.projection_seed,
                      "the seed must be a non-negative integer", "use e.g. projection_seed=0")


def projection_seed_for(seed: int, module_type: str) -> int:
    return (seed + zlib.crc32(module_type.encode())) % (2**63)


class VeRAShared(SharedModule):
    """Frozen (A, B) per module type as non-persistent buffers ``A_<type>``, ``B_<type>``; nothing saved."""

    def __init__(self, config: VeRAConfig, shapes: dict[str, tuple[int, int]], device: torch.device):
        super().__init__()
        for mtype, (h, o) in shapes.items():
            if device.type == "meta":
                a = torch.empty(config.r, h, device=device)
                b = torch.empty(o, config.r, device=device)
            else:
                g = torch.Generator().manual_seed(projection_seed_for(config.projection_seed, mtype))
                bound_a, bound_b = kaiming_bound(h), kaiming_bound(config.r)
                a = (torch.rand(config.r, h, generator=g) * 2 - 1) * bound_a
                b = (torch.rand(o, config.r, generator=g) * 2 - 1) * bound_b
            self.register_buffer(f"A_{mtype}", a.to(device), persistent=False)
            self.register_buffer(f"B_{mtype}", b.to(device), persistent=False)


class VeRALayer(CompactForm, AdapterLayer):
    adapter_params = ("lambda_d", "lambda_b")

    def __init__(self, base_layer: nn.Module, config: VeRAConfig, path: str, shared: VeRAShared):
        super().__init__(base_layer, config, path, shared)
        self.lambda_d = self._param(config.r)
        self.lambda_b = self._param(self.out_features)
        if not self.lambda_d.is_meta:
            nn.init.constant_(self.lambda_d, config.d_init)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = getattr(self.shared, f"A_{self.module_type}")
        b = getattr(self.shared, f"B_{self.module_type}")
        return self.lambda_d.unsqueeze(1) * a, self.lambda_b.unsqueeze(1) * b

    def compact_tensors(self) -> dict[str, torch.Tensor]:
        return {"lambda_d": self.lambda_d, "lambda_b": self.lambda_b,
                "A": getattr(self.shared, f"A_{self.module_type}"), "B": getattr(self.shared, f"B_{self.module_type}")}

    def compact_output(self, x: torch.Tensor, base_out: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return scale(linear(scale(linear(x, t["A"]), t["lambda_d"]), t["B"]), t["lambda_b"])


@register
class VeRA(Method):
    name = "vera"
    config_cls = VeRAConfig
    layer_cls = VeRALayer

    @classmethod
    def create_shared(cls, model, config: VeRAConfig, targets):
        shapes: dict[str, tuple[int, int]] = {}
        for path, module in targets:
            mtype = path.rsplit(".", 1)[-1]
            shape = (int(module.in_features), int(module.out_features))
            if shapes.setdefault(mtype, shape) != shape:
                raise ConfigError(
                    f"VeRAConfig.target_modules: layer {path} is {shape[0]}->{shape[1]} but other {mtype!r} "
                    f"layers are {shapes[mtype][0]}->{shapes[mtype][1]}; VeRA shares one frozen pair per module "
                    "type, so every layer of a type must have one shape: drop it from target_modules")
        return VeRAShared(config, shapes, weight_device(targets[0][1]))
