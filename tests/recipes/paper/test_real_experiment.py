"""The real-model demo (``configs/experiment/real.yaml``, ``make demo-real``): its grid, the equal budget of its two
trained rows, and that every training and evaluation override it passes is one the recipes accept.  Seconds: the
demo itself (about 20 minutes on 2 cores) is not run here."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipes import REPO
from recipes.paper.grid import build_grid, compose, experiment_datasets, load_config, train_args
from recipes.paper.plan import count_params

SHARED_DATA = REPO.parent / "shared" / "data"  # `make demo-real`'s default REAL_DATA (../shared/data)


@pytest.fixture(scope="module")
def real():
    cfg = load_config(["experiment=real"])
    return cfg, build_grid(cfg)


def test_real_grid_has_the_planned_cells(real):
    cfg, grid = real
    exp = cfg.experiment
    assert exp.model == "smollm2_135m" and exp.loss_curves
    assert experiment_datasets(exp) == {"code_alpaca_2k": ["mmlu", "bbh"]}
    eval_only = [c for c in grid.cells if c.eval_only]
    trained = [c for c in grid.cells if not c.eval_only]
    assert sorted((c.rows[0], c.chat) for c in eval_only) == [("base_chat", True), ("base_nochat", False)]
    seeds = [int(s) for s in exp.seeds]
    assert len(trained) == 2 * len(seeds)
    assert sorted((c.variant.id, c.seed) for c in trained) == sorted(
        (v, s) for v in ("lora_r2", "prolora_r8_u1_m7_n7") for s in seeds)
    assert {c.rows[0] for c in trained} == {"lora_r2", "prolora_r8"}
    # both trained rows at one LR, steps and data: the only difference is the adapter
    assert len({(c.lr, c.max_steps, c.dataset, tuple(c.train_overrides)) for c in trained}) == 1
    assert {tuple(c.tasks) for c in grid.cells} == {("mmlu", "bbh")}
    assert {"row": "prolora_r8", "baseline": "lora_r2"} in OmegaConf.to_container(exp.compare)


def test_real_training_overrides_compose(real):
    """train.py gets what it accepts (the schema types the trainer's fields; their checks run)."""
    from prolora.trainer import OptimArgs, TrainArgs

    cfg, grid = real
    for cell in (c for c in grid.cells if not c.eval_only):
        train = compose("config", train_args(cfg, cell))
        args = TrainArgs(**OmegaConf.to_container(train.trainer, resolve=True))
        OptimArgs(**OmegaConf.to_container(train.optim, resolve=True))
        assert (args.max_steps, train.dataset.name, train.model.name) == (cell.max_steps, "code_alpaca_2k",
                                                                         "smollm2_135m")
        assert args.gradient_checkpointing is False and args.save_every == 0


def test_real_eval_overrides_name_existing_task_options(real):
    """Each ``<task>.<option>=`` is a field of that task's dataclass, each other key an evaluation option; the
    composed evaluation builds its tasks (their own checks run) and, where the shared data is here, they load it
    (every chosen MMLU subject and BBH task exists)."""
    from eval.tasks import TASKS
    from recipes import evaluate

    cfg, grid = real
    overrides = [str(x) for x in cfg.experiment.eval_overrides]
    run_options = {f.name for f in fields(evaluate.RunOptions)}
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        head, _, option = key.partition(".")
        if option:
            assert head in TASKS, f"{ov}: no task {head!r}"
            assert option in {f.name for f in fields(TASKS[head])}, f"{ov}: {head} has no option {option!r}"
        else:
            assert key in run_options, f"{ov}: not an option of recipes.evaluate"
    for chat in (True, False):
        ecfg = compose("evaluate", ["model=smollm2_135m", "tasks=[mmlu,bbh]", f"chat={str(chat).lower()}",
                                    *overrides])
        tasks = evaluate.build_tasks(ecfg, chat)
        assert [t.name for t in tasks] == ["mmlu", "bbh"]
        by_name = {t.name: t for t in tasks}
        assert by_name["mmlu"].subjects and by_name["bbh"].tasks  # subsets, labelled as such in every table
        if (SHARED_DATA / "mmlu").is_dir() and (SHARED_DATA / "bbh").is_dir():
            for t in tasks:
                examples = t.load(SHARED_DATA)
                assert examples and len(examples) < t.full_size, t.name


def _smollm2_missing() -> str | None:
    try:
        import gguf  # noqa: F401

        from prolora import gguf as g

        g.smollm2_file()
    except (ImportError, FileNotFoundError) as e:
        return f"the real-model extra is not installed ({e}): make real-model"
    return None


@pytest.mark.skipif(_smollm2_missing() is not None, reason=_smollm2_missing() or "")
def test_real_rows_have_the_same_budget(real):
    """LoRA r2 and PRoLoRA r8 u1 m7 count within 1% of each other on SmolLM2-135M (meta device: its config only)."""
    cfg, grid = real
    counts = {c.variant.id: count_params(c.model, c.variant.method) for c in grid.cells if not c.eval_only}
    assert counts["lora_r2"] == 610_560  # r * (in + out) over 30 layers x 7 linears
    assert abs(counts["prolora_r8_u1_m7_n7"] - counts["lora_r2"]) / counts["lora_r2"] < 0.01
    assert Path(REPO / "configs" / "dataset" / "code_alpaca_2k.yaml").is_file()
