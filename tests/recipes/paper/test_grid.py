"""Grids of the paper's artefacts: cells, datasets -> benchmarks, shared variants, the Figure 2 sweep."""

from __future__ import annotations

import pytest

from recipes.paper.grid import build_grid, experiment_datasets, load_config
from recipes.paper.plan import count_params


def test_other_grids():
    cfg = load_config(["experiment=table3"])
    g = build_grid(cfg)
    assert (len(g.cells), sum(c.eval_only for c in g.cells)) == (29, 2)
    assert {c.dataset for c in g.cells if not c.eval_only} == {"superni", "flan_v2", "cot"}
    assert next(c for c in g.cells if c.dataset == "superni").tasks == ["mmlu"]
    assert next(c for c in g.cells if c.eval_only).tasks == ["mmlu", "bbh", "gsm"]
    # 13B counted from its real 40 layers; the paper's 6.26M (32 layers) is flagged
    lora = next(v for r in g.rows for v in r.variants if v.id == "lora_r2")
    assert count_params("llama2_13b", lora.method) == 7_823_360
    g4 = build_grid(load_config(["experiment=table4"]))
    assert len(g4.cells) == 12 and {c.dataset for c in g4.cells} == {"flan_v2"}
    assert {c.variant.method["name"] for c in g4.cells} == {
        "prolora", "share_hidden_rotate_hidden", "share_rank_rotate_rank", "share_rank_rotate_hidden"}
    # Table 4's PRoLoRA cell is the same run directory as Table 2's r32 variant (reused, not retrained)
    g2 = build_grid(load_config(["experiment=table2"]), rows=["prolora_16_32"], datasets=["flan_v2"], seeds=[1])
    run2 = {c.variant.id: c.run_dir for c in g2.cells}["prolora_r32_u4_m7_n7"]
    assert run2 == next(c.run_dir for c in g4.cells if c.variant.id == "prolora_r32_u4_m7_n7" and c.seed == 1)
    gf = build_grid(load_config(["experiment=figure2"]))
    assert len(gf.cells) == 9 * 5 * 3
    assert sorted({c.lr for c in gf.cells}) == [5e-5, 1e-4, 2e-4, 5e-4, 1e-3]
    ms = {c.variant.method.get("u", 8) if c.variant.method["name"] != "lora" else 8: c.variant.method.get("m")
          for c in gf.cells}
    assert ms == {0: 4, 1: 5, 2: 5, 3: 6, 4: 7, 5: 9, 6: 13, 7: 25, 8: None}
    solve = getattr(pytest.importorskip("prolora.counting"), "solve_sharing", None)
    if solve is not None:  # m = the budget solver's answer (paper h/m counting, at or under LoRA r8)
        for u in range(8):
            assert solve("llama2_7b", 32, u, lora_rank=8, counting="paper").m == ms[u], u
    # VeRA / Tied LoRA: a single default LR unless the sweep is asked for
    sweep = build_grid(load_config(["experiment=table2", "lr_sweep=true"]), rows=["vera_r256"])
    assert len(sweep.cells) == 5 * 4 * 3
    assert sorted({c.lr for c in sweep.cells}) == [2e-3, 5e-3, 1e-2, 2e-2, 5e-2]


def test_dataset_to_benchmark_map_has_one_owner():
    """The benchmarks a dataset feeds come from configs/dataset/<name>.yaml, restricted to the table's columns."""
    assert experiment_datasets(load_config(["experiment=table2"]).experiment) == {
        "superni": ["mmlu", "tydiqa"], "flan_v2": ["bbh"], "cot": ["gsm"], "code_alpaca": ["humaneval"]}
    assert experiment_datasets(load_config(["experiment=table3"]).experiment) == {
        "superni": ["mmlu"], "flan_v2": ["bbh"], "cot": ["gsm"]}
    with pytest.raises(ValueError, match="unknown column 'nope'"):
        experiment_datasets(load_config(["experiment=demo", "experiment.columns=[nope]"]).experiment)
