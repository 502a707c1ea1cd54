"""recipes.reproduce: a resumable, crash-proof run of a grid (fake and real steps), SLURM submission, --dry-run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipes import reproduce

ROOT = Path(__file__).resolve().parents[2]

def _plan(capsys, *argv: str) -> str:
    assert reproduce.main(["--plan", *argv]) == 0
    return capsys.readouterr().out


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
    model = {"kind": "base", "adapter_dir": None} if args["checkpoint"] == "null" else {
        "kind": "adapter", "adapter_dir": args["checkpoint"]}
    (out / "eval.json").write_text(json.dumps({"status": "complete", "model": model, "scores": {"demo": score},
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
                 f"commands.evaluate=[python,{tmp_path / 'fake_eval.py'}]", "eval_together=1"]  # cell by cell
    return tmp_path, overrides, log


def _run(overrides, *flags, env=None):
    return subprocess.run([sys.executable, "-m", "recipes.reproduce", *overrides, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _cell(tmp: Path, cid: str) -> dict:
    return json.loads((tmp / "results" / "demo" / "cells" / f"{cid}.json").read_text())


def test_killed_grid_resumes_without_recomputing(fake, capsys, monkeypatch):
    tmp, overrides, log = fake
    ov = overrides + ["experiment.seeds=[1,2]", "render=false"]
    monkeypatch.setenv("FAKE_LOG", str(log))
    first = _run(ov, "--rows", "lora_r2", env={"FAKE_KILL_SEED": "2"})  # the module, as typed
    assert first.returncode == -9, first.stdout + first.stderr  # SIGKILLed while training cell 2
    c1 = "lora_r2__demo__lr0.01__seed1"
    c2 = "lora_r2__demo__lr0.01__seed2"
    assert _cell(tmp, c1)["status"] == "done"
    assert not (tmp / "results" / "demo" / "cells" / f"{c2}.json").exists()
    assert (tmp / "results" / "demo" / "cells" / f"{c2}.lock").exists()  # left behind by the dead runner
    plan = _plan(capsys, *ov, "--rows", "lora_r2")
    assert re.search(rf"^  done\s+{c1}", plan, re.M) and re.search(rf"^  to do\s+{c2}", plan, re.M)
    from prolora.io import FileLock

    lock = FileLock(tmp / "results" / "demo" / "cells" / f"{c2}.lock")  # a live process's lock reads as running
    assert lock.acquire({"host": "test"})
    assert re.search(rf"^  running\s+{c2}", _plan(capsys, *ov, "--rows", "lora_r2"), re.M)
    assert reproduce.main([*ov, "--rows", "lora_r2"]) == 0  # the other runner holds it: skipped, not run twice
    assert "1 running elsewhere" in capsys.readouterr().out
    lock.release()

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
    assert all(FileLock.holder(p) is None for p in (tmp / "results" / "demo" / "cells").glob("*.lock"))
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
    assert rec["subsets"] == {"demo_em": {"n": 4, "of": 118}} and rec["protocol"] == "authors"  # marked a subset
    assert rec["config"]["run"]["method"]["m"] == 7 and rec["config"]["run"]["seed"] == 1
    assert len(rec["loss_curve"]) >= 1


@pytest.mark.parametrize("content", ["[1, 2]", "{not json"])
def test_a_damaged_cell_file_is_named_in_the_plan_and_run_again(fake, content):
    tmp, overrides, log = fake
    cells = tmp / "results" / "demo" / "cells"
    cells.mkdir(parents=True)
    (cells / "lora_r2__demo__lr0.01__seed1.json").write_text(content)
    plan = _run(overrides, "--plan", "--rows", "lora_r2")
    assert plan.returncode == 0 and "Traceback" not in plan.stderr, plan.stderr[-2000:]
    if content.startswith(("[", "1", '"')):
        assert "lora_r2__demo__lr0.01__seed1.json is not a JSON object (damaged)" in plan.stdout
    run = _run([*overrides, "render=false", "experiment.seeds=[1]"], "--rows", "lora_r2",
               env={"FAKE_LOG": str(log)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert _cell(tmp, "lora_r2__demo__lr0.01__seed1")["status"] == "done"
