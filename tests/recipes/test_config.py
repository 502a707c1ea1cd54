"""Hydra composition: groups, shorthands, validation, run-directory names."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recipes import CONFIG_DIR, schema
from tests.conftest import REPO


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return cfg


def test_shorthands_resolve_into_method():
    cfg = _compose(["method=prolora", "rank=8", "unshared=1", "sharing=7"])
    m = OmegaConf.to_container(cfg.method, resolve=True)
    assert (m["name"], m["r"], m["u"], m["m"], m["n"]) == ("prolora", 8, 1, 7, 7)
    assert m["rotate"] is True and m["rectified_init"] is True


def test_method_defaults_without_shorthands():
    lora = _compose(["method=lora"]).method
    assert lora.r == 8 and lora.u is None
    vera = _compose(["method=vera"]).method
    assert vera.r == 256 and vera.d_init == 0.1
    tied = _compose(["method=tied_lora", "rank=280"]).method
    assert tied.r == 280 and list(tied.target_modules) == ["q_proj", "k_proj", "v_proj"]
    clora = _compose(["method=clora"]).method
    assert (clora.r, clora.u, clora.m, clora.rotate) == (16, 0, 2, False)


def test_dataset_lr_flows_into_optimizer():
    assert _compose(["dataset=code_alpaca"]).optim.lr == 5e-5
    assert _compose(["dataset=superni"]).optim.lr == 2e-4
    assert _compose(["dataset=superni", "optim.lr=1e-4"]).optim.lr == 1e-4


@pytest.mark.parametrize("override,needle", [("rank=-2", "rank=-2"), ("unshared=-1", "unshared=-1"),
                                             ("sharing=0", "sharing=0")])
def test_bad_shorthand_names_the_value(override, needle):
    cfg = _compose(["method=prolora", override])
    with pytest.raises(Exception, match=needle):
        OmegaConf.to_container(cfg.method, resolve=True)


def test_method_tag_names_run_dirs():
    cfg = _compose(["method=prolora", "rank=8", "unshared=1", "sharing=7"])
    assert schema.method_tag(OmegaConf.to_container(cfg.method, resolve=True)) == "prolora_r8_u1_m7_n7"
    assert schema.method_tag({"name": "lora", "r": 2}) == "lora_r2"


def _train_py(*args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_cfg_job_prints_resolved_method():
    out = _train_py("--cfg", "job", "method=prolora", "rank=8", "unshared=1", "sharing=7")
    assert out.returncode == 0, out.stderr
    method = OmegaConf.create(out.stdout).method
    assert (method.r, method.u, method.m, method.n) == (8, 1, 7, 7)


def test_cli_refuses_unknown_method_and_negative_rank():
    out = _train_py("--cfg", "job", "method=nope")
    assert out.returncode != 0 and "method/nope" in out.stderr
    out = _train_py("--cfg", "job", "method=prolora", "rank=-3")
    assert out.returncode != 0 and "rank=-3" in out.stderr


def test_slurm_launcher_config_composes():
    out = _train_py("--cfg", "hydra", "hydra/launcher=slurm_a100")
    assert out.returncode == 0, out.stderr[-2000:]
    hydra_cfg = OmegaConf.create(out.stdout).hydra
    assert hydra_cfg.launcher._target_.endswith("SlurmLauncher") and hydra_cfg.launcher.gpus_per_node == 1
