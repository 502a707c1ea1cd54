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


def _adapter(overrides):
    return schema.adapter_config(_compose(overrides).method)


def test_shorthands_resolve_into_method():
    cfg = _compose(["method=prolora", "rank=8", "unshared=1", "sharing=7"])
    m = OmegaConf.to_container(cfg.method, resolve=True)
    assert (m["name"], m["r"], m["u"], m["m"], m["n"]) == ("prolora", 8, 1, 7, 7)
    adapter = schema.adapter_config(cfg.method)
    assert (adapter.r, adapter.u, adapter.m, adapter.n) == (8, 1, 7, 7)
    assert adapter.rotate is True and adapter.rectified_init is True
    # an explicit method field wins over its shorthand
    assert _adapter(["method=prolora", "rank=8", "method.r=16", "method.u=7", "sharing=9"]).r == 16


def test_method_defaults_come_from_the_library():
    assert _adapter(["method=lora"]).r == 8 and not hasattr(_adapter(["method=lora"]), "u")
    vera = _adapter(["method=vera"])
    assert vera.r == 256 and vera.d_init == 0.1
    tied = _adapter(["method=tied_lora", "rank=280"])
    assert tied.r == 280 and list(tied.target_modules) == ["q_proj", "k_proj", "v_proj"]
    clora = _adapter(["method=clora"])
    assert (clora.r, clora.u, clora.m, clora.rotate) == (16, 0, 2, False)
    assert _adapter(["method=prolora"]).tag() == "prolora_r8_u1_m7_n7"
    assert _adapter(["method=share_rank_rotate_hidden"]).tag() == "share_rank_rotate_hidden_r32_u4_m7_n7"


def test_every_method_yaml_only_names_its_method():
    import prolora

    for path in sorted((REPO / "configs" / "method").glob("*.yaml")):
        node = OmegaConf.load(path)
        assert set(node) == {"defaults", "name"} and node.name == path.stem, path
    names = {p.stem for p in (REPO / "configs" / "method").glob("*.yaml")}
    assert names == set(prolora.known_names())  # one YAML per method and preset


def test_dataset_lr_flows_into_optimizer():
    assert _compose(["dataset=code_alpaca"]).optim.lr == 5e-5
    assert _compose(["dataset=superni"]).optim.lr == 2e-4
    assert _compose(["dataset=superni", "optim.lr=1e-4"]).optim.lr == 1e-4


@pytest.mark.parametrize("overrides,needle", [
    (["method=prolora", "rank=-2"], "rank=-2: PRoLoRAConfig.r=-2"),
    (["method=prolora", "unshared=-1"], "unshared=-1: PRoLoRAConfig.u=-1"),
    (["method=prolora", "sharing=0"], "sharing=0: PRoLoRAConfig.m=0"),
    (["method=prolora", "rank=4", "unshared=5"], "unshared=5: .*cannot exceed r=4"),
    (["method=lora", "unshared=1"], "unshared=1 does not apply to method=lora"),
    (["method=vera", "sharing=7"], "sharing=7 does not apply to method=vera"),
])
def test_bad_or_inapplicable_shorthand_names_the_value(overrides, needle):
    import prolora

    with pytest.raises(prolora.ConfigError, match=needle):
        _adapter(overrides)


def test_method_tag_names_run_dirs():
    cfg = _compose(["method=prolora", "rank=8", "unshared=1", "sharing=7"])
    assert schema.method_tag(cfg.method) == "prolora_r8_u1_m7_n7"
    assert schema.method_tag({"name": "lora", "r": 2}) == "lora_r2"
    assert schema.method_tag({"name": "prolora", "r": 2, "u": 3}) == "prolora_invalid"


def _train_py(*args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_cfg_job_prints_resolved_method():
    out = _train_py("--cfg", "job", "method=prolora", "rank=8", "unshared=1", "sharing=7")
    assert out.returncode == 0, out.stderr
    method = OmegaConf.create(out.stdout).method
    assert (method.r, method.u, method.m, method.n) == (8, 1, 7, 7)


def test_cli_refuses_unknown_method_and_negative_rank(tmp_path):
    out = _train_py("--cfg", "job", "method=nope")
    assert out.returncode != 0 and "method/nope" in out.stderr
    out = _train_py("method=prolora", "rank=-3", f"output_dir={tmp_path}")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: rank=-3: PRoLoRAConfig.r=-3 is invalid: the rank must be an integer >= 1; use e.g. r=8"]


def test_slurm_launcher_config_composes():
    out = _train_py("--cfg", "hydra", "hydra/launcher=slurm_a100")
    assert out.returncode == 0, out.stderr[-2000:]
    hydra_cfg = OmegaConf.create(out.stdout).hydra
    assert hydra_cfg.launcher._target_.endswith("SlurmLauncher") and hydra_cfg.launcher.gpus_per_node == 1
