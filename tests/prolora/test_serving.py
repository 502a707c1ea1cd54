"""Many adapters on one base model: a mixed batch gives each row what that row gives alone with its adapter
(attached the ordinary way), for every method, in fp32 and 4-bit; adapters are held as their saved tensors; a
method without a compact form is served one adapter at a time; misuse fails with one line."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from prolora import attach, count_trainable, load_adapter, make_config, save_adapter
from prolora.config import AdapterConfig, ConfigError
from prolora.methods import METHODS
from prolora.methods.base import AdapterLayer, Method
from prolora.serving import MultiAdapter
from prolora.inject import adapter_state
from tests.prolora.conftest import randomize_trainable

CONFIGS = {
    "lora": make_config("lora", r=4),
    "prolora_a": make_config("prolora", r=8, u=1, m=7),
    "prolora_b": make_config("prolora", r=8, u=1, m=7),  # same group as prolora_a, other weights
    "prolora_r16": make_config("prolora", r=16, u=2, m=7),
    "vera": make_config("vera", r=16),
    "tied_lora": make_config("tied_lora", r=16),
    "clora": make_config("clora", r=8, m=3),
    "share_rank_rotate_hidden": make_config("share_rank_rotate_hidden", r=8, u=2, m=3),
    # the methods after PRoLoRA: LoRA-XS row-stacked, MoS, VB-LoRA and DoRA one adapter at a time in the batch
    "lora_xs": make_config("lora_xs", r=8),
    "mos": make_config("mos", r=3, pool_rank=2, private_rank=1, shards=2),
    "vblora": make_config("vblora", r=4, num_vectors=16, vector_length=16),
    "dora": make_config("dora", r=4),
}


def _save(tmp_path, load_base, configs: dict[str, AdapterConfig]) -> dict[str, str]:
    dirs = {}
    for i, (name, cfg) in enumerate(configs.items()):
        model = attach(load_base(), cfg)
        randomize_trainable(model, seed=i + 1)
        dirs[name] = str(save_adapter(model, tmp_path / name))
    return dirs


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _check_rows_alone(load_base, dirs: dict[str, str], tol: float) -> None:
    names = [*dirs, None]
    base = load_base()
    served = MultiAdapter(base)
    for name, directory in dirs.items():
        served.load(name, directory)
    ids = torch.randint(3, 200, (len(names), 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        served.use(names)
        mixed = base(ids).logits
        for row, name in enumerate(names):
            alone = load_adapter(load_base(), dirs[name]).eval() if name else load_base()
            want = alone(ids[row:row + 1]).logits
            assert _rel(mixed[row:row + 1], want) < tol, name
            assert torch.equal(mixed[row].argmax(-1), want[0].argmax(-1)), name


def test_a_mixed_batch_gives_each_row_its_adapter_alone(tmp_path, tiny):
    dirs = _save(tmp_path, tiny, CONFIGS)
    _check_rows_alone(tiny, dirs, tol=1e-5)


def test_a_mixed_batch_on_a_4bit_base(tmp_path, tiny4bit):
    configs = {k: CONFIGS[k] for k in ("lora", "prolora_a", "prolora_b", "vera", "tied_lora")}
    dirs = _save(tmp_path, tiny4bit, configs)
    _check_rows_alone(tiny4bit, dirs, tol=1e-5)


def test_an_adapter_is_held_as_its_saved_tensors(tmp_path, tiny):
    dirs = _save(tmp_path, tiny, CONFIGS)
    served = MultiAdapter(tiny())
    for name, directory in dirs.items():
        served.load(name, directory)
    memory = served.memory()
    for name, cfg in CONFIGS.items():
        model = attach(tiny(), cfg)
        saved = adapter_state(model, buffers=True)  # what its checkpoint holds
        if name in ("mos", "vblora", "dora"):  # one by one: its attached layers (MoS: with its shard indices)
            assert memory.per_adapter[name] == sum(t.numel() * t.element_size() for t in saved.values()), name
        else:  # row-stacked: its trained tensors only (LoRA-XS's saved SVD factors are held once per group)
            assert memory.per_adapter[name] == 4 * count_trainable(model), name
    # the banks of row-stacked groups, and the adapters served one at a time (MoS, VB-LoRA, DoRA) beside them
    assert memory.adapters == memory.allocated
    assert memory.adapters + memory.one_by_one == sum(memory.per_adapter.values())
    assert memory.one_by_one == sum(memory.per_adapter[k] for k in ("mos", "vblora", "dora"))
    # a second adapter of a group costs its tensors and nothing else: the group's constants are held once
    before = served.memory()
    served.load("prolora_c", dirs["prolora_a"])  # grows the prolora group's bank from 2 to 4 slots
    served.load("prolora_d", dirs["prolora_b"])
    after = served.memory()
    slot = before.per_adapter["prolora_a"]
    assert after.adapters - before.adapters == 2 * slot and after.allocated - before.allocated == 2 * slot
    assert after.shared == before.shared > 0


def test_frozen_tensors_saved_with_each_adapter_are_held_once_where_equal(tmp_path, tiny):
    """LoRA-XS saves its SVD factors with every adapter: adapters of one base have them bit for bit, so a group
    holds them once and an adapter costs its r x r matrices; an adapter whose factors differ (computed on another
    machine) gets a group of its own, and every row is still its adapter alone."""
    cfg = CONFIGS["lora_xs"]
    dirs = _save(tmp_path, tiny, {"a": cfg, "b": cfg})
    model = load_adapter(tiny(), dirs["a"])
    factors = {k: t for k, t in adapter_state(model, buffers=True).items() if k.endswith("_svd")}
    factor_bytes = sum(t.numel() * t.element_size() for t in factors.values())
    trained = 4 * count_trainable(model)
    assert factor_bytes > 10 * trained
    served = MultiAdapter(tiny())
    served.load("a", dirs["a"])
    one = served.memory()
    served.load("b", dirs["b"])
    two = served.memory()
    assert two.per_adapter == {"a": trained, "b": trained}
    assert two.shared == one.shared and factor_bytes <= one.shared < factor_bytes + 1024  # the factors, once
    # another machine's factors: ulp-level differences make them another group, held beside the first
    other = {k: (t.nextafter(torch.tensor(math.inf)) if k.endswith("_svd") else t)
             for k, t in adapter_state(model, buffers=True).items()}
    served.add("c", cfg, other)
    three = served.memory()
    assert three.shared == two.shared + factor_bytes and three.per_adapter["c"] == trained
    assert served.owner["c"] is not served.owner["a"] and served.owner["a"] is served.owner["b"]
    ids = torch.randint(3, 200, (3, 6), generator=torch.Generator().manual_seed(3))
    moved = load_adapter(tiny(), dirs["a"]).eval()
    with torch.no_grad():
        for name, buffer in moved.named_buffers():
            if name.endswith("_svd"):
                buffer.copy_(buffer.nextafter(torch.tensor(math.inf)))
        served.use(["a", "b", "c"])
        mixed = served.model(ids).logits
        for row, want_model in enumerate([load_adapter(tiny(), dirs["a"]).eval(),
                                          load_adapter(tiny(), dirs["b"]).eval(), moved]):
            want = want_model(ids[row:row + 1]).logits
            assert _rel(mixed[row:row + 1], want) < 1e-5, row
    # the last adapter of a group gone, its factors go with it; the next adapter brings its own
    served.remove("c")
    assert served.memory().shared == two.shared


def test_removing_an_adapter_frees_its_slot_for_the_next(tmp_path, tiny):
    dirs = _save(tmp_path, tiny, {k: CONFIGS[k] for k in ("prolora_a", "prolora_b")})
    base = tiny()
    served = MultiAdapter(base)
    served.load("a", dirs["prolora_a"])
    served.load("b", dirs["prolora_b"])
    ids = torch.randint(3, 200, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), served.rows(["b"]):
        before = base(ids).logits
    allocated = served.memory().allocated
    served.remove("a")
    served.load("c", dirs["prolora_a"])
    assert served.memory().allocated == allocated and sorted(served.names) == ["b", "c"]
    with torch.no_grad(), served.rows(["b"]):
        assert torch.equal(base(ids).logits, before)
    with pytest.raises(KeyError, match="no adapter 'a'"):
        served.remove("a")


def test_kept_plans_are_reused_and_forgotten_when_adapters_change(tmp_path, tiny):
    """Alternating row sets reuse their gathered tensors; an adapter replaced under the same name is never
    served from a plan kept for its predecessor."""
    dirs = _save(tmp_path, tiny, {k: CONFIGS[k] for k in ("prolora_a", "prolora_b", "lora")})
    base = tiny()
    served = MultiAdapter(base)
    served.load("x", dirs["prolora_a"])
    served.load("y", dirs["prolora_b"])
    ids = torch.randint(3, 200, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        served.use(["x", "y"])
        first = base(ids).logits
        kept = served.plan
        served.use(["y"])
        served.use(["x", "y"])
        assert served.plan is kept and torch.equal(base(ids).logits, first)
        served.remove("x")
        served.load("x", dirs["lora"])  # another adapter under the old name
        served.use(["x", "y"])
        want = load_adapter(tiny(), dirs["lora"]).eval()(ids[:1]).logits
        assert served.plan is not kept and _rel(base(ids).logits[:1], want) < 1e-5
    tiny_cache = MultiAdapter(tiny(), plan_cache_bytes=1)  # nothing kept, everything still right
    tiny_cache.load("x", dirs["prolora_a"])
    tiny_cache.use(["x"])
    assert not tiny_cache.plans


# ----------------------------------------------------------------------------- a method without a compact form


@dataclass
class GateConfig(AdapterConfig):
    method: ClassVar[str] = "test_gate"


class GateLayer(AdapterLayer):
    """LoRA with a learned scalar gate, expanded only (no CompactForm): served one adapter at a time."""

    adapter_params = ("lora_A", "lora_B", "gate")

    def __init__(self, base_layer, config, path, shared=None):
        super().__init__(base_layer, config, path, shared)
        self.lora_A = self._param(config.r, self.in_features)
        self.lora_B = self._param(self.out_features, config.r)
        self.gate = self._param(1)
        if not self.lora_A.is_meta:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def factors(self):
        return self.lora_A, self.gate * self.lora_B


class Gate(Method):
    name = "test_gate"
    config_cls = GateConfig
    layer_cls = GateLayer


def test_a_method_without_a_compact_form_is_served_one_adapter_at_a_time(tmp_path, tiny, monkeypatch):
    monkeypatch.setitem(METHODS, "test_gate", Gate)
    configs = {"gate_a": GateConfig(r=4), "gate_b": GateConfig(r=4), "prolora": CONFIGS["prolora_a"]}
    dirs = _save(tmp_path, tiny, configs)
    _check_rows_alone(tiny, dirs, tol=1e-5)
    served = MultiAdapter(tiny())
    served.load("gate_a", dirs["gate_a"])
    assert served.memory().one_by_one == 4 * count_trainable(attach(tiny(), configs["gate_a"]))
    with pytest.raises(ConfigError, match="no compact form"):
        served.add("gate_c", configs["gate_a"], {})


# ----------------------------------------------------------------------------- misuse


def test_misuse_fails_with_one_line_naming_the_fix(tmp_path, tiny):
    dirs = _save(tmp_path, tiny, {"lora": CONFIGS["lora"]})
    with pytest.raises(ConfigError, match="has an adapter attached"):
        MultiAdapter(load_adapter(tiny(), dirs["lora"]))
    base = tiny()
    served = MultiAdapter(base)
    with pytest.raises(ConfigError, match="served already"):
        MultiAdapter(base)
    assert MultiAdapter.of(base) is served
    served.load("lora", dirs["lora"])
    with pytest.raises(ValueError, match="loaded already"):
        served.load("lora", dirs["lora"])
    ids = torch.randint(3, 200, (2, 4))
    with pytest.raises(RuntimeError, match="call use\\(names\\)"):
        base(ids)
    with pytest.raises(KeyError, match="not loaded"):
        served.use(["lora", "nobody"])
    served.use(["lora"])
    with pytest.raises(ValueError, match="named 1 rows but the forward has 2"):
        base(ids)
    state = {"model.layers.0.self_attn.q_proj.lora_A": torch.zeros(4, 64)}
    with pytest.raises(ConfigError, match="missing"):
        served.add("partial", CONFIGS["lora"], state)
    bad = dict(attach(tiny(), CONFIGS["lora"]).state_dict())
    full = {k: v for k, v in bad.items() if k.endswith(("lora_A", "lora_B"))}
    full["model.layers.0.self_attn.q_proj.lora_A"] = torch.full((4, 64), float("nan"))
    with pytest.raises(ConfigError, match="non-finite"):
        served.add("nan", CONFIGS["lora"], full)
    assert served.names == ["lora"]
