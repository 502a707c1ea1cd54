"""A run's config is built once per process and read by everything that needs it; its identity and errors."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import prolora
from recipes import CONFIG_DIR, config_store, run_config

config_store.register()


def _root(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.fixture
def constructions(monkeypatch):
    """How many times make_config runs (one per construction of a run's config)."""
    calls = []
    real = prolora.make_config

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(prolora, "make_config", counting)
    monkeypatch.setattr(run_config, "_BUILT", {})
    return calls


def test_the_run_dir_resolvers_and_the_recipe_read_one_construction(constructions, tmp_path):
    from recipes import train as train_recipe

    root = _root(["model=tiny", "dataset=demo", "method=prolora", "rank=8", "unshared=1", "logger=none",
                  f"output_dir={tmp_path}"])
    run_dir = root.hydra.run.dir  # Hydra resolves ${run_tag:} and ${run_hash:} here
    job = root.copy()
    with open_dict(job):
        del job["hydra"]
    plan = train_recipe.plan(job)  # the recipe, on the job config Hydra hands it
    assert len(constructions) == 1
    assert plan.run is run_config.build(root)
    assert str(tmp_path) == run_dir
    again = _root(["model=tiny", "dataset=demo", "method=prolora", "rank=8", "unshared=1", "logger=none",
                   f"output_dir={tmp_path}"])
    assert run_config.build(again) is plan.run and len(constructions) == 1  # the same settings: the same object


def test_the_default_run_dir_is_named_from_the_run_config():
    root = _root(["model=tiny", "dataset=demo", "method=prolora", "rank=8", "unshared=1"])
    run = run_config.build(root)
    assert root.hydra.run.dir.split("/")[-2:] == ["prolora_r8_u1_m7_n7", f"lr0.002_seed1_{run.identity_hash}"]


def test_other_settings_are_another_construction(constructions):
    a = run_config.build(_root(["method=lora", "rank=2"]))
    b = run_config.build(_root(["method=lora", "rank=2", "seed=2"]))
    assert a is not b and a.identity_hash != b.identity_hash and len(constructions) == 2


def test_identity_hash_is_the_one_recorded_run_dirs_carry():
    # computed with the code before run_config existed (recipes.schema.run_hash): existing run dirs keep their names
    run = run_config.build(_root(["model=llama2_7b", "method=lora", "rank=2", "dataset=superni", "seed=3"]))
    assert (run.tag, run.identity_hash) == ("lora_r2", "fd0fc3eb")


def test_an_invalid_config_still_names_a_dir_and_fails_in_the_recipe():
    run = run_config.build(_root(["method=prolora", "rank=2", "unshared=3"]))
    assert run.tag == "prolora_invalid" and run.adapter is None
    with pytest.raises(prolora.ConfigError, match=r"unshared=3: PRoLoRAConfig.u=3 is invalid") as err:
        run.check()
    assert (err.value.field, err.value.value) == ("u", 3)


@pytest.mark.parametrize("overrides,needle,field", [
    (["method=prolora", "rank=-2"], "rank=-2: PRoLoRAConfig.r=-2", "r"),
    (["method=prolora", "unshared=-1"], "unshared=-1: PRoLoRAConfig.u=-1", "u"),
    (["method=prolora", "sharing=0"], "sharing=0: PRoLoRAConfig.m=0", "m"),
    (["method=prolora", "rank=4", "unshared=5"], "unshared=5: .*cannot exceed r=4", "u"),
    (["method=lora", "unshared=1"], "unshared=1 does not apply to method=lora", "u"),
    (["method=vera", "sharing=7"], "sharing=7 does not apply to method=vera", "m"),
    (["method=prolora", "method.u=-1"], r"^PRoLoRAConfig.u=-1", "u"),  # no shorthand involved: the library's words
])
def test_bad_or_inapplicable_shorthand_names_the_value(overrides, needle, field):
    with pytest.raises(prolora.ConfigError, match=needle) as err:
        run_config.build(_root(overrides)).check()
    assert err.value.field == field
