"""scripts/parity/runs.py: each variant, run alone, composes the task the recorded (multi-task) run scored."""

import json

import pytest
from hydra import compose, initialize_config_dir

from recipes import CONFIG_DIR
from scripts.parity.runs import VARIANTS
from tests.conftest import REPO

RECORDED = json.loads((REPO / "results" / "parity" / "open_instruct_smollm2.json").read_text(encoding="utf-8"))


def task_config(overrides: list[str], task: str):
    from recipes.evaluate import build_tasks

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[*overrides, "data_dir=unused"])
    cfg.tasks = [task]
    (built,) = build_tasks(cfg, bool(cfg.chat))
    return built


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_composes_the_recorded_task(name):
    recorded = RECORDED["variants"][name]["harness"]
    variant = VARIANTS[name]
    assert variant.task == recorded["task"]
    assert task_config(variant.overrides, variant.task) == task_config(recorded["overrides"], recorded["task"])


def test_reference_arguments_name_the_recorded_script_and_options():
    for name, variant in VARIANTS.items():
        recorded = RECORDED["variants"][name]["reference"]["command"]
        args = variant.reference_args("<data>", "<model>", "<save>")
        assert variant.module in recorded, name
        for flag in (a for a in args if a.startswith("--")):
            assert f" {flag}" in recorded, (name, flag)
