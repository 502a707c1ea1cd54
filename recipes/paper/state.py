"""The state of a grid cell, read off its files: what ``--plan`` shows and what the runner decides by.

*done* (cell file with status done, recorded for this cell's settings), *running* (its lock file is flock-ed by
a live process: the kernel takes the lock atomically and drops it when the holder dies, so there is no stale
lock), *failed* (cell file with status failed: stage, return code), *to do* otherwise (with what is already
there: a finished training, a finished evaluation not yet recorded, a cell file for other settings).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from prolora.io import FileLock, read_json
from recipes.paper.grid import Cell, cells_dir


def cell_state(cfg: DictConfig, cell: Cell) -> tuple[str, str]:
    """(state, detail): state in done | running | failed | to do."""
    d = cells_dir(cfg, cell.experiment)
    lock = FileLock.holder(d / f"{cell.id}.lock")
    if lock is not None:
        return "running", f"pid {lock.get('pid')} on {lock.get('host')}, {lock.get('stage', '')}"
    rec = read_json(d / f"{cell.id}.json")
    if rec is not None and not isinstance(rec, dict):  # valid JSON, but not a cell file: damaged, run it again
        return "to do", f"cell file {cell.id}.json is not a JSON object (damaged); it is rewritten when the cell runs"
    stale = cell.recorded_for_other_settings(rec) if rec and rec.get("status") == "done" else None
    if stale:  # another max_steps, LR grid or overrides than the file's: run again (the old run dir stays)
        return "to do", f"cell file {stale}"
    if rec and rec.get("status") == "done":
        return "done", ""
    if rec and rec.get("status") == "failed":
        f = rec.get("failure") or {}
        return "failed", f"{f.get('stage')} rc={f.get('returncode')}"
    trained = cell.eval_only or (cell.run_dir is not None and (cell.run_dir / "final" / "run.json").exists())
    evaluated = eval_complete(cell.eval_dir)
    detail = "" if cell.eval_only else ("trained" if trained else "")
    if evaluated:
        detail = "trained+evaluated, to record"
    return "to do", detail


def eval_complete(eval_dir: Path) -> bool:
    """An evaluation is finished when its eval.json says every planned task was scored."""
    ev = read_json(eval_dir / "eval.json")
    return isinstance(ev, dict) and ev.get("status") == "complete"
