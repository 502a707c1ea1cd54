"""Fixtures for the adapter-library tests: the tiny Llama (fp32 or 4-bit NF4), a fixed batch, helpers."""

from __future__ import annotations

import warnings

import pytest
import torch

from prolora import LoRAConfig, PRoLoRAConfig, TiedLoRAConfig, VeRAConfig, make_config
from prolora.models import TINY_DIR, build_tiny_llama, load_base_model


def all_method_configs(dropout: float = 0.1) -> dict[str, object]:
    """One small config per method/preset (tiny model: h 64, o 64/32/192; MoS r3 e2 p1 is the most a 2-layer
    model's public pool allows)."""
    return {
        "lora": LoRAConfig(r=4, dropout=dropout),
        "vera": VeRAConfig(r=16, dropout=dropout),
        "tied_lora": TiedLoRAConfig(r=16, dropout=dropout),
        "prolora": PRoLoRAConfig(r=8, u=1, m=7, dropout=dropout),
        "clora": make_config("clora", r=8, m=3, dropout=dropout),
        "rolora": make_config("rolora", r=8, m=3, dropout=dropout),
        "prolora_full_stride": PRoLoRAConfig(r=16, u=4, m=3, n=5, stride_from="full", dropout=dropout),
        "share_hidden_rotate_hidden": make_config("share_hidden_rotate_hidden", r=8, u=2, m=7, dropout=dropout),
        "share_rank_rotate_rank": make_config("share_rank_rotate_rank", r=8, u=2, m=3, dropout=dropout),
        "share_rank_rotate_hidden": make_config("share_rank_rotate_hidden", r=8, u=2, m=3, dropout=dropout),
        "prolora_nr": make_config("prolora_nr", r=8, u=2, m=3, dropout=dropout),
        "prolora_ni": make_config("prolora_ni", r=8, u=2, m=3, dropout=dropout),
        "mos": make_config("mos", r=3, pool_rank=2, private_rank=1, shards=2, dropout=dropout),
        "vblora": make_config("vblora", r=4, num_vectors=16, vector_length=16, dropout=dropout),
        "lora_xs": make_config("lora_xs", r=8, dropout=dropout),
        "dora": make_config("dora", r=4, dropout=dropout),
    }


def randomize_trainable(model: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> None:
    """Random nonzero values in every trainable tensor (B, λ_b, v included) so that ΔW ≠ 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, 200, (2, 12), generator=g)


@pytest.fixture
def tiny():
    return lambda seed=0: build_tiny_llama(seed)


@pytest.fixture
def tiny4bit(tmp_path_factory):
    """``load(seed)``: the tiny Llama with random weights of ``seed``, saved and loaded in 4-bit NF4 through
    the real loader (seed 0 is the shipped ``prolora/assets/tiny``)."""

    def load(seed: int = 0):
        path = TINY_DIR
        if seed:
            path = tmp_path_factory.mktemp(f"tiny_seed{seed}")
            build_tiny_llama(seed).save_pretrained(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_base_model(str(path), quantize=True, device="cpu")

    return load
