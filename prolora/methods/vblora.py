"""VB-LoRA (Li et al. 2024, arXiv 2405.15179): every LoRA factor composed from ONE global bank of vectors.

The model holds a bank of N vectors of length b (trained).  A module's A (r × h) is cut into r · h/b sub-vectors and
B (o × r) into o/b · r; each sub-vector has N logits (trained) and is the top-k softmax mixture of bank vectors::

    a_{j,t} = Σ_{i ∈ topk(ℓ^A_{j,t})} softmax_topk(ℓ^A_{j,t})_i · bank_i        A[j, t·b:(t+1)·b] = a_{j,t}
    b_{t,j} = (the same with ℓ^B_{t,j})                                        B[t·b:(t+1)·b, j] = b_{t,j}
    ΔW = B A            (no α/r scaling)

    bank (N × b) ─┬─ top-k mix per sub-vector ─▶ A = [a_{j,0} a_{j,1} … a_{j,h/b−1}]   (r rows)
                  └─ top-k mix per sub-vector ─▶ B = column j stacks b_{0,j} … b_{o/b−1,j}

Layouts and init are PEFT's ``vblora`` (the oracle: same forward to 1e-5 in fp32 with the same tensors):
logits ``logits_A`` (r, h/b, N) and ``logits_B`` (o/b, r, N) ~ N(0, 0.1²), bank ~ U(−0.02, 0.02).  Both h and o of
every target must be multiples of b.

Trainable parameters: N·b (the bank, counted once) + Σ_modules r·N·(h + o)/b (the logits): the logits dominate.
What is STORED after training is far smaller: only each sub-vector's top-k indices and k − 1 weights
(:func:`stored_count`), which is the count the VB-LoRA paper reports.  The budgets here compare trained counts,
as for every other method.

What the official code (github leo-yangli/VB-LoRA, ``instruction_tuning/qlora_vblora.py``, which uses PEFT's layer)
does that the paper does not say: the bank and the logits are trained with their own learning rates (1e-3 and 1e-2,
whatever ``--learning_rate`` is) — here ``optim.shared_lr`` gives the bank its own LR (the bank is the shared
parameter); ``vector_length`` is fixed to 256; PEFT's VB-LoRA wraps only full-precision linears (its 4-bit support
is a TODO), so QLoRA runs of it are this harness's own.

Compact form (``delta_output``): projections of the input onto the bank instead of building A and B: with x cut
into h/b tiles, P = x_tiles · bankᵀ (h/b × N per token), u_j = Σ_t Σ_{top-k} w · P[t, i], and the output tile t is
(Σ_j u_j Σ_{top-k} w' · e_i) · bank.  Per token it costs about N/r times the expanded form's FLOPs, so the layer's
own forward (training and evaluation) keeps the expanded form; ``delta_output`` is the compact one (tested equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prolora.config import AdapterConfig, ConfigError, invalid, is_int, is_number
from prolora.methods.base import AdapterLayer, Method, SharedModule, weight_device
from prolora.methods.registry import register


@dataclass
class VBLoRAConfig(AdapterConfig):
    """VB-LoRA: rank, bank size N, vector length b, top-k; ``alpha`` is accepted and ignored (no scaling)."""

    method: ClassVar[str] = "vblora"

    r: int = field(default=4, metadata={"help": "rank of each composed A (r × h) and B (o × r)"})
    num_vectors: int = field(default=256, metadata={"help": "vectors in the global bank (N)"})
    vector_length: int = field(default=256, metadata={"help": "length b of a bank vector; divides every h and o"})
    topk: int = field(default=2, metadata={"help": "bank vectors mixed into each sub-vector"})
    init_bank_bound: float = field(default=0.02, metadata={"help": "the bank starts U(-bound, bound)"})
    init_logits_std: float = field(default=0.1, metadata={"help": "the logits start N(0, std²)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        c = "VBLoRAConfig"
        for key in ("num_vectors", "vector_length", "topk"):
            v = getattr(self, key)
            if not is_int(v) or v < 1:
                raise invalid(c, key, v, "must be an integer >= 1", f"use e.g. {key}=2")
        if self.topk > self.num_vectors:
            raise invalid(c, "topk", self.topk, f"cannot exceed num_vectors={self.num_vectors}",
                          f"use topk <= {self.num_vectors}")
        for key in ("init_bank_bound", "init_logits_std"):
            v = getattr(self, key)
            if not is_number(v) or v <= 0:
                raise invalid(c, key, v, "must be a positive number", f"use e.g. {key}=0.02")
            setattr(self, key, float(v))

    def tag(self) -> str:
        """``vblora_r4_n256_b256_k2``."""
        return f"vblora_r{self.r}_n{self.num_vectors}_b{self.vector_length}_k{self.topk}"


def stored_count(config: VBLoRAConfig, shapes: list[tuple[int, int]]) -> int:
    """What a top-k export stores (float32 equivalents, PEFT's ``get_nb_savable_parameters``): the bank, plus per
    sub-vector k − 1 weights and k indices (a quarter, half or one float each for N < 2⁸, < 2¹⁵, else)."""
    subvectors = sum(config.r * (h + o) // config.vector_length for h, o in shapes)
    per_index = 0.25 if config.num_vectors < 2**8 else 0.5 if config.num_vectors < 2**15 else 1.0
    return int(config.num_vectors * config.vector_length + subvectors * ((config.topk - 1) + config.topk * per_index))


class VBLoRAShared(SharedModule):
    """The vector bank (N × b), trained; the shared parameter ``optim.shared_lr`` applies to."""

    adapter_params = ("vector_bank",)

    def __init__(self, config: VBLoRAConfig, device: torch.device):
        super().__init__()
        self.vector_bank = nn.Parameter(torch.empty(config.num_vectors, config.vector_length, device=device))
        if device.type != "meta":
            nn.init.uniform_(self.vector_bank, -config.init_bank_bound, config.init_bank_bound)

    def shared_parameter_names(self) -> list[str]:
        return ["vector_bank"]


def mix(logits: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(…, N) logits -> (…, b): the softmax over the top-k logits weighting their bank vectors."""
    top, idx = logits.topk(k, dim=-1)
    return (F.softmax(top, dim=-1).unsqueeze(-1) * bank[idx]).sum(-2)


class VBLoRALayer(AdapterLayer):
    """``logits_A`` (r, h/b, N) and ``logits_B`` (o/b, r, N), PEFT's layouts; the bank is the model's."""

    adapter_params = ("logits_A", "logits_B")

    def __init__(self, base_layer: nn.Module, config: VBLoRAConfig, path: str, shared: VBLoRAShared):
        super().__init__(base_layer, config, path, shared)
        b, n = config.vector_length, config.num_vectors
        self.topk = config.topk
        self.logits_A = self._param(config.r, self.in_features // b, n)
        self.logits_B = self._param(self.out_features // b, config.r, n)
        if not self.logits_A.is_meta:
            nn.init.normal_(self.logits_A, 0.0, config.init_logits_std)
            nn.init.normal_(self.logits_B, 0.0, config.init_logits_std)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self.shared.vector_bank
        a = mix(self.logits_A, bank, self.topk).reshape(self.logits_A.shape[0], -1)  # (r, h)
        b = mix(self.logits_B, bank, self.topk).transpose(1, 2).reshape(-1, self.logits_B.shape[1])  # (o, r)
        return a, b

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The layer's own forward takes the expanded form (faster here: the module doc); ``delta_output`` is the
        compact one, for callers that must not build A and B."""
        result = self.base_layer(x, *args, **kwargs)
        return result + self.expanded_output(x).to(result.dtype)  # (dropout(x) Aᵀ) Bᵀ, PEFT's forward

    def delta_output(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """The adapter term from bank projections, never forming A or B (module doc)."""
        x = self.dropout(x.to(self.logits_A.dtype))
        bank = self.shared.vector_bank
        n, b = bank.shape
        lead = x.shape[:-1]
        proj = x.reshape(*lead, -1, b) @ bank.t()  # (…, h/b, N)
        top_a, idx_a = self.logits_A.topk(self.topk, dim=-1)  # (r, h/b, k)
        tiles = torch.arange(idx_a.shape[1], device=x.device).view(1, -1, 1).expand_as(idx_a)
        u = (proj[..., tiles, idx_a] * F.softmax(top_a, dim=-1)).sum((-1, -2))  # (…, r)
        top_b, idx_b = self.logits_B.topk(self.topk, dim=-1)  # (o/b, r, k)
        weights = F.softmax(top_b, dim=-1) * u[..., None, :, None]  # (…, o/b, r, k)
        coef = x.new_zeros(*lead, idx_b.shape[0], n)
        coef.scatter_add_(-1, idx_b.reshape(idx_b.shape[0], -1).expand(*lead, -1, -1), weights.flatten(-2))
        return (coef @ bank).reshape(*lead, -1)  # (…, o)


@register
class VBLoRA(Method):
    name = "vblora"
    config_cls = VBLoRAConfig
    layer_cls = VBLoRALayer
    budget_knob = "num_vectors"

    @classmethod
    def check_target(cls, config: VBLoRAConfig, path: str, module: nn.Module) -> None:
        b = config.vector_length
        for dim in ("in_features", "out_features"):
            width = int(getattr(module, dim))
            if width % b:
                raise ConfigError(f"VBLoRAConfig.vector_length={b} is invalid for layer {path} ({dim}={width}): every "
                                  f"h and o must be a multiple of the bank's vector length; use a common divisor of "
                                  "the target widths", field="vector_length", value=b, config="VBLoRAConfig")

    @classmethod
    def create_shared(cls, model, config: VBLoRAConfig, targets):
        return VBLoRAShared(config, weight_device(targets[0][1]))
