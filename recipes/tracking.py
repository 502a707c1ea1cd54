"""W&B for the recipes: the training curves of a job and the benchmark scores of its checkpoint, side by side.

**One run per training job** (``job_type="train"``: the loss/lr/grad-norm history, the final loss) and **one
linked run per evaluation** (``job_type="eval"``: the scores), in the same project and group, with the same
config columns, so a dashboard groups and filters both by ``method, r, u, m, n, dataset, lr, seed, experiment``
and shows each training's scores beside its curves.  The eval run names the training run it scores
(``train_run_id``, ``train_run_name``) and repeats its final loss, steps and trainable parameters in its
summary.

Why a linked run and not a resume of the training run by its id: W&B runs are offline by default here, and
wandb does not support resuming offline runs -- a resumed offline run is a second ``offline-run-*`` directory
whose ``wandb sync`` replaces the first one's history instead of appending to it (wandb issues #4624, #5865,
#3841), and two that start within the same second even share one directory.  Resuming would also let a later
evaluation (another protocol, a subset) overwrite the scores of an earlier one in the one summary, and tie
the evaluation to the machine that holds the training's W&B files.  A linked run is a new, self-contained
record per evaluation that syncs the same offline or online; the base model ("Vanilla") evaluation is simply
such a run without a training run (``method=vanilla``).

Summary keys are the Table 2 names (:attr:`eval.tasks.base.Column.key`: ``mmlu``, ``bbh``, ``gsm``,
``tydiqa_f1``, ``tydiqa_em``, ``humaneval_pass@1``), in percent, each with ``<key>/n`` (examples scored),
``<key>/full_size``, ``<key>/subset`` and ``<key>/protocol``; ``avg`` is the mean of the Table 2 keys this
evaluation has, ``avg/keys`` says which (a single run rarely has all six: in the paper each training dataset
feeds its own benchmarks).

Mode: ``logger.wandb.mode``, else ``WANDB_MODE``, else offline.  ``wandb sync <dir>/wandb/offline-run-*``
uploads offline runs later; ``WANDB_MODE=online`` logs live (after ``wandb login``).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

# Table 2's benchmark columns by their W&B names (the task classes declare them: Column.key)
PAPER_KEYS = ("mmlu", "bbh", "gsm", "tydiqa_f1", "tydiqa_em", "humaneval_pass@1")
CONFIG_COLUMNS = ("method", "r", "u", "m", "n", "dataset", "lr", "seed", "experiment")


def mode_of(wandb_cfg: Any) -> str:
    return (wandb_cfg.get("mode") if wandb_cfg is not None else None) or os.environ.get("WANDB_MODE") or "offline"


def run_columns(config: dict[str, Any], adapter: dict[str, Any] | None, method: str | None = None) -> dict[str, Any]:
    """The config columns of a training run (and of the evaluations of its checkpoint): ``method, r, u, m, n,
    dataset, lr, seed, experiment`` (+ ``model``, ``max_steps``); fields a method does not have are None.
    ``method``: the name the adapter was built as (a preset's: clora, rolora, ...), default the adapter's."""
    adapter = adapter or {}
    return {
        "method": method or adapter.get("method"), "r": adapter.get("r"), "u": adapter.get("u"), "m": adapter.get("m"),
        "n": adapter.get("n"), "dataset": (config.get("dataset") or {}).get("name"),
        "lr": (config.get("optim") or {}).get("lr"), "seed": config.get("seed"),
        "experiment": config.get("experiment_name"), "model": (config.get("model") or {}).get("name"),
        "max_steps": (config.get("trainer") or {}).get("max_steps"),
    }


def start(wandb_cfg: Any, *, dir: Path, name: str, group: str, job_type: str, config: dict[str, Any],
          tags: list[str]):
    """``wandb.init`` with the harness's defaults (offline unless configured, files under ``dir``)."""
    import wandb

    dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=wandb_cfg.get("project") or "prolora", entity=wandb_cfg.get("entity"), group=group,
                      name=name, job_type=job_type, tags=tags + list(wandb_cfg.get("tags") or []), config=config,
                      dir=str(dir), mode=mode_of(wandb_cfg), reinit="finish_previous")


def record_of(run) -> dict[str, Any]:
    """What run.json / eval.json keep of a W&B run: enough to find it (offline: the directory to sync)."""
    return {"id": run.id, "name": run.name, "project": run.project, "entity": run.entity, "group": run.group,
            "job_type": run.job_type, "mode": run.settings.mode, "sync_dir": str(Path(run.dir).parent)}


class TrainLogger:
    """The training job's run: config columns + the full resolved config (under ``config``), the history."""

    def __init__(self, wandb_cfg: Any, config: dict[str, Any], adapter: dict[str, Any], method: str,
                 output_dir: Path, name: str, trainable: int):
        columns = run_columns(config, adapter, method)
        tags = [f"{k}:{columns[k]}" for k in ("method", "r", "u", "m", "n", "dataset", "seed", "model")
                if columns[k] is not None]
        group = wandb_cfg.get("group") or config.get("experiment_name") or "adhoc"
        self.run = start(wandb_cfg, dir=output_dir, name=name, group=group, job_type="train",
                         config={**columns, "trainable_params": trainable, "config": config}, tags=tags)

    def record(self) -> dict[str, Any]:
        return record_of(self.run)

    def log(self, step: int, row: dict) -> None:
        self.run.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)

    def finish(self, summary: dict) -> None:
        self.run.summary.update(summary)
        self.run.finish()


def eval_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """The summary an evaluation's W&B run gets from its eval.json: each column's score under its Table 2 name
    with its sample size and protocol, and ``avg`` over the Table 2 names present."""
    from eval.tasks import TASKS

    protocol = ev.get("protocol")
    out: dict[str, Any] = {"protocol": protocol, "chat": ev.get("chat"), "backend": ev.get("backend"),
                           "eval/status": ev.get("status"), "eval/tasks_failed": sorted(ev.get("tasks_failed") or {})}
    for task, entry in (ev.get("tasks") or {}).items():
        cls = TASKS.get(task)
        if cls is None or not isinstance(entry, dict):
            continue
        for column in cls.columns.values():
            value = entry.get(column.metric)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            key = column.key
            out[key] = float(value)
            out[f"{key}/n"] = entry.get("n_examples")
            out[f"{key}/full_size"] = entry.get("full_size")
            out[f"{key}/subset"] = bool(entry.get("subset"))
            out[f"{key}/protocol"] = protocol
    present = [k for k in PAPER_KEYS if k in out]
    if present:
        out["avg"] = statistics.fmean(out[k] for k in present)
        out["avg/keys"] = ",".join(present)
        out["avg/subset"] = any(out[f"{k}/subset"] for k in present)
    return out


def log_evaluation(wandb_cfg: Any, ev: dict[str, Any], output_dir: Path, run_json: dict[str, Any] | None,
                   experiment: str | None = None) -> dict[str, Any]:
    """Log an evaluation (its eval.json content ``ev``) as a W&B run linked to the training run in
    ``run_json`` (None: a base-model evaluation, ``method=vanilla``); returns :func:`record_of` the run."""
    train_wandb = (run_json or {}).get("wandb") or {}
    if run_json is not None:
        config = run_json.get("config") or {}
        columns = run_columns(config, run_json.get("adapter"), run_json.get("method"))
        name = f"{train_wandb.get('name') or Path(str(ev.get('model', {}).get('adapter_dir'))).parent.name}-eval"
        extra = {"train_run_id": train_wandb.get("id"), "train_run_name": train_wandb.get("name"),
                 "trainable_params": run_json.get("trainable_params")}
    else:
        model = (ev.get("model") or {}).get("settings") or {}
        columns = {**dict.fromkeys(CONFIG_COLUMNS), "method": "vanilla", "seed": (ev.get("config") or {}).get("seed"),
                   "model": model.get("name"), "max_steps": 0}
        name = f"vanilla-{model.get('name') or 'base'}-{'chat' if ev.get('chat') else 'nochat'}"
        extra = {}
    group = (wandb_cfg.get("group") or train_wandb.get("group") or experiment or columns.get("experiment") or "adhoc")
    columns["experiment"] = columns.get("experiment") or group
    wandb_cfg = {**dict(wandb_cfg), "project": train_wandb.get("project") or wandb_cfg.get("project"),
                 "entity": train_wandb.get("entity") or wandb_cfg.get("entity")}
    config = {**columns, **extra, "protocol": ev.get("protocol"), "chat": ev.get("chat"), "backend": ev.get("backend"),
              "tasks": sorted(ev.get("tasks") or {}), "eval_config": ev.get("config")}
    tags = [f"{k}:{columns[k]}" for k in ("method", "r", "dataset", "seed") if columns.get(k) is not None]
    run = start(wandb_cfg, dir=output_dir, name=name, group=group, job_type="eval", config=config,
                tags=tags + [f"protocol:{ev.get('protocol')}"])
    summary = eval_summary(ev)
    if run_json is not None:
        summary.update({"train/final_loss": run_json.get("final_loss"), "train/steps": run_json.get("steps")})
    run.summary.update(summary)
    record = record_of(run)
    run.finish()
    return record


def warn(what: str, error: BaseException) -> None:
    print(f"warning: W&B {what} skipped ({type(error).__name__}: {error}); the result files are complete",
          file=sys.stderr)
