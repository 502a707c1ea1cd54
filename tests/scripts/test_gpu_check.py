"""The GPU check's CPU dry run goes the whole way (training rows, loss parity, merge + fp16 generation) on a
"bare machine" where hydra, omegaconf, wandb, datasets and evaluate are not installed; a missing package is one
line naming the wheels to bring; a spent budget skips phases and the report says which; a failing phase is
recorded and the others still run; the merge verdict fails a merge that lost the adapter.  Nothing here is timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from scripts import gpu_check

REPO = Path(__file__).resolve().parents[2]

# Runs the check with some packages made uninstalled: Python's path finder answers "no such module" for them,
# as on a machine without them (``import`` raises ModuleNotFoundError, availability probes such as
# transformers' ``find_spec`` say absent).  It first makes sure the blocker works.
BARE = """
import importlib.machinery, runpy, sys
hidden = set(sys.argv[1].split(","))
find = importlib.machinery.PathFinder.find_spec.__func__
def find_spec(cls, name, path=None, target=None):
    return None if name.partition(".")[0] in hidden else find(cls, name, path, target)
importlib.machinery.PathFinder.find_spec = classmethod(find_spec)
for name in hidden:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"the blocker let {name} through")
sys.argv = ["scripts.gpu_check", *sys.argv[2:]]
runpy.run_module("scripts.gpu_check", run_name="__main__", alter_sys=True)
"""


def run_bare(hidden: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PROLORA_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-c", BARE, ",".join(hidden), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_dry_run_passes_every_phase_without_hydra_omegaconf_wandb_datasets_evaluate(tmp_path):
    out = tmp_path / "check.json"
    proc = run_bare(gpu_check.NEVER, "--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads(out.read_text())
    assert check["complete"] and check["ok"] and check["dry_run"] and check["skipped"] == check["errors"] == []
    assert list(check["timings_s"]) == ["weights", "train:prolora_r8_u1_m7", "train:lora_r8",
                                        "train:hf_peft_lora_r8", "parity", "merge"]
    rows = check["rows"]
    assert set(rows) == set(gpu_check.TRAIN_ORDER)
    for row in rows.values():
        assert row["step_s_median"] > 0 and row["tokens_per_s"] > 0 and row["peak_mib"] > 0
        assert row["rounds_run"] == check["profile"]["rounds"] and row["tokens_per_s_vs_baseline"] > 0
    assert rows["prolora_r8_u1_m7"]["trainable_params"] < rows["lora_r8"]["trainable_params"] \
        == rows["hf_peft_lora_r8"]["trainable_params"]
    parity = check["parity"]
    assert parity["ok"] and parity["max_abs_diff"] < 1e-4
    assert parity["harness_losses"][-1] != parity["harness_losses"][0]  # it trained
    merge = check["merge"]
    assert merge["merge_ok"] and merge["fp16_ok"] and merge["greedy_tokens_equal"]
    assert merge["merge_error_max_abs_logit"] < 1e-3 * merge["adapter_effect_max_abs_logit"]  # fp32 both sides
    assert merge["generated_tokens"] == sum(len(t) for t in merge["unmerged_tokens"]) > 0
    assert {"checkpointing_api", "training_arguments", "kv_cache_argument", "bitsandbytes_library"} <= set(check["compat"])
    assert check["compat"]["bitsandbytes_library"].startswith("CPU: BNBNativeLibrary")
    assert check["versions"]["bitsandbytes"] and check["versions"]["peft"]
    assert "Traceback" not in proc.stderr


def test_a_missing_package_is_one_line_naming_the_wheels_to_bring(tmp_path):
    out = tmp_path / "check.json"
    proc = run_bare(("bitsandbytes", "accelerate"), "--dry-run", "--out", str(out))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    pins = gpu_check.locked_versions()
    assert "accelerate, bitsandbytes not installed here" in lines[0]
    assert f'make gpu-wheels EXTRA="accelerate=={pins["accelerate"]}" PYVER=' in lines[0]
    assert "python3 -m pip install --no-deps .gpu-wheels/*.whl" in lines[0]
    assert not out.exists()
    proc = run_bare(("torch", "bitsandbytes"), "--dry-run", "--out", str(out))  # the wrong interpreter: no wheels
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "has no torch: run the check with the Python that has torch" in proc.stderr and "wheels" not in proc.stderr


def test_a_spent_budget_skips_every_phase_after_the_weights_and_records_it(tmp_path):
    out = tmp_path / "check.json"
    check = gpu_check.main(["--dry-run", "--budget-s", "0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(check, default=str))
    assert [s["phase"] for s in saved["skipped"]] == [f"train:{label}" for label in gpu_check.TRAIN_ORDER] + [
        "parity", "merge"]
    assert saved["skipped"][-1]["why"].startswith("no trained adapter")
    assert not saved["complete"] and not saved["ok"] and saved["rows"] == {}
    assert list(saved["timings_s"]) == ["weights"]


def test_a_failing_phase_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    from scripts import bench_train

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "train_row", boom)
    monkeypatch.setattr(bench_train, "parity", boom)
    check = gpu_check.main(["--dry-run", "--out", str(tmp_path / "check.json")])
    assert [e["phase"] for e in check["errors"]] == [f"train:{label}" for label in gpu_check.TRAIN_ORDER] + ["parity"]
    assert all(e["error"] == "RuntimeError: boom" and e["traceback"] for e in check["errors"])
    assert [s["phase"] for s in check["skipped"]] == ["merge"]  # no trained adapter to merge
    assert check["ok"] is False and json.loads((tmp_path / "check.json").read_text())["errors"] == check["errors"]


def test_the_merge_verdicts_fail_a_merge_that_lost_the_adapter_or_fp16_tokens_that_differ():
    torch.manual_seed(0)
    ref = [torch.randn(4, 32)]
    base = [ref[0] + 0.01 * torch.randn(4, 32)]  # the adapter's effect
    tokens = [ref[0].argmax(-1).tolist()]
    good = gpu_check.merge_report(tokens, tokens, ref, base, [ref[0] + 1e-7], [ref[0] + 1e-4], {})
    assert good["merge_ok"] and good["fp16_ok"] and good["greedy_tokens_equal"]
    lost = gpu_check.merge_report(tokens, tokens, ref, base, base, [ref[0]], {})  # merged = base: adapter dropped
    assert not lost["merge_ok"]
    wrong = gpu_check.merge_report(tokens, [[t + 1 for t in tokens[0]]], ref, base, ref, [-ref[0]], {})
    assert not wrong["fp16_ok"] and not wrong["greedy_tokens_equal"] and wrong["fp16_common_prefix"] == [0]


def test_the_default_report_name_tells_the_gpu_and_a_dry_run_apart(tmp_path):
    args = gpu_check.parse_args([])
    args.cuda = True
    assert gpu_check.out_path(args, "NVIDIA H200 (CUDA 13.0)") == REPO / "results/bench/gpu-check-nvidia-h200.json"
    args = gpu_check.parse_args(["--out", str(tmp_path)])  # a directory: the default name inside it
    args.cuda = False
    assert gpu_check.out_path(args, "Intel(R) Xeon(R), 2 torch threads") == tmp_path / "gpu-check-cpu-dry-run.json"
