"""N cells on N GPUs (fake steps): one worker per device, each cell's processes see their device only, the cells
run at once and each exactly once, and a SIGTERM stops every worker's step and leaves nothing half-recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from prolora.io import FileLock
from recipes.paper.pool import parse_devices
from tests.conftest import REPO

FAKE_TRAIN = textwrap.dedent('''
    import json, os, sys, time, pathlib
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    out = pathlib.Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"event": "start", "run": out.name, "variant": out.parent.name,
                            "device": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}) + "\\n")
    time.sleep(float(os.environ.get("FAKE_STEP_S", "1.5")))
    (out / "final").mkdir(exist_ok=True)
    (out / "final" / "run.json").write_text(json.dumps({"config": {"seed": int(args["seed"]), "optim": {
        "lr": float(args["optim.lr"])}}, "steps": int(args["trainer.max_steps"]), "trainable_params": 1}))
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"event": "end", "variant": out.parent.name, "start": start, "end": time.time(),
                            "device": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
''')

FAKE_EVAL = textwrap.dedent('''
    import json, os, sys, pathlib
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    out = pathlib.Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    model = {"kind": "base", "adapter_dir": None} if args["checkpoint"] == "null" else {
        "kind": "adapter", "adapter_dir": args["checkpoint"]}
    (out / "eval.json").write_text(json.dumps({"status": "complete", "model": model, "scores": {"demo": 50.0},
        "tasks": {"demo": {"score": 50.0, "exact_match": 50.0}}}))
''')


@pytest.fixture()
def grid(tmp_path):
    (tmp_path / "train.py").write_text(FAKE_TRAIN)
    (tmp_path / "eval.py").write_text(FAKE_EVAL)
    log = tmp_path / "calls.jsonl"
    log.touch()
    overrides = ["experiment=demo", f"results_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}",
                 "train_logger=none", "render=false", f"commands.train=[python,{tmp_path / 'train.py'}]",
                 f"commands.evaluate=[python,{tmp_path / 'eval.py'}]"]
    return tmp_path, overrides, log


def _reproduce(overrides, *flags, env):
    return subprocess.Popen([sys.executable, "-m", "recipes.reproduce", *overrides, *flags], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _events(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_devices_are_parsed_or_refused_in_one_line():
    assert parse_devices("0,1, 3") == ["0", "1", "3"] and parse_devices([2, 5]) == ["2", "5"] and parse_devices(None) == []
    for bad in ("0,0", "a,b", "1;2"):
        with pytest.raises(ValueError, match="give distinct GPU indices"):
            parse_devices(bad)


def test_n_cells_run_at_once_on_n_gpus_each_once(grid):
    tmp, ov, log = grid
    proc = _reproduce(ov, "--gpus", "0,1", env={"FAKE_LOG": str(log)})
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    ends = [e for e in _events(log) if e["event"] == "end"]
    assert sorted(e["variant"] for e in ends) == ["lora_r2", "prolora_r8_u1_m7_n7", "tied_lora_r64", "vera_r64"]
    assert {e["device"] for e in ends} == {"0", "1"}  # each cell's processes saw one device
    overlap = any(a["device"] != b["device"] and a["start"] < b["end"] and b["start"] < a["end"]
                  for a in ends for b in ends)
    assert overlap, ends  # two cells trained at the same time
    cells = sorted((tmp / "results" / "demo" / "cells").glob("*.json"))
    assert len(cells) == 6 and all(json.loads(p.read_text())["status"] == "done" for p in cells)
    assert "[gpu 0]" in out and "[gpu 1]" in out


def test_sigterm_stops_every_worker_and_a_rerun_finishes(grid):
    tmp, ov, log = grid
    proc = _reproduce(ov, "--gpus", "0,1", "--rows", "lora_r2,prolora_r8,vera_r64",
                      env={"FAKE_LOG": str(log), "FAKE_STEP_S": "60"})
    deadline = time.time() + 120
    while time.time() < deadline and sum(e["event"] == "start" for e in _events(log)) < 2:
        time.sleep(0.2)
    starts = [e for e in _events(log) if e["event"] == "start"]
    assert len(starts) == 2 and {e["device"] for e in starts} == {"0", "1"}, proc.communicate(timeout=30)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted" in out, out
    for e in starts:  # the steps and what they ran are gone
        with pytest.raises(ProcessLookupError):
            os.kill(e["pid"], 0)
    cells = tmp / "results" / "demo" / "cells"
    assert not list(cells.glob("*.json"))  # nothing recorded for the cut cells
    assert all(FileLock.holder(p) is None for p in cells.glob("*.lock"))
    rerun = _reproduce(ov, "--gpus", "0,1", "--rows", "lora_r2,prolora_r8,vera_r64",
                       env={"FAKE_LOG": str(log), "FAKE_STEP_S": "0.2"})
    assert rerun.communicate(timeout=300)[0] and rerun.returncode == 0
    assert len(list(cells.glob("*.json"))) == 3
