"""PRoLoRA (Wang et al. 2024, arXiv 2402.16902, section 3) and its family: CLoRA, RoLoRA, PRoLoRA⁻ʳ,
PRoLoRA⁻ⁱ and the Table 4 variants, all one layer driven by :class:`PRoLoRAConfig`.

Paper Eq. 4 (unshared rank rows FIRST, then the r − u shared ones)::

    ΔW = (α/r) · [ B_u ⊕_h (B_0 ⊕_v B_1 ⊕_v … ⊕_v B_{n−1}) ] · [ A_u ⊕_v (A_0 ⊕_h A_1 ⊕_h … ⊕_h A_{m−1}) ]

    A_u: (u × h)  B_u: (o × u)            unshared, trained
    A_0: (r−u × c_A), c_A = ⌈h/m⌉         the one trained chunk of A; m copies side by side along the
    B_0: (c_B × r−u), c_B = ⌈o/n⌉         hidden dim, the last one truncated to h (authors' code); B likewise
    A_i = Roll(A_0, i·s_A) along the rank dim (Eq. 3), B_i = Roll(B_0, i·s_B)

Trainable parameters per module: u(h + o) + ⌈h/m⌉(r − u) + ⌈o/n⌉(r − u)  (the paper writes h/m, o/n).

The matrices for r = 5, u = 2, m = 4, n = 3 (s_A = s_B = max(⌊(r−u)/m⌋, 1) = 1; a cell names the row of A_0
or the column of B_0 it holds)::

    A_full (r × h)                                                B_full (o × r)
              ◄───────────────────── h ─────────────────────►            B_u   shared (r − u)
             ┌───────────────────────────────────────────────┐          ┌─────┬─────────────┐ ▲
    A_u      │ unshared row 1 (trained)                      │          │     │ B_0: 0 1 2  │ │ ⌈o/n⌉
    (u rows) │ unshared row 2 (trained)                      │          │     ├─────────────┤ │
             ├───────────┬───────────┬───────────┬───────────┤          │ u   │ B_1: 1 2 0  │ │ o
    shared   │ A_0 row 0 │ A_0 row 1 │ A_0 row 2 │ A_0 row 0 │          │cols │ (copy 1)    │ │
    (r − u)  │ A_0 row 1 │ A_0 row 2 │ A_0 row 0 │ A_0 row 1 │          │     ├─────────────┤ │
             │ A_0 row 2 │ A_0 row 0 │ A_0 row 1 │ A_0 row 2 │          │     │ B_2: 2 0 1  │ │
             └───────────┴───────────┴───────────┴───────────┘          └─────┴─────────────┘ ▼
               copy 0      copy 1      copy 2      copy 3                      last copy cut to o
               = A_0       ◄ ⌈h/m⌉ ►               (cut to h)

Only A_u, B_u, A_0 and B_0 are trained and saved; the copies are views of them built at each forward.

Rotation stride and direction (``stride_from``):

* ``"shared"`` (default, the authors' code): s_A = max(⌊(r−u)/m⌋, 1), rolled over the r − u shared rows
  so that copy i's row j is A_0's row (j + i·s_A) mod (r−u), i.e. ``torch.roll(A_0, -i*s_A, 0)``.
* ``"full"`` (the paper's formula): s_A = max(⌊r/m⌋, 1) with ``torch.roll(A_0, +i*s_A, 0)``, i.e. row j
  of copy i is row (j − i·s_A) mod (r−u).

B uses n and ⌈o/n⌉ in place of m and ⌈h/m⌉ (its rank dim is its columns).  ``rotate=False`` is CLoRA-style
plain copies.

Rectified init (Eq. 5): A_u and A_0 ~ U(−g√(3/h), g√(3/h)) with g the Kaiming gain for a = √5 (the bound
PEFT's LoRA A uses: 1/√h), so the whole expanded A has one bound.  ``rectified_init=False`` (⁻ⁱ): A_0 uses
its own fan-in c_A (bound 1/√c_A).  B_u = B_0 = 0, so ΔW = 0 at the start.  u = r is exactly LoRA: the
same parameters (A_u = A, B_u = B), the same init call and RNG use, the same output.

Table 4 variants (``share_dim``, ``rotate_dim``); L is the length of the rolled axis of the chunk and k
the sharing rate (m for A, n for B); the rule is always s = max(⌊L/k⌋, 1) with the authors' direction
(copy i reads index (j + i·s) mod L), which for the paper's layout is exactly the ``"shared"`` rule:

* share hidden, rotate rank (PRoLoRA): chunk (r−u × ⌈h/m⌉), L = r−u.
* share hidden, rotate hidden: chunk (r−u × ⌈h/m⌉), copy i = the chunk rolled along its columns,
  L = ⌈h/m⌉.
* share rank, rotate rank: chunk (⌈(r−u)/m⌉ × h); the m copies are stacked along the rank dim (truncated
  to r−u rows), copy i rolled along its rows, L = ⌈(r−u)/m⌉.
* share rank, rotate hidden: the same chunk, copy i rolled along the hidden dim, L = h.

Per module these cost u(h+o) + ⌈(r−u)/m⌉h + ⌈(r−u)/n⌉o, the same budget as sharing along hidden.

Expansion is cheap: a tiny index buffer (copies × L) is built once; ``factors()`` does one index op per matrix,
a reshape and a concatenation with the unshared rows, no Python loop over copies.

The forward never expands (:class:`~prolora.methods._rows.CompactForm`): with k copies of a chunk of width c,
x A_sharedᵀ is the sum over copies i of (x_i A_0ᵀ) rolled by i·s along the rank (x_i: x's i-th c-wide slice, the
last one zero-padded), so one matmul of the (…, k, c) reshaped input against A_0, one gather and a sum give it; on
B's side a gather of the rank vector into (…, k, r−u) and one matmul against B_0 give the k output slices.  Each
layout reads its copies through one such gather of activations (index buffers built once per layer, never per
adapter), at the FLOPs of the expanded product or fewer (without rotation the input slices are summed first):

====================  ==============================================  =============================================
layout (rolled axis)  A side: y = x A_sharedᵀ                          B side: B_shared y
====================  ==============================================  =============================================
hidden (rank)         gather over (x_i A_0ᵀ)_i, sum over i               gather y into (k, r−u), times B_0ᵀ, concat
hidden (hidden)       gather x's slices, sum over i, times A_0ᵀ          y B_0ᵀ (width c), gather to width o
rank (rank)           x A_0ᵀ (⌈(r−u)/m⌉), gather to r−u                  pad, gather, sum over copies, times B_0ᵀ
rank (hidden)         gather k rolled copies of x, times A_0ᵀ, concat    per copy times B_0ᵀ, gather, sum over i
====================  ==============================================  =============================================

``expanded_output`` (the expanded factors) is kept as the reference the tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prolora.config import AdapterConfig, ConfigError, invalid, is_int
from prolora.methods._rows import CompactForm, linear
from prolora.methods.base import AdapterLayer, Method, kaiming_bound
from prolora.methods.registry import register

SHARE_DIMS = ("hidden", "rank")
ROTATE_DIMS = ("rank", "hidden")
STRIDE_FROM = ("shared", "full")

# The named members of the family: the fields each fixes; everything else is free (r, u, m, n, ...).
PRESETS: dict[str, dict[str, Any]] = {
    "prolora": {},
    "clora": {"u": 0, "rotate": False, "share_dim": "hidden", "rotate_dim": "rank"},
    "rolora": {"u": 0, "rotate": True, "share_dim": "hidden", "rotate_dim": "rank"},
    "prolora_nr": {"rotate": False, "share_dim": "hidden", "rotate_dim": "rank"},
    "prolora_ni": {"rectified_init": False, "share_dim": "hidden", "rotate_dim": "rank"},
    "share_hidden_rotate_hidden": {"share_dim": "hidden", "rotate_dim": "hidden", "rotate": True},
    "share_rank_rotate_rank": {"share_dim": "rank", "rotate_dim": "rank", "rotate": True},
    "share_rank_rotate_hidden": {"share_dim": "rank", "rotate_dim": "hidden", "rotate": True},
}
# Defaults of the free fields per preset: the paper's setting of each at the budget it compares (the class
# defaults r8 u1 m7 are PRoLoRA's at the LoRA-r2 budget); explicit values win.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "clora": {"r": 16, "m": 2},  # u0: 16/2 = the LoRA-r8 budget
    "rolora": {"r": 16, "m": 2},
    "prolora_nr": {"r": 16, "u": 7, "m": 9},  # 7 + 9/9 = 8
    "prolora_ni": {"r": 16, "u": 7, "m": 9},
    "share_hidden_rotate_hidden": {"r": 32, "u": 4, "m": 7},  # 4 + 28/7 = 8 (Table 4)
    "share_rank_rotate_rank": {"r": 32, "u": 4, "m": 7},
    "share_rank_rotate_hidden": {"r": 32, "u": 4, "m": 7},
}


@dataclass
class PRoLoRAConfig(AdapterConfig):
    """PRoLoRA and its family (the module docstring has the math).

    u: unshared ranks (u = r is plain LoRA).  m, n: sharing rates of A and B (n=None → m).
    rotate: roll the copies.  rectified_init: A_0 uses the full fan-in h (else the chunk's).
    share_dim: "hidden" (paper) or "rank" (Table 4).  rotate_dim: "rank" (paper) or "hidden".
    stride_from: "shared" (authors' code, stride from r−u) or "full" (paper's formula, stride from r).
    preset: the named variant this config was built as (checked against the fields it fixes).
    """

    method: ClassVar[str] = "prolora"

    r: int = field(default=8, metadata={"help": "rank of ΔW: u unshared rows + r−u shared ones"})
    u: int = field(default=1, metadata={"help": "unshared ranks (u = r is plain LoRA)"})
    m: int = field(default=7, metadata={"help": "sharing rate of A: copies of A_0 along the hidden dim"})
    n: int | None = field(default=None, metadata={"help": "sharing rate of B (null: m)"})
    rotate: bool = field(default=True, metadata={"help": "roll copy i by i·s along the rotated dim"})
    rectified_init: bool = field(default=True, metadata={"help": "A_0 drawn with the full fan-in h (Eq. 5)"})
    share_dim: str = field(default="hidden", metadata={"help": "hidden (the paper) | rank (Table 4)"})
    rotate_dim: str = field(default="rank", metadata={"help": "rank (the paper) | hidden (Table 4)"})
    stride_from: str = field(default="shared", metadata={
        "help": "shared: s = max(⌊(r−u)/m⌋,1) (authors' code) | full: s = max(⌊r/m⌋,1) (paper)"})
    preset: str = field(default="prolora", metadata={"help": "the named variant (clora, rolora, ...)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        c = "PRoLoRAConfig"
        if self.n is None:
            self.n = self.m
        if not is_int(self.u) or self.u < 0:
            raise invalid(c, "u", self.u, "the number of unshared ranks must be an integer >= 0", "use e.g. u=1")
        if self.u > self.r:
            raise invalid(c, "u", self.u, f"u (unshared ranks) cannot exceed r={self.r}",
                      f"use u <= {self.r} (u = r is plain LoRA) or raise r")
        for key in ("m", "n"):
            v = getattr(self, key)
            if not is_int(v) or v < 1:
                raise invalid(c, key, v, "the sharing rate must be an integer >= 1 (1 = no sharing)", f"use e.g. {key}=7")
        for key in ("rotate", "rectified_init"):
            if not isinstance(getattr(self, key), bool):
                raise invalid(c, key, getattr(self, key), "expected true or false", f"use {key}=true")
        for key, known, fix in (("share_dim", SHARE_DIMS, "'hidden' (the paper) or 'rank' (Table 4)"),
                                ("rotate_dim", ROTATE_DIMS, "'rank' (the paper) or 'hidden' (Table 4)"),
                                ("stride_from", STRIDE_FROM, "'shared' (authors' code) or 'full' (paper formula)")):
            if getattr(self, key) not in known:
                raise invalid(c, key, getattr(self, key), f"unknown value (known: {list(known)})", f"use {key}={fix}")
        if self.stride_from == "full" and self.rotate_dim != "rank":
            raise invalid(c, "stride_from", self.stride_from,
                      "the paper's stride max(floor(r/m),1) is defined for rotation along the rank dim only",
                      "use stride_from='shared' with rotate_dim='hidden'")
        shared = self.r - self.u
        if self.share_dim == "rank" and shared > 0:
            for key in ("m", "n"):
                v = getattr(self, key)
                if v > shared:
                    raise invalid(c, key, v, f"share_dim='rank' splits the r-u={shared} shared ranks into {key} "
                              "chunks, so it cannot exceed r-u", f"use {key} <= {shared}")
        if self.preset not in PRESETS:
            raise invalid(c, "preset", self.preset, f"unknown preset (known: {sorted(PRESETS)})",
                      "use make_config(<preset>, ...)")
        for key, want in PRESETS[self.preset].items():
            got = getattr(self, key)
            if got != want:
                raise invalid(c, key, got, f"preset {self.preset!r} fixes {key}={want!r}",
                          f"drop {key} or pick another preset (known: {sorted(PRESETS)})")

    @property
    def shared_rank(self) -> int:
        return self.r - self.u

    @property
    def name(self) -> str:
        return self.preset

    def tag(self) -> str:
        """``prolora_r8_u1_m7_n7``, ``clora_r16_u0_m2_n2``."""
        return f"{self.preset}_r{self.r}_u{self.u}_m{self.m}_n{self.n}"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def chunk_shape(config: PRoLoRAConfig, width: int, rate: int) -> tuple[int, int]:
    """Shape of the trained chunk in rank-major layout (rank rows × width columns)."""
    shared = config.r - config.u
    if shared == 0:
        return 0, 0
    if config.share_dim == "hidden":
        return shared, ceil_div(width, rate)
    return ceil_div(shared, rate), width


def trainable_per_module(config: PRoLoRAConfig, h: int, o: int) -> int:
    """u(h + o) + |A_0| + |B_0|: for share_dim="hidden" u(h+o) + ⌈h/m⌉(r−u) + ⌈o/n⌉(r−u)."""
    ra, ca = chunk_shape(config, h, config.m)
    rb, cb = chunk_shape(config, o, config.n)
    return config.u * (h + o) + ra * ca + rb * cb


_CONSTANTS: dict[tuple, torch.Tensor] = {}  # equal index buffers and mixing matrices, held once per process


def _once(value: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``value`` on ``device``, the same tensor object for every layer that builds an equal one (the buffers of
    a model's PRoLoRA layers repeat per shape: its layers share them instead of holding copies)."""
    if value is None or device.type == "meta":
        return None if value is None else value.to(device)
    key = (str(device), value.dtype, tuple(value.shape), tuple(value.flatten().tolist()))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = value.to(device)
    return _CONSTANTS[key]


def _mix(n_in: int, n_out: int, src: torch.Tensor, dst: torch.Tensor, identity: bool = True) -> torch.Tensor | None:
    """The (n_in × n_out) 0/1 matrix M with M[src, dst] = 1 (``v @ M`` adds v[src] into dst); None for the
    identity (unless ``identity=False``)."""
    m = torch.zeros(n_in, n_out)
    m[src.flatten(), dst.flatten()] = 1.0
    return None if identity and n_in == n_out and torch.equal(m, torch.eye(n_in)) else m


class _Expander(nn.Module):
    """Expands one trained chunk X (rank-major: R_c × W_c) into the r−u shared rows (r−u × width)."""

    def __init__(self, config: PRoLoRAConfig, width: int, rate: int, device: torch.device):
        super().__init__()
        self.shared = config.r - config.u
        self.width = width
        self.share_dim = config.share_dim
        self.rows, self.cols = chunk_shape(config, width, rate)
        if self.share_dim == "hidden":
            self.copies = ceil_div(width, self.cols)
        else:
            self.copies = ceil_div(self.shared, self.rows)
        self.roll_axis = config.rotate_dim if config.rotate else None
        idx = None
        if self.roll_axis is not None:
            length = self.rows if self.roll_axis == "rank" else self.cols
            if config.stride_from == "full":  # paper: s = max(floor(r/k), 1), torch.roll direction
                stride, sign = max(config.r // rate, 1), -1
            else:  # authors: s = max(floor(L/k), 1), copy i reads index (j + i*s) mod L
                stride, sign = max(length // rate, 1), 1
            self.stride, self.sign = stride, sign
            i = torch.arange(self.copies).unsqueeze(1)
            j = torch.arange(length).unsqueeze(0)
            idx = (j + sign * i * stride) % length  # (copies, L)
        self.register_buffer("index", _once(idx, device), persistent=False)
        self._compact_indices(config, device, idx)
        self._padded: dict[tuple, torch.Tensor] = {}  # slices(): zero-tailed input buffers by shape (no grad)

    def _compact_indices(self, config: PRoLoRAConfig, device: torch.device, idx: torch.Tensor | None) -> None:
        """What the compact forward reads the copies through (``left``: the A side, ``right``: the B side).
        Copies rolled along the rank (or unrolled, shared along the rank): a constant 0/1 matrix that gathers and
        sums in one product (``*_mix``, (k·(r−u)) × (r−u) at most); rolled along the hidden dim (or unrolled,
        shared along it): an index into the activations (``*_index``).  None where the step is the identity."""
        k, rows, cols = self.copies, self.rows, self.cols
        self.mode = self.roll_axis or self.share_dim  # the axis the copies' index runs along
        # the paper's layout (copies along the hidden dim, rolled along the rank): the unshared rows ride along
        self.fused = self.share_dim == "hidden" and self.mode == "rank"
        self.unshared = config.u
        length = rows if self.mode == "rank" else cols
        idx = torch.arange(length).expand(k, length) if idx is None else idx.cpu()
        inv = idx.argsort(dim=1)  # inv[i, idx[i, j]] = j
        i = torch.arange(k).unsqueeze(1).expand(k, length)
        j = torch.arange(length).unsqueeze(0).expand(k, length)
        left_mix = right_mix = left = right = None
        if self.fused:  # per copy i: [shared (s) | unshared slices (k·u)] products, see pack_left/pack_right
            u, n = config.u, rows + k * config.u
            t = torch.arange(u).unsqueeze(0).expand(k, u)
            ii = torch.arange(k).unsqueeze(1).expand(k, u)
            left_mix = _mix(k * n, rows + u, torch.cat([(i * n + idx).flatten(), (ii * n + rows + ii * u + t).flatten()]),
                            torch.cat([j.flatten(), (rows + t).flatten()]))
            right_mix = _mix(rows + u, k * n, torch.cat([inv.flatten(), (rows + t).flatten()]),
                             torch.cat([(i * n + j).flatten(), (ii * n + rows + ii * u + t).flatten()]), identity=False)
            right_mix = right_mix * (config.alpha / config.r)  # the scaling, folded in
        elif self.mode == "rank":  # z (R_c) -> y (s); y (s) -> the summed chunk (R_c)
            keep, src = i * rows + j < self.shared, i * rows + inv  # rows past r−u were cut from the copies
            left_mix = _mix(rows, self.shared, idx[keep], (i * rows + j)[keep])
            right_mix = _mix(self.shared, rows, src[src < self.shared], j[src < self.shared])
        elif self.share_dim == "hidden":  # gather x's slices (k·c); tile/roll y B_0ᵀ (c) out to width
            left = None if self.roll_axis is None else (i * cols + inv).flatten()
            right = None if self.roll_axis is None else idx.flatten()[: self.width]  # None: tiled copies
        else:  # k rolled copies of x (k·W); per-copy outputs (k·W) gathered back
            left, right = inv.flatten(), (i * cols + idx).flatten()
        for name, value in (("left_mix", left_mix), ("right_mix", right_mix), ("left_index", left),
                            ("right_index", right)):
            self.register_buffer(name, _once(value, device), persistent=False)

    def _pad(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return x if x.shape[-1] == size else F.pad(x, (0, size - x.shape[-1]))

    @staticmethod
    def _read(x: torch.Tensor, mix: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        if mix is not None:
            return x @ mix
        return x if index is None else x.index_select(-1, index)

    # -- the paper's layout: unshared rows folded into the chunk products (``fused``)
    def pack_left(self, a0: torch.Tensor, a_u: torch.Tensor | None) -> torch.Tensor:
        """W_A (…, c, s + k·u): A_0ᵀ beside the k c-wide slices of A_u (zero-padded to k·c), per slice i the
        columns s + i·u … s + i·u + u − 1.  The same numbers as (A_u, A_0), rearranged; a leading row dim is kept."""
        parts = [a0.transpose(-1, -2)]
        if a_u is not None:
            lead, k, c = a_u.shape[:-2], self.copies, self.cols
            slices = self._pad(a_u, k * c).reshape(*lead, self.unshared, k, c)
            parts.append(slices.permute(*range(len(lead)), -1, -2, -3).reshape(*lead, c, k * self.unshared))
        return torch.cat(parts, -1)

    def pack_right(self, b0: torch.Tensor, b_u: torch.Tensor | None) -> torch.Tensor:
        """W_B (…, s + k·u, c): B_0ᵀ above the k c-tall slices of B_u (zero-padded to k·c), transposed."""
        parts = [b0.transpose(-1, -2)]
        if b_u is not None:
            lead, k, c = b_u.shape[:-2], self.copies, self.cols
            slices = self._pad(b_u.transpose(-1, -2), k * c).reshape(*lead, self.unshared, k, c)
            parts.append(slices.transpose(-2, -3).reshape(*lead, k * self.unshared, c))
        return torch.cat(parts, -2)

    def slices(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, …, width) as its k c-wide slices (rows, …·k, c), the last one zero-padded.  Without grad the
        padded copy goes into a buffer kept per input shape (its zero tail written once), one copy per call."""
        size = self.copies * self.cols
        if size == x.shape[-1]:
            return x.reshape(x.shape[0], -1, self.cols)
        if torch.is_grad_enabled():
            return F.pad(x, (0, size - x.shape[-1])).reshape(x.shape[0], -1, self.cols)
        key = (x.shape, x.dtype, x.device)
        buffer = self._padded.get(key)
        if buffer is None:
            buffer = self._padded[key] = x.new_zeros((*x.shape[:-1], size))
            if len(self._padded) > 8:  # a few shapes at a time (decoding batches shrink row by row)
                self._padded.pop(next(iter(self._padded)))
        buffer[..., : x.shape[-1]].copy_(x)
        return buffer.view(x.shape[0], -1, self.cols)

    def left(self, x: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
        """x (…, width) times the expanded shared rows transposed, from the chunk ``a0`` (rank-major, as A_0;
        one per row allowed): (…, r−u)."""
        k, rows, cols, lead = self.copies, self.rows, self.cols, x.shape[:-1]
        if self.share_dim == "hidden":  # copies rolled along the hidden dim or not rolled (CLoRA)
            xs = self._pad(x, k * cols)
            return linear(self._read(xs, index=self.left_index).reshape(*lead, k, cols).sum(-2), a0)
        if self.mode == "rank":
            return self._read(linear(x, a0), self.left_mix)
        xs = self._read(x, index=self.left_index).reshape(*lead, k, cols)
        return linear(xs, a0).reshape(*lead, k * rows)[..., : self.shared]

    def right(self, y: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        """The expanded shared columns times y (…, r−u), from the chunk ``b0`` (o-major, as B_0; one per row
        allowed): (…, width)."""
        k, rows, cols, lead = self.copies, self.rows, self.cols, y.shape[:-1]
        if self.share_dim == "hidden":  # copies rolled along the hidden dim or not rolled (CLoRA)
            w = linear(y, b0)
            if self.right_index is None:  # unrotated copies: w tiled k times, cut to width
                return w.unsqueeze(-2).expand(*lead, k, cols).reshape(*lead, k * cols)[..., : self.width]
            return w.index_select(-1, self.right_index)
        if self.mode == "rank":
            return linear(self._read(y, self.right_mix), b0)
        w = linear(self._pad(y, k * rows).reshape(*lead, k, rows), b0).reshape(*lead, k * cols)
        return self._read(w, index=self.right_index).reshape(*lead, k, cols).sum(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, rows, cols = self.copies, self.rows, self.cols
        if self.roll_axis == "rank":
            y = x[self.index]  # (k, R_c, W_c)
        elif self.roll_axis == "hidden":
            y = x[:, self.index].transpose(0, 1)  # (k, R_c, W_c)
        else:
            y = x.unsqueeze(0).expand(k, rows, cols)
        if self.share_dim == "hidden":
            return y.transpose(0, 1).reshape(rows, k * cols)[:, : self.width]
        return y.reshape(k * rows, cols)[: self.shared]


class PRoLoRALayer(CompactForm, AdapterLayer):
    """Parameters: ``A_u`` (u × h), ``B_u`` (o × u), ``A_0`` (chunk of A), ``B_0`` (chunk of B, stored
    o-major like B: share hidden (⌈o/n⌉ × r−u), share rank (o × ⌈(r−u)/n⌉)); empty ones are None."""

    adapter_params = ("A_u", "B_u", "A_0", "B_0")

    def __init__(self, base_layer: nn.Module, config: PRoLoRAConfig, path: str, shared=None):
        super().__init__(base_layer, config, path, shared)
        h, o, r, u = self.in_features, self.out_features, config.r, config.u
        self.scaling = config.alpha / r
        self.u = u
        self.shared_rank = r - u
        ra, ca = chunk_shape(config, h, config.m)
        rb, cb = chunk_shape(config, o, config.n)
        # Empty parts are not registered (u = 0: no A_u/B_u; u = r: no chunks, exactly LoRA's parameters).
        self.A_u = self._param(u, h) if u else None
        self.B_u = self._param(o, u) if u else None
        self.A_0 = self._param(ra, ca) if self.shared_rank else None
        self.B_0 = self._param(cb, rb) if self.shared_rank else None  # o-major (transpose of rank-major)
        if self.shared_rank:
            self.expand_A = _Expander(config, h, config.m, self._device)
            self.expand_B = _Expander(config, o, config.n, self._device)
        self.fused = bool(self.shared_rank) and self.expand_A.fused  # compact_output reads pack()'s W_A, W_B
        # fused: the A side's gather-and-sum (k_A·(s + k_A·u) -> s + u) times the B side's spread (s + u ->
        # k_B·(s + k_B·u), scaled), one constant product instead of two
        mix = None
        if self.fused:  # one copy of A_0 (k_A = 1, u = 0): the A side's gather is the identity, left_mix None
            left, right = self.expand_A.left_mix, self.expand_B.right_mix
            mix = right if left is None else left @ right
        self.register_buffer("mix", _once(mix, self._device), persistent=False)
        if self._device.type != "meta":
            # Same call as LoRA's A (so u = r draws exactly LoRA's numbers), then A_0 with the one bound.
            if u:
                nn.init.kaiming_uniform_(self.A_u, a=math.sqrt(5))
            if self.shared_rank:
                bound = kaiming_bound(h if config.rectified_init else ca)
                with torch.no_grad():
                    self.A_0.uniform_(-bound, bound)

    def shared_parameter_names(self) -> list[str]:
        """The broadcast chunks (own optimizer group under ``optim.shared_lr``, the paper's future work)."""
        return ["A_0", "B_0"] if self.shared_rank else []

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.shared_rank:
            return self.A_u, self.B_u
        a_shared = self.expand_A(self.A_0)  # (r−u, h)
        b_shared = self.expand_B(self.B_0.t()).t()  # (o, r−u)
        if not self.u:
            return a_shared, b_shared
        return torch.cat([self.A_u, a_shared], 0), torch.cat([self.B_u, b_shared], 1)

    def compact_tensors(self) -> dict[str, torch.Tensor]:
        return {k: t for k, t in (("A_u", self.A_u), ("B_u", self.B_u), ("A_0", self.A_0), ("B_0", self.B_0))
                if t is not None}

    def pack(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The paper's layout reads (A_u, A_0) and (B_u, B_0) as one rearranged pair W_A, W_B each."""
        if not self.fused:
            return t
        return {"W_A": self.expand_A.pack_left(t["A_0"], t.get("A_u")),
                "W_B": self.expand_B.pack_right(t["B_0"], t.get("B_u"))}

    def compact_output(self, x: torch.Tensor, base_out: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """scaling · (x A_uᵀ B_uᵀ + B_shared(A_shared x)) without building A_shared or B_shared."""
        if self.fused:  # the slices' products with W_A, one 0/1 mix (scaled), the products with W_B
            w_a, w_b, rows = t["W_A"], t["W_B"], x.shape[0]
            xs = self.expand_A.slices(x)  # (rows, T·k_A, c_A)
            z = torch.bmm(xs, w_a) if w_a.dim() == 3 else xs @ w_a  # (rows, T·k_A, n_A)
            v = torch.mm(z.view(-1, self.mix.shape[0]), self.mix).view(rows, -1, w_b.shape[-2])  # (rows, T·k_B, n_B)
            out = torch.bmm(v, w_b) if w_b.dim() == 3 else v @ w_b  # (rows, T·k_B, c_B)
            return out.view(*x.shape[:-1], -1)[..., : self.out_features]
        out = linear(linear(x, t["A_u"]), t["B_u"]) if self.u else None
        if self.shared_rank:
            shared = self.expand_B.right(self.expand_A.left(x, t["A_0"]), t["B_0"])
            out = shared if out is None else out + shared
        return out * self.scaling if self.scaling != 1.0 else out


@register
class PRoLoRA(Method):
    name = "prolora"
    config_cls = PRoLoRAConfig
    layer_cls = PRoLoRALayer
    presets = {k: v for k, v in PRESETS.items() if k != "prolora"}
    preset_defaults = PRESET_DEFAULTS

    @classmethod
    def build_config(cls, preset, fields):
        named = fields.pop("preset", None)  # the preset given as a field (as to_dict writes it)
        if named is not None and preset is not None and named != preset:
            raise ConfigError(f"make_config({preset!r}, preset={named!r}): the preset is the name; drop preset",
                              field="preset", value=named, config="PRoLoRAConfig")
        if preset is None and named not in (None, "prolora"):
            if named not in cls.presets:
                raise invalid("PRoLoRAConfig", "preset", named, f"unknown preset (known: {sorted(PRESETS)})",
                          "use make_config(<preset>, ...)")
            preset = named
        if preset is not None:
            fields["preset"] = preset
        return super().build_config(preset, fields)

    @classmethod
    def check_target(cls, config: PRoLoRAConfig, path: str, module: nn.Module) -> None:
        if config.r == config.u or config.share_dim != "hidden":
            return
        for key, dim, width in (("m", "in_features", module.in_features), ("n", "out_features", module.out_features)):
            rate = getattr(config, key)
            if rate > width:
                raise ConfigError(
                    f"PRoLoRAConfig.{key}={rate} is invalid for layer {path} ({dim}={width}): the sharing rate "
                    f"cannot exceed the width it splits (each chunk needs a column); use {key} <= {width}",
                    field=key, value=rate, config="PRoLoRAConfig")
