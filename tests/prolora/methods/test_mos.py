"""MoS against a slow reference written from the official code (pools per module type, l shards side by side per
rank, public shards drawn without replacement, private slots by layer, A and B drawn apart), its init, counts
(exactly LoRA rank e, whatever the active rank), the compact form, and the layer-count constraint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prolora import ConfigError, LoRAConfig, adapter_layers, attach, count_for, count_trainable, make_config
from tests.prolora.conftest import randomize_trainable

CFG = dict(r=5, pool_rank=3, private_rank=1, shards=4)  # 2 layers: 2·2·4 = 16 public shards, 4·4 drawn per module


def ref_factors(layer, pools, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``transform_chunks``: select r·l shards, rank j = shards j·l … j·l + l − 1 concatenated."""
    k = cfg.shards
    a_rows, b_cols = [], []
    for j in range(cfg.r):
        a_rows.append(torch.cat([pools.A[layer.module_type][int(layer.index_A[j * k + i])] for i in range(k)]))
        b_cols.append(torch.cat([pools.B[layer.module_type][int(layer.index_B[j * k + i])] for i in range(k)]))
    return torch.stack(a_rows), torch.stack(b_cols, dim=1)


def test_factors_equal_the_reference_and_indices_follow_the_code(tiny):
    cfg = make_config("mos", **CFG)
    model = attach(tiny(), cfg)
    randomize_trainable(model, seed=1)
    pools = model.prolora_shared["mos"]
    public = (cfg.pool_rank - cfg.private_rank) * 2 * cfg.shards
    for path, layer in adapter_layers(model).items():
        a, b = layer.factors()
        ra, rb = ref_factors(layer, pools, cfg)
        assert torch.equal(a, ra) and torch.equal(b, rb), path
        position = int(path.split(".")[2])  # the layer's index among its type's layers
        private = list(range(public + position * cfg.shards, public + (position + 1) * cfg.shards))
        for idx in (layer.index_A, layer.index_B):
            shared = idx[: (cfg.r - cfg.private_rank) * cfg.shards].tolist()
            assert len(set(shared)) == len(shared) and all(0 <= i < public for i in shared)  # without replacement
            assert idx[len(shared):].tolist() == private  # this layer's private slots, the same for A and B
    drawn = [tuple(layer.index_A.tolist()) != tuple(layer.index_B.tolist()) for layer in adapter_layers(model).values()]
    assert sum(drawn) >= 13  # pair dissociation: A and B pick their public shards apart


def test_pools_are_shared_per_module_type_and_start_at_zero_update(tiny, ids):
    model = attach(tiny(), make_config("mos", **CFG))
    pools = model.prolora_shared["mos"]
    assert pools.A["q_proj"].shape == (3 * 2 * 4, 16) and pools.B["down_proj"].shape == (24, 16)  # e·L·l × h/l
    assert pools.A["down_proj"].abs().max() <= 1 / math.sqrt(192) and torch.count_nonzero(pools.B["q_proj"]) == 0
    assert pools.A["q_proj"].abs().max() > 0.9 / math.sqrt(64)  # Kaiming bound of the whole vector's fan-in
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny()(ids).logits)
    assert not any(p.requires_grad for layer in adapter_layers(model).values() for p in layer.parameters(recurse=False))


def test_compact_forward_equals_expanded(tiny):
    model = attach(tiny(), make_config("mos", dropout=0.0, **CFG))
    randomize_trainable(model, seed=2)
    for layer in adapter_layers(model).values():
        x = torch.randn(4, 6, layer.in_features)
        a, b = layer.factors()
        with torch.no_grad():
            expanded = layer.scaling * F.linear(F.linear(x, a), b)
            compact = layer.delta_output(x, layer.base_layer(x))
        torch.testing.assert_close(compact, expanded, rtol=1e-5, atol=1e-5 * expanded.abs().max().item())


def test_count_is_lora_rank_e_whatever_the_active_rank(tiny):
    for r in (2, 3, 5):
        cfg = make_config("mos", r=r, pool_rank=3, private_rank=1, shards=2)
        assert count_trainable(attach(tiny(), cfg)) == count_trainable(attach(tiny(), LoRAConfig(r=3)))
    # LLaMA2-7B: e·Σ(h+o) = 2 x 32 x 78,080, as the authors' model_param_summary.txt prints for lora_r 8..64
    for r, p in ((8, 1), (33, 1), (64, 0)):  # p = 1 allows r <= (e - p)·L + p = 33; p = 0 allows 64
        assert count_for("llama2_7b", make_config("mos", r=r, pool_rank=2, private_rank=p, shards=4)) == 4_997_120


def test_errors(tiny):
    with pytest.raises(ConfigError, match=r"MoSConfig\.r=6 is invalid for 2 q_proj layer\(s\).*use r <= 5"):
        attach(tiny(), make_config("mos", r=6, pool_rank=3, private_rank=1, shards=4))
    with pytest.raises(ConfigError, match=r"MoSConfig\.shards=5 .*q_proj \(in_features=64\)"):
        attach(tiny(), make_config("mos", r=2, pool_rank=2, private_rank=1, shards=5))
    with pytest.raises(ConfigError, match=r"MoSConfig\.r=4 .*leaves no public shards"):
        make_config("mos", r=4, pool_rank=2, private_rank=2)
    with pytest.raises(ConfigError, match=r"MoSConfig\.private_rank=3 .*cannot exceed pool_rank=2"):
        make_config("mos", r=8, pool_rank=2, private_rank=3)
    assert make_config("mos", r=2, pool_rank=2, private_rank=2).tag() == "mos_r2_e2_p2_l4"  # all private is LoRA-like
