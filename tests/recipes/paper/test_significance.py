"""Significance of a difference between grid cells, from hand-made cell files and predictions with a known Δ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recipes.paper import render, significance

N = 400  # demo test items per seed


def _cell(root: Path, variant: str, seed: int, correct: np.ndarray, lr: float = 0.01, metric: float | None = None):
    """A done cell of the demo experiment whose eval dir holds ``predictions/demo.jsonl`` with ``correct``."""
    eval_dir = root / "runs" / f"{variant}_s{seed}" / "eval"
    (eval_dir / "predictions").mkdir(parents=True)
    with open(eval_dir / "predictions" / "demo.jsonl", "w") as f:
        for i in np.random.default_rng(seed).permutation(len(correct)):  # file order must not matter
            f.write(json.dumps({"id": f"demo/{i}", "correct": bool(correct[i])}) + "\n")
    value = 100.0 * correct.mean() if metric is None else metric
    rec = {"status": "done", "cell_id": f"{variant}__demo__lr{lr}__seed{seed}", "variant": variant, "dataset": "demo",
           "lr": lr, "seed": seed, "rows": [variant], "eval_only": False, "metrics": {"demo_em": value},
           "subsets": {}, "paths": {"eval_dir": str(eval_dir)}, "git": {"commit": "0123456789abcdef", "dirty": False},
           "eval": {"tasks": {"demo": {"n_examples": len(correct), "n_available": len(correct), "subset": False}}}}
    cells = root / "demo" / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    (cells / f"{rec['cell_id']}.json").write_text(json.dumps(rec))


def _render(root: Path, tmp_path: Path) -> str:
    render.main(["--experiment", "demo", "--results-dir", str(root), "--out-dir", str(tmp_path / "out"), "--quiet",
            "experiment.seeds=[1,2,3]"])
    return (tmp_path / "out" / "table.md").read_text()


def _twelve_points_apart(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LoRA right on a seed-dependent half of the items; PRoLoRA the same plus 48 more (12% of 400)."""
    rng = np.random.default_rng(100 + seed)
    a = (rng.random(N) < 0.5).astype(float)
    b = a.copy()
    b[rng.choice(np.flatnonzero(a == 0), 48, replace=False)] = 1.0
    return a, b


def _prolora_row(md: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("| PRoLoRA | 8 |"))


def test_prolora_better_on_a_known_fraction_is_marked_with_an_interval_covering_it(tmp_path):
    """LoRA right on a seed-dependent half of the items; PRoLoRA the same plus 48 more (12% of 400): Δ = 12 points
    exactly in every seed.  The interval covers 12, excludes 0, and the PRoLoRA value is marked ▲."""
    root = tmp_path / "results"
    for seed in (1, 2, 3):
        a, b = _twelve_points_apart(seed)
        _cell(root, "lora_r2", seed, a)
        _cell(root, "prolora_r8_u1_m7_n7", seed, b)
    md = _render(root, tmp_path)
    assert _prolora_row(md).endswith(" ▲ |")
    assert "Examples scored: Demo EM 400 of 400." in md.splitlines()  # read off the cells' evaluations
    assert "Cells ran at git commit(s) 0123456789ab." in md.splitlines()
    rows = list(__import__("csv").DictReader((tmp_path / "out" / "significance.csv").open()))
    (c,) = rows
    assert float(c["delta"]) == pytest.approx(12.0, abs=1e-9)
    assert float(c["items_low"]) < 12.0 < float(c["items_high"]) and float(c["items_low"]) > 0
    assert int(c["n_items"]) == N and int(c["n_seeds"]) == 3 and c["beyond_noise"] == "1"
    assert float(c["seeds_low"]) == float(c["seeds_high"]) == pytest.approx(12.0)  # the same Δ in every seed
    assert (tmp_path / "out" / "significance.png").read_bytes()[:4] == b"\x89PNG"
    again = tmp_path / "again"
    again.mkdir()
    _render(root, again)  # seeded: the same files give the same interval, to the last digit
    assert (again / "out" / "significance.csv").read_text() == (tmp_path / "out" / "significance.csv").read_text()


def test_identical_predictions_give_zero_and_no_mark(tmp_path):
    root = tmp_path / "results"
    for seed in (1, 2):
        same = (np.random.default_rng(seed).random(N) < 0.4).astype(float)
        _cell(root, "lora_r2", seed, same)
        _cell(root, "prolora_r8_u1_m7_n7", seed, same)
    md = _render(root, tmp_path)
    assert not {"▲", "▼"} & set(_prolora_row(md))
    assert "| PRoLoRA 8 | LoRA 2 | Demo EM | +0.00 [+0.00, +0.00] over 400 items; seeds [+0.00, +0.00] over 2 | no |" in md


def test_seed_noise_alone_is_not_beyond_noise(tmp_path):
    """Δ over items is clear in each seed, but its sign flips between seeds: the seed interval includes 0, so
    the value is not marked although the pooled item bootstrap alone would exclude 0."""
    root = tmp_path / "results"
    for seed, extra in ((1, 80), (2, 76), (3, -40)):
        rng = np.random.default_rng(seed)
        a = (rng.random(N) < 0.5).astype(float)
        b = a.copy()
        if extra > 0:
            b[rng.choice(np.flatnonzero(a == 0), extra, replace=False)] = 1.0
        else:
            b[rng.choice(np.flatnonzero(a == 1), -extra, replace=False)] = 0.0
        _cell(root, "lora_r2", seed, a)
        _cell(root, "prolora_r8_u1_m7_n7", seed, b)
    md = _render(root, tmp_path)
    line = next(ln for ln in md.splitlines() if ln.startswith("| PRoLoRA 8 | LoRA 2 |"))
    assert line.endswith("| no |") and "seeds [" in line
    lo = float(line.split("[")[1].split(",")[0])
    assert lo > 0  # the item interval alone excludes 0 ...
    assert "▲" not in _prolora_row(md)  # ... but the seed interval does not


def test_predictions_that_do_not_give_the_recorded_score_are_refused(tmp_path):
    root = tmp_path / "results"
    a = (np.random.default_rng(0).random(N) < 0.5).astype(float)
    _cell(root, "lora_r2", 1, a)
    _cell(root, "prolora_r8_u1_m7_n7", 1, a, metric=99.0)  # the cell says 99, its predictions say otherwise
    md = _render(root, tmp_path)
    assert "the cell recorded 99.0" in md and "▲" not in _prolora_row(md)


def test_macro_average_tasks_bootstrap_their_own_aggregate():
    """BBH's score is the mean over tasks: item_values carry the task as group, and their macro mean is the
    score the task computes."""
    from eval.tasks import TASKS

    bbh = TASKS["bbh"]()
    examples = [{"task": t, "target": "A"} for t in ("x",) * 3 + ("y",)]
    predictions = [["A"], ["B"], ["B"], ["A"]]
    metrics = bbh.score(examples, predictions)
    values, groups = bbh.item_values([{"id": i, **p} for i, p in enumerate(metrics["per_example"])], "exact_match")
    assert groups == ["x", "x", "x", "y"]
    assert significance.macro_mean(np.array(values), groups) == pytest.approx(metrics["exact_match"])  # (33.3 + 100) / 2
    assert np.mean(values) != pytest.approx(metrics["exact_match"])  # the micro mean would be another number


def test_figure2_cells_against_the_best_cell(tmp_path):
    """Figure 2's heatmap: the best cell, a cell with the same predictions (≈: not distinguishable) and a clearly
    worse one; BBH items carry their task, the statistic is the macro average over tasks."""
    root = tmp_path / "results"
    rng = np.random.default_rng(5)
    tasks = np.array(["t1"] * 150 + ["t2"] * 50)
    best = (rng.random(200) < 0.6).astype(float)
    worse = best.copy()
    worse[rng.choice(np.flatnonzero(best == 1), 60, replace=False)] = 0.0

    def cell(variant, lr, correct):
        eval_dir = root / "runs" / f"{variant}_{lr}" / "eval"
        (eval_dir / "predictions").mkdir(parents=True)
        with open(eval_dir / "predictions" / "bbh.jsonl", "w") as f:
            for i, (c, t) in enumerate(zip(correct, tasks)):
                f.write(json.dumps({"id": f"{t}/{i}", "correct": bool(c), "group": str(t)}) + "\n")
        macro = 100.0 * np.mean([correct[tasks == t].mean() for t in ("t1", "t2")])
        cid = f"{variant}__flan_v2__lr{lr}__seed1"
        (root / "figure2" / "cells").mkdir(parents=True, exist_ok=True)
        (root / "figure2" / "cells" / f"{cid}.json").write_text(json.dumps({
            "status": "done", "cell_id": cid, "variant": variant, "dataset": "flan_v2", "lr": lr, "seed": 1,
            "eval_only": False, "metrics": {"bbh_em": macro}, "subsets": {}, "paths": {"eval_dir": str(eval_dir)}}))

    cell("prolora_r32_u4_m7_n7", 2e-4, best)
    cell("prolora_r32_u4_m7_n7", 1e-4, best)
    cell("lora_r8", 2e-4, worse)
    out = tmp_path / "out"
    render.main(["--experiment", "figure2", "--results-dir", str(root), "--out-dir", str(out), "--quiet",
            "experiment.seeds=[1]"])
    md = (out / "table.md").read_text().splitlines()
    u4 = next(line for line in md if line.startswith("| u=4 | ") and "best" in line)
    assert "| best | +0.00 [+0.00, +0.00] ≈ |" in u4  # equal cells: the first (lr 1e-4) is best, 2e-4 ≈ it
    lora = [line for line in md if line.startswith("| u=8 (LoRA r8) | ") and "[" in line][-1]
    delta = float(lora.split("| ")[4].split(" [")[0])
    expected = -100.0 * np.mean([(best - worse)[tasks == t].mean() for t in ("t1", "t2")])
    assert delta == pytest.approx(expected, abs=0.005) and "≈" not in lora.split("| ")[4]  # printed to 2 decimals
    assert (out / "figure2_vs_best.png").read_bytes()[:4] == b"\x89PNG"


def test_a_row_with_two_baselines_names_the_one_each_mark_is_against(tmp_path):
    """PRoLoRA compared with LoRA (12 points better: ▲) and with VeRA (the same predictions: no mark): the table
    cell says which baseline the ▲ is against, and the significance section lists both comparisons."""
    root = tmp_path / "results"
    for seed in (1, 2, 3):
        a, b = _twelve_points_apart(seed)
        _cell(root, "lora_r2", seed, a)
        _cell(root, "prolora_r8_u1_m7_n7", seed, b)
        _cell(root, "vera_r64", seed, b, lr=0.05)
    render.main(["--experiment", "demo", "--results-dir", str(root), "--out-dir", str(tmp_path / "out"), "--quiet",
            "experiment.seeds=[1,2,3]",
            "experiment.compare=[{row:prolora_r8,baseline:lora_r2},{row:prolora_r8,baseline:vera_r64}]"])
    md = (tmp_path / "out" / "table.md").read_text()
    assert _prolora_row(md).endswith(" ▲[lora_r2] |")
    section = md[md.index("## Significance"):]
    assert "| PRoLoRA 8 | LoRA 2 | Demo EM | +12.00" in section and "| PRoLoRA 8 | VeRA 64 | Demo EM | +0.00" in section
