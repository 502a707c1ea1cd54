"""The leaf facts of the paper's tables: which benchmark and metric each column is, how a value is written, a
cell file's scores per column, and the finished cells indexed as the tables read them.

Imports nothing of the experiment code (grids, runner, tables), so every module of :mod:`recipes.paper` (and
:mod:`recipes.sweep`) can use it.  The columns are the benchmarks' own (each task class declares its
``columns``); a column's value in percent, as the evaluator writes it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from eval.tasks import TASKS
from prolora.io import read_json_object

DASH = "—"  # no result yet (never filled in)


class TableColumn(NamedTuple):
    """One table column: the benchmark task it comes from, its header, the metric key in eval.json's
    ``tasks.<task>``, and its short name (the W&B summary key, Table 2's ``mmlu``, ``gsm``, ...)."""

    task: str
    header: str
    metric: str
    key: str


COLUMNS: dict[str, TableColumn] = {col: TableColumn(name, *spec) for name, cls in TASKS.items()
                                   for col, spec in cls.columns.items()}


# --------------------------------------------------------------------------------------------- formatting


def fmt_lr(lr: float) -> str:
    """A learning rate as cell ids, run directories and tables write it (``0.0002``, ``5e-05``)."""
    return f"{float(lr):g}"


def fmt_int(n: int | float | None) -> str:
    """A parameter count with thousands separators; ``?`` when unknown."""
    return "?" if n is None else f"{round(n):,}"


def csv_number(x: float | None) -> str:
    """A number in a CSV file: four decimals, empty when there is none."""
    return "" if x is None else f"{x:.4f}"


# --------------------------------------------------------------------------------------------- eval.json


def eval_to_columns(ev: dict[str, Any] | None, columns) -> dict[str, float]:
    """THE mapping eval.json -> table columns (MMLU EM, BBH EM, GSM EM, TyDiQA F1, TyDiQA EM, HumanEval P@1;
    Demo EM), in percent as the evaluator writes them.  A column whose task or metric is absent (not
    evaluated, or the task failed) is left out, never filled in."""
    out: dict[str, float] = {}
    tasks = (ev or {}).get("tasks") or {}
    for col in columns:
        value = (tasks.get(COLUMNS[col].task) or {}).get(COLUMNS[col].metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[col] = float(value)
    return out


def subset_columns(ev: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Table columns whose number is NOT on the whole set: {column: {"n", "of"}} from eval.json."""
    out: dict[str, dict[str, Any]] = {}
    tasks = (ev or {}).get("tasks") or {}
    for col, column in COLUMNS.items():
        entry = tasks.get(column.task) or {}
        if entry.get("subset"):
            out[col] = {"n": entry.get("n_examples"), "of": entry.get("full_size") or entry.get("n_available")}
    return out


# --------------------------------------------------------------------------------------------- values


@dataclass
class Value:
    """One table value: our mean ± sample std over the finished seeds, and what the table writes beside it."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    planned: int = 0
    choice: str = ""  # the candidate kept ([r32], [lr 0.01])
    unsettled: bool = False  # another candidate still misses seeds
    paper: float | None = None
    subset: bool = False  # some number behind it was scored on a subset of the benchmark
    modified: bool = False  # a checkpoint behind it was scored although modified after training (allow_modified)
    source: tuple | None = None  # the cells behind it: (variant, dataset, lr) or ("eval_only", row) -> Index.cells
    mark: str = ""  # significance against the row's baseline (recipes.paper.significance): ▲ / ▼

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper

    def text(self) -> str:
        if self.mean is None:
            s = DASH
        else:
            s = f"{self.mean:.2f}" + (" ˢ" if self.subset else "") + (" ᵐ" if self.modified else "")
            if self.std is not None:
                s += f" ± {self.std:.2f}"
            if self.choice:
                s += f" [{self.choice}]"
            if self.n < self.planned:
                s += f" n={self.n}/{self.planned}"
            if self.unsettled:
                s += " †"
            if self.mark:
                s += f" {self.mark}"
        if self.paper is not None:
            s += f" ({self.paper:.2f}" + (f", {self.delta:+.2f})" if self.delta is not None else ")")
        return s


def summarize(values: list[float], planned: int) -> Value:
    """Mean and sample std (n-1; none for one value) of ``values`` out of ``planned`` seeds."""
    if not values:
        return Value(planned=planned)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Value(mean=statistics.fmean(values), std=std, n=len(values), planned=planned)


# --------------------------------------------------------------------------------------------- cells


def load_cells(cells_dir: Path) -> list[dict[str, Any]]:
    """The cell files of ``cells_dir`` whose status is done, in file-name order."""
    out = []
    for p in sorted(cells_dir.glob("*.json")):
        rec = read_json_object(p)
        if isinstance(rec, dict) and rec.get("status") == "done":
            out.append(rec)
    return out


def lr_key(lr: float | None) -> str:
    return "none" if lr is None else fmt_lr(lr)


class Index:
    """Done cells by (variant, dataset, lr) -> {seed: metrics} and eval-only rows by row id."""

    def __init__(self, records: list[dict[str, Any]]):
        self.trained: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
        self.eval_only: dict[str, dict[int, dict[str, float]]] = {}
        self.subsets: set[tuple] = set()  # (variant, dataset, lr, seed, col) / (row, seed, col) scored on a subset
        self.records = records
        self.modified: set[tuple] = set()  # (variant, dataset, lr, seed) / (row, seed) of modified checkpoints
        self.cells: dict[tuple, dict[int, dict[str, Any]]] = {}  # source (see Value.source) -> {seed: cell record}
        for rec in records:
            metrics = rec.get("metrics") or {}
            seed = int(rec.get("seed") or 0)
            if rec.get("eval_only"):
                for row in rec.get("rows") or []:
                    self.eval_only.setdefault(row, {})[seed] = metrics
                    self.subsets |= {(row, seed, col) for col in rec.get("subsets") or {}}
                    self.cells.setdefault(("eval_only", row), {})[seed] = rec
            elif rec.get("variant"):
                k = (rec["variant"], rec.get("dataset") or "", lr_key(rec.get("lr")))
                self.trained.setdefault(k, {})[seed] = metrics
                self.subsets |= {(*k, seed, col) for col in rec.get("subsets") or {}}
                self.cells.setdefault(k, {})[seed] = rec
                if (rec.get("checkpoint_integrity") or {}).get("status") == "modified":
                    self.modified.add((*k, seed))

    def values(self, variant: str, dataset: str, lr: float, col: str, seeds: list[int]) -> list[float]:
        by_seed = self.trained.get((variant, dataset, lr_key(lr)), {})
        return [float(by_seed[s][col]) for s in seeds if s in by_seed and by_seed[s].get(col) is not None]

    def value(self, variant: str, dataset: str, lr: float, col: str, seeds: list[int]) -> Value:
        """The candidate's mean ± std over the finished seeds, marked when any of them is a subset number."""
        v = summarize(self.values(variant, dataset, lr, col, seeds), len(seeds))
        v.subset = any((variant, dataset, lr_key(lr), s, col) in self.subsets for s in seeds)
        v.modified = any((variant, dataset, lr_key(lr), s) in self.modified for s in seeds)
        v.source = (variant, dataset, lr_key(lr))
        return v
