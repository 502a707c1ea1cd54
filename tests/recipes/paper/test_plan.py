"""``--plan`` of the paper grids: every cell, its state, the Param. column beside the paper's printed values."""

from __future__ import annotations

import io
import re
import sys

import pytest

from recipes import reproduce
from recipes.paper.grid import make_variant
from recipes.paper.plan import count_params, params_check

# LLaMA2-7B trainable parameters, exact (the paper's section 3 arithmetic).
TABLE2_PARAMS = {
    "lora_r2": 4_997_120, "lora_r8": 19_988_480, "lora_r16": 39_976_960, "vera_r256": 1_417_216,
    "tied_lora_r256": 4_595_712, "tied_lora_r280": 4_989_696, "prolora_r8_u1_m7_n7": 4_999_520,
    "clora_r16_u0_m2_n2": 19_988_480, "clora_r32_u0_m4_n4": 19_988_480,
}



@pytest.fixture(scope="module")
def table2_plan(tmp_path_factory) -> str:
    """``python -m recipes.reproduce experiment=table2 --plan`` (in-process: the module's main with the same
    argv; the runner tests below run it as a command)."""
    out = tmp_path_factory.mktemp("plan")
    mp = pytest.MonkeyPatch()
    buf = io.StringIO()
    mp.setattr(sys, "stdout", buf)
    try:
        assert reproduce.main(["experiment=table2", "--plan", f"results_dir={out / 'results'}",
                               f"runs_dir={out / 'runs'}"]) == 0
    finally:
        mp.undo()
    return buf.getvalue()


def test_table2_plan_lists_every_cell_with_counts(table2_plan):
    text = table2_plan
    assert "Rows: 15 (13 trained, 2 eval-only)" in text
    assert "sub-rows (a 4/8 or 16/32 row counts each of its variants): 19; distinct trained variants: 18" in text
    assert "Cells: 218 = 216 training + 2 eval-only; counted per sub-row" in text
    assert "228 training + 2 eval-only" in text
    cells = [ln.split() for ln in text.splitlines() if ln.startswith("  to do ")]
    ids = [c[2] for c in cells]
    assert len(ids) == len(set(ids)) == 218
    assert {"vanilla_chat__eval__seed1", "vanilla_nochat__eval__seed1"} <= set(ids)
    trained = [i for i in ids if "__eval__" not in i]
    # 18 variants x 4 datasets x 3 seeds, with the paper's LRs (5e-5 for CodeAlpaca, 1e-2 for VeRA/Tied LoRA)
    assert len(trained) == 216
    assert {i.split("__")[1] for i in trained} == {"superni", "flan_v2", "cot", "code_alpaca"}
    assert {i.split("__")[3] for i in trained} == {"seed1", "seed2", "seed3"}
    assert "lora_r2__code_alpaca__lr5e-05__seed3" in ids and "lora_r2__superni__lr0.0002__seed1" in ids
    assert "vera_r256__cot__lr0.01__seed2" in ids and "tied_lora_r280__code_alpaca__lr0.01__seed1" in ids
    per_variant = {}
    for i in trained:
        per_variant[i.split("__")[0]] = per_variant.get(i.split("__")[0], 0) + 1
    assert len(per_variant) == 18 and set(per_variant.values()) == {12}
    # the shared PRoLoRA r8 variant serves both the "8" and the "4/8" rows
    line = next(ln for ln in text.splitlines() if "prolora_r8_u1_m7_n7__flan_v2__lr0.0002__seed1" in ln)
    assert "prolora_r8,prolora_4_8" in line


def test_table2_plan_param_column(table2_plan):
    rows = {}
    for ln in table2_plan.splitlines():
        m = re.match(r"^  (\S+)\s+(\S+)\s+(\S+)\s+([\d,]+)\s+(\S+)\s+(.*)$", ln)
        if m and m.group(3) != "variant":
            rows.setdefault(m.group(3), []).append((m.group(1), int(m.group(4).replace(",", "")), m.group(5),
                                                    m.group(6)))
    for variant, n in TABLE2_PARAMS.items():
        assert rows[variant][0][1] == n, variant
    assert rows["prolora_r4_u1_m3_n3"][0][1] == 4_998_016
    assert rows["prolora_r16_u7_m9_n9"][0][1] == 19_992_064
    assert rows["prolora_r32_u4_m7_n7"][0][1] == 19_998_080
    # paper's printed value beside each, its LoRA-r16 typo flagged, the ceil(h/m) overhead explained
    row, n, printed, check = rows["lora_r16"][0]
    assert (printed, check.split(" (")[0]) == ("40.98M", "MISMATCH: paper prints 40.98M")
    assert "typo" in check
    assert rows["lora_r2"][0][2:] == ("5.00M", "ok")
    assert rows["vera_r256"][0][2:] == ("1.42M", "ok")
    assert rows["prolora_r32_u4_m7_n7"][0][3] == (
        "ok with the paper's h/m formula (19,988,480); ceil(h/m) chunks add 9,600")
    assert "1 printed value(s) differ from the count" in table2_plan
    assert ("Evaluation: recipes.evaluate backend=hf protocol=authors merge=true precision=full dtype=float16; "
            "protocol authors: the PRoLoRA authors' scripts: full sets") in table2_plan
    assert "Summary: done 0, running 0, failed 0, to do 218" in table2_plan


def test_plan_counts_are_the_library_counts():
    import prolora

    for spec in ({"method": "tied_lora", "r": 256}, {"method": "prolora", "r": 32, "u": 4, "m": 7, "n": 7}):
        v = make_variant(spec)
        assert count_params("llama2_7b", v.method) == prolora.count_for("llama2_7b", prolora.make_config(**v.method))


def test_params_check():
    assert params_check(4_997_120, "5.00M") == "ok"
    assert params_check(39_976_960, "40.98M") == "MISMATCH: paper prints 40.98M"
    assert params_check(19_998_080, "19.99M", 19_988_480).startswith("ok with the paper's h/m formula (19,988,480)")
    assert params_check(None, "5.00M") == params_check(5, None) == ""
