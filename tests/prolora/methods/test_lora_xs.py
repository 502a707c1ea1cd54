"""LoRA-XS: the frozen factors are the truncated SVD of the (dequantized) base weight, R is the only trained
tensor, the compact forward equals the expanded one, the saved factors are what a load restores, r² counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prolora import (
    ConfigError,
    adapter_layers,
    attach,
    count_for,
    count_trainable,
    load_adapter,
    make_config,
    save_adapter,
)
from prolora.methods._dense import dense_weight
from prolora.models import build_tiny_llama
from tests.prolora.conftest import randomize_trainable


def rank_r_approximation(weight: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


@pytest.mark.parametrize("svd", ["exact", "randomized"])
def test_factors_are_the_truncated_svd_of_the_dequantized_weight(tiny4bit, svd):
    model = attach(tiny4bit(), make_config("lora_xs", r=8, svd=svd))
    for path, layer in adapter_layers(model).items():
        dense = dense_weight(layer.base_layer)  # NF4 -> fp32, what the 4-bit forward multiplies by
        best = rank_r_approximation(dense, 8)
        b, a = layer.B_svd, layer.A_svd
        torch.testing.assert_close(b.t() @ b, torch.eye(8), rtol=0, atol=1e-4)  # B = U_r: orthonormal columns
        if svd == "exact":  # Σ_r V_rᵀ on the input side: B A is the best rank-r approximation itself
            torch.testing.assert_close(b @ a, best, rtol=0, atol=1e-5 * best.abs().max().item())
        else:  # randomized (10 power iterations): within 1% of the best rank-r residual
            ratio = (dense - b @ a).norm() / (dense - best).norm()
            assert 1 - 1e-5 <= ratio < 1.01, (path, ratio.item())
        assert not layer.A_svd.requires_grad and not layer.B_svd.requires_grad


def test_r_is_the_only_trained_tensor_and_starts_tiny(tiny):
    model = attach(tiny(), make_config("lora_xs", r=8))
    assert count_trainable(model) == 14 * 64
    assert {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad} == {"R"}
    r_all = torch.cat([layer.R.flatten() for layer in adapter_layers(model).values()])
    assert 5e-6 < r_all.std() < 2e-5 and torch.count_nonzero(r_all) == r_all.numel()  # N(0, 1e-5²), not zero
    assert model.model.layers[0].self_attn.q_proj.scaling == 1.0  # alpha defaults to r (the authors' s = 1)
    assert make_config("lora_xs", r=8, alpha=16).alpha == 16.0


def test_randomized_svd_is_repeatable(tiny):
    one = attach(tiny(), make_config("lora_xs", r=8))
    two = attach(tiny(), make_config("lora_xs", r=8))
    for (path, a), b in zip(adapter_layers(one).items(), adapter_layers(two).values()):
        assert torch.equal(a.A_svd, b.A_svd) and torch.equal(a.B_svd, b.B_svd), path


def test_compact_forward_equals_expanded(tiny):
    model = attach(tiny(), make_config("lora_xs", r=16, dropout=0.0))
    randomize_trainable(model)
    for layer in list(adapter_layers(model).values())[:7]:
        x = torch.randn(2, 9, layer.in_features)
        a, b = layer.factors()
        with torch.no_grad():
            expanded = layer.scaling * F.linear(F.linear(x, a), b)
            compact = layer.delta_output(x, layer.base_layer(x))
        torch.testing.assert_close(compact, expanded, rtol=1e-5, atol=1e-5 * expanded.abs().max().item())


def test_a_load_restores_the_saved_factors_never_recomputes_them(tiny, ids, tmp_path):
    """A trained R is only valid with its factors: loading onto a base with other weights (or another LAPACK's
    SVD signs) must bring the saved A and B, not a fresh SVD."""
    model = attach(tiny(0), make_config("lora_xs", r=8))
    randomize_trainable(model, seed=4)
    save_adapter(model, tmp_path / "ckpt")
    fresh = load_adapter(tiny(7), tmp_path / "ckpt")  # the same shapes, other weights: another SVD
    recomputed = attach(tiny(7), make_config("lora_xs", r=8)).model.layers[0].self_attn.q_proj
    layer, saved = fresh.model.layers[0].self_attn.q_proj, model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.A_svd, saved.A_svd) and torch.equal(layer.B_svd, saved.B_svd)
    assert not torch.allclose(recomputed.A_svd, saved.A_svd)


def test_count_and_errors():
    assert count_for("llama2_7b", make_config("lora_xs", r=149)) == 224 * 149**2 == 4_973_024
    with pytest.raises(ConfigError, match=r"LoRAXSConfig\.r=40 .*k_proj \(64->32\).*use r <= 32"):
        attach(build_tiny_llama(0), make_config("lora_xs", r=40))
    with pytest.raises(ConfigError, match=r"LoRAXSConfig\.svd='qr'"):
        make_config("lora_xs", svd="qr")
