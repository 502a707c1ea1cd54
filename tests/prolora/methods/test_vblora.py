"""VB-LoRA against PEFT's ``vblora`` (the oracle): same counts, same forward and gradients in fp32 with the same bank
and logits copied in (dropout included), PEFT's init distributions, the stored (top-k) count, and the compact
bank-projection form equal to the expanded one."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import VBLoRAConfig as PeftVBLoRAConfig
from peft import get_peft_model

from prolora import (
    SEVEN_MODULES,
    ConfigError,
    adapter_layers,
    attach,
    count_for,
    count_trainable,
    make_config,
)
from prolora.methods.vblora import stored_count
from prolora.models import build_tiny_llama
from prolora.trainer import split_param_groups
from tests.prolora.conftest import randomize_trainable

SMALL = dict(r=4, num_vectors=16, vector_length=16)


def _peft_twin(ours, base, dropout: float, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(base, PeftVBLoRAConfig(target_modules=list(SEVEN_MODULES), vblora_dropout=dropout,
                                                           **kw))
    with torch.no_grad():
        peft_model.base_model.vblora_vector_bank["default"].copy_(ours.prolora_shared["vblora"].vector_bank)
        for path, layer in adapter_layers(ours).items():
            twin = peft_model.base_model.model.get_submodule(path)
            twin.vblora_logits_A["default"].copy_(layer.logits_A)
            twin.vblora_logits_B["default"].copy_(layer.logits_B)
    return peft_model


@pytest.mark.parametrize("train", [False, True])
def test_forward_and_gradients_match_peft(ids, train):
    ours = attach(build_tiny_llama(0), make_config("vblora", dropout=0.1, **SMALL))
    randomize_trainable(ours, seed=3, scale=1.0)  # spread logits: the top-k choice is not a tie
    peft_model = _peft_twin(ours, build_tiny_llama(0), 0.1, **SMALL)
    assert count_trainable(ours) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    ours.train(train)
    peft_model.train(train)
    torch.manual_seed(11)
    out = ours(ids, labels=ids)
    torch.manual_seed(11)
    ref = peft_model(ids, labels=ids)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.logits, build_tiny_llama(0)(ids).logits, atol=1e-2)  # ΔW is not 0
    out.loss.backward()
    ref.loss.backward()
    bank = ours.prolora_shared["vblora"].vector_bank
    torch.testing.assert_close(bank.grad, peft_model.base_model.vblora_vector_bank["default"].grad,
                               rtol=1e-4, atol=1e-6)
    layer = ours.model.layers[1].mlp.down_proj
    twin = peft_model.base_model.model.model.layers[1].mlp.down_proj
    torch.testing.assert_close(layer.logits_B.grad, twin.vblora_logits_B["default"].grad, rtol=1e-4, atol=1e-7)


def test_init_is_peft_s():
    model = attach(build_tiny_llama(0), make_config("vblora", r=4, num_vectors=64, vector_length=32))
    bank = model.prolora_shared["vblora"].vector_bank
    assert bank.shape == (64, 32) and bank.abs().max() <= 0.02 and bank.std() > 0.009  # U(-0.02, 0.02)
    logits = torch.cat([p.flatten() for n, p in model.named_parameters() if "logits" in n])
    assert abs(logits.std().item() - 0.1) < 0.01 and abs(logits.mean().item()) < 0.01  # N(0, 0.1²)
    q = model.model.layers[0].self_attn.q_proj
    assert q.logits_A.shape == (4, 2, 64) and q.logits_B.shape == (2, 4, 64)  # (r, h/b, N), (o/b, r, N)


def test_compact_bank_projection_equals_expanded():
    model = attach(build_tiny_llama(0), make_config("vblora", dropout=0.0, **SMALL))
    randomize_trainable(model, seed=5, scale=1.0)
    for layer in adapter_layers(model).values():
        x = torch.randn(2, 3, 5, layer.in_features)
        with torch.no_grad():
            expanded = layer.expanded_output(x)
            compact = layer.delta_output(x, None)
        assert compact.shape == (2, 3, 5, layer.out_features)
        torch.testing.assert_close(compact, expanded, rtol=1e-5, atol=1e-5 * expanded.abs().max().item())


def test_counts_trained_and_stored_against_peft():
    assert count_for("llama2_7b", make_config("vblora", r=4, num_vectors=256, vector_length=256)) == \
        256 * 256 + 4 * 256 * 2_498_560 // 256  # the bank + r·N logits per sub-vector of Σ(h+o)
    cfg = PeftVBLoRAConfig(r=4, num_vectors=16, vector_length=16, save_only_topk_weights=True,
                           target_modules=list(SEVEN_MODULES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(build_tiny_llama(0), cfg)
    shapes = [(m.in_features, m.out_features) for m in adapter_layers(attach(build_tiny_llama(0), make_config(
        "vblora", **SMALL))).values()]
    assert stored_count(make_config("vblora", **SMALL), shapes) == peft_model.get_nb_savable_parameters()[0]


def test_the_bank_takes_optim_shared_lr(tiny):
    model = attach(tiny(), make_config("vblora", **SMALL))
    groups = {g["name"]: g for g in split_param_groups(model, lr=1e-2, shared_lr=1e-3, weight_decay=0.0)}
    assert [p.shape for p in groups["shared"]["params"]] == [(16, 16)] and groups["shared"]["lr"] == 1e-3
    assert len(groups["unshared"]["params"]) == 2 * 14


def test_vector_length_must_divide_every_width(tiny):
    with pytest.raises(ConfigError, match=r"VBLoRAConfig\.vector_length=64 .*k_proj \(out_features=32\)"):
        attach(tiny(), make_config("vblora", r=4, num_vectors=8, vector_length=64))
    with pytest.raises(ConfigError, match=r"VBLoRAConfig\.topk=9 .*num_vectors=8"):
        make_config("vblora", num_vectors=8, topk=9)
