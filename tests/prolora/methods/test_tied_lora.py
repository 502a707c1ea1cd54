"""Tied LoRA's initial state (Renduchintala et al. 2023; the harness's TL6 layout): A and every B_t
Kaiming-uniform (a = √5, LoRA's A init), every layer's u at 1 and every v at 0, so ΔW = 0 at the start and the
first step's gradient reaches v."""

from __future__ import annotations

import torch

from prolora import TiedLoRAConfig, adapter_layers, attach


def test_u_starts_at_one_v_at_zero_and_the_first_step_moves_v(tiny):
    model = attach(tiny(), TiedLoRAConfig(r=16))
    shared = model.prolora_shared["tied_lora"]
    for key, u in shared.layer_scale.items():
        assert torch.equal(u, torch.ones_like(u)), key
    assert shared.A.abs().max() <= shared.A.shape[1] ** -0.5
    layers = adapter_layers(model)
    for path, layer in layers.items():
        assert torch.count_nonzero(layer.out_scale) == 0, path
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    assert all(layer.out_scale.grad is not None and layer.out_scale.grad.abs().sum() > 0 for layer in layers.values())
