"""python -m scripts.count_params: the count on the meta device, per module type, the JSON last line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_prints_the_count_and_json_last():
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.count_params", "model=llama2_7b", "method=prolora", "rank=8",
         "unshared=1", "sharing=7"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["trainable_params"] == 4_999_520
    assert out["model"] == "llama2_7b"
    assert out["method"]["method"] == "prolora" and (out["method"]["r"], out["method"]["u"], out["method"]["m"],
                                                     out["method"]["n"]) == (8, 1, 7, 7)
    assert abs(out["lora_equivalent_rank"] - 2.0) < 0.01
    assert any(line.startswith("q_proj") and "16,396" in line for line in lines)


def test_counts_a_model_directory_too():
    proc = subprocess.run([sys.executable, "-m", "scripts.count_params", "model=tiny", "method=lora",
                           "rank=2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["trainable_params"] == 4_864  # 2 layers x 2 x 1,216


@pytest.mark.parametrize("args,message", [
    (["sharing=100000"], "error: PRoLoRAConfig.m=100000 is invalid for layer model.layers.0.self_attn.q_proj "
                         "(in_features=4096): the sharing rate cannot exceed the width it splits"),
    (["rank=-1"], "error: rank=-1: PRoLoRAConfig.r=-1 is invalid: the rank must be an integer >= 1"),
])
def test_a_bad_setting_is_one_line_not_a_traceback(args, message):
    out = subprocess.run([sys.executable, "-m", "scripts.count_params", "model=llama2_7b", "method=prolora", "rank=8",
                          "unshared=1", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(message), out.stderr
