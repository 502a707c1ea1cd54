"""A checkpoint whose files differ from what training wrote is never scored silently: the hostile user's probe
(alpha 16 -> 160 in final/adapter_config.json; a finite edit of adapter.safetensors) end to end through
train.py and recipes.evaluate, the allow_modified escape hatch, and checkpoints from before the hashes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

from prolora import integrity
from recipes import CONFIG_DIR
from recipes import train as train_recipe
from tests.conftest import REPO

FAST = ["model=tiny", "dataset=demo", "logger=none", "trainer.max_steps=6", "trainer.batch_size=8",
        "trainer.micro_batch_size=8", "trainer.save_every=2", "trainer.keep_last=3",
        "trainer.gradient_checkpointing=false", "method=lora", "rank=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*FAST, f"output_dir={run_dir}"])
    return train_recipe.run(cfg)


def _copy(final, tmp_path):
    import shutil

    dst = tmp_path / "run" / "final"
    shutil.copytree(final, dst)
    return dst


def _evaluate(final, out, *extra):
    return subprocess.run([sys.executable, "-m", "recipes.evaluate", f"checkpoint={final}", "tasks=[demo]",
                           "demo.max_examples=4", "device=cpu", "logger=none", f"output_dir={out}", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PROLORA_NO_PROGRESS": "1"})


def test_training_records_every_file_of_the_checkpoint(trained):
    run = json.loads((trained / "run.json").read_text())
    assert {"adapter.safetensors", "adapter_config.json", "peft/adapter_model.safetensors",
            "peft/adapter_config.json"} <= set(run["checkpoint_sha256"])
    manifest = json.loads((trained / integrity.MANIFEST).read_text())["sha256"]
    assert manifest == integrity.digest(trained) and "run.json" in manifest
    assert integrity.verify(trained, expected=run["checkpoint_sha256"]).status == "verified"
    for step in (trained.parent / "checkpoints").iterdir():  # the periodic checkpoints too
        assert integrity.verify(step).status == "verified", step


def test_an_edited_alpha_is_refused_and_scored_only_when_allowed(trained, tmp_path):
    final = _copy(trained, tmp_path)
    meta = json.loads((final / "adapter_config.json").read_text())
    meta["config"]["alpha"] = 160.0  # every shape stays the same
    (final / "adapter_config.json").write_text(json.dumps(meta))
    out = _evaluate(final, tmp_path / "refused")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: checkpoint {final}: adapter_config.json (changed) differs from what training wrote; restore it or "
        "train again, or pass allow_modified=true to use it anyway (recorded and marked)"]
    assert not (tmp_path / "refused" / "eval.json").exists()
    out = _evaluate(final, tmp_path / "allowed", "allow_modified=true")
    assert out.returncode == 0, out.stderr[-2000:]
    ev = json.loads((tmp_path / "allowed" / "eval.json").read_text())
    assert ev["checkpoint_integrity"] == {"status": "modified", "modified": ["adapter_config.json (changed)"],
                                          "allow_modified": True}


def test_a_finite_edit_of_the_weights_is_refused(trained, tmp_path):
    final = _copy(trained, tmp_path)
    tensors = load_file(final / "adapter.safetensors")
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1e-3
    save_file(tensors, str(final / "adapter.safetensors"), metadata={"format": "pt"})
    out = _evaluate(final, tmp_path / "e")
    assert out.returncode == 2 and "adapter.safetensors (changed) differs from what training wrote" in out.stderr


def test_a_checkpoint_from_before_the_hashes_is_scored_with_a_warning(trained, tmp_path):
    final = _copy(trained, tmp_path)
    (final / integrity.MANIFEST).unlink()
    run = json.loads((final / "run.json").read_text())
    del run["checkpoint_sha256"]
    (final / "run.json").write_text(json.dumps(run))
    out = _evaluate(final, tmp_path / "old")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"warning: {final} records no sha256 of its files (no checksums.json: saved outside a training run, or " \
           "by one from before runs recorded them)" in out.stderr
    ev = json.loads((tmp_path / "old" / "eval.json").read_text())
    assert ev["checkpoint_integrity"]["status"] == "unverified"


def test_resume_skips_a_periodic_checkpoint_modified_since_its_save(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "crashed"
    shutil.copytree(trained.parent / "checkpoints", run_dir / "checkpoints")
    newest = sorted((run_dir / "checkpoints").iterdir())[-1]
    state = newest / "adapter" / "adapter.safetensors"
    tensors = load_file(state)
    save_file({k: v + 1 for k, v in tensors.items()}, str(state), metadata={"format": "pt"})
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*FAST, f"output_dir={run_dir}",
                                                       "trainer.resume=true"])
    with pytest.warns(UserWarning, match=rf"{newest.name}.*differs from what training wrote"):
        final = train_recipe.run(cfg)
    assert json.loads((final / "run.json").read_text())["resumed_from_step"] == 2  # the one before the modified one
    assert torch.isfinite(torch.stack([t.sum() for t in load_file(final / "adapter.safetensors").values()])).all()
