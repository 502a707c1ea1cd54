"""The matched-budget experiment (``configs/experiment/budget.yaml``): its rows solved to their budgets on the tiny
model, ``--plan``'s side-by-side counts, and the rendering of hand-made cell files (the compare marks against LoRA at
the same budget, the Pareto view with its intervals and front, the cost table from the cells' measured costs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from recipes.paper import render
from recipes.paper.figures import DODGE, ScorePoint, dodged_x, pareto_front
from recipes.paper.grid import build_grid, load_config, make_variant
from recipes.paper.plan import plan_text

N = 300  # demo test items in the hand-made predictions


@pytest.fixture(scope="module")
def budget():
    cfg = load_config(["experiment=budget"])
    return cfg, build_grid(cfg)


def test_every_method_at_both_budgets_closest_without_exceeding(budget):
    import prolora

    cfg, grid = budget
    trained = [r for r in grid.rows if not r.eval_only]
    assert len(trained) == 20 and {r.rank for r in trained} == {"r2 budget", "r8 budget"}
    assert {r.label for r in trained} == {"LoRA", "VeRA", "Tied LoRA", "PRoLoRA", "CLoRA", "RoLoRA", "MoS", "VB-LoRA",
                                          "LoRA-XS", "DoRA"}
    for row in trained:
        (v,) = row.variants
        assert v.budget is not None and v.budget.count <= v.budget.target
        assert v.budget.target == (4_864 if row.rank == "r2 budget" else 19_456)  # LoRA r2 / r8 on the tiny model
        config = prolora.make_config(v.method["name"], **{k: x for k, x in v.method.items() if k != "name"})
        assert prolora.count_for(str(prolora.models.ASSETS / "tiny_pretrained"), config) == v.budget.count
    ids = {r.id: r.variants[0].id for r in trained}
    assert (ids["mos_b2"], ids["vblora_b8"], ids["lora_xs_b8"]) == ("mos_r3_e2_p1_l2", "vblora_r4_n57_b32_k2",
                                                                    "lora_xs_r32")
    assert len({c.id for c in grid.cells}) == 58  # VeRA is capped at r32 under both budgets: one set of cells
    with pytest.raises(ValueError, match="a budget is solved on a model"):
        make_variant({"method": "lora", "budget": {"lora_rank": 2}})


def test_plan_prints_the_solved_configs_side_by_side(budget):
    cfg, grid = budget
    text = plan_text(cfg, grid)
    assert "Matched budgets (prolora.solve_budget on tiny_pretrained's shapes" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("MoS "))
    assert "mos_r3_e2_p1_l2" in line and "pool_rank=2" in line and "mos_r15_e8_p1_l2" in line and "pool_rank=8" in line
    vera = next(ln for ln in text.splitlines() if ln.strip().startswith("VeRA "))
    assert vera.count("capped") == 2 and "35.5%" in vera


def test_the_front_is_the_non_dominated_points():
    pts = [ScorePoint("a", "A", "b", 10, "demo_em", 50.0), ScorePoint("b", "B", "b", 10, "demo_em", 60.0),
           ScorePoint("c", "C", "b", 5, "demo_em", 40.0), ScorePoint("d", "D", "b", 20, "demo_em", 55.0),
           ScorePoint("e", "E", "b", 3, "demo_em", None)]
    assert pareto_front(pts) == {1, 2}  # A and D are beaten by B at no more parameters; E has no score


def _cell(root: Path, grid, row_id: str, seed: int, correct: np.ndarray, step_s: float, peak: int) -> None:
    """A done cell of the budget grid with its predictions and a measured cost."""
    row = next(r for r in grid.rows if r.id == row_id)
    cell = next(c for c in grid.cells if row_id in c.rows and c.seed == seed)
    eval_dir = root / "runs" / f"{cell.id}" / "eval"
    (eval_dir / "predictions").mkdir(parents=True)
    with open(eval_dir / "predictions" / "demo.jsonl", "w") as f:
        for i, ok in enumerate(correct):
            f.write(json.dumps({"id": f"demo/{i}", "correct": bool(ok)}) + "\n")
    rec = {"status": "done", "cell_id": cell.id, "variant": row.variants[0].id, "dataset": "demo", "lr": cell.lr,
           "seed": seed, "rows": cell.rows, "eval_only": False, "metrics": {"demo_em": 100.0 * correct.mean()},
           "subsets": {}, "paths": {"eval_dir": str(eval_dir)}, "git": {"commit": None, "dirty": False},
           "eval": {"tasks": {"demo": {"n_examples": N, "n_available": N, "subset": False}}},
           "cost": {"step_s_median": step_s, "steps_timed": 29, "step_peak_bytes": peak, "adapter_bytes": 2**20}}
    cells = root / "budget" / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    (cells / f"{cell.id}.json").write_text(json.dumps(rec))


def test_rows_at_one_count_are_drawn_side_by_side_and_lone_rows_where_they_are():
    """Every method solved to one budget lands at (nearly) one count: drawn there, they hide each other. Each run
    of close points is spread DODGE apart around its mean, in the order of the counts, and runs that then touch
    are spread together; a point with no close neighbour keeps its exact count."""
    params = [610_560, 610_560, 195_840, 610_560, 600_000, 460_800, 590_000]
    x = dodged_x(params)
    logs = np.log10(x)
    assert x[2] == 195_840 and x[5] == 460_800  # alone: exactly where they are
    cluster = [6, 4, 0, 1, 3]  # 590k, 600k, then the three 610,560 in their given order
    assert np.all(np.diff(logs[cluster]) > DODGE * (1 - 1e-9))  # spread, order kept
    assert np.allclose(np.diff(logs[cluster]), DODGE)  # one run: the 610,560 spread reached 600k, that run 590k
    assert logs[cluster].mean() == pytest.approx(np.log10(params)[cluster].mean())  # centred on the run
    assert dodged_x([]) == [] and dodged_x([5.0]) == [5.0]


def test_render_marks_against_lora_draws_the_pareto_view_and_the_costs(budget, tmp_path):
    cfg, grid = budget
    root = tmp_path / "results"
    for seed in (1, 2, 3):
        rng = np.random.default_rng(seed)
        lora = (rng.random(N) < 0.5).astype(float)
        mos = lora.copy()
        mos[rng.choice(np.flatnonzero(lora == 0), 45, replace=False)] = 1.0  # 15 points better on the same items
        dora = lora.copy()
        dora[rng.choice(np.flatnonzero(lora == 1), 30, replace=False)] = 0.0  # 10 points worse
        _cell(root, grid, "lora_b2", seed, lora, step_s=0.10, peak=9 * 2**20)
        _cell(root, grid, "mos_b2", seed, mos, step_s=0.25, peak=19 * 2**20)
        _cell(root, grid, "dora_b2", seed, dora, step_s=0.15, peak=14 * 2**20)
    out = tmp_path / "out"
    assert render.main(["--experiment", "budget", "--results-dir", str(root), "--out-dir", str(out), "--quiet"]) == 0
    md = (out / "table.md").read_text().splitlines()
    assert next(ln for ln in md if ln.startswith("| MoS | r2 budget |")).endswith(" ▲ |")
    assert next(ln for ln in md if ln.startswith("| DoRA | r2 budget |")).endswith(" ▼ |")
    assert next(ln for ln in md if ln.startswith("| LoRA | r8 budget |")).endswith("| 19,456 | — |")  # not run: —
    pareto = [ln for ln in md if ln.startswith("| ") and "budget |" in ln and ("★" in ln or ln.endswith(" |  |"))]
    front = {ln.split(" | ")[0][2:] for ln in pareto if "★" in ln}
    assert front == {"MoS", "DoRA"}  # LoRA: the same parameters as MoS, a lower score
    mos = next(ln for ln in pareto if ln.startswith("| MoS |"))
    low, high = (float(x) for x in mos.split(" | ")[4].strip("[]").split(", "))
    assert low < 65.0 < high and high - low < 15  # the item interval of MoS's 65.00
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    costs = {ln.split(" | ")[0][2:]: ln.rstrip(" |").split(" | ") for ln in md if ln.startswith("| ") and ln.count("|") == 9}
    assert costs["MoS"][3:5] == ["0.250", "2.50"] and costs["MoS"][5:8] == ["20.00", "1.000", "2.00"]
    assert costs["LoRA"][4] == ""  # the baseline itself has no ratio
    rows = {r["row"]: r for r in csv.DictReader((out / "significance.csv").open())}
    assert rows["MoS r2 budget"]["beyond_noise"] == "1" and float(rows["MoS r2 budget"]["delta"]) == pytest.approx(15)


def _smollm2_missing() -> str | None:
    try:
        import gguf  # noqa: F401

        from prolora import gguf as g

        g.smollm2_file()
    except (ImportError, FileNotFoundError) as e:
        return f"the real-model extra is not installed ({e}): make real-model"
    return None


@pytest.mark.skipif(_smollm2_missing() is not None, reason=_smollm2_missing() or "")
def test_the_real_twin_solves_every_method_on_smollm2_and_composes():
    """budget_real: the ten methods at LoRA r2's budget on SmolLM2-135M's shapes (610,560), 3 seeds, 31 cells, one
    recipe for all but the adapter and its LR; train.py accepts every cell's overrides."""
    from omegaconf import OmegaConf

    from prolora.trainer import TrainArgs
    from recipes.paper.grid import compose, train_args

    cfg = load_config(["experiment=budget_real"])
    grid = build_grid(cfg)
    trained = [c for c in grid.cells if not c.eval_only]
    assert len(grid.cells) == 31 and len(trained) == 30
    assert {r.variants[0].budget.target for r in grid.rows if not r.eval_only} == {610_560}
    ids = {r.id: r.variants[0].id for r in grid.rows if not r.eval_only}
    assert ids["mos_b2"] == "mos_r8_e2_p1_l4" and ids["vblora_b2"] == "vblora_r4_n31_b64_k2"
    assert len({(c.max_steps, c.dataset, tuple(c.train_overrides), tuple(c.eval_overrides)) for c in trained}) == 1
    train = compose("config", train_args(cfg, trained[0]))
    args = TrainArgs(**OmegaConf.to_container(train.trainer, resolve=True))
    assert (args.max_steps, args.batch_size, train.model.name) == (40, 8, "smollm2_135m")


def test_the_runner_reads_a_cells_cost_off_the_trainers_metrics(tmp_path):
    """The median of the logged step times without the profiled first step, and that step's measured memory."""
    from recipes.paper.runner import _train_cost

    rows = [{"step": 1, "loss": 2.0, "step_s": 9.0, "profiled": True, "step_peak_bytes": 1000, "adapter_bytes": 40,
                                    "memory_method": "cpu profiler allocation peak"},
            {"step": 5, "loss": 1.5, "step_s": 0.3}, {"step": 10, "loss": 1.2, "step_s": 0.1},
            {"step": 15, "loss": 1.1, "step_s": 0.2}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    assert _train_cost(metrics) == {"step_s_median": 0.2, "steps_timed": 3, "step_peak_bytes": 1000,
                                    "adapter_bytes": 40,
                                    "memory_method": "cpu profiler allocation peak"}
    metrics.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")  # a run from before costs were measured
    assert _train_cost(metrics) is None and _train_cost(tmp_path / "missing.jsonl") is None
