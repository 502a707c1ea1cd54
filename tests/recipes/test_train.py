"""The training recipe end to end on the tiny model and the shipped demo data (CPU).

Runs are short (30 steps of 8 sequences of <= 64 tokens); each takes seconds on 2 cores.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from recipes import CONFIG_DIR
from recipes import train as train_recipe
from tests.conftest import REPO

FAST = ["model=tiny", "dataset=demo", "logger=none", "trainer.max_steps=30", "trainer.batch_size=8",
        "trainer.micro_batch_size=4", "trainer.log_every=5", "trainer.save_every=10", "optim.lr=1e-2",
        "trainer.gradient_checkpointing=false"]


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[*FAST, f"output_dir={tmp_path}", *overrides])


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("quantize", [False, True], ids=["fp32", "nf4"])
def test_prolora_run_learns_and_writes_artifacts(tmp_path, quantize):
    cfg = _cfg(tmp_path, "method=prolora", "rank=8", "unshared=1", "sharing=7", f"model.quantize={quantize}")
    start = time.time()
    final = train_recipe.run(cfg)
    elapsed = time.time() - start
    assert elapsed < 60, f"30 tiny steps took {elapsed:.0f}s"
    run = json.loads((final / "run.json").read_text())
    assert run["steps"] == 30
    assert run["final_loss"] < run["initial_loss"] - 0.3, run  # mean of the last 10 steps vs step 1
    assert run["trainable_params"] > 0 and run["tokens_per_s"] > 0 and run["wall_time_s"] > 0
    assert run["config"]["method"]["r"] == 8 and run["config"]["method"]["m"] == 7
    assert "git_commit" in run
    assert (final / "adapter_config.json").is_file()
    peft_cfg = json.loads((final / "peft" / "adapter_config.json").read_text())
    assert peft_cfg["peft_type"] == "LORA"
    tensors = load_file(final / "peft" / "adapter_model.safetensors")
    assert any(k.endswith("q_proj.lora_A.weight") for k in tensors)
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0]
    base_type = "Linear4bit" if quantize else "Linear"
    assert run["base_layer_type"] == base_type


def test_killed_run_resumes_to_the_same_adapter(tmp_path, monkeypatch):
    from prolora.trainer import Trainer

    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    ref = train_recipe.run(_cfg(ref_dir, "method=prolora", "rank=8", "unshared=1", "sharing=7"))

    calls = {"n": 0}
    original = Trainer._micro_step

    def dying(self, batch, scale):
        calls["n"] += 1
        if self.step == 25:  # after the step-20 checkpoint, in the middle of step 26
            raise KeyboardInterrupt("simulated kill")
        return original(self, batch, scale)

    monkeypatch.setattr(Trainer, "_micro_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_recipe.run(_cfg(crash_dir, "method=prolora", "rank=8", "unshared=1", "sharing=7"))
    monkeypatch.setattr(Trainer, "_micro_step", original)
    ckpts = crash_dir / "checkpoints"
    assert (ckpts / "step_0000020" / "trainer_state.pt").is_file()
    assert not (crash_dir / "final").exists()
    # A half-written save must never be picked: a hidden temp dir and a step dir without its state file.
    (ckpts / ".tmp-step_0000030-999").mkdir()
    (ckpts / "step_0000040").mkdir()

    resumed = train_recipe.run(_cfg(crash_dir, "method=prolora", "rank=8", "unshared=1", "sharing=7",
                                    "trainer.resume=true"))
    run = json.loads((resumed / "run.json").read_text())
    assert run["resumed_from_step"] == 20
    a, b = load_file(ref / "adapter.safetensors"), load_file(resumed / "adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # tolerance: exact on CPU (same ops, same order); 1e-6 leaves room for BLAS threading
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert _losses(crash_dir) == pytest.approx(_losses(ref_dir), abs=1e-6)


def test_multirun_writes_one_dir_per_job(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *FAST, "trainer.max_steps=3", "method=lora", "rank=2",
         "seed=1,2", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent.parent for p in tmp_path.rglob("final/run.json"))
    assert [p.name.rsplit("_", 1)[0] for p in runs] == ["lr0.01_seed1", "lr0.01_seed2"], runs
    # + the hash of each run's identity (its settings), which differs because the seed does
    assert len({p.name.rsplit("_", 1)[1] for p in runs}) == 2
    assert all(p.parent.name == "lora_r2" for p in runs)


def test_wandb_offline_run_records_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _cfg(tmp_path, "logger=wandb", "trainer.max_steps=3", "method=prolora", "rank=4", "unshared=1",
               "sharing=3", "experiment_name=unit")
    train_recipe.run(cfg)
    from tests.wandb_offline import find_runs, read_run

    (run_dir,) = find_runs(tmp_path)
    logged = read_run(run_dir)
    run = json.loads((tmp_path / "final" / "run.json").read_text())
    c = logged.config  # the dashboard's columns at the top, the full resolved config under "config"
    assert {k: c[k] for k in ("method", "r", "u", "m", "n", "dataset", "lr", "seed", "experiment")} == {
        "method": "prolora", "r": 4, "u": 1, "m": 3, "n": 3, "dataset": "demo", "lr": run["config"]["optim"]["lr"],
        "seed": 1, "experiment": "unit"}
    assert c["config"]["method"]["name"] == "prolora" and c["trainable_params"] == run["trainable_params"]
    assert {"method:prolora", "dataset:demo", "seed:1"} <= set(logged.run["tags"]) and logged.run["group"] == "unit"
    assert [row["_step"] for row in logged.history] == [1, 3] and "train/loss" in logged.history[-1]
    # run.json names the W&B run, so an evaluation of this checkpoint can link to it
    assert run["wandb"]["id"] == logged.run["id"] and run["wandb"]["job_type"] == "train"
    assert Path(run["wandb"]["sync_dir"]) == run_dir


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_data_file_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, f"dataset.train_file={tmp_path / 'nope.jsonl'}")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train_recipe.run(cfg)


def test_empty_data_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl"):
        train_recipe.run(_cfg(tmp_path, f"dataset.train_file={empty}"))


def test_rows_without_assistant_turn_are_skipped_and_reported(tmp_path, capsys):
    good = {"dataset": "demo", "id": "g", "messages": [{"role": "user", "content": "What is 1 + 1?"},
                                                       {"role": "assistant", "content": "2"}]}
    bad = {"dataset": "demo", "id": "b", "messages": [{"role": "user", "content": "no answer"}]}
    path = _write(tmp_path / "mixed.jsonl", [good, bad, good])
    train_recipe.run(_cfg(tmp_path, f"dataset.train_file={path}", "trainer.max_steps=2"))
    report = capsys.readouterr().out
    assert "mixed.jsonl" in report and ":2" in report  # path and line of the skipped row
    only_bad = _write(tmp_path / "only_bad.jsonl", [bad])
    with pytest.raises(ValueError, match="only_bad.jsonl"):
        train_recipe.run(_cfg(tmp_path / "b", f"dataset.train_file={only_bad}"))


def test_unknown_dataset_name_is_refused():
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--cfg", "job", "dataset=nope"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode != 0 and "dataset/nope" in out.stderr


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    """None, all, one layer, or as many as fit (auto: the tiny model fits without any): the same numbers."""
    losses, layers = [], []
    for gc in ("false", "true", "1", "auto"):
        out = tmp_path / gc
        final = train_recipe.run(_cfg(out, "method=prolora", "rank=8", "unshared=1", "sharing=7",
                                      "trainer.max_steps=5", "trainer.log_every=1",
                                      f"trainer.gradient_checkpointing={gc}"))
        losses.append(_losses(out))
        layers.append(json.loads((final / "run.json").read_text())["checkpointed_layers"])
    assert len(losses[0]) == 5
    assert layers == [0, 2, 1, 0]
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], abs=1e-6)  # dropout RNG is replayed on recomputation


def test_bad_gradient_checkpointing_value_fails_before_loading(tmp_path):
    with pytest.raises(ValueError, match="trainer.gradient_checkpointing=.*auto"):
        train_recipe.run(_cfg(tmp_path, "trainer.gradient_checkpointing=sometimes"))
    assert not (tmp_path / "final").exists()


def test_cli_run_dir_is_the_given_output_dir(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "train.py"), *FAST, "trainer.max_steps=1", "method=lora",
                          f"output_dir={tmp_path}"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / ".hydra" / "config.yaml").is_file()  # Hydra's record lands beside the run, not in ./outputs
    assert (tmp_path / "final" / "run.json").is_file()


def test_sigkilled_cli_run_resumes_to_the_same_adapter(tmp_path):
    """A real kill: the process is SIGKILLed right after its first checkpoint appears, then resumed."""
    import os
    import signal

    args = [sys.executable, str(REPO / "train.py"), *FAST, "trainer.max_steps=40", "method=prolora", "rank=8",
            "unshared=1", "sharing=7"]
    ref = subprocess.run([*args, f"output_dir={tmp_path / 'ref'}"], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([*args, f"output_dir={run_dir}"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = run_dir / "checkpoints" / "step_0000010"
    deadline = time.time() + 240
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)  # 30 steps (> 0.5 s) remain: the kill lands mid-run
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run_dir / "final").exists()
    resumed = subprocess.run([*args, f"output_dir={run_dir}", "trainer.resume=true"], capture_output=True,
                             text=True, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = json.loads((run_dir / "final" / "run.json").read_text())
    assert run["resumed_from_step"] in (10, 20, 30)
    a = load_file(tmp_path / "ref" / "final" / "adapter.safetensors")
    b = load_file(run_dir / "final" / "adapter.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
