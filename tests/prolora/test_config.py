"""Bad configs raise one clear error naming the field (and the layer path for layer-dependent checks)."""

from __future__ import annotations

import pytest
import torch

from prolora import (
    ConfigError,
    LoRAConfig,
    PRoLoRAConfig,
    TiedLoRAConfig,
    VeRAConfig,
    adapter_layers,
    attach,
    config_from_dict,
    make_config,
)


@pytest.mark.parametrize("fields,pattern", [
    (dict(r=8, u=9), r"PRoLoRAConfig\.u=9 .*cannot exceed r=8.*use u <= 8"),
    (dict(r=8, u=-1), r"PRoLoRAConfig\.u=-1 .*>= 0"),
    (dict(m=0), r"PRoLoRAConfig\.m=0 .*>= 1"),
    (dict(n=0), r"PRoLoRAConfig\.n=0 .*>= 1"),
    (dict(r=0), r"PRoLoRAConfig\.r=0 .*>= 1"),
    (dict(share_dim="width"), r"PRoLoRAConfig\.share_dim='width' .*known: \['hidden', 'rank'\]"),
    (dict(rotate_dim="diag"), r"rotate_dim='diag'"),
    (dict(stride_from="half"), r"stride_from='half'"),
    (dict(dropout=1.5), r"dropout=1\.5 .*\[0, 1\)"),
    (dict(share_dim="rank", r=8, u=1, m=8), r"PRoLoRAConfig\.m=8 .*r-u=7.*use m <= 7"),
    (dict(rotate_dim="hidden", stride_from="full"), r"stride_from='full'"),
    (dict(target_modules=[]), r"target_modules"),
])
def test_prolora_config_errors(fields, pattern):
    with pytest.raises(ConfigError, match=pattern):
        PRoLoRAConfig(**fields)


def test_other_config_errors():
    with pytest.raises(ConfigError, match=r"LoRAConfig\.r=-2"):
        LoRAConfig(r=-2)
    with pytest.raises(ConfigError, match=r"TiedLoRAConfig\.target_modules=.*only adapts"):
        TiedLoRAConfig(target_modules=["q_proj", "o_proj"])
    with pytest.raises(ConfigError, match=r"VeRAConfig\.projection_seed=-1"):
        VeRAConfig(projection_seed=-1)


def test_make_config():
    cfg = make_config("prolora", r=8, u=1, m=7, n=None, rotate=True, rectified_init=True, share_dim=None,
                      rotate_dim=None, stride_from=None, d_init=None, projection_seed=None, alpha=16.0,
                      dropout=0.1, target_modules=["q_proj", "v_proj"])
    assert isinstance(cfg, PRoLoRAConfig) and (cfg.r, cfg.u, cfg.m, cfg.n) == (8, 1, 7, 7)
    assert cfg.target_modules == ["q_proj", "v_proj"]
    clora = make_config("clora", r=16, m=2)
    assert (clora.u, clora.rotate, clora.preset) == (0, False, "clora")
    assert make_config("prolora_ni", r=16, u=7, m=9).rectified_init is False
    assert make_config("share_rank_rotate_hidden", r=32, u=4, m=7).share_dim == "rank"
    vera = make_config("vera", r=256, d_init=0.1, projection_seed=0, u=None, m=None, alpha=16.0)
    assert isinstance(vera, VeRAConfig)
    assert config_from_dict(cfg.to_dict()) == cfg and config_from_dict(vera.to_dict()) == vera
    with pytest.raises(ConfigError, match=r"unknown adapter method 'nola'; known: \[.*'prolora'.*'vera'"):
        make_config("nola", r=8)
    with pytest.raises(ConfigError, match=r"method 'lora' has no field\(s\) \['u'\]"):
        make_config("lora", r=8, u=1)
    with pytest.raises(ConfigError, match=r"preset 'clora' fixes u=0"):
        make_config("clora", r=16, u=2, m=2)
    with pytest.raises(ConfigError, match=r"preset 'prolora_nr' fixes rotate=False"):
        make_config("prolora_nr", rotate=True)


def test_errors_carry_the_field_as_data():
    with pytest.raises(ConfigError) as err:
        PRoLoRAConfig(r=8, u=9)
    assert (err.value.field, err.value.value, err.value.config) == ("u", 9, "PRoLoRAConfig")
    with pytest.raises(ConfigError) as err:
        make_config("lora", r=8, u=1)
    assert (err.value.field, err.value.value, err.value.config) == ("u", 1, "LoRAConfig")
    with pytest.raises(ConfigError) as err:
        make_config("clora", r=16, u=2, m=2)
    assert (err.value.field, err.value.value) == ("u", 2)
    with pytest.raises(ConfigError) as err:
        make_config("nola", r=8)
    assert (err.value.field, err.value.value) == ("method", "nola")


def test_the_test_configs_cover_every_method_and_preset():
    from prolora import known_names

    from .conftest import all_method_configs

    assert set(known_names()) <= {cfg.name for cfg in all_method_configs().values()}


def test_layer_dependent_errors_name_field_and_layer(tiny):
    model = tiny()
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ConfigError, match=r"PRoLoRAConfig\.m=100 .*layer model\.layers\.0\.self_attn\.q_proj "
                                          r"\(in_features=64\).*use m <= 64"):
        attach(model, PRoLoRAConfig(r=8, u=1, m=100, n=2))
    with pytest.raises(ConfigError, match=r"PRoLoRAConfig\.n=40 .*layer model\.layers\.0\.self_attn\.k_proj "
                                          r"\(out_features=32\)"):
        attach(model, PRoLoRAConfig(r=8, u=1, m=2, n=40))
    with pytest.raises(ConfigError, match=r"target_modules=.*\['foo_proj'\] match no layer of LlamaForCausalLM"):
        attach(model, LoRAConfig(target_modules=["q_proj", "foo_proj"]))
    with pytest.raises(ConfigError, match=r"'model' selects layer model \(LlamaModel\)"):
        attach(model, LoRAConfig(target_modules=["model"]))
    # nothing was modified by the failed attaches
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert all(p.requires_grad for p in model.parameters())
    attach(model, LoRAConfig(r=2))
    with pytest.raises(ConfigError, match="already has an adapter"):
        attach(model, LoRAConfig(r=2))
    assert len(adapter_layers(model)) == 14


def test_meta_device_attach_every_method():
    from prolora.counting import meta_model
    from prolora.models import TINY_DIR

    from .conftest import all_method_configs

    for name, cfg in all_method_configs().items():
        model = attach(meta_model(str(TINY_DIR)), cfg)
        assert all(p.is_meta for p in model.parameters()), name
        layer = next(iter(adapter_layers(model).values()))
        a, b = layer.factors()
        assert a.is_meta and a.shape == (cfg.r, 64) and b.shape == (64, cfg.r)
        assert torch.Size(layer.delta_weight().shape) == (64, 64)
