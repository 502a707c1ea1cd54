"""The grid runner owns its children and its locks: SIGTERM stops the step's whole process group before the
lock goes, locks are taken atomically (no two runners ever hold one), an evaluation with other settings is a
new evaluation, and a cell is recorded done only when its files agree."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prolora.io import FileLock
from recipes import reproduce
from recipes.paper.grid import build_grid, load_config
from recipes.paper.runner import Runner
from recipes.paper.state import cell_state
from tests.conftest import REPO

SLOW_TRAIN = textwrap.dedent('''
    import json, os, subprocess, sys, time, pathlib
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    out = pathlib.Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # e.g. W&B's service
    (out / "pids").write_text(f"{os.getpid()} {helper.pid}")
    steps = int(args["trainer.max_steps"])
    start = len((out / "metrics.jsonl").read_text().splitlines()) if (out / "metrics.jsonl").exists() else 0
    for step in range(start + 1, steps + 1):
        time.sleep(float(os.environ.get("FAKE_STEP_S", "0")))
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": 3.0 - step / 10}) + "\\n")
    (out / "final").mkdir(exist_ok=True)
    (out / "final" / "run.json").write_text(json.dumps({"config": {"seed": int(args["seed"]), "optim": {
        "lr": float(args["optim.lr"])}}, "steps": steps, "trainable_params": 4864, "final_loss": 1.0}))
    if os.environ.get("FAKE_MANIFEST"):  # as the real recipe: the sha256 of every file of the checkpoint
        from prolora import integrity
        integrity.write_manifest(out / "final")
    helper.kill()
''')

FAKE_EVAL = textwrap.dedent('''
    import json, os, sys, pathlib
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    out = pathlib.Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    score = float(os.environ.get("FAKE_SCORE", "40"))
    model = {"kind": "base", "adapter_dir": None} if args["checkpoint"] == "null" else {
        "kind": "adapter", "adapter_dir": os.environ.get("FAKE_SCORED", args["checkpoint"])}
    if os.environ.get("FAKE_TAMPER"):  # the checkpoint edited while (or after) it was scored
        (pathlib.Path(args["checkpoint"]) / "adapter_config.json").write_text("{}")
    status = os.environ.get("FAKE_STATUS", "complete")
    (out / "eval.json").write_text(json.dumps({"status": status, "model": model, "protocol": "authors",
        "scores": {"demo": score}, "tasks": {"demo": {"score": score, "exact_match": score, "n_examples": 118,
        "n_available": 118, "subset": False}}}))
''')


@pytest.fixture()
def grid(tmp_path):
    (tmp_path / "train.py").write_text(SLOW_TRAIN)
    (tmp_path / "eval.py").write_text(FAKE_EVAL)
    overrides = ["experiment=demo", f"results_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}",
                 "train_logger=none", "render=false", "experiment.max_steps=20",
                 f"commands.train=[python,{tmp_path / 'train.py'}]", f"commands.evaluate=[python,{tmp_path / 'eval.py'}]",
                 "eval_together=1"]  # cell by cell (tests/recipes/test_reproduce.py has the evaluation together)
    return tmp_path, overrides


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _cell(tmp: Path, cid: str) -> dict:
    return json.loads((tmp / "results" / "demo" / "cells" / f"{cid}.json").read_text())


def test_sigterm_stops_the_step_and_everything_it_started_before_the_lock_goes(grid):
    tmp, ov = grid
    cid = "lora_r2__demo__lr0.01__seed1"
    runner = subprocess.Popen([sys.executable, "-m", "recipes.reproduce", *ov, "--rows", "lora_r2"], cwd=REPO,
                              env={**os.environ, "FAKE_STEP_S": "0.2"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    pids_file = None
    deadline = time.time() + 60
    while time.time() < deadline:
        found = list((tmp / "runs").rglob("pids"))
        metrics = list((tmp / "runs").rglob("metrics.jsonl"))
        if found and metrics and len(metrics[0].read_text().splitlines()) >= 3:
            pids_file = found[0]
            break
        time.sleep(0.1)
    assert pids_file is not None, runner.communicate(timeout=30)
    train_pid, helper_pid = map(int, pids_file.read_text().split())
    assert FileLock.holder(tmp / "results" / "demo" / "cells" / f"{cid}.lock") is not None
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=60)
    time.sleep(0.2)
    assert not _alive(train_pid) and not _alive(helper_pid)  # no process left behind
    assert FileLock.holder(tmp / "results" / "demo" / "cells" / f"{cid}.lock") is None
    assert not (tmp / "results" / "demo" / "cells" / f"{cid}.json").exists()
    # a rerun finishes the cell as an uninterrupted run does (no second training into the same directory)
    assert reproduce.main([*ov, "--rows", "lora_r2"]) == 0
    rec = _cell(tmp, cid)
    assert rec["status"] == "done" and [s for s, _ in rec["loss_curve"]] == list(range(1, 21))


def test_an_evaluation_with_other_settings_is_a_new_evaluation(grid, capsys, monkeypatch):
    tmp, ov = grid
    monkeypatch.setenv("FAKE_SCORE", "40")
    assert reproduce.main([*ov, "--rows", "base_chat", "experiment.eval_overrides=['demo.max_examples=8']"]) == 0
    smoke = _cell(tmp, "base_chat__eval__seed1")
    (tmp / "results" / "demo" / "cells" / "base_chat__eval__seed1.json").unlink()  # rerun the cell
    monkeypatch.setenv("FAKE_SCORE", "55")
    assert reproduce.main([*ov, "--rows", "base_chat"]) == 0
    full = _cell(tmp, "base_chat__eval__seed1")
    assert smoke["paths"]["eval_dir"] != full["paths"]["eval_dir"]  # the overrides are in the folder's name
    assert (smoke["metrics"], full["metrics"]) == ({"demo_em": 40.0}, {"demo_em": 55.0})  # not reused


def test_a_cell_file_recorded_for_other_settings_is_not_reused(grid, capsys, monkeypatch):
    """A rerun with another max_steps or other evaluation overrides runs the cell again (its cell file names
    other run/eval directories) instead of reporting the old numbers as this grid's; a cell file whose runs were
    made in another checkout (same directory names, other root) is still done."""
    tmp, ov = grid
    monkeypatch.setenv("FAKE_SCORE", "40")
    assert reproduce.main([*ov, "--rows", "base_chat,lora_r2", "experiment.eval_overrides=['demo.max_examples=8']"]) == 0
    first = {c: _cell(tmp, c) for c in ("base_chat__eval__seed1", "lora_r2__demo__lr0.01__seed1")}
    monkeypatch.setenv("FAKE_SCORE", "55")
    assert reproduce.main([*ov, "--rows", "base_chat,lora_r2", "experiment.max_steps=10"]) == 0
    assert "cell file recorded for" in capsys.readouterr().out  # said why it runs again
    for cid, old in first.items():
        new = _cell(tmp, cid)
        assert new["paths"]["eval_dir"] != old["paths"]["eval_dir"]
        assert (old["metrics"], new["metrics"]) == ({"demo_em": 40.0}, {"demo_em": 55.0})
    lora = _cell(tmp, "lora_r2__demo__lr0.01__seed1")
    assert lora["max_steps"] == 10 and "_steps10_" in lora["paths"]["run_dir"]
    # the same cell file with its runs under another root: still this grid's cell
    path = tmp / "results" / "demo" / "cells" / "lora_r2__demo__lr0.01__seed1.json"
    lora["paths"] = {k: v.replace(str(tmp / "runs"), "/another/clone/runs") for k, v in lora["paths"].items()}
    path.write_text(json.dumps(lora))
    cfg = load_config([*ov, "experiment.max_steps=10"])
    cell = build_grid(cfg).cell("lora_r2__demo__lr0.01__seed1")
    assert cell_state(cfg, cell) == ("done", "")
    assert cell_state(load_config(ov), build_grid(load_config(ov)).cell(cell.id))[0] == "to do"


def test_a_cell_whose_files_disagree_is_not_done(grid, monkeypatch):
    tmp, ov = grid
    monkeypatch.setenv("FAKE_SCORED", "/somewhere/else/final")  # eval.json scored another checkpoint
    assert reproduce.main([*ov, "--rows", "lora_r2"]) == 1
    rec = _cell(tmp, "lora_r2__demo__lr0.01__seed1")
    assert rec["status"] == "failed" and rec["failure"]["stage"] == "record"
    assert "scored /somewhere/else/final, not this cell's checkpoint" in rec["failure"]["reason"]


@pytest.mark.parametrize("status", ["incomplete", "failed"])
def test_an_evaluation_that_did_not_finish_is_never_recorded_done(grid, monkeypatch, status):
    tmp, ov = grid
    monkeypatch.setenv("FAKE_STATUS", status)  # eval.json exists, exit code 0, but not every task was scored
    assert reproduce.main([*ov, "--rows", "lora_r2"]) == 1
    rec = _cell(tmp, "lora_r2__demo__lr0.01__seed1")
    assert rec["status"] == "failed" and rec["failure"]["stage"] == "eval"
    assert rec["failure"]["reason"] == "exit code 0 but no finished eval.json"
    cfg = load_config(ov)
    assert cell_state(cfg, build_grid(cfg).cell(rec["cell_id"]))[0] == "failed"


def test_a_checkpoint_modified_after_training_is_not_recorded_done(grid, monkeypatch):
    tmp, ov = grid
    monkeypatch.setenv("FAKE_MANIFEST", "1")
    monkeypatch.setenv("FAKE_TAMPER", "1")
    assert reproduce.main([*ov, "--rows", "lora_r2"]) == 1
    rec = _cell(tmp, "lora_r2__demo__lr0.01__seed1")
    assert rec["status"] == "failed" and rec["failure"]["stage"] == "record"
    assert "adapter_config.json (added) differs from what training wrote" in rec["failure"]["reason"]
    monkeypatch.delenv("FAKE_TAMPER")
    assert reproduce.main([*ov, "--rows", "lora_r2", "experiment.seeds=[2]"]) == 0  # untouched: done, verified
    assert _cell(tmp, "lora_r2__demo__lr0.01__seed2")["status"] == "done"


def test_two_runners_and_a_sigterm_to_one_mid_cell(grid):
    """Runner A takes seed 1's cell, runner B (started while A trains) skips it as running and does seed 2;
    SIGTERM to A mid-cell leaves seed 1 to do, B's cell done, no lock held and nothing recorded for seed 1; a
    third run finishes seed 1 only."""
    tmp, ov = grid
    ov = [*ov, "experiment.seeds=[1,2]"]

    def runner(step_s):
        return subprocess.Popen([sys.executable, "-m", "recipes.reproduce", *ov, "--rows", "lora_r2"], cwd=REPO,
                                env={**os.environ, "FAKE_STEP_S": step_s}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    a = runner("1.0")  # 20 steps of a second: still training when B arrives
    lock1 = tmp / "results" / "demo" / "cells" / "lora_r2__demo__lr0.01__seed1.lock"
    deadline = time.time() + 60
    while FileLock.holder(lock1) is None and time.time() < deadline:
        time.sleep(0.1)
    assert FileLock.holder(lock1) is not None, a.communicate(timeout=30)
    b = runner("0.05")
    seen = []
    for line in b.stdout:  # B reaches seed 1 while A holds it
        seen.append(line)
        if "running elsewhere" in line or len(seen) > 50:
            break
    assert "lora_r2__demo__lr0.01__seed1: running elsewhere, skipped" in "".join(seen), "".join(seen)
    a.send_signal(signal.SIGTERM)  # mid-cell
    a.wait(timeout=60)
    out_b = "".join(seen) + b.communicate(timeout=120)[0]
    assert b.returncode == 0, out_b
    assert _cell(tmp, "lora_r2__demo__lr0.01__seed2")["status"] == "done"
    assert not (tmp / "results" / "demo" / "cells" / "lora_r2__demo__lr0.01__seed1.json").exists()
    assert FileLock.holder(lock1) is None
    assert reproduce.main(ov + ["--rows", "lora_r2"]) == 0
    assert _cell(tmp, "lora_r2__demo__lr0.01__seed1")["status"] == "done"


def _race(path: str, barrier, results) -> None:
    lock = FileLock(path)
    barrier.wait()
    got = lock.acquire({"host": "race"})
    results.put(got)
    barrier.wait()  # everyone has tried while the winner still holds it
    lock.release()


def test_no_two_processes_ever_hold_one_lock(tmp_path):
    """The stale-lock race (two runners both taking a dead runner's lock): flock cannot be held twice."""
    ctx = mp.get_context("fork")
    path = str(tmp_path / "cell.lock")
    dead = ctx.Process(target=lambda: FileLock(path).acquire({"host": "dead"}) and os._exit(0))
    dead.start()
    dead.join()  # a runner that died holding the lock: the kernel released it
    for _ in range(30):
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(path, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        got = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
        assert sum(got) == 1, got


def test_runner_records_through_one_lock_per_cell(grid):
    tmp, ov = grid
    cfg = load_config(ov)
    g = build_grid(cfg, rows=["lora_r2"])
    cell = g.cells[0]
    other = FileLock(tmp / "results" / "demo" / "cells" / f"{cell.id}.lock")
    assert other.acquire({"host": "elsewhere"})
    try:
        assert Runner(cfg, g, log=lambda m: None).run_cell(cell) == "running"  # never a second holder
    finally:
        other.release()
    assert Runner(cfg, g, log=lambda m: None).run_cell(cell) == "done"


# ----------------------------------------------------------------------------- trained cells evaluated together

QUICK_TRAIN = textwrap.dedent('''
    import json, os, signal, sys, pathlib
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(f"train {args['method']} seed{args['seed']}\\n")
    if os.environ.get("FAKE_KILL_SEED") == args["seed"]:  # the grid gets killed while this cell trains
        os.kill(os.getppid(), signal.SIGKILL)
        sys.exit(3)
    out = pathlib.Path(args["output_dir"])
    (out / "final").mkdir(parents=True, exist_ok=True)
    (out / "final" / "run.json").write_text(json.dumps({"config": {"seed": int(args["seed"]), "optim": {
        "lr": float(args["optim.lr"])}}, "steps": int(args["trainer.max_steps"]), "trainable_params": 1}))
''')

EVAL_ONE_OR_MANY = textwrap.dedent('''
    import json, os, sys, pathlib
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    def listed(v):
        return [x.strip().strip("'") for x in v.strip("[]").split(",")]
    pairs = list(zip(listed(args["checkpoints"]), listed(args["output_dirs"]))) if "checkpoints" in args else [
        (args["checkpoint"], args["output_dir"])]
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(f"eval {len(pairs)}\\n")
    for ckpt, out in pairs:
        seed = json.loads((pathlib.Path(ckpt) / "run.json").read_text())["config"]["seed"]
        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        score = 25.0 + 10 * seed
        (out / "eval.json").write_text(json.dumps({"status": "complete", "scores": {"demo": score},
            "model": {"kind": "adapter", "adapter_dir": ckpt}, "tasks": {"demo": {"score": score, "exact_match": score}}}))
''')


@pytest.fixture()
def together(tmp_path, monkeypatch):
    (tmp_path / "train.py").write_text(QUICK_TRAIN)
    (tmp_path / "eval.py").write_text(EVAL_ONE_OR_MANY)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("FAKE_LOG", str(log))
    overrides = ["experiment=demo", f"results_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}",
                 "train_logger=none", "render=false", "experiment.seeds=[1,2]",
                 f"commands.train=[python,{tmp_path / 'train.py'}]", f"commands.evaluate=[python,{tmp_path / 'eval.py'}]"]
    return tmp_path, overrides, log


def test_trained_cells_of_one_base_and_setting_are_evaluated_in_one_pass(together):
    tmp, ov, log = together
    assert reproduce.main([*ov, "--rows", "lora_r2,prolora_r8"]) == 0
    calls = log.read_text().splitlines()
    assert calls[:4] == ["train lora seed1", "train lora seed2", "train prolora seed1", "train prolora seed2"]
    assert calls[4:] == ["eval 4"]  # one pass over the four checkpoints, after their trainings
    for cid in ("lora_r2__demo__lr0.01__seed2", "prolora_r8_u1_m7_n7__demo__lr0.01__seed1"):
        rec = _cell(tmp, cid)
        seed = int(cid[-1])
        assert rec["status"] == "done" and rec["metrics"] == {"demo_em": 25.0 + 10 * seed}  # its own eval.json
        assert any(a.startswith("checkpoints=[") for a in rec["commands"]["evaluate"])
        assert rec["timings"]["eval_together"] == 4
    assert all(FileLock.holder(p) is None for p in (tmp / "results" / "demo" / "cells").glob("*.lock"))
    # groups hold at most eval_together cells; the authors' protocol (merged) stays cell by cell
    assert reproduce.main([*ov, "--rows", "lora_r2,prolora_r8", "experiment.seeds=[3,4,5]", "eval_together=2"]) == 0
    assert log.read_text().splitlines()[5:] == [
        "train lora seed3", "train lora seed4", "eval 2", "train lora seed5", "train prolora seed3", "eval 2",
        "train prolora seed4", "train prolora seed5", "eval 2"]
    assert reproduce.main([*ov, "--rows", "lora_r2", "experiment.eval_overrides=['merge=true']"]) == 0
    assert log.read_text().splitlines()[-3:] == ["eval 2", "eval 1", "eval 1"]  # trained already: evaluated only


def test_a_grid_killed_before_its_evaluation_together_resumes_without_retraining(together):
    tmp, ov, log = together
    first = subprocess.run([sys.executable, "-m", "recipes.reproduce", *ov, "--rows", "lora_r2"], cwd=REPO,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "FAKE_KILL_SEED": "2"})
    assert first.returncode == -9, first.stdout + first.stderr  # killed while training the second cell
    c1, c2 = "lora_r2__demo__lr0.01__seed1", "lora_r2__demo__lr0.01__seed2"
    assert not (tmp / "results" / "demo" / "cells" / f"{c1}.json").exists()  # trained, not yet evaluated
    cfg = load_config([*ov])
    grid = build_grid(cfg, rows=["lora_r2"])
    assert cell_state(cfg, grid.cell(c1)) == ("to do", "trained")
    assert reproduce.main([*ov, "--rows", "lora_r2"]) == 0
    calls = log.read_text().splitlines()
    assert calls == ["train lora seed1", "train lora seed2", "train lora seed2", "eval 2"]  # cell 1 not retrained
    assert _cell(tmp, c1)["status"] == _cell(tmp, c2)["status"] == "done"


def test_an_incomplete_eval_json_is_never_consistent():
    """The record's last check: an eval.json that is not ``complete`` (a task failed, or the run was cut) does not
    make a cell done, even where it scored the right model."""
    from types import SimpleNamespace

    from recipes.paper.runner import Runner

    base_cell = SimpleNamespace(eval_only=True)
    for status in ("partial", "running", None):
        ev = {"model": {"kind": "base"}, **({"status": status} if status else {})}
        assert Runner.inconsistency(base_cell, None, ev) == "eval.json is missing or incomplete"
    assert Runner.inconsistency(base_cell, None, {"status": "complete", "model": {"kind": "base"}}) is None


def test_a_training_of_another_length_is_not_this_cells(tmp_path):
    """A finished training found in the cell's run directory but run for another number of steps (or seed, or LR)
    is not recorded as this cell's."""
    from types import SimpleNamespace

    from recipes.paper.runner import Runner

    cell = SimpleNamespace(eval_only=False, max_steps=40, seed=1, lr=1e-3, run_dir=tmp_path / "run")
    ev = {"status": "complete", "model": {"kind": "adapter", "adapter_dir": str(tmp_path / "run" / "final")}}
    for steps, seed, lr in ((80, 1, 1e-3), (40, 2, 1e-3), (40, 1, 2e-4)):
        run_json = {"steps": steps, "config": {"seed": seed, "optim": {"lr": lr}}}
        assert "is not this cell's" in (Runner.inconsistency(cell, run_json, ev) or ""), (steps, seed, lr)
