"""The compact forward's protocol: an adapter's term of the output from named tensors, one adapter or one per row.

A layer that subclasses :class:`CompactForm` splits its forward into ``compact_tensors()`` (the tensors its term
reads, by role: its own parameters and the model-level shared ones it uses), ``pack(tensors)`` (optional: the
same numbers rearranged into the layout its math reads best; the identity by default) and ``compact_output(x,
base_out, packed)`` (the math, fp32, scaled, on an already dropped-out input).  ``delta_output`` is the three
together; a server packs once per batch of rows, not per forward.

Every tensor ``compact_output`` gets is either as the layer holds it (one adapter for the whole input) or
**stacked per row**: one more leading dim of size ``x.shape[0]``, row b's adapter's tensor at index b (x is then
``(rows, ..., features)``).  :mod:`prolora.serving` passes stacked tensors to run rows of different adapters in
one batch, so a compact form must broadcast over that dim; :func:`linear` and :func:`scale` take either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x wᵀ``: ``w`` (out, in) for every row, or (rows, out, in) per row (``x`` (rows, ..., in))."""
    if w.dim() == 2:
        return F.linear(x, w)
    y = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), w.transpose(1, 2))
    return y.view(*x.shape[:-1], w.shape[-2])


def scale(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x`` (..., n) times ``v`` along the last dim: ``v`` (n,) for every row, or (rows, n) per row."""
    if v.dim() == 1:
        return x * v
    return x * v.view(v.shape[0], *([1] * (x.dim() - 2)), v.shape[-1])


class CompactForm:
    """Mixin for an :class:`~prolora.methods.base.AdapterLayer` whose term is computed from its own tensors
    alone (no expanded factor built): ``delta_output`` = ``compact_output(dropout(x), base_out,
    compact_tensors())``.  Subclasses implement both (the module docstring has the contract).

    A forward that builds a graph (training) takes ``expanded_output`` instead: the same term, measured faster
    forward + backward on a 4 x 256 batch (the compact form's activation gathers cost 1.4-3.0x more on SmolLM2's
    shapes: ``make bench-serve``, its ``layers`` part; README, Serving many adapters)."""

    def compact_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def pack(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return tensors

    def compact_output(self, x: torch.Tensor, base_out: torch.Tensor,
                       tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def delta_output(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.expanded_output(x)
        return self.compact_output(self.dropout(x.to(torch.float32)), base_out, self.pack(self.compact_tensors()))
