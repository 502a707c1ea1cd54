"""VeRA's initial state (Kopiczko et al. 2023, §3.2; PEFT's ``VeraConfig.d_initial``): every λ_d at ``d_init``
(0.1 by default), every λ_b at 0, so ΔW = 0 at the start while λ_d's gradient is not zero."""

from __future__ import annotations

import pytest
import torch

from prolora import VeRAConfig, adapter_layers, attach


@pytest.mark.parametrize("d_init", [None, 0.5])
def test_lambda_d_starts_at_d_init_and_lambda_b_at_zero(tiny, d_init):
    config = VeRAConfig(r=16) if d_init is None else VeRAConfig(r=16, d_init=d_init)
    want = 0.1 if d_init is None else d_init  # the paper's and PEFT's default
    model = attach(tiny(), config)
    for path, layer in adapter_layers(model).items():
        assert torch.equal(layer.lambda_d, torch.full_like(layer.lambda_d, want)), path
        assert torch.equal(layer.lambda_b, torch.zeros_like(layer.lambda_b)), path
        assert torch.count_nonzero(layer.delta_weight()) == 0, path
