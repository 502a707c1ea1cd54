"""The compact forward of every method and PRoLoRA layout equals the expanded one, builds no expanded factor, and
takes tensors stacked per row (the form :mod:`prolora.serving` runs mixed batches with)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prolora import PRoLoRAConfig, adapter_layers, attach, make_config
from prolora.methods._rows import CompactForm
from prolora.methods.prolora import PRoLoRALayer
from tests.prolora.conftest import all_method_configs, randomize_trainable

# PRoLoRA layouts beyond the presets of all_method_configs: u = 0, u = r, a chunk one column wide, stride "full"
# with n != m, CLoRA with u > 0 (prolora_nr), Table 4 layouts with u = 0 and r - u not a multiple of m
LAYOUTS = {
    "u0": PRoLoRAConfig(r=16, u=0, m=5),
    "one_copy_u0": PRoLoRAConfig(r=4, u=0, m=1),  # k = 1: the A side's gather is the identity
    "u_eq_r": PRoLoRAConfig(r=8, u=8, m=7),
    "one_column_chunks": PRoLoRAConfig(r=5, u=2, m=64, n=32),
    "full_stride_n": PRoLoRAConfig(r=16, u=4, m=3, n=9, stride_from="full"),
    "clora_u2": make_config("prolora_nr", r=8, u=2, m=7, n=5),
    "srr_u0": make_config("share_rank_rotate_rank", r=9, u=0, m=4, n=2),
    "srh_u0": make_config("share_rank_rotate_hidden", r=9, u=0, m=4, n=2),
    "shh_m7n5": make_config("share_hidden_rotate_hidden", r=16, u=1, m=7, n=5),
    "srr_unrotated": make_config("prolora", r=9, u=1, m=3, share_dim="rank", rotate=False),
}
CONFIGS = {**all_method_configs(dropout=0.0), **LAYOUTS}
# methods whose term has a compact form for one adapter (their own ``delta_output``) but not the row-stacked
# protocol: prolora.serving runs their rows one adapter at a time.  Listed so that gaining or losing it is seen.
ONE_ADAPTER_AT_A_TIME = {"mos", "vblora", "dora"}
STACKED = sorted(n for n, c in CONFIGS.items() if c.method not in ONE_ADAPTER_AT_A_TIME)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compact_equals_expanded_on_every_layer(tiny, name):
    model = attach(tiny(), CONFIGS[name]).eval()
    randomize_trainable(model)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    for path, layer in adapter_layers(model).items():
        assert isinstance(layer, CompactForm) == (CONFIGS[name].method not in ONE_ADAPTER_AT_A_TIME)
        xin = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(2)) if \
            layer.in_features != 64 else x
        with torch.no_grad():
            dense = layer.base_layer.weight.to(torch.float32)
            merged = F.linear(xin, layer.merged_weight(dense) - dense)  # every method: the merged update's term
            got = layer.delta_output(xin, layer.base_layer(xin))
            assert got.shape == merged.shape == (3, 5, layer.out_features)
            assert _relative_error(got, merged) < 1e-5, path
            if isinstance(layer, CompactForm):
                assert _relative_error(got, layer.expanded_output(xin)) < 1e-5, path


# odd widths: h % m != 0, a last copy cut to a few columns, fewer copies than the sharing rate (5 = 2 + 2 + 1
# for m = 4), widths smaller than the rank
WIDTHS = [(50, 37), (5, 11), (13, 3)]


@pytest.mark.parametrize("name", ["prolora", "clora", "share_hidden_rotate_hidden", "share_rank_rotate_rank",
                                  "share_rank_rotate_hidden", "prolora_nr"])
@pytest.mark.parametrize("h,o", WIDTHS)
def test_compact_equals_expanded_on_odd_widths(name, h, o):
    fields = dict(r=7, m=4, n=3, dropout=0.0, **({} if name in ("clora",) else {"u": 1}))
    cfg = make_config(name, **fields)
    torch.manual_seed(0)
    layer = PRoLoRALayer(nn.Linear(h, o), cfg, "q_proj")
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.normal_()
        x = torch.randn(2, 3, h)
        got, want = layer.delta_output(x, None), layer.expanded_output(x)
    assert _relative_error(got, want) < 1e-5


def test_the_compact_forward_builds_no_expanded_factor(tiny, monkeypatch):
    """A forward never calls factors(), and no intermediate is as large as A_full (r x h) or B_full (o x r)."""
    model = attach(tiny(), PRoLoRAConfig(r=16, u=1, m=7)).eval()
    randomize_trainable(model)
    layer = adapter_layers(model)["model.layers.0.mlp.down_proj"]  # h 192, o 64

    def refuse(self):
        raise AssertionError("factors() called")

    monkeypatch.setattr(PRoLoRALayer, "factors", refuse)
    x = torch.randn(1, 1, layer.in_features)
    sizes: list[int] = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                sizes.append(out.numel())
            return out

    with torch.no_grad(), Record():
        layer.delta_output(x, layer.base_layer(x))
    smallest_factor = 16 * min(layer.in_features, layer.out_features)
    assert sizes and max(sizes) < smallest_factor, max(sizes)


@pytest.mark.parametrize("name", STACKED)
def test_tensors_stacked_per_row_give_each_rows_own_adapter(tiny, name):
    """Row b computed with adapter b's tensors, stacked along a leading row dim (and packed so), equals row b
    through adapter b's expanded factors."""
    models = []
    for seed in (1, 2, 3):
        m = attach(tiny(), CONFIGS[name]).eval()
        randomize_trainable(m, seed=seed)
        models.append(adapter_layers(m))
    x = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(3))
    for path, template in models[0].items():
        xin = x if template.in_features == 64 else torch.randn(3, 4, template.in_features)
        per_row = [layers[path].compact_tensors() for layers in models]
        stacked = {k: torch.stack([t[k] for t in per_row]) for k in per_row[0]}
        with torch.no_grad():
            got = template.compact_output(xin, None, template.pack(stacked))
            for b, layers in enumerate(models):
                alone = layers[path].expanded_output(xin[b:b + 1])
                assert _relative_error(got[b:b + 1], alone) < 1e-5, (path, b)


def test_a_forward_that_builds_a_graph_takes_the_expanded_product(tiny):
    """Training (grad enabled) runs expanded_output, measured faster forward + backward; inference the compact
    form; both give the same gradients' worth of output."""
    model = attach(tiny(), PRoLoRAConfig(r=8, u=1, m=7, dropout=0.0))
    randomize_trainable(model)
    layer = adapter_layers(model)["model.layers.1.mlp.up_proj"]
    x = torch.randn(2, 3, 64)
    trained = layer.delta_output(x, None)
    assert trained.requires_grad and torch.equal(trained, layer.expanded_output(x))
    with torch.no_grad():
        served = layer.delta_output(x, None)
    assert not torch.equal(served, trained.detach())  # another float order: the compact path ran
    assert _relative_error(served, trained.detach()) < 1e-5
