"""bitsandbytes' two CPU paths for 4-bit layers (prolora.bnb_cpu): the shipped models fit the packed path's
shape rules on ANY CPU, the default portable path is dequantize + linear everywhere, the packed path runs
where the CPU has it, and a width it cannot take (176) evaluates instead of crashing."""

from __future__ import annotations

import warnings

import pytest
import torch

from prolora import bnb_cpu
from prolora.models import ASSETS, build_tiny_llama, load_base_model

PACKED = bnb_cpu.has_packed_path()


def _quantized_weight(out_features: int, in_features: int):
    import bitsandbytes.functional as bnbf

    w = torch.randn(out_features, in_features)
    return bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)


def _bnb_packs(out_features: int, in_features: int) -> bool:
    """Run bitsandbytes' own repacking (plain tensor code: it runs on every CPU) on a weight of this shape."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    q, state = _quantized_weight(out_features, in_features)
    try:
        _convert_weight_packed_for_cpu(q, state)
    except (AssertionError, RuntimeError):
        return False
    return True


def _linear_shapes(config) -> set[tuple[int, int]]:
    """(in, out) of every linear transformers quantizes (all but the output head)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {(m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")}


def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_base_model(str(path), quantize=True, device="cpu", **kw)


@pytest.fixture(scope="module")
def tiny176(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny176")
    build_tiny_llama(seed=0, intermediate_size=176).save_pretrained(path)
    return path


def test_shipped_models_fit_bitsandbytes_packed_path_on_any_cpu():
    from transformers import AutoConfig

    from prolora.models import tiny_llama_config

    configs = {"tiny": tiny_llama_config(), "tiny_pretrained": AutoConfig.from_pretrained(ASSETS / "tiny_pretrained")}
    for name, config in configs.items():
        for h, o in sorted(_linear_shapes(config)):
            assert bnb_cpu.why_unpackable(h, o) is None, (name, h, o)
            assert _bnb_packs(o, h), f"{name}: bitsandbytes cannot repack a {h}->{o} layer for its CPU path"
        # PRoLoRA's truncated last chunk stays covered: some width is not a multiple of the sharing rate 7
        assert any(w % 7 for shape in _linear_shapes(config) for w in shape)


@pytest.mark.parametrize("h,o", [(64, 176), (176, 64), (64, 160), (160, 64), (64, 192), (192, 64), (128, 96), (64, 32)])
def test_shape_rule_agrees_with_bitsandbytes(h, o):
    assert (bnb_cpu.why_unpackable(h, o) is None) == _bnb_packs(o, h)


def _check_portable(model, x_dim_seed: int = 0) -> int:
    """Every 4-bit layer computes exactly dequantize + F.linear and is never repacked; returns the count."""
    import bitsandbytes.functional as bnbf

    g = torch.Generator().manual_seed(x_dim_seed)
    n = 0
    for name, m in model.named_modules():
        if getattr(getattr(m, "weight", None), "quant_state", None) is None:
            continue
        assert getattr(m, bnb_cpu.SWITCH) is False, name
        x = torch.randn(3, m.in_features, generator=g)
        with torch.no_grad():
            got = m(x)
        dense = bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state).to(x.dtype)
        assert torch.equal(got, torch.nn.functional.linear(x, dense)), name
        assert not getattr(m.weight.quant_state, "packing_format_for_cpu", False), name
        n += 1
    return n


def test_default_is_the_portable_path_on_every_cpu():
    model = _load(ASSETS / "tiny_pretrained")
    report = bnb_cpu.report(model)
    assert report["path"] == "portable" and report["packed_layers"] == 0
    assert report["cpu_avx512_bf16"] == PACKED
    assert _check_portable(model) == 14  # 2 layers x 7 linears


def test_width_176_evaluates_in_both_modes_and_names_the_layers_it_keeps_portable(tiny176, capsys):
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    portable = _load(tiny176)
    with torch.no_grad():
        ref = portable(ids).logits
    assert _check_portable(portable) == 14
    mixed = _load(tiny176, cpu_packed_4bit=True)
    report = bnb_cpu.report(mixed)
    mlp = {f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    with torch.no_grad():
        out = mixed(ids).logits  # no AssertionError from bitsandbytes on any CPU
    assert torch.isfinite(out).all()
    if PACKED:
        assert report["path"] == "mixed" and report["packed_layers"] == 8
        assert set(report["portable_layers"]) == mlp
        assert "176" in report["portable_layers"]["model.layers.0.mlp.down_proj"]
        assert "model.layers.0.mlp" in capsys.readouterr().out
        # the layers kept portable compute exactly what the portable model computes
        down = mixed.get_submodule("model.layers.1.mlp.down_proj")
        x = torch.randn(2, 176)
        with torch.no_grad():
            assert torch.equal(down(x), portable.get_submodule("model.layers.1.mlp.down_proj")(x))
        assert torch.allclose(out, ref, atol=0.05, rtol=0.05)
    else:
        assert report["path"] == "portable" and set(report["portable_layers"]) >= mlp
        assert torch.equal(out, ref)


@pytest.mark.skipif(not PACKED, reason="this CPU has no AVX512-BF16 packed 4-bit path")
def test_packed_path_runs_where_the_cpu_has_it_and_differs_by_bf16_rounding():
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    portable = _load(ASSETS / "tiny_pretrained")
    packed = _load(ASSETS / "tiny_pretrained", cpu_packed_4bit=True)
    assert bnb_cpu.report(packed)["path"] == "packed" and bnb_cpu.report(packed)["packed_layers"] == 14
    with torch.no_grad():
        a, b = portable(ids).logits, packed(ids).logits
    repacked = [n for n, m in packed.named_modules()
                if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]
    assert len(repacked) == 14
    assert not torch.equal(a, b)  # bf16 compute: not the same numbers, which is why it is opt-in
    assert torch.allclose(a, b, atol=0.1, rtol=0.05)
    import prolora

    model = prolora.attach(packed, prolora.LoRAConfig(r=2))
    with pytest.raises(ValueError, match="repacked"):
        prolora.merge(model)
    with pytest.raises(RuntimeError, match="already repacked"):
        bnb_cpu.configure(packed)
