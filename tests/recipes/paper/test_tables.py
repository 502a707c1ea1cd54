"""The table renderer: known result files in, the exact table out (means, stds, deltas, Avg, better-of)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from recipes.paper import render
from recipes.paper.facts import fmt_lr

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "results"


@pytest.fixture(scope="module")
def table2(tmp_path_factory):
    out = tmp_path_factory.mktemp("table2")
    assert render.main(["--experiment", "table2", "--results-dir", str(FIXTURES), "--out-dir", str(out), "--quiet"]) == 0
    return out


def test_table2_markdown_exact(table2):
    md = (table2 / "table.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# Table 2: LLaMA2-7B, different methods on diverse instruction-following datasets (reproduced)"
    assert "Built from 35 finished cell file(s)." in lines  # 36 fixture files, one of them failed
    assert "Cells ran at git commit(s) unrecorded." in lines  # the fixture cells record no commit
    assert ("| Method | Rank | Param. ours (paper) | MMLU EM | BBH EM | GSM EM | TyDiQA F1 | TyDiQA EM "
            "| HumanEval P@1 | Avg. |") in lines
    expected = [
        # eval-only row, one run: no std; Avg = mean of the six numbers
        "| Vanilla (chat) | - | - | 41.00 (41.18, -0.18) | 0.00 (0.00, +0.00) | 3.50 (3.03, +0.47) "
        "| 17.00 (17.40, -0.40) | 0.25 (0.10, +0.15) | 0.50 (0.64, -0.14) | 10.38 (10.39, -0.02) |",
        # nothing run yet: marked, the paper's value still shown, nothing invented
        "| Vanilla (no-chat) | - | - | — (41.53) | — (33.43) | — (15.47) | — (49.18) | — (35.35) | — (13.57) "
        "| — (31.42) |",
        # 3 seeds -> mean ± sample std; 2 of 3 seeds -> n=2/3; GSM missing -> no Avg
        "| LoRA | 2 | 4,997,120 (5.00M) | 45.00 ± 1.00 (44.77, +0.23) | 36.50 ± 0.71 n=2/3 (36.22, +0.28) "
        "| — (26.28) | 49.00 ± 1.00 (48.67, +0.33) | 35.50 ± 0.00 (35.70, -0.20) | 19.00 ± 1.00 (18.24, +0.76) "
        "| — (34.98) |",
        # only a failed cell: still missing
        "| LoRA | 8 | 19,988,480 (19.99M) | — (46.55) | — (36.92) | — (31.11) | — (50.50) | — (36.89) "
        "| — (19.37) | — (36.89) |",
        # the paper's Param. typo flagged
        "| LoRA | 16 | 39,976,960 (40.98M ≠) | — (46.70) | — (36.43) | — (31.34) | — (50.97) | — (37.64) "
        "| — (18.73) | — (36.97) |",
        # LR sweep results: best LR per benchmark, named; other LRs of the sweep still missing seeds -> †
        "| VeRA | 256 | 1,417,216 (1.42M) | 43.00 [lr 0.002] n=1/3 † (42.51, +0.49) | — (35.10) | — (22.69) "
        "| 48.00 [lr 0.01] n=1/3 † (48.39, -0.39) | 36.00 [lr 0.002] n=1/3 † (36.38, -0.38) | — (18.90) "
        "| — (34.00) |",
        # the r8 u1 m7 cells serve the "8" row ...
        "| PRoLoRA | 8 | 4,999,520 (5.00M) | 45.50 ± 0.00 (45.85, -0.35) | 36.50 ± 0.00 (36.45, +0.05) "
        "| 27.00 ± 0.00 (27.14, -0.14) | 50.00 ± 0.00 (49.94, +0.06) | 37.00 ± 0.00 (36.59, +0.41) "
        "| 20.00 ± 0.00 (18.96, +1.04) | 36.00 (35.82, +0.18) |",
        # ... and the "4/8" row, which keeps per benchmark the better of r4 / r8; Avg over the kept values
        "| PRoLoRA | 4/8 | 4,998,016 / 4,999,520 (5.00M) | 46.00 ± 0.00 [r4] (45.85, +0.15) "
        "| 36.50 ± 0.00 [r8] (36.45, +0.05) | 28.00 ± 0.00 [r4] (27.57, +0.43) | 50.00 ± 0.00 [r8] (49.94, +0.06) "
        "| 37.00 ± 0.00 [r8] (36.59, +0.41) | 20.00 ± 0.00 [r8] (19.75, +0.25) | 36.25 (36.03, +0.22) |",
        "| PRoLoRA | 16/32 | 19,992,064 / 19,998,080 (19.99M) | — (46.65) | — (37.33) | — (30.86) | — (51.55) "
        "| — (37.90) | — (20.91) | — (37.53) |",
    ]
    for line in expected:
        assert line in lines, line
    main = lines[:lines.index("## Significance")] if "## Significance" in lines else lines
    assert sum(ln.startswith("| ") for ln in main) == 1 + 15  # header + every row of Table 2
    assert "- LoRA 16: the paper's typo: LoRA r16 = 2 x 19,988,480 = 39,976,960" in lines


def test_table2_csv(table2):
    rows = {r["row"]: r for r in csv.DictReader((table2 / "table.csv").open())}
    assert len(rows) == 15
    p48 = rows["prolora_4_8"]
    assert (p48["mmlu_em_mean"], p48["mmlu_em_choice"], p48["bbh_em_choice"]) == ("46.0000", "r4", "r8")
    assert (p48["avg"], p48["avg_paper"], p48["avg_delta"]) == ("36.2500", "36.0300", "0.2200")
    lora = rows["lora_r2"]
    assert (lora["bbh_em_mean"], lora["bbh_em_std"], lora["bbh_em_n"]) == ("36.5000", "0.7071", "2")
    assert (lora["gsm_em_mean"], lora["gsm_em_n"], lora["gsm_em_paper"], lora["avg"]) == ("", "0", "26.2800", "")
    assert rows["lora_r16"]["params"] == "39976960" and rows["lora_r16"]["params_paper"] == "40.98M"


def _cell(d: Path, variant: str, ds: str, lr: float, seed: int, metrics: dict, rows: list[str],
          subsets: dict | None = None) -> None:
    cid = f"{variant}__{ds}__lr{fmt_lr(lr)}__seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{cid}.json").write_text(json.dumps({
        "status": "done", "cell_id": cid, "rows": rows, "variant": variant, "dataset": ds, "lr": lr, "seed": seed,
        "eval_only": False, "metrics": metrics, "loss_curve": [[1, 3.0], [2, 2.0 + seed / 10]],
        "subsets": subsets or {}}))


def test_table4_grid_and_figure2_heatmap(tmp_path):
    t4 = tmp_path / "table4" / "cells"
    for s, v in ((1, 37.0), (2, 38.0)):
        _cell(t4, "prolora_r32_u4_m7_n7", "flan_v2", 2e-4, s, {"bbh_em": v}, ["share_hidden_rotate_rank"])
    _cell(t4, "share_rank_rotate_hidden_r32_u4_m7_n7", "flan_v2", 2e-4, 1, {"bbh_em": 36.0}, ["x"])
    render.main(["--experiment", "table4", "--results-dir", str(tmp_path), "--quiet"])
    md = (tmp_path / "table4" / "table.md").read_text().splitlines()
    assert "| Hidden. | — (36.45) | 37.50 ± 0.71 n=2/3 (37.33, +0.17) |" in md
    assert "| Rank. | 36.00 n=1/3 (36.35, -0.35) | — (37.07) |" in md
    assert ("| PRoLoRA (share hidden, rotate rank) | 32 | 19,998,080 (19.99M) | 37.50 ± 0.71 n=2/3 (37.33, +0.17) |"
            in md)

    f2 = tmp_path / "figure2" / "cells"
    _cell(f2, "prolora_r32_u4_m7_n7", "flan_v2", 2e-4, 1, {"bbh_em": 37.25}, ["u4"])
    _cell(f2, "lora_r8", "flan_v2", 1e-3, 1, {"bbh_em": 35.5}, ["u8"])
    render.main(["--experiment", "figure2", "--results-dir", str(tmp_path), "--quiet"])
    md = (tmp_path / "figure2" / "table.md").read_text().splitlines()
    assert "| u=4 | prolora_r32_u4_m7_n7 | — | — | 37.25 n=1/3 | — | — |" in md
    assert "| u=8 (LoRA r8) | lora_r8 | — | — | — | — | 35.50 n=1/3 |" in md
    assert (tmp_path / "figure2" / "figure2.png").stat().st_size > 5000
    grid = list(csv.DictReader((tmp_path / "figure2" / "table.csv").open()))
    assert len(grid) == 9 * 5 and sum(1 for g in grid if g["bbh_em_mean"]) == 2


def test_demo_loss_curves_and_wandb_table(tmp_path, monkeypatch, capsys):
    d = tmp_path / "demo" / "cells"
    for s in (1, 2):
        _cell(d, "lora_r2", "demo", 1e-2, s, {"demo_em": 10.0 * s}, ["lora_r2"])
    monkeypatch.setenv("WANDB_MODE", "disabled")  # offline-safe path, no service started in the test
    assert render.main(["--experiment", "demo", "--results-dir", str(tmp_path), "--wandb", "experiment.seeds=[1,2]"]) == 0
    out = capsys.readouterr().out
    assert "| LoRA | 2 | 4,864 | 15.00 ± 7.07 |" in out
    assert (tmp_path / "demo" / "loss_curves.png").stat().st_size > 5000
    assert f"wrote {tmp_path / 'demo' / 'table.md'}" in out
    assert "logged the table to W&B (disabled, group demo)" in out


def test_a_number_scored_on_a_subset_is_marked(tmp_path):
    d = tmp_path / "demo" / "cells"
    _cell(d, "lora_r2", "demo", 1e-2, 1, {"demo_em": 40.0}, ["lora_r2"])
    _cell(d, "lora_r2", "demo", 1e-2, 2, {"demo_em": 50.0}, ["lora_r2"], subsets={"demo_em": {"n": 20, "of": 118}})
    _cell(d, "vera_r64", "demo", 5e-2, 1, {"demo_em": 30.0}, ["vera_r64"])
    assert render.main(["--experiment", "demo", "--results-dir", str(tmp_path), "experiment.seeds=[1,2]", "--quiet"]) == 0
    md = (tmp_path / "demo" / "table.md").read_text()
    assert "| LoRA | 2 | 4,864 | 45.00 ˢ ± 7.07 |" in md and "| VeRA | 64 | 2,176 | 30.00 n=1/2 |" in md
    assert "ˢ: scored on a subset of the benchmark, not comparable to the paper" in md
    rows = {r["row"]: r for r in csv.DictReader(open(tmp_path / "demo" / "table.csv"))}
    assert (rows["lora_r2"]["demo_em_subset"], rows["vera_r64"]["demo_em_subset"]) == ("1", "0")
