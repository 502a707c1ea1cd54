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


def _pair(model, mtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    shared = model.prolora_shared["vera"]
    return getattr(shared, f"A_{mtype}"), getattr(shared, f"B_{mtype}")


def test_the_frozen_pair_is_kaiming_uniform_with_each_matrix_fan_in(tiny):
    """PEFT-VeRA's init: A (r × h) uniform within 1/√h, B (o × r) within 1/√r (1,024 draws each: the largest
    comes within 10% of its bound)."""
    r = 16
    a, b = _pair(attach(tiny(), VeRAConfig(r=r)), "q_proj")
    for m, fan_in in ((a, a.shape[1]), (b, r)):
        bound = fan_in ** -0.5
        assert m.abs().max() <= bound and m.abs().max() > 0.9 * bound


def test_each_module_type_draws_its_own_pair_and_the_seed_redraws_it(tiny):
    model = attach(tiny(), VeRAConfig(r=16))
    a_q, _ = _pair(model, "q_proj")
    a_k, _ = _pair(model, "k_proj")  # the same shape (r × 64), another seed
    assert a_q.shape == a_k.shape and not torch.equal(a_q, a_k)
    again, _ = _pair(attach(tiny(), VeRAConfig(r=16)), "q_proj")
    assert torch.equal(again, a_q)  # regenerated from projection_seed, never saved
