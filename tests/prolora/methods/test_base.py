"""The shared init helper: ``kaiming_bound`` is the bound of ``nn.init.kaiming_uniform_(w, a=√5)`` (PEFT's LoRA A
init, torch's nn.Linear), 1/√fan_in."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prolora.methods.base import kaiming_bound


@pytest.mark.parametrize("fan_in", [7, 64, 4096])
def test_kaiming_bound_is_torchs_kaiming_uniform_bound(fan_in):
    assert kaiming_bound(fan_in) == pytest.approx(1 / math.sqrt(fan_in), rel=1e-12)
    w = torch.empty(2048, fan_in)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=torch.Generator().manual_seed(0))
    assert w.abs().max() <= kaiming_bound(fan_in) and w.abs().max() > 0.999 * kaiming_bound(fan_in)
