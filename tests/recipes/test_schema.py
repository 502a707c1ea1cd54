"""The training schema: composition, shorthands, the method options generated from the registry, help texts."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recipes import CONFIG_DIR, config_store, run_config, schema
from tests.conftest import REPO

config_store.register()


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _adapter(overrides):
    return run_config.adapter_config(_compose(overrides).method)


def test_shorthands_resolve_into_method():
    cfg = _compose(["method=prolora", "rank=8", "unshared=1", "sharing=7"])
    m = OmegaConf.to_container(cfg.method, resolve=True)
    assert (m["name"], m["r"], m["u"], m["m"], m["n"]) == ("prolora", 8, 1, 7, 7)
    adapter = run_config.adapter_config(cfg.method)
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


def test_every_method_and_preset_is_an_option_without_a_yaml_file():
    import prolora

    assert not (REPO / "configs" / "method").exists()  # the registry is the list; no YAML repeats it
    for name in prolora.known_names():
        assert _adapter([f"method={name}"]).name == name


def test_dataset_lr_flows_into_optimizer():
    assert _compose(["dataset=code_alpaca"]).optim.lr == 5e-5
    assert _compose(["dataset=superni"]).optim.lr == 2e-4
    assert _compose(["dataset=superni", "optim.lr=1e-4"]).optim.lr == 1e-4


def test_every_field_has_a_help_text():
    rows = schema.help_lines(schema.TrainConfig)
    keys = {key for key, _, _ in rows}
    assert {"model.path", "method.u", "method.stride_from", "optim.lr", "trainer.gradient_checkpointing",
            "dataset.eval_tasks", "logger.wandb.mode", "seed", "rank"} <= keys
    assert [key for key, _, text in rows if not text] == []


def _train_py(*args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_cfg_job_prints_the_resolved_config_with_help():
    out = _train_py("--cfg", "job", "method=prolora", "rank=8", "unshared=1", "sharing=7")
    assert out.returncode == 0, out.stderr
    method = OmegaConf.create(out.stdout).method
    assert (method.r, method.u, method.m, method.n) == (8, 1, 7, 7)
    assert "  u: 1  # unshared ranks (u = r is plain LoRA)" in out.stdout.splitlines()
    assert any(line.startswith("  'n': 7  # sharing rate of B") for line in out.stdout.splitlines())


@pytest.mark.parametrize("args,message", [
    (["method=prolora", "rank=-3"], "error: rank=-3: PRoLoRAConfig.r=-3 is invalid: the rank must be an integer >= 1; "
                                    "use e.g. r=8"),
    (["method=lora", "unshared=1"], "error: unshared=1 does not apply to method=lora (LoRAConfig has no u): drop "
                                    "unshared= or pick a method that has it"),
    (["method=lora", "unshared=1", "sharing=7"],
     "error: unshared=1 does not apply to method=lora (LoRAConfig has no u); sharing=7 does not apply to method=lora "
     "(LoRAConfig has no m/n): drop unshared=, sharing= or pick a method that has it"),
    (["trainer.max_steps=0"], "error: trainer.max_steps=0: must be an integer >= 1"),
])
def test_cli_cfg_job_checks_what_it_prints(args, message):
    out = _train_py("--cfg", "job", *args)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.strip() == message


def test_cli_help_lists_fields_with_their_help():
    out = _train_py("--help")
    assert out.returncode == 0, out.stderr
    import prolora

    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("method: "))
    assert set(line.removeprefix("method: ").split(", ")) - {"method_schema"} == set(prolora.known_names())
    assert any(line.split()[:1] == ["method.u"] and "unshared ranks" in line for line in out.stdout.splitlines())
    assert "optim.shared_lr" in out.stdout and "${rank}" in out.stdout


def test_cli_refuses_unknown_method_and_negative_rank(tmp_path):
    out = _train_py("--cfg", "job", "method=nope")
    assert out.returncode != 0 and "method/nope" in out.stderr and "prolora" in out.stderr
    out = _train_py("method=prolora", "rank=-3", f"output_dir={tmp_path}")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: rank=-3: PRoLoRAConfig.r=-3 is invalid: the rank must be an integer >= 1; use e.g. r=8"]


def test_slurm_launcher_config_composes():
    out = _train_py("--cfg", "hydra", "hydra/launcher=slurm_a100")
    assert out.returncode == 0, out.stderr[-2000:]
    hydra_cfg = OmegaConf.create(out.stdout).hydra
    assert hydra_cfg.launcher._target_.endswith("SlurmLauncher") and hydra_cfg.launcher.gpus_per_node == 1
