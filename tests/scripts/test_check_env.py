"""The environment `make install` built is the locked one (requirements.lock), so a new release of a
dependency cannot change what the suite runs against."""

import sys
from pathlib import Path

import pytest

from scripts import check_env


def test_lock_parses_and_pins_the_core_packages():
    pins = check_env.read_lock()
    for name in ("torch", "transformers", "peft", "bitsandbytes", "hydra-core", "wandb", "accelerate", "numpy"):
        assert name in pins, name
    assert all("+" not in v for v in pins.values())  # no local build tags: the same lock for CPU and CUDA


def test_mismatch_detection():
    assert check_env.mismatches({"peft": "0.21.2"}, {"peft": "0.22.0"}) == ["peft: installed 0.22.0, locked 0.21.2"]
    assert check_env.mismatches({"torch": "2.13.0"}, {"torch": "2.13.0+cpu"}) == []
    assert check_env.mismatches({"vllm": "0.6.0"}, {}) == []  # an extra that is not installed


def test_installed_versions_match_the_lock():
    if not (Path(sys.prefix) / ".installed-locked").exists():
        pytest.skip("not a `make install` environment with the locked versions (LATEST=1, or another venv)")
    bad = [b for b in check_env.mismatches(check_env.read_lock(), check_env.installed()) if not b.startswith("torch:")]
    assert not bad, bad
