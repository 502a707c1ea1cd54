"""Table 2's Param column on the meta-device LLaMA2-7B, 13B/70B from their real shapes, every method against
its closed-form count, the paper's h/m formula, the depth extrapolation, and the budget solver."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from prolora import (
    LoRAConfig,
    PRoLoRAConfig,
    TiedLoRAConfig,
    VeRAConfig,
    attach,
    count_by_module_type,
    count_for,
    count_trainable,
    make_config,
    paper_count,
    solve_sharing,
)
from prolora.counting import meta_model
from prolora.models import LLAMA2_CONFIGS

SHAPE_CONFIGS = {
    "lora_r2": LoRAConfig(r=2), "vera_r256": VeRAConfig(r=256), "tied_r280": TiedLoRAConfig(r=280),
    "prolora_r8u1m7": PRoLoRAConfig(r=8, u=1, m=7), "prolora_r16u7m9n5": PRoLoRAConfig(r=16, u=7, m=9, n=5),
    "clora_r16m2": make_config("clora", r=16, m=2), "lora_qv": LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]),
    "share_rank_r32u4m7": make_config("share_rank_rotate_rank", r=32, u=4, m=7),
    "mos_r8e2p1l4": make_config("mos", r=8, pool_rank=2, private_rank=1, shards=4),
    "mos_r16e3p0l2_qv": make_config("mos", r=16, pool_rank=3, private_rank=0, shards=2,
                                    target_modules=["q_proj", "v_proj"]),
    "vblora_r4n256b256": make_config("vblora", r=4, num_vectors=256, vector_length=256),
    "vblora_r2n90b128": make_config("vblora", r=2, num_vectors=90, vector_length=128),
    "lora_xs_r149": make_config("lora_xs", r=149),
    "dora_r1": make_config("dora", r=1),
    "dora_r7": make_config("dora", r=7),
}


def reference_count(model: str, config, paper_formula: bool = False):
    """The closed-form count of each method from the published layer shapes (the paper's section 3 and the
    methods' own papers): an independent check of the counter, which attaches the real layers."""
    c = LLAMA2_CONFIGS[model]
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    mods = [shapes[t] for t in config.target_modules]
    r = config.r
    if config.method == "lora":
        return layers * sum(r * (i + o) for i, o in mods)
    if config.method == "vera":  # lambda_d (r) + lambda_b (o) per module; the frozen pair is not counted
        return layers * sum(r + o for _, o in mods)
    if config.method == "tied_lora":  # A (r x d), one B per q/k/v, per layer u (r) and v (sum of o)
        outs = sum(o for _, o in mods)
        return r * mods[0][0] + r * outs + layers * (r + outs)
    if config.method == "mos":  # per module type two pools of e * layers * l shards of h/l and o/l
        e, sh = config.pool_rank, config.shards
        return sum(e * layers * sh * (i // sh + o // sh) for i, o in mods)
    if config.method == "vblora":  # the bank once + per module r*(h/b) + (o/b)*r sub-vectors of N logits each
        n, b = config.num_vectors, config.vector_length
        return n * b + layers * sum(r * (i // b) * n + (o // b) * r * n for i, o in mods)
    if config.method == "lora_xs":  # one r x r matrix per module
        return layers * len(mods) * r * r
    if config.method == "dora":  # LoRA + one magnitude per output feature
        return layers * sum(r * (i + o) + o for i, o in mods)
    u, m, n, s = config.u, config.m, config.n, config.r - config.u
    if config.share_dim == "hidden":
        if paper_formula:
            return layers * sum(u * (i + o) + Fraction(i, m) * s + Fraction(o, n) * s for i, o in mods)
        return layers * sum(u * (i + o) + math.ceil(i / m) * s + math.ceil(o / n) * s for i, o in mods)
    return layers * sum(u * (i + o) + math.ceil(s / m) * i + math.ceil(s / n) * o for i, o in mods)


@pytest.mark.parametrize("model", sorted(LLAMA2_CONFIGS))
@pytest.mark.parametrize("name", sorted(SHAPE_CONFIGS))
def test_counter_equals_closed_form(model, name):
    config = SHAPE_CONFIGS[name]
    assert count_for(model, config) == reference_count(model, config)
    assert paper_count(model, config) == reference_count(model, config, paper_formula=True)


@pytest.mark.parametrize("name", ["tied_r280", "prolora_r8u1m7", "vera_r256"])
def test_depth_extrapolation_equals_counting_the_whole_model(name):
    """count_for counts 1-3 layer skeletons and extrapolates; attaching to all 32 layers gives the same."""
    config = SHAPE_CONFIGS[name]
    assert count_for("llama2_7b", config) == count_trainable(attach(meta_model("llama2_7b"), config))


@pytest.mark.parametrize("config,expected", [
    (LoRAConfig(r=2), 4_997_120),
    (LoRAConfig(r=8), 19_988_480),
    (LoRAConfig(r=16), 39_976_960),
    (VeRAConfig(r=256), 1_417_216),
    (TiedLoRAConfig(r=256), 4_595_712),
    (TiedLoRAConfig(r=280), 4_989_696),
    (PRoLoRAConfig(r=8, u=1, m=7, n=7), 4_999_520),
], ids=["lora_r2", "lora_r8", "lora_r16", "vera_r256", "tied_r256", "tied_r280", "prolora_r8u1m7"])
def test_table2_param_column_llama2_7b(config, expected):
    assert count_for("llama2_7b", config) == expected


def test_llama2_7b_per_rank_and_paper_formula():
    # 78,080 per layer per LoRA rank: 4*(4096+4096) + 3*(4096+11008)
    assert 4 * 8192 + 3 * 15104 == 78_080
    assert count_for("llama2_7b", LoRAConfig(r=1)) == 32 * 78_080
    # PRoLoRA r8 u1 m7 with the paper's h/m (fractional) formula is exactly LoRA r2.
    paper = 32 * (1 * 78_080 + 7 * 78_080 / 7)
    assert paper == 4_997_120
    # the real ceil(h/m) count: per layer 78,080 + 7 * (4*(586+586) + 3*(586+1573))
    assert 32 * (78_080 + 7 * (4 * 1172 + 3 * 2159)) == 4_999_520


def test_meta_model_by_module_type_breakdown():
    model = attach(meta_model("llama2_7b"), PRoLoRAConfig(r=8, u=1, m=7))
    assert next(model.parameters()).is_meta
    by_type = count_by_module_type(model)
    assert by_type["q_proj"] == 32 * (8192 + 7 * (586 + 586))
    assert by_type["down_proj"] == 32 * (15104 + 7 * (1573 + 586))
    assert sum(by_type.values()) == count_trainable(model) == 4_999_520


def _sum_h_plus_o(h: int, inter: int, kv: int) -> int:
    """Per-layer sum of (in + out) over q, k, v, o, gate, up, down."""
    return (h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + inter) + (inter + h)


def test_13b_and_70b_from_real_shapes():
    s13 = _sum_h_plus_o(5120, 13824, 5120)
    s70 = _sum_h_plus_o(8192, 28672, 1024)  # GQA: k/v 8 heads x 128 = 1024 wide
    assert s13 == 97_792 and s70 == 161_792
    assert count_for("llama2_13b", LoRAConfig(r=2)) == 40 * 2 * s13 == 7_823_360
    assert count_for("llama2_70b", LoRAConfig(r=8)) == 80 * 8 * s70
    # PRoLoRA r8 u1 m7 on 13B with ceil(h/m) chunks
    c = math.ceil
    per13 = s13 + 7 * (4 * (c(5120 / 7) * 2) + 3 * (c(5120 / 7) + c(13824 / 7)))
    assert count_for("llama2_13b", PRoLoRAConfig(r=8, u=1, m=7)) == 40 * per13
    # VeRA on 70B: per module r + o
    outs = 8192 + 1024 + 1024 + 8192 + 28672 + 28672 + 8192
    assert count_for("llama2_70b", VeRAConfig(r=256)) == 80 * (7 * 256 + outs)
    # Tied LoRA on 70B: A (r x 8192) + B_q/B_k/B_v + per layer u (r) and v (8192 + 1024 + 1024)
    r = 256
    assert count_for("llama2_70b", TiedLoRAConfig(r=r)) == r * 8192 + r * (8192 + 1024 + 1024) + 80 * (r + 10240)


@pytest.mark.parametrize("r,u,k,m", [(8, 1, 2, 7), (4, 1, 2, 3), (16, 7, 8, 9), (32, 4, 8, 7), (32, 0, 8, 4)])
def test_solver_paper_counting_spec_cases(r, u, k, m):
    sol = solve_sharing("llama2_7b", r, u, {"lora_rank": k})
    assert (sol.m, sol.n, sol.exact, sol.status) == (m, m, True, "exact")
    assert sol.target_count == k * 32 * 78_080 == sol.paper_count
    assert sol.count == count_for("llama2_7b", PRoLoRAConfig(r=r, u=u, m=m))  # real ceil count reported
    assert sol.count >= sol.target_count


def test_solver_ceil_counting_and_param_targets():
    # ceil chunks: r8 u1 m7 is 2,400 over LoRA r2, so the nearest count under it is m = 8.
    sol = solve_sharing("llama2_7b", 8, 1, lora_rank=2, counting="ceil")
    assert (sol.m, sol.exact, sol.count) == (8, False, 4_684_800)
    assert sol.count < sol.target_count == 4_997_120
    # 4096 and 11008 are divisible by 4: r32 u0 m4 meets LoRA r8 exactly in both countings.
    sol = solve_sharing("llama2_7b", 32, 0, lora_rank=8, counting="ceil")
    assert (sol.m, sol.exact, sol.count) == (4, True, 19_988_480)
    # a parameter-count target: the exact real count of r8 u1 m7
    sol = solve_sharing("llama2_7b", 8, 1, 4_999_520, counting="ceil")
    assert (sol.m, sol.exact) == (7, True)
    sol = solve_sharing("llama2_7b", 8, 1, {"params": 5_000_000})
    assert sol.m == 7 and not sol.exact and sol.paper_count < 5_000_000
    with pytest.raises(ValueError, match="lower u or r"):
        solve_sharing("llama2_7b", 8, 4, lora_rank=2)


def test_presets_budgets_on_7b():
    assert count_for("llama2_7b", make_config("clora", r=16, m=2)) == count_for("llama2_7b", LoRAConfig(r=8))
    assert count_for("llama2_7b", make_config("share_rank_rotate_rank", r=32, u=4, m=7)) == 19_988_480
    pro = count_for("llama2_7b", make_config("prolora", r=32, u=4, m=7))
    assert abs(pro / 19_988_480 - 1) < 1e-3


# ----------------------------------------------------------------------------- the budget solver, every method

BUDGET_SPECS = {  # method -> the fields the matched-budget grid fixes at LLaMA2-7B shapes
    "lora": {}, "vera": {}, "tied_lora": {}, "prolora": {"r": 8, "u": 1}, "clora": {"r": 8}, "rolora": {"r": 8},
    "mos": {"r": 8, "private_rank": 1, "shards": 4}, "vblora": {"r": 4, "vector_length": 256}, "lora_xs": {},
    "dora": {},
}


@pytest.mark.parametrize("lora_rank", [2, 8])
@pytest.mark.parametrize("name", sorted(BUDGET_SPECS))
def test_solve_budget_is_closest_without_exceeding(name, lora_rank):
    """The solved knob fits the budget and one step further (up for a cost that grows with it, down for m) does
    not, unless the knob's cap stopped it."""
    from prolora import solve_budget

    sol = solve_budget("llama2_7b", name, {"lora_rank": lora_rank}, **BUDGET_SPECS[name])
    assert sol.target_count == count_for("llama2_7b", LoRAConfig(r=lora_rank))
    assert sol.count == count_for("llama2_7b", make_config(name, **sol.fields)) <= sol.target_count
    step = -1 if sol.knob == "m" else 1
    if sol.status == "capped":
        assert sol.value == sol.cap == 4096
        return
    if sol.knob == "m" and sol.value == 1:  # no sharing: nothing cheaper below, so it must fit exactly or under
        assert sol.status in ("exact", "under")
        return
    nxt = {**sol.fields, sol.knob: sol.value + step, **({"n": sol.value + step} if sol.knob == "m" else {})}
    assert count_for("llama2_7b", make_config(name, **nxt)) > sol.target_count


def test_solve_budget_knobs_and_counts_at_7b():
    """What each method turns and gets at LoRA r2's budget (4,997,120) on LLaMA2-7B: the report's table."""
    from prolora import solve_budget

    got = {name: solve_budget("llama2_7b", name, {"lora_rank": 2}, **spec) for name, spec in BUDGET_SPECS.items()}
    assert {n: (s.knob, s.value, s.count, s.status) for n, s in got.items()} == {
        "lora": ("r", 2, 4_997_120, "exact"),
        "vera": ("r", 4096, 2_277_376, "capped"),  # r <= min(h, o): 224 x 4096 + the outputs' λ_b
        "tied_lora": ("r", 280, 4_989_696, "under"),
        "prolora": ("m", 8, 4_684_800, "under"),  # ceil(h/m) chunks: m7 is 2,400 over
        "clora": ("m", 4, 4_997_120, "exact"),
        "rolora": ("m", 4, 4_997_120, "exact"),
        "mos": ("pool_rank", 2, 4_997_120, "exact"),  # the equivalent rank IS the LoRA rank
        "vblora": ("num_vectors", 127, 4_990_592, "under"),  # 256 + 4 x 9,760 per bank vector
        "lora_xs": ("r", 149, 4_973_024, "under"),  # 224 x 149²
        "dora": ("r", 1, 3_858_432, "under"),  # r2 would be 4,997,120 + 1,359,872 magnitudes
    }


def test_solve_budget_errors_and_targets():
    from prolora import ConfigError, solve_budget

    assert solve_budget("llama2_7b", "lora", 4_997_119).value == 1
    assert solve_budget("llama2_7b", "lora", {"params": 7_495_680}).value == 3
    with pytest.raises(ValueError, match="costs .* more than the budget"):
        solve_budget("llama2_7b", "dora", 100)
    with pytest.raises(ValueError, match="give exactly one of"):
        solve_budget("llama2_7b", "lora", {"lora_rank": 2, "params": 3})
    # one decoder layer: r8 p1 needs pool_rank >= 8 (7 public vectors from (e - 1)·1), which costs 8 x 78,080
    with pytest.raises(ConfigError, match="no mos configuration .* public ranks"):
        solve_budget(meta_model("llama2_7b").model.layers[0], "mos", 5 * 78_080, r=8, private_rank=1, shards=4)


def test_count_of_a_config_valid_only_with_more_layers():
    """MoS r8 e2 p1 draws 7 public vectors from (e - p)·L = L: invalid on the 1-3 layer skeletons count_for
    extrapolates from, so it is counted on the whole model (and equals LoRA r2, whatever r)."""
    cfg = make_config("mos", r=8, pool_rank=2, private_rank=1, shards=4)
    assert count_for("llama2_7b", cfg) == count_for("llama2_7b", LoRAConfig(r=2)) == 4_997_120
    with pytest.raises(Exception, match="public ranks"):
        attach(meta_model("llama2_7b").model.layers[0], cfg)
