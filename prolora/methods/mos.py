"""MoS, Mixture of Shards (Wang et al., ICLR 2025, arXiv 2410.00938; the PRoLoRA authors): every layer's LoRA
factors are concatenations of shards drawn from pools shared by all layers.

Per module type t (``q_proj``, ``down_proj``, …) there are two pools of S = e·L·l shards (L layers of type t, e the
*equivalent rank*, l shards per vector): ``A[t]`` (S × h/l) and ``B[t]`` (S × o/l), trained.  Each module draws two
index vectors of r·l shard ids once (pair dissociation: A's and B's are drawn apart) and builds::

    A_full[j] = A[t][i_{jl}] ⊕ A[t][i_{jl+1}] ⊕ … ⊕ A[t][i_{jl+l−1}]     (rank j: l shards side by side, r × h)
    B_full[:, j] = the same with B[t] and its own indices                  (o × r)
    ΔW = (α/r) · B_full A_full

    pool A[t]:  ┌ public shards: (e − p)·L·l ─────────────┬ private: p·l per layer ┐
                │ 0 1 2 3 … shared by all layers           │ layer 0 │ layer 1 │ … │
                └──────────────────────────────────────────┴─────────┴─────────┴───┘
    layer k:  ranks 0 … r−p−1 ← (r − p)·l public shards drawn at random without replacement (subset selection)
              ranks r−p … r−1 ← its own p·l private shards (shard privatization), the same slots for A and B

Trainable parameters: Σ_t e·L·l·(h/l + o/l) = e·Σ_modules (h + o): exactly LoRA rank e's count, whatever the
active rank r (the "equivalent rank" is the budget knob).  Init: the A pools U(−1/√h, 1/√h) (Kaiming with a = √5 and
the fan-in of a whole vector, h), the B pools 0, so ΔW = 0 at the start.

What the official code (github Forence1999/MoS, ``modules/Tied_LoRA.py``, selected by ``finetune_trainer.py``) does
that the paper does not say:

* the paper describes an MoE-like router "R" choosing shards; the code's router is the index matrix alone, drawn
  once with ``torch.randperm`` per module and per A/B and frozen: nothing is routed per token (which is what keeps
  ΔW a plain rank-r LoRA, mergeable and exportable);
* the "random scaling" of the README (``init_lora_A_vec_value``/``_std``) is disabled: the code asserts value 1 and
  no std, so its vector times its inverse is 1 and it is left out here;
* pools are per module type, sized e·L·l (``valid_param_lora_r`` × layers × ``num_chunk_per_vec``); a layer's
  private shards are the slots after the public part, by layer index; h and o must be multiples of l;
* the public draw needs (r − p)·l ≤ (e − p)·L·l shards, and p = e leaves no public pool (then r = e).

The index vectors are saved with the adapter (``adapter_buffers``): they come from the RNG, and the trained pools are
only meaningful with them.  Compact form: the gathered shards ARE the factors (one index-select and a reshape per
pool, no copy beyond it); a product with the whole pool instead would cost S·l/r times more, so there is nothing
smaller to compute from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prolora.config import AdapterConfig, ConfigError, invalid, is_int
from prolora.methods.base import AdapterLayer, Method, SharedModule, weight_device
from prolora.methods.registry import register


@dataclass
class MoSConfig(AdapterConfig):
    """MoS: active rank r, equivalent rank e (``pool_rank``, the budget), private ranks p, shards per vector l."""

    method: ClassVar[str] = "mos"

    r: int = field(default=8, metadata={"help": "active rank of each module's A and B (ranks built from shards)"})
    pool_rank: int = field(default=2, metadata={
        "help": "equivalent rank e: the pools hold e·L·l shards per module type, LoRA rank e's count"})
    private_rank: int = field(default=1, metadata={"help": "ranks per layer built from its own private shards"})
    shards: int = field(default=4, metadata={"help": "shards per vector l (divides every h and o)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        c = "MoSConfig"
        for key, low in (("pool_rank", 1), ("private_rank", 0), ("shards", 1)):
            v = getattr(self, key)
            if not is_int(v) or v < low:
                raise invalid(c, key, v, f"must be an integer >= {low}", f"use e.g. {key}={max(low, 1)}")
        if self.private_rank > min(self.pool_rank, self.r):
            raise invalid(c, "private_rank", self.private_rank,
                          f"private ranks cannot exceed pool_rank={self.pool_rank} or r={self.r}",
                          f"use private_rank <= {min(self.pool_rank, self.r)}")
        if self.private_rank == self.pool_rank and self.r != self.pool_rank:
            raise invalid(c, "r", self.r, f"private_rank = pool_rank = {self.pool_rank} leaves no public shards, so "
                          "every rank is private", f"use r={self.pool_rank} or private_rank < pool_rank")

    def tag(self) -> str:
        """``mos_r8_e2_p1_l4``."""
        return f"mos_r{self.r}_e{self.pool_rank}_p{self.private_rank}_l{self.shards}"


class MoSShared(SharedModule):
    """The pools ``A[t]`` (S_t × h_t/l) and ``B[t]`` (S_t × o_t/l) per module type, S_t = e·L_t·l, trained."""

    adapter_params = ("A", "B")

    def __init__(self, config: MoSConfig, shapes: dict[str, tuple[int, int]], positions: dict[str, int],
                 device: torch.device):
        super().__init__()
        layers = {t: sum(1 for p in positions if p.rsplit(".", 1)[-1] == t) for t in shapes}
        self.positions = positions  # layer path -> its index among the layers of its type
        self.layers = layers
        k, e = config.shards, config.pool_rank
        self.A = nn.ParameterDict({t: nn.Parameter(torch.empty(e * layers[t] * k, h // k, device=device))
                                   for t, (h, _) in shapes.items()})
        self.B = nn.ParameterDict({t: nn.Parameter(torch.zeros(e * layers[t] * k, o // k, device=device))
                                   for t, (_, o) in shapes.items()})
        if device.type != "meta":
            for t, (h, _) in shapes.items():
                bound = 1.0 / math.sqrt(h)  # Kaiming-uniform (a = √5) with the fan-in of a whole vector
                nn.init.uniform_(self.A[t], -bound, bound)

    def public_size(self, config: MoSConfig, mtype: str) -> int:
        return (config.pool_rank - config.private_rank) * self.layers[mtype] * config.shards


def draw_indices(config: MoSConfig, public: int, position: int) -> torch.Tensor:
    """(r − p)·l public shard ids drawn without replacement, then this layer's p·l private ones (the code's order)."""
    k, p = config.shards, config.private_rank
    drawn = torch.randperm(public)[: (config.r - p) * k]
    private = public + torch.arange(position * p * k, (position + 1) * p * k)
    return torch.cat([drawn, private])


class MoSLayer(AdapterLayer):
    """Owns no trained tensor: ``index_A``/``index_B`` (r·l shard ids each) select its shards from the pools."""

    adapter_buffers = ("index_A", "index_B")

    def __init__(self, base_layer: nn.Module, config: MoSConfig, path: str, shared: MoSShared):
        super().__init__(base_layer, config, path, shared)
        self.scaling = config.alpha / config.r
        n = config.r * config.shards
        if self._device.type == "meta":
            ia, ib = (torch.empty(n, dtype=torch.long, device="meta") for _ in range(2))
        else:
            public, position = shared.public_size(config, self.module_type), shared.positions[path]
            ia, ib = (draw_indices(config, public, position).to(self._device) for _ in range(2))
        self.register_buffer("index_A", ia)
        self.register_buffer("index_B", ib)

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_full (r × h), B_fullᵀ (r × o)): the selected shards, rank j's l shards side by side."""
        a = self.shared.A[self.module_type][self.index_A].reshape(self.r, self.in_features)
        bt = self.shared.B[self.module_type][self.index_B].reshape(self.r, self.out_features)
        return a, bt

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, bt = self._gathered()
        return a, bt.t()

    def delta_output(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """(α/r) · (dropout(x) A_fullᵀ) B_fullᵀ from the gathered shards (B used as stored, no transpose copy)."""
        a, bt = self._gathered()
        out = F.linear(self.dropout(x.to(a.dtype)), a) @ bt
        return out * self.scaling if self.scaling != 1.0 else out


@register
class MoS(Method):
    name = "mos"
    config_cls = MoSConfig
    layer_cls = MoSLayer
    budget_knob = "pool_rank"

    @classmethod
    def check_target(cls, config: MoSConfig, path: str, module: nn.Module) -> None:
        for dim in ("in_features", "out_features"):
            width = int(getattr(module, dim))
            if width % config.shards:
                raise ConfigError(f"MoSConfig.shards={config.shards} is invalid for layer {path} ({dim}={width}): a "
                                  "vector is cut into l equal shards, so l must divide every h and o; use a common "
                                  "divisor of the target widths", field="shards", value=config.shards,
                                  config="MoSConfig")

    @classmethod
    def create_shared(cls, model, config: MoSConfig, targets):
        shapes: dict[str, tuple[int, int]] = {}
        positions: dict[str, int] = {}
        for path, module in targets:
            mtype = path.rsplit(".", 1)[-1]
            shape = (int(module.in_features), int(module.out_features))
            if shapes.setdefault(mtype, shape) != shape:
                raise ConfigError(f"MoSConfig.target_modules: layer {path} is {shape[0]}->{shape[1]} but other {mtype!r} "
                                  f"layers are {shapes[mtype][0]}->{shapes[mtype][1]}; MoS shares one pool per module "
                                  "type, so every layer of a type must have one shape: drop it from target_modules",
                                  field="target_modules", config="MoSConfig")
            positions[path] = sum(1 for p in positions if p.rsplit(".", 1)[-1] == mtype)
        shared = MoSShared(config, shapes, positions, weight_device(targets[0][1]))
        need = config.r - config.private_rank
        for mtype in shapes:
            have = shared.public_size(config, mtype) // config.shards
            if need > have:
                raise ConfigError(
                    f"MoSConfig.r={config.r} is invalid for {shared.layers[mtype]} {mtype} layer(s): the r - p = {need} "
                    f"public ranks of a layer are drawn without replacement from (e - p)·L = {have} public vectors' "
                    f"shards; use r <= {have + config.private_rank} or raise pool_rank", field="r", value=config.r,
                    config="MoSConfig")
        return shared
