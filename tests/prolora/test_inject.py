"""Only adapter parameters get gradients; a few AdamW steps on the tiny 4-bit model lower the loss."""

from __future__ import annotations

import pytest
import torch

from prolora import adapter_layers, attach, count_trainable

from .conftest import all_method_configs

CONFIGS = all_method_configs(dropout=0.0)
LR = {"vera": 5e-2, "tied_lora": 1e-2}


@pytest.mark.parametrize("name", ["lora", "vera", "tied_lora", "prolora", "clora", "rolora",
                                  "share_rank_rotate_hidden", "mos", "vblora", "lora_xs", "dora"])
def test_gradients_only_on_adapters_and_loss_decreases(tiny4bit, ids, name):
    model = attach(tiny4bit(), CONFIGS[name])
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == count_trainable(model) > 0
    if name == "tied_lora":  # shared trainable tensors registered once, on the model
        assert {n for n in trainable if n.startswith("prolora_shared.")} >= {
            "prolora_shared.tied_lora.A", "prolora_shared.tied_lora.B.q_proj"}
    if name == "vera":
        assert not any(p.requires_grad for p in model.prolora_shared.parameters())
        assert all(b.requires_grad is False for b in model.prolora_shared.buffers())
    for layer in adapter_layers(model).values():
        assert all(p.dtype == torch.float32 for p in layer.parameters() if p.requires_grad)

    opt = torch.optim.AdamW(trainable.values(), lr=LR.get(name, 1e-2), weight_decay=0.0)
    losses = []
    for step in range(6):
        opt.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        if step == 0:
            for n, p in model.named_parameters():
                if p.requires_grad:
                    assert p.grad is not None, n
                else:
                    assert p.grad is None, n
            if name == "tied_lora":
                # v = 0 at init: the gradient reaches v; shared A/B/u get theirs once v moves
                assert model.model.layers[0].self_attn.q_proj.out_scale.grad.abs().sum() > 0
            if name == "vera":
                assert model.model.layers[0].self_attn.q_proj.lambda_b.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    if name == "tied_lora":
        shared = model.prolora_shared["tied_lora"]
        assert shared.A.grad is not None and shared.A.grad.abs().sum() > 0  # after v moved
        assert next(iter(shared.layer_scale.values())).grad.abs().sum() > 0


def test_bf16_base_keeps_fp32_adapters_and_base_dtype_output(tiny, ids):
    from prolora import PRoLoRAConfig

    model = attach(tiny().to(torch.bfloat16), PRoLoRAConfig(r=8, u=1, m=7))
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.A_0.dtype == torch.float32 and layer.base_layer.weight.dtype == torch.bfloat16
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16
    out = model(ids, labels=ids)
    out.loss.backward()
    assert layer.A_0.grad is not None and layer.A_0.grad.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_what_layers_declare_is_what_the_adapter_trains_and_saves(tiny, name):
    from prolora import adapter_state

    model = attach(tiny(), CONFIGS[name])
    declared = adapter_state(model)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert list(declared) and set(declared) == set(trained)  # the saved keys are the parameters' own names
    assert all(declared[k] is trained[k] for k in declared)


def test_a_parameter_a_layer_forgot_to_declare_is_refused(tiny):
    from torch import nn

    from prolora.methods.lora import LoRALayer

    class Forgetful(LoRALayer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.gate = nn.Parameter(torch.ones(1))  # trained, but not in adapter_params

    from prolora.methods.lora import LoRA

    class ForgetfulMethod(LoRA):
        layer_cls = Forgetful

    model = tiny()
    from prolora import LoRAConfig
    from prolora.inject import attach as attach_with

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("prolora.inject.get_method", lambda name: ForgetfulMethod)
        with pytest.raises(TypeError, match=r"\['model.layers.0.mlp.down_proj.gate'.*are trained but not declared"):
            attach_with(model, LoRAConfig(r=2))
