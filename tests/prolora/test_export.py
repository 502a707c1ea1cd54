"""Exact PEFT LoRA export (fp32 and 4-bit bases), vLLM rank padding, LoRA vs PEFT's own LoRA, compact
save/load round trip, merge.

Tolerances: the export reproduces the attached model's logits to atol 1e-5 (fp32 and 4-bit: the same
op order, so in practice bitwise); merge into fp32 weights atol 1e-4 (one rounding of W + ΔW per
weight); merge into a dequantized 4-bit base atol 1e-4 against the attached 4-bit model (the base
weights are the same dequantized NF4 values in both).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from prolora import (
    SEVEN_MODULES,
    ConfigError,
    LoRAConfig,
    PRoLoRAConfig,
    TiedLoRAConfig,
    adapter_layers,
    adapter_state,
    attach,
    count_trainable,
    export_lora,
    load_adapter,
    merge,
    save_adapter,
)

from .conftest import all_method_configs, randomize_trainable

EXPORT_ATOL = 1e-5
CONFIGS = all_method_configs(dropout=0.1)


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def _peft_logits(base, directory, ids):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about the extra prolora_export note
        peft_model = PeftModel.from_pretrained(base, str(directory))
    return _logits(peft_model, ids)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_matches_peft_fp32(tiny, ids, tmp_path, name):
    model = attach(tiny(), CONFIGS[name])
    randomize_trainable(model)
    ours = _logits(model, ids)
    assert not torch.allclose(ours, _logits(tiny(), ids), atol=1e-3)  # ΔW != 0
    export_lora(model, tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] in (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert cfg["prolora_export"]["method"] == CONFIGS[name].method
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensors
    assert "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" in tensors
    n_modules = 2 * len(CONFIGS[name].target_modules)
    extra = len(next(iter(adapter_layers(model).values())).extra_peft_tensors())  # DoRA: its magnitude
    assert len(tensors) == (2 + extra) * n_modules
    assert cfg.get("use_dora", False) == (name == "dora")
    torch.testing.assert_close(_peft_logits(tiny(), tmp_path / "peft", ids), ours, rtol=0, atol=EXPORT_ATOL)


@pytest.mark.parametrize("name", ["lora", "vera", "tied_lora", "prolora", "share_rank_rotate_hidden", "mos", "vblora",
                                  "lora_xs", "dora"])
def test_export_matches_peft_4bit(tiny4bit, ids, tmp_path, name):
    model = attach(tiny4bit(), CONFIGS[name])
    assert type(adapter_layers(model)["model.layers.0.self_attn.q_proj"].base_layer).__name__ == "Linear4bit"
    randomize_trainable(model)
    ours = _logits(model, ids)
    export_lora(model, tmp_path / "peft")
    torch.testing.assert_close(_peft_logits(tiny4bit(), tmp_path / "peft", ids), ours, rtol=0, atol=EXPORT_ATOL)


def test_tied_lora_exports_qkv_only(tiny, tmp_path):
    model = attach(tiny(), TiedLoRAConfig(r=16))
    export_lora(model, tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
    keys = load_file(str(tmp_path / "peft" / "adapter_model.safetensors")).keys()
    assert not any("o_proj" in k or "mlp" in k for k in keys)


def test_vllm_rank_rounding_zero_pads(tiny, ids, tmp_path):
    model = attach(tiny(), LoRAConfig(r=2, alpha=16))
    randomize_trainable(model)
    ours = _logits(model, ids)
    export_lora(model, tmp_path / "vllm")
    cfg = json.loads((tmp_path / "vllm" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 64  # scaling 16/2 = 64/8 kept
    assert cfg["prolora_export"]["rank"] == 2 and cfg["prolora_export"]["zero_padded"]
    t = load_file(str(tmp_path / "vllm" / "adapter_model.safetensors"))
    a = t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (8, 64) and b.shape == (64, 8)
    assert torch.count_nonzero(a[2:]) == 0 and torch.count_nonzero(b[:, 2:]) == 0
    torch.testing.assert_close(_peft_logits(tiny(), tmp_path / "vllm", ids), ours, rtol=0, atol=EXPORT_ATOL)
    # without vllm_compatible the rank stays 2
    export_lora(model, tmp_path / "plain", vllm_compatible=False)
    assert json.loads((tmp_path / "plain" / "adapter_config.json").read_text())["r"] == 2
    # r = 3: alpha*8/3 is not an integer, so the scaling is folded into lora_B (lora_alpha = r)
    model3 = attach(tiny(), PRoLoRAConfig(r=3, u=1, m=7))
    randomize_trainable(model3)
    export_lora(model3, tmp_path / "r3")
    cfg3 = json.loads((tmp_path / "r3" / "adapter_config.json").read_text())
    assert (cfg3["r"], cfg3["lora_alpha"], cfg3["prolora_export"]["scaling_folded_into_B"]) == (8, 8, True)
    torch.testing.assert_close(_peft_logits(tiny(), tmp_path / "r3", ids), _logits(model3, ids),
                               rtol=0, atol=EXPORT_ATOL)


def test_lora_matches_peft_lora_model(tiny, ids):
    ours = attach(tiny(), LoRAConfig(r=4, alpha=16, dropout=0.1))
    randomize_trainable(ours)
    peft_model = get_peft_model(tiny(), PeftLoraConfig(r=4, lora_alpha=16, lora_dropout=0.1,
                                                        target_modules=list(SEVEN_MODULES)))
    assert count_trainable(ours) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    with torch.no_grad():
        for path, layer in adapter_layers(ours).items():
            peft_layer = peft_model.base_model.model.get_submodule(path)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    torch.testing.assert_close(_logits(peft_model, ids), _logits(ours, ids), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- compact save / load


@pytest.mark.parametrize("name", ["lora", "vera", "tied_lora", "prolora", "share_rank_rotate_rank", "mos", "vblora",
                                  "lora_xs", "dora"])
def test_save_load_round_trip_bitwise(tiny, ids, tmp_path, name):
    model = attach(tiny(), CONFIGS[name])
    randomize_trainable(model, seed=3)
    out = save_adapter(model, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    stored = load_file(str(out / "adapter.safetensors"))
    trained = adapter_state(model)
    assert set(stored) == set(adapter_state(model, buffers=True))  # the trained tensors + the declared buffers
    assert sum(stored[k].numel() for k in trained) == count_trainable(model)

    fresh = load_adapter(tiny(), out)  # plain base: attaches first
    assert fresh.prolora_config == CONFIGS[name]
    src = adapter_state(model, buffers=True)
    for key, t in adapter_state(fresh, buffers=True).items():
        assert torch.equal(t, src[key]), key  # buffers too: MoS's indices, LoRA-XS's SVD factors
    assert torch.equal(_logits(fresh, ids), _logits(model, ids))

    # in place on an already-attached model
    other = attach(tiny(), CONFIGS[name])
    assert load_adapter(other, out) is other
    assert torch.equal(_logits(other, ids), _logits(model, ids))


def test_save_is_atomic_and_replaces(tiny, tmp_path):
    model = attach(tiny(), PRoLoRAConfig(r=8, u=1, m=7))
    save_adapter(model, tmp_path / "ckpt")
    randomize_trainable(model, seed=9)
    save_adapter(model, tmp_path / "ckpt")  # overwrite an existing checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp/old dirs left behind
    loaded = load_file(str(tmp_path / "ckpt" / "adapter.safetensors"))
    key = "model.layers.0.self_attn.q_proj.A_0"
    assert torch.equal(loaded[key], dict(model.named_parameters())[key])


def test_load_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_adapter(tiny(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        load_adapter(tiny(), tmp_path / "empty")
    model = attach(tiny(), PRoLoRAConfig(r=8, u=1, m=7))
    save_adapter(model, tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="carries"):
        load_adapter(attach(tiny(), LoRAConfig(r=8)), tmp_path / "ckpt")
    # a base model with other shapes
    from prolora.models import build_tiny_llama

    wider = build_tiny_llama(0, intermediate_size=200)
    with pytest.raises(ConfigError, match="shape"):
        load_adapter(wider, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "adapter.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter.safetensors is missing"):
        load_adapter(tiny(), tmp_path / "ckpt")


# ----------------------------------------------------------------------------- merge


@pytest.mark.parametrize("name", ["lora", "vera", "tied_lora", "prolora", "share_hidden_rotate_hidden", "mos", "vblora",
                                  "lora_xs", "dora"])
def test_merge_fp32(tiny, ids, name):
    model = attach(tiny(), CONFIGS[name])
    randomize_trainable(model)
    ours = _logits(model, ids)
    merged = merge(model)
    assert not adapter_layers(merged) and not hasattr(merged, "prolora_shared")
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert set(merged.state_dict()) == set(tiny().state_dict())  # a plain transformers model again
    torch.testing.assert_close(_logits(merged, ids), ours, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["prolora", "tied_lora", "lora_xs", "dora"])
def test_merge_4bit_dequantizes(tiny4bit, ids, name):
    model = attach(tiny4bit(), CONFIGS[name])
    randomize_trainable(model)
    ours = _logits(model, ids)
    merged = merge(model)
    q = merged.model.layers[0].self_attn.q_proj
    assert type(q) is torch.nn.Linear and q.weight.dtype == torch.float32
    torch.testing.assert_close(_logits(merged, ids), ours, rtol=0, atol=1e-4)


def test_non_finite_adapters_are_never_saved_or_loaded(tmp_path, tiny):
    model = attach(tiny(), LoRAConfig(r=2))
    good = save_adapter(model, tmp_path / "good")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"save_adapter: 1 non-finite value\(s\) in 1 tensor\(s\).*q_proj.lora_B"):
        save_adapter(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # a damaged file on disk: NaN written into it, or the file cut short, is named in the error
    from safetensors.torch import load_file, save_file

    weights = good / "adapter.safetensors"
    tensors = load_file(weights)
    key = next(iter(tensors))
    tensors[key][0, 0] = float("inf")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"load_adapter: 1 non-finite value.*of {weights}"):
        load_adapter(tiny(), good)
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match=f"load_adapter: {weights} is not a readable safetensors file"):
        load_adapter(tiny(), good)


def test_vllm_rank_is_the_smallest_vllm_rank_at_least_r():
    from prolora.export import VLLM_RANKS, vllm_rank

    assert [vllm_rank(r) for r in (1, 2, 8, 9, 16, 17, 32, 256, 257, 512)] == [1, 8, 8, 16, 16, 32, 32, 256, 320, 512]
    assert all(vllm_rank(r) == r for r in VLLM_RANKS)  # a vLLM rank is never padded
    with pytest.raises(ValueError, match="exceeds vLLM's largest"):
        vllm_rank(513)
