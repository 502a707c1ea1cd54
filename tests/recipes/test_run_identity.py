"""No rerun, resume or second run may change a recorded training silently: run directories carry the run's
identity, resume refuses another run's checkpoints, a finished run is replaced only with overwrite=true, two
runs never write one directory; and the bad-input corpus: every bad setting ends in one line before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from recipes import CONFIG_DIR
from recipes import train as train_recipe
from tests.conftest import REPO

FAST = ["model=tiny", "dataset=demo", "logger=none", "trainer.max_steps=4", "trainer.batch_size=4",
        "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.save_every=2", "optim.lr=1e-2",
        "trainer.gradient_checkpointing=false", "method=lora", "rank=2"]


def _cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[*FAST, f"output_dir={out}", *overrides])


def _adapter(final: Path) -> dict:
    return load_file(final / "adapter.safetensors")


def test_a_rerun_with_other_settings_never_replaces_a_finished_run(tmp_path):
    final = train_recipe.run(_cfg(tmp_path))
    before = (final / "run.json").read_text()
    # item 4: the same command with fewer steps (or another alpha) into that directory is refused, naming what
    for override, key in (("trainer.max_steps=2", "trainer.max_steps: 4 -> 2"),
                          ("method.alpha=32", "adapter.alpha: 16.0 -> 32.0")):
        with pytest.raises(ValueError, match=f"holds a finished run of another configuration.*{key}"):
            train_recipe.run(_cfg(tmp_path, override))
        with pytest.raises(ValueError, match=key):  # resume=true does not report it "already finished" either
            train_recipe.run(_cfg(tmp_path, override, "trainer.resume=true"))
    assert (final / "run.json").read_text() == before
    # the same run again: nothing to do (not retrained, not replaced)
    assert train_recipe.run(_cfg(tmp_path)) == final and (final / "run.json").read_text() == before
    # overwrite=true replaces it, explicitly
    train_recipe.run(_cfg(tmp_path, "trainer.max_steps=2", "overwrite=true"))
    assert json.loads((final / "run.json").read_text())["steps"] == 2


def test_default_run_dirs_differ_for_every_setting_that_changes_numbers():
    def run_dir(*overrides):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*FAST, *overrides], return_hydra_config=True)
        return cfg.hydra.run.dir

    base = run_dir()
    assert base.startswith("outputs/adhoc/tiny/demo/lora_r2/lr0.01_seed1_")
    for other in ("trainer.max_steps=2", "method.alpha=32", "method.dropout=0.0", "optim.warmup_ratio=0.1",
                  "dataset.max_seq_len=32", "model.quantize=false", "dataset.train_file=other.jsonl", "seed=2",
                  "optim.lr=0.02", "trainer.batch_size=8", "trainer.max_train_samples=10", "model.double_quant=false",
                  "model.compute_dtype=bfloat16", "optim.name=adamw"):
        assert run_dir(other) != base, other
    for same in ("trainer.log_every=2", "trainer.save_every=3", "trainer.resume=true", "logger=wandb",
                 "trainer.gradient_checkpointing=true", "experiment_name=adhoc"):
        assert run_dir(same) == base, same  # speed, logging and resuming change no number


def test_resume_refuses_another_runs_checkpoints_and_a_fresh_run_never_inherits_them(tmp_path):
    # an unfinished run A (seed 3): checkpoints at steps 2 and 4, no final/
    train_recipe.run(_cfg(tmp_path, "seed=3", "trainer.max_steps=5", "trainer.save_every=2"))
    import shutil

    shutil.rmtree(tmp_path / "final")
    # item 5: resuming it with other settings is refused, naming the keys
    with pytest.raises(ValueError, match=r"belongs to another run \(optim.lr: 0.01 -> 0.05; seed: 3 -> 7"):
        train_recipe.run(_cfg(tmp_path, "seed=7", "optim.lr=0.05", "trainer.max_steps=5", "trainer.save_every=2",
                              "trainer.resume=true"))
    # a fresh run B (resume=false) into A's directory: refused, A's checkpoints are not B's
    with pytest.raises(ValueError, match="holds an unfinished run.*overwrite=true starts over"):
        train_recipe.run(_cfg(tmp_path, "seed=7", "trainer.max_steps=5", "trainer.save_every=2"))
    # with overwrite=true B starts over and ends exactly as B alone would
    b = train_recipe.run(_cfg(tmp_path, "seed=7", "trainer.max_steps=5", "trainer.save_every=2", "overwrite=true"))
    alone = train_recipe.run(_cfg(tmp_path / "alone", "seed=7", "trainer.max_steps=5", "trainer.save_every=2"))
    a, c = _adapter(b), _adapter(alone)
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # B's curve only


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    train_recipe.run(_cfg(tmp_path, "trainer.max_steps=6", "trainer.save_every=2", "trainer.keep_last=3"))
    reference = _adapter(tmp_path / "final")
    import shutil

    shutil.rmtree(tmp_path / "final")
    ckpts = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_0000002", "step_0000004"]
    weights = ckpts[-1] / "adapter" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a torn write of the newest checkpoint
    (tmp_path / "checkpoints" / ".tmp-step_0000006-999").mkdir()  # an interrupted save's leftover
    with pytest.warns(UserWarning, match=r"step_0000004: adapter/adapter.safetensors \(changed\) differs from what "
                                         r"training wrote.*falling back to the previous checkpoint"):
        final = train_recipe.run(_cfg(tmp_path, "trainer.max_steps=6", "trainer.save_every=2",
                                      "trainer.keep_last=3", "trainer.resume=true"))
    resumed = _adapter(final)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)  # from step 2: the same adapter
    assert json.loads((final / "run.json").read_text())["resumed_from_step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_two_trainings_never_write_one_directory(tmp_path):
    from prolora.io import FileLock

    lock = FileLock(tmp_path / ".train.lock")
    assert lock.acquire({"host": "another"})
    try:
        with pytest.raises(ValueError, match=f"{tmp_path} is in use by another training \\(pid {os.getpid()}\\)"):
            train_recipe.run(_cfg(tmp_path))
    finally:
        lock.release()
    assert not (tmp_path / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------------- bad input

def _train_cli(*args, env=None):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


BAD_INPUT = [
    (["method=prolora", "rank=0"], "rank=0: PRoLoRAConfig.r=0 is invalid"),
    (["method=prolora", "rank=-3"], "rank=-3: PRoLoRAConfig.r=-3 is invalid"),
    (["method=prolora", "sharing=0"], "sharing=0: PRoLoRAConfig.m=0 is invalid"),
    (["method=prolora", "unshared=-1"], "unshared=-1: PRoLoRAConfig.u=-1 is invalid"),
    (["method=prolora", "rank=4", "unshared=5"], "unshared=5: PRoLoRAConfig.u=5 is invalid: u (unshared ranks) cannot"),
    (["method=lora", "unshared=1", "sharing=7"], "unshared=1 does not apply to method=lora"),
    (["method=prolora", "sharing=65"], "PRoLoRAConfig.m=65 is invalid for layer model.layers.0.self_attn.q_proj"),
    (["trainer.max_train_samples=-5"], "trainer.max_train_samples=-5: must be an integer >= 0"),
    (["optim.lr=1e12"], "optim.lr=1000000000000.0: must be a number in"),
    (["trainer.log_every=0"], "trainer.log_every=0: must be an integer >= 1"),
    (["optim.name=sgd"], "optim.name='sgd': use one of"),
    (["trainer.gradient_checkpointing=some"], "trainer.gradient_checkpointing='some'"),
    (["data_dir=/nonexistent", "dataset=superni"], "training data for dataset=superni not found: /nonexistent/superni.jsonl"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_ends_in_one_line_before_any_work(tmp_path, args, message):
    out = _train_cli("model=tiny", "dataset=demo", "logger=none", f"output_dir={tmp_path}", *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert message in lines[0]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_first_command_without_weights_or_data_says_both_in_one_line(tmp_path):
    """`python train.py method=prolora rank=8 unshared=1` on a machine with neither LLaMA-2 nor the data."""
    out = _train_cli("method=prolora", "rank=8", "unshared=1", f"output_dir={tmp_path}", f"data_dir={tmp_path}")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert "the weights of meta-llama/Llama-2-7b-hf are not on this machine" in lines[0]
    assert "model.path=" in lines[0] and "huggingface-cli login" in lines[0]
    assert f"training data for dataset=superni not found: {tmp_path}/superni.jsonl" in lines[0]
    assert "scripts.prepare_data superni" in lines[0]


def test_device_cuda_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = _train_cli("model=tiny", "dataset=demo", "logger=none", "trainer.device=cuda", f"output_dir={tmp_path}")
    assert out.returncode == 2 and "trainer.device=cuda but no CUDA device is visible" in out.stderr


@pytest.mark.parametrize("content,message", [
    (b"", "no usable rows"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "train.jsonl:1: no assistant turn"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}\n',
     "train.jsonl:1: not valid UTF-8 (byte 0xe9 at column 47)"),
])
def test_bad_training_files_name_file_and_line(tmp_path, content, message):
    data = tmp_path / "train.jsonl"
    data.write_bytes(content)
    out = _train_cli("model=tiny", "dataset=demo", "logger=none", f"dataset.train_file={data}",
                     f"output_dir={tmp_path / 'run'}")
    assert out.returncode == 2 and message in out.stderr and str(data) in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().startswith("error: ") and "Traceback" not in out.stderr
