"""DoRA against PEFT's ``use_dora=True`` LoRA (the oracle): same forward and gradients in fp32 with the same tensors,
dropout included; the magnitude's init; the cached inference factor; the count at LLaMA2-7B shapes."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from prolora import SEVEN_MODULES, adapter_layers, attach, count_for, count_trainable, make_config
from prolora.methods._dense import dense_weight
from tests.prolora.conftest import randomize_trainable


def _peft_twin(ours, base, dropout: float):
    """PEFT's DoRA on ``base`` with our adapter's A, B and magnitude copied in."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, lora_dropout=dropout, use_dora=True,
                                                     target_modules=list(SEVEN_MODULES)))
    with torch.no_grad():
        for path, layer in adapter_layers(ours).items():
            twin = peft_model.base_model.model.get_submodule(path)
            twin.lora_A["default"].weight.copy_(layer.lora_A)
            twin.lora_B["default"].weight.copy_(layer.lora_B)
            twin.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    return peft_model


def test_init_magnitude_is_the_row_norm_and_the_start_is_the_base(tiny4bit, ids):
    model = attach(tiny4bit(), make_config("dora", r=4))
    layer = model.model.layers[0].mlp.down_proj
    dense = dense_weight(layer.base_layer)  # the dequantized NF4 weight the forward multiplies by
    torch.testing.assert_close(layer.magnitude, torch.linalg.norm(dense, dim=1), rtol=0, atol=0)
    assert layer.magnitude.shape == (64,) and torch.count_nonzero(layer.lora_B) == 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny4bit()(ids).logits)  # f = 1 and B = 0: exactly the base


@pytest.mark.parametrize("train", [False, True])
def test_forward_and_gradients_match_peft_dora(tiny, ids, train):
    """With dropout 0.1 in training the dropped-out input feeds both terms in PEFT; same RNG, same masks."""
    ours = attach(tiny(), make_config("dora", r=4, dropout=0.1))
    randomize_trainable(ours, seed=2)
    peft_model = _peft_twin(ours, tiny(), dropout=0.1)
    ours.train(train)
    peft_model.train(train)
    torch.manual_seed(5)
    out = ours(ids, labels=ids)
    torch.manual_seed(5)
    ref = peft_model(ids, labels=ids)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    ref.loss.backward()
    layer = ours.model.layers[1].self_attn.v_proj
    twin = peft_model.base_model.model.model.layers[1].self_attn.v_proj
    for mine, theirs in ((layer.lora_A, twin.lora_A["default"].weight), (layer.lora_B, twin.lora_B["default"].weight),
                         (layer.magnitude, twin.lora_magnitude_vector["default"].weight)):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6)
        assert mine.grad.abs().sum() > 0


def test_compact_term_equals_the_merged_weight_and_the_cache_follows_updates(tiny):
    model = attach(tiny(), make_config("dora", r=4, dropout=0.0))
    randomize_trainable(model, seed=3)
    model.eval()
    layer = model.model.layers[0].mlp.gate_proj
    x = torch.randn(3, 7, 64)
    dense = layer.base_layer.weight.float()
    with torch.no_grad():
        expanded = F.linear(x, layer.merged_weight(dense) - dense)  # x (W' − W₀)ᵀ
        compact = layer.delta_output(x, layer.base_layer(x))
        torch.testing.assert_close(compact, expanded, rtol=1e-5, atol=1e-5 * expanded.abs().max().item())
        cached = layer._cache
        assert cached is not None and torch.equal(layer.factor(), cached[1])  # the factor is computed once
        layer.lora_B.mul_(2.0)  # an in-place update (an optimizer step, a load) invalidates it
        again = layer.delta_output(x, layer.base_layer(x))
        expanded2 = F.linear(x, layer.merged_weight(dense) - dense)
    assert not torch.allclose(again, compact)
    torch.testing.assert_close(again, expanded2, rtol=1e-5, atol=1e-5 * expanded2.abs().max().item())


def test_count_lora_plus_one_magnitude_per_output_at_7b():
    per_layer_ho, per_layer_o = 78_080, 4 * 4096 + 2 * 11008 + 4096  # Σ(h+o) and Σo over the seven linears
    assert count_for("llama2_7b", make_config("dora", r=1)) == 32 * (per_layer_ho + per_layer_o) == 3_858_432
    assert count_for("llama2_7b", make_config("dora", r=8)) == 32 * (8 * per_layer_ho + per_layer_o)


def test_trains_only_the_declared_tensors(tiny):
    model = attach(tiny(), make_config("dora", r=2))
    assert count_trainable(model) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad} == {
        "lora_A", "lora_B", "magnitude"}
