"""The reproduction runner: the grids of the paper's artefacts, the plan, and a resumable, crash-proof run."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipes import experiments as E
from recipes import reproduce

ROOT = Path(__file__).resolve().parents[2]

# SPEC section 3: LLaMA2-7B trainable parameters, exact.
TABLE2_PARAMS = {
    "lora_r2": 4_997_120, "lora_r8": 19_988_480, "lora_r16": 39_976_960, "vera_r256": 1_417_216,
    "tied_lora_r256": 4_595_712, "tied_lora_r280": 4_989_696, "prolora_r8_u1_m7_n7": 4_999_520,
    "clora_r16_u0_m2_n2": 19_988_480, "clora_r32_u0_m4_n4": 19_988_480,
}


def _plan(capsys, *argv: str) -> str:
    assert reproduce.main(["--plan", *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def table2_plan(tmp_path_factory) -> str:
    """``python recipes/reproduce.py experiment=table2 --plan`` (in-process: the script's main with the same
    argv; the runner tests below go through the script itself)."""
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
    assert "[analytic formula" not in table2_plan  # the library's meta-device counter did the counting
    assert "Summary: done 0, running 0, failed 0, to do 218" in table2_plan


def test_meta_count_shortcut_equals_full_model_count():
    counting = pytest.importorskip("prolora.counting")
    for spec in ({"method": "tied_lora", "r": 256}, {"method": "prolora", "r": 32, "u": 4, "m": 7, "n": 7}):
        v = E.make_variant("llama2_7b", spec)
        full = counting.count_for("llama2_7b", E.library_config(v.method))
        assert E.count_params("llama2_7b", v.method)[0] == full


def test_other_grids(capsys):
    cfg = E.load_config(["experiment=table3"])
    g = E.build_grid(cfg)
    assert (len(g.cells), sum(c.eval_only for c in g.cells)) == (29, 2)
    assert {c.dataset for c in g.cells if not c.eval_only} == {"superni", "flan_v2", "cot"}
    assert next(c for c in g.cells if c.dataset == "superni").tasks == ["mmlu"]
    assert next(c for c in g.cells if c.eval_only).tasks == ["mmlu", "bbh", "gsm"]
    # 13B counted from its real 40 layers; the paper's 6.26M (32 layers) is flagged
    lora = next(v for r in g.rows for v in r.variants if v.id == "lora_r2")
    assert E.count_params("llama2_13b", lora.method)[0] == 7_823_360
    g4 = E.build_grid(E.load_config(["experiment=table4"]))
    assert len(g4.cells) == 12 and {c.dataset for c in g4.cells} == {"flan_v2"}
    assert {c.variant.method["name"] for c in g4.cells} == {
        "prolora", "share_hidden_rotate_hidden", "share_rank_rotate_rank", "share_rank_rotate_hidden"}
    # Table 4's PRoLoRA cell is the same run directory as Table 2's r32 variant (reused, not retrained)
    g2 = E.build_grid(E.load_config(["experiment=table2"]), rows=["prolora_16_32"], datasets=["flan_v2"], seeds=[1])
    run2 = {c.variant.id: c.run_dir for c in g2.cells}["prolora_r32_u4_m7_n7"]
    assert run2 == next(c.run_dir for c in g4.cells if c.variant.id == "prolora_r32_u4_m7_n7" and c.seed == 1)
    gf = E.build_grid(E.load_config(["experiment=figure2"]))
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
    sweep = E.build_grid(E.load_config(["experiment=table2", "lr_sweep=true"]), rows=["vera_r256"])
    assert len(sweep.cells) == 5 * 4 * 3
    assert sorted({c.lr for c in sweep.cells}) == [2e-3, 5e-3, 1e-2, 2e-2, 5e-2]


# --------------------------------------------------------------------------------------------- runner

FAKE_TRAIN = textwrap.dedent('''
    import json, os, signal, sys, pathlib
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    seed = int(args["seed"])
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(f"train {args['method']} seed{seed}\\n")
    if os.environ.get("FAKE_KILL_SEED") == str(seed):   # the grid gets killed while this cell trains
        os.kill(os.getppid(), signal.SIGKILL)
        sys.exit(3)
    if os.environ.get("FAKE_FAIL_SEED") == str(seed):
        print("Traceback: boom, simulated CUDA out of memory", file=sys.stderr)
        sys.exit(1)
    out = pathlib.Path(args["output_dir"])
    (out / "final").mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "w") as f:
        for step in (5, 10, 15):
            f.write(json.dumps({"step": step, "loss": 3.0 - step / 10, "lr": float(args["optim.lr"]),
                                "grad_norm": 1.0}) + "\\n")
    run = {"config": {"seed": seed, "optim": {"lr": float(args["optim.lr"])}}, "trainable_params": 4864,
           "git_commit": "abc", "wall_time_s": 1.5, "tokens_per_s": 1000.0, "initial_loss": 2.5,
           "final_loss": 1.5, "steps": int(args["trainer.max_steps"])}
    (out / "final" / "run.json").write_text(json.dumps(run))
''')

FAKE_EVAL = textwrap.dedent('''
    import json, os, sys, pathlib
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(f"eval {args['checkpoint']}\\n")
    seed = 0
    if args["checkpoint"] != "null":
        seed = json.loads((pathlib.Path(args["checkpoint"]) / "run.json").read_text())["config"]["seed"]
    out = pathlib.Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    score = 25.0 + 10 * seed  # percent, as eval/driver.py writes it
    (out / "eval.json").write_text(json.dumps({"scores": {"demo": score},
                                               "tasks": {"demo": {"score": score, "exact_match": score}}}))
''')


@pytest.fixture()
def fake(tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    (tmp_path / "fake_eval.py").write_text(FAKE_EVAL)
    log = tmp_path / "calls.log"
    log.touch()
    overrides = ["experiment=demo", f"results_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}",
                 "train_logger=none", f"commands.train=[python,{tmp_path / 'fake_train.py'}]",
                 f"commands.evaluate=[python,{tmp_path / 'fake_eval.py'}]"]
    return tmp_path, overrides, log


def _run(overrides, *flags, env=None):
    return subprocess.run([sys.executable, "recipes/reproduce.py", *overrides, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _cell(tmp: Path, cid: str) -> dict:
    return json.loads((tmp / "results" / "demo" / "cells" / f"{cid}.json").read_text())


def test_killed_grid_resumes_without_recomputing(fake, capsys, monkeypatch):
    tmp, overrides, log = fake
    ov = overrides + ["experiment.seeds=[1,2]", "render=false"]
    monkeypatch.setenv("FAKE_LOG", str(log))
    first = _run(ov, "--rows", "lora_r2", env={"FAKE_KILL_SEED": "2"})  # the script, as typed
    assert first.returncode == -9, first.stdout + first.stderr  # SIGKILLed while training cell 2
    c1 = "lora_r2__demo__lr0.01__seed1"
    c2 = "lora_r2__demo__lr0.01__seed2"
    assert _cell(tmp, c1)["status"] == "done"
    assert not (tmp / "results" / "demo" / "cells" / f"{c2}.json").exists()
    assert (tmp / "results" / "demo" / "cells" / f"{c2}.lock").exists()  # left behind by the dead runner
    plan = _plan(capsys, *ov, "--rows", "lora_r2")
    assert re.search(rf"^  done\s+{c1}", plan, re.M) and re.search(rf"^  to do\s+{c2}", plan, re.M)
    lock = tmp / "results" / "demo" / "cells" / f"{c2}.lock"  # a live process's lock reads as running
    stale = lock.read_text()
    lock.write_text(json.dumps({**json.loads(stale), "pid": os.getpid(), "child_pid": None}))
    assert re.search(rf"^  running\s+{c2}", _plan(capsys, *ov, "--rows", "lora_r2"), re.M)
    lock.write_text(stale)

    assert reproduce.main([*ov, "--rows", "lora_r2"]) == 0  # rerun (in-process: same code, faster)
    assert "1 already finished" in capsys.readouterr().out
    calls = log.read_text().splitlines()
    assert calls.count("train lora seed1") == 1  # cell 1 was not recomputed
    assert calls.count("train lora seed2") == 2  # killed once, then run
    assert sum(c.startswith("eval") for c in calls) == 2
    rec = _cell(tmp, c2)
    assert rec["status"] == "done" and rec["metrics"] == {"demo_em": 45.0}
    assert rec["loss_curve"] == [[5, 2.5], [10, 2.0], [15, 1.5]]
    assert rec["train"]["final_loss"] == 1.5 and rec["trainable_params"] == 4864
    assert rec["config"]["train"]["method"]["r"] == 2 and rec["config"]["train"]["optim"]["lr"] == 0.01
    assert rec["paths"]["checkpoint"] == rec["paths"]["run_dir"] + "/final"
    assert Path(rec["paths"]["run_dir"]).parent == tmp / "runs" / "tiny_pretrained" / "demo" / "lora_r2"
    assert Path(rec["paths"]["run_dir"]).name.startswith("lr0.01_steps300_seed2_")  # + hash of demo overrides
    assert "logger=none" in rec["commands"]["train"] and "seed=2" in rec["commands"]["train"]
    assert not list((tmp / "results" / "demo" / "cells").glob("*.lock"))
    assert reproduce.main([*ov, "--rows", "lora_r2"]) == 0  # nothing left to do
    assert "ran 0 cell(s)" in capsys.readouterr().out
    assert len(log.read_text().splitlines()) == len(calls)


def test_failed_cell_is_recorded_and_the_grid_goes_on(fake, capsys, monkeypatch):
    tmp, overrides, log = fake
    ov = overrides + ["experiment.seeds=[1,2,3]"]
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_FAIL_SEED", "2")
    assert reproduce.main([*ov, "--rows", "base_chat,lora_r2"]) == 1
    out = capsys.readouterr().out
    assert "3 done, 1 failed" in out
    failed = _cell(tmp, "lora_r2__demo__lr0.01__seed2")
    assert failed["status"] == "failed" and failed["failure"]["stage"] == "train"
    assert failed["failure"]["returncode"] == 1
    assert "boom, simulated CUDA out of memory" in failed["failure"]["stderr_tail"]
    assert _cell(tmp, "lora_r2__demo__lr0.01__seed3")["status"] == "done"  # the next cell still ran
    base = _cell(tmp, "base_chat__eval__seed1")
    assert base["eval_only"] and base["metrics"] == {"demo_em": 25.0}
    assert "checkpoint=null" in base["commands"]["evaluate"] and "model=tiny_pretrained" in base["commands"]["evaluate"]
    plan = _plan(capsys, *ov, "--rows", "base_chat,lora_r2")
    assert re.search(r"^  failed\s+lora_r2__demo__lr0.01__seed2 .* train rc=1$", plan, re.M)
    assert "Summary: done 3, running 0, failed 1, to do 0" in plan
    # the renderer ran after the grid: seeds 1 and 3 only, marked as such
    table = (tmp / "results" / "demo" / "table.md").read_text()
    assert "| LoRA | 2 | 4,864 | 45.00 ± 14.14 n=2/3 |" in table
    assert "| Base model (chat) | - | - | 25.00 |" in table
    assert "| PRoLoRA | 8 | 5,008 | — |" in table
    assert (tmp / "results" / "demo" / "loss_curves.png").stat().st_size > 1000
    # a rerun retries the failed cell only
    monkeypatch.delenv("FAKE_FAIL_SEED")
    assert reproduce.main([*ov, "--rows", "base_chat,lora_r2", "--no-render"]) == 0
    assert "1 done, 0 failed, 3 already finished" in capsys.readouterr().out


def test_slurm_submits_a_hydra_multirun(fake, capsys):
    tmp, overrides, log = fake
    ov = overrides + ["experiment.seeds=[1,2]", f"hydra.sweep.dir={tmp / 'sweep'}"]
    assert reproduce.main([*ov, "--rows", "lora_r2", "--slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "submitting 2 cell(s)" in out and "hydra/launcher=slurm_a100" in out
    assert "cell=lora_r2__demo__lr0.01__seed1,lora_r2__demo__lr0.01__seed2" in out
    # the same multirun with Hydra's basic launcher runs the cells here, one job each
    res = _run(ov, "--rows", "lora_r2", "--slurm", "--launcher", "basic", env={"FAKE_LOG": str(log)})
    assert res.returncode == 0, res.stdout + res.stderr
    for s in (1, 2):
        assert _cell(tmp, f"lora_r2__demo__lr0.01__seed{s}")["status"] == "done"


def test_dry_run_prints_commands_and_runs_nothing(fake, capsys):
    tmp, overrides, log = fake
    assert reproduce.main([*overrides, "--rows", "prolora_r8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "method=prolora method.m=7 method.n=7 method.r=8 method.u=1 dataset=demo seed=1 optim.lr=0.01" in out
    assert "trainer.max_steps=300 experiment_name=demo" in out and "tasks=[demo]" in out
    assert log.read_text() == ""
    assert not list((tmp / "results").rglob("*.json"))


def test_eval_json_to_paper_columns():
    """eval.json as eval/driver.py's write_results lays it out (percent) -> the paper's six columns."""
    ev = {"scores": {"mmlu": 41.18, "tydiqa": 17.4, "bbh": 33.43, "gsm": 3.03, "humaneval": 0.64},
          "tasks": {"mmlu": {"score": 41.18, "accuracy": 41.18, "n_examples": 14042},
                    "tydiqa": {"score": 17.4, "f1": 17.4, "exact_match": 0.1, "languages": {}},
                    "bbh": {"score": 33.43, "exact_match": 33.43}, "gsm": {"score": 3.03, "exact_match": 3.03},
                    "humaneval": {"score": 0.64, "pass@1": 0.64, "pass@10": 2.0}}}
    got = E.eval_to_columns(ev, ["mmlu_em", "bbh_em", "gsm_em", "tydiqa_f1", "tydiqa_em", "humaneval_p1"])
    assert got == {"mmlu_em": 41.18, "bbh_em": 33.43, "gsm_em": 3.03, "tydiqa_f1": 17.4, "tydiqa_em": 0.1,
                   "humaneval_p1": 0.64}
    assert E.eval_to_columns({"tasks": {"bbh": {"exact_match": 50.0}}}, ["mmlu_em", "bbh_em"]) == {"bbh_em": 50.0}
    assert E.eval_to_columns(None, ["mmlu_em"]) == {}


@pytest.mark.slow
def test_one_real_tiny_cell(tmp_path, capsys):
    """The real commands: train.py on the tiny 4-bit model + recipes.evaluate on the demo task, recorded."""
    ov = ["experiment=demo", f"results_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}",
          "train_logger=none", "experiment.max_steps=4", "experiment.eval_overrides=['demo.max_examples=4']",
          "render=false"]
    assert reproduce.main([*ov, "--rows", "prolora_r8"]) == 0, capsys.readouterr().out
    rec = _cell(tmp_path, "prolora_r8_u1_m7_n7__demo__lr0.01__seed1")
    assert rec["status"] == "done"
    assert rec["trainable_params"] == rec["trainable_params_run"] == 5008  # the counter agrees with training
    assert rec["train"]["steps"] == 4 and rec["train"]["final_loss"] > 0
    assert set(rec["metrics"]) == {"demo_em"} and 0.0 <= rec["metrics"]["demo_em"] <= 100.0
    assert rec["eval"]["tasks"]["demo"]["n_examples"] == 4
    assert rec["config"]["run"]["method"]["m"] == 7 and rec["config"]["run"]["seed"] == 1
    assert len(rec["loss_curve"]) >= 1
