"""An experiment's grid: rows, variants, cells, where each cell's files go, and the commands that make them.

An experiment (``configs/experiment/<name>.yaml``) declares *rows* (a method with its rank settings; a
"4/8" or "16/32" row has two *variants* and the table keeps, per benchmark, the better one), the training
*datasets*, the table *columns*, *seeds*, and optionally an LR grid.  Which benchmarks a dataset feeds is
the dataset's own ``eval_tasks`` (``configs/dataset/<name>.yaml``), restricted to the experiment's columns.
Expanding it gives *cells*:

* a training cell = (variant, dataset, lr, seed): ``train.py`` then ``recipes.evaluate`` on its checkpoint;
* an eval-only cell (Vanilla rows) = the base model scored once on every benchmark of the table.

Cells are identified by ``<variant>__<dataset>__lr<lr>__seed<seed>`` (``<row>__eval__seed<seed>`` for
eval-only ones).  A variant id is the adapter config's tag (``prolora_r8_u1_m7_n7``), so a variant used by two
rows (PRoLoRA r8 in the "8" and "4/8" rows) is one set of cells.  Paths: ``<runs_dir>/<model>/<dataset>/
<variant>/lr<lr>_steps<N>_seed<s>[_<hash of extra overrides>]/`` holds a training run and, below it,
``eval_<backend>_<tasks>_<chat|nochat>/``; ``<results_dir>/<experiment>/cells/<cell_id>.json`` the record.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipes import CONFIG_DIR, REPO
from recipes.paper.facts import COLUMNS, fmt_lr

EXPERIMENT_DEFAULTS: dict[str, Any] = dict(
    name="", title="", model="llama2_7b", seeds=[1, 2, 3], eval_seed=None, max_steps=10_000, lr_grid=None,
    layout="table", loss_curves=False, datasets=[], columns=[], avg=False, budget=None,
    eval_gpu_hours={}, train_overrides=[], eval_overrides=[], rows=[], compare=[],
)


# --------------------------------------------------------------------------------------------- config


_COMPOSE_LOCK = threading.Lock()  # Hydra's global state: one composition at a time (a device pool's workers)


def compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recipes import config_store

    config_store.register()
    with _COMPOSE_LOCK:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app (a --slurm cell job): same config dir
            return hydra_compose(config_name=config_name, overrides=list(overrides))
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The runner's config (``configs/reproduce.yaml`` + ``experiment=<name>``) with defaults filled in."""
    return with_defaults(compose("reproduce", overrides))


def with_defaults(cfg: DictConfig) -> DictConfig:
    """A mutable copy of the runner config whose experiment has every key of :data:`EXPERIMENT_DEFAULTS`."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(cfg, False)
    cfg.experiment = OmegaConf.merge(OmegaConf.create(EXPERIMENT_DEFAULTS), cfg.experiment)
    return cfg


def repo_path(p: str | os.PathLike) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else REPO / p


@functools.cache
def _group_yaml(group: str, name: str) -> dict[str, Any]:
    from recipes import config_store

    config_store.register()  # the ${asset:...} resolver

    path = Path(CONFIG_DIR) / group / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown {group} {name!r}: no {path}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


def dataset_lr(name: str) -> float:
    """The paper's LR for a training dataset (``configs/dataset/<name>.yaml``: ``lr``)."""
    return float(_group_yaml("dataset", name)["lr"])


def dataset_tasks(name: str) -> list[str]:
    """The benchmarks a training dataset feeds (``configs/dataset/<name>.yaml``: ``eval_tasks``)."""
    return [str(t) for t in _group_yaml("dataset", name).get("eval_tasks") or []]


def model_info(name: str) -> dict[str, Any]:
    """``configs/model/<name>.yaml``, resolved."""
    return _group_yaml("model", name)


def column_tasks(columns: Iterable[str]) -> list[str]:
    """The benchmarks the experiment's columns come from, in column order."""
    tasks: list[str] = []
    for col in columns:
        if col not in COLUMNS:
            raise ValueError(f"unknown column {col!r}; known: {sorted(COLUMNS)}")
        if COLUMNS[col].task not in tasks:
            tasks.append(COLUMNS[col].task)
    return tasks


def experiment_datasets(exp: DictConfig) -> dict[str, list[str]]:
    """Training dataset -> the benchmarks it feeds in this experiment (its eval_tasks among the columns')."""
    wanted = column_tasks(exp.columns)
    return {str(ds): [t for t in dataset_tasks(str(ds)) if t in wanted] for ds in exp.datasets}


def dataset_of(exp: DictConfig, col: str) -> str | None:
    """The training dataset whose benchmarks feed table column ``col`` in this experiment (None: none does)."""
    task = COLUMNS[col].task
    for ds, tasks in experiment_datasets(exp).items():
        if task in tasks:
            return str(ds)
    return None


def all_tasks(exp: DictConfig) -> list[str]:
    tasks: list[str] = []
    for ts in experiment_datasets(exp).values():
        tasks += [t for t in ts if t not in tasks]
    return tasks


# --------------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class BudgetMatch:
    """How a variant given a ``budget`` was solved (:func:`prolora.solve_budget` on the experiment's model)."""

    label: str  # the budget as written: "LoRA r2", "5,000,000 params"
    target: int  # its parameter count
    knob: str  # the field solved: r, m, pool_rank, num_vectors
    value: int
    count: int  # the variant's exact trainable count (<= target)
    status: str  # exact | under | capped


@dataclass(frozen=True)
class Variant:
    id: str  # the adapter config's tag: lora_r2, prolora_r8_u1_m7_n7
    short: str  # marks the chosen variant in a better-of row: r4, r8
    method: dict[str, Any]  # {"name": method or preset, <every field of the resolved adapter config>}
    overrides: tuple[str, ...]  # method=... method.r=... for train.py
    budget: BudgetMatch | None = None  # set when the row asked for a budget instead of a knob value


@dataclass
class Row:
    id: str
    label: str
    rank: str
    eval_only: bool
    chat: bool
    variants: list[Variant]
    lr: float | None  # fixed LR for every dataset (else the dataset's)
    lr_sweep: list[float]
    extra: dict[str, Any] = field(default_factory=dict)  # share / rotate (Table 4), train_overrides

    def train_lrs(self, dataset: str, exp: DictConfig, sweep: bool) -> list[float]:
        if exp.lr_grid:
            return [float(x) for x in exp.lr_grid]
        if sweep and self.lr_sweep:
            return list(self.lr_sweep)
        return [self.lr if self.lr is not None else dataset_lr(dataset)]

    def candidate_lrs(self, dataset: str) -> list[float]:
        """LRs the table may pick from for this row (best per benchmark when there are several)."""
        base = [self.lr if self.lr is not None else dataset_lr(dataset)]
        return sorted(set(base) | set(self.lr_sweep))


@dataclass
class Cell:
    id: str
    experiment: str
    rows: list[str]  # the rows this cell serves (a shared variant serves several)
    variant: Variant | None
    model: str
    dataset: str | None
    tasks: list[str]
    lr: float | None
    seed: int
    max_steps: int
    eval_only: bool
    chat: bool
    run_dir: Path | None
    eval_dir: Path
    train_overrides: list[str]
    eval_overrides: list[str]

    def recorded_for_other_settings(self, rec: dict[str, Any]) -> str | None:
        """Why a cell file with this cell's id was recorded for other settings (None when it is this cell's).
        The run and evaluation directory names carry everything that decides the numbers (steps, LR, seed, the
        hash of the extra training and evaluation overrides); only their names are compared, so a results
        directory stays valid when the runs live elsewhere (another clone, another machine)."""
        paths = rec.get("paths") or {}
        expected = {"run": self.run_dir.name if self.run_dir else None, "eval": self.eval_dir.name}
        found = {"run": Path(paths["run_dir"]).name if paths.get("run_dir") else None,
                 "eval": Path(paths["eval_dir"]).name if paths.get("eval_dir") else None}
        if found == expected:
            return None
        return f"recorded for {found['run'] or 'base'}/{found['eval']}, this grid runs {expected['run'] or 'base'}/{expected['eval']}"

    def as_dict(self) -> dict[str, Any]:
        return dict(
            cell_id=self.id, experiment=self.experiment, rows=self.rows,
            variant=self.variant.id if self.variant else None,
            variant_short=self.variant.short if self.variant else None,
            method=self.variant.method if self.variant else None, model=self.model, dataset=self.dataset,
            eval_tasks=self.tasks, lr=self.lr, seed=self.seed, max_steps=None if self.eval_only else self.max_steps,
            eval_only=self.eval_only, chat=self.chat)


def override_value(v: Any) -> str:
    """A value as a Hydra command-line override writes it (``true``, ``null``, ``[1,2]``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    return str(v)


def budget_label(budget: dict[str, Any]) -> str:
    """``LoRA r2`` for ``{lora_rank: 2}``, ``5,000,000 params`` for ``{params: 5000000}``."""
    if "lora_rank" in budget:
        return f"LoRA r{budget['lora_rank']}"
    return f"{int(budget.get('params', 0)):,} params"


@functools.cache
def _solve(model: str, name: str, budget_json: str, fields_json: str):
    import prolora
    from recipes.run_config import counting_ref

    return prolora.solve_budget(counting_ref(model_info(model)), name, json.loads(budget_json),
                                **json.loads(fields_json))


def solve_spec(spec: dict[str, Any], model: str) -> tuple[dict[str, Any], BudgetMatch | None]:
    """A variant spec with ``budget: {lora_rank: k}`` (or ``{params: N}``) made concrete on ``model``: the method's
    budget knob set by :func:`prolora.solve_budget`, the other fields kept; a spec without one is returned as is."""
    spec = dict(spec)
    budget = spec.pop("budget", None)
    if budget is None:
        return spec, None
    name = str(spec.pop("method"))
    sol = _solve(model, name, json.dumps(dict(budget), sort_keys=True), json.dumps(spec, sort_keys=True))
    match = BudgetMatch(label=budget_label(dict(budget)), target=sol.target_count, knob=sol.knob, value=sol.value,
                        count=sol.count, status=sol.status)
    return {"method": name, **sol.fields}, match


def make_variant(spec: dict[str, Any], model: str | None = None) -> Variant:
    """A row's variant ``{method: <name>, <field>: <value>, ...}``, resolved by the library as train.py will.
    Its id is the config's tag (``prolora_r8_u1_m7_n7``), plus a short hash of the whole config when a field
    the tag does not show differs from the method's default (``alpha``, ``stride_from``, ...), so two variants
    never share cells or run directories.  A spec with ``budget:`` is solved on ``model`` first
    (:func:`solve_spec`)."""
    import prolora

    if "budget" in spec:
        if model is None:
            raise ValueError(f"variant {spec}: a budget is solved on a model; give make_variant(spec, model)")
        spec, match = solve_spec(spec, model)
        return replace(make_variant(spec), budget=match)
    spec = dict(spec)
    name = str(spec.pop("method"))
    adapter = prolora.make_config(name, **spec)
    fields = {k: v for k, v in adapter.to_dict().items() if k not in ("method", "preset")}
    hidden = _fields_the_tag_hides(name, spec, adapter)
    vid = f"{adapter.tag()}_{short_hash([repr(sorted(fields.items()))])[:6]}" if hidden else adapter.tag()
    overrides = (f"method={name}",) + tuple(f"method.{k}={override_value(v)}" for k, v in sorted(spec.items()))
    return Variant(id=vid, short=f"r{adapter.r}", method={"name": name, **fields}, overrides=overrides)


def _fields_the_tag_hides(name: str, spec: dict[str, Any], adapter) -> list[str]:
    """The given fields whose value the config's tag does not show: dropping one of them changes the config but not
    the tag (``alpha``, ``stride_from``; a method's own tag shows its knobs, e.g. MoS's pool_rank)."""
    import prolora

    hidden = []
    for key in spec:
        try:
            other = prolora.make_config(name, **{k: v for k, v in spec.items() if k != key})
        except prolora.ConfigError:
            continue  # the others are not a config alone: the tag shows this one as part of them
        if other != adapter and other.tag() == adapter.tag():
            hidden.append(key)
    return hidden


ROW_KEYS = ("id", "label", "rank", "eval_only", "chat", "variants", "lr", "lr_sweep")


def build_rows(cfg: DictConfig) -> list[Row]:
    exp = cfg.experiment
    rows: list[Row] = []
    for spec in OmegaConf.to_container(exp.rows, resolve=True):  # type: ignore[union-attr]
        spec = dict(spec)
        eval_only = bool(spec.get("eval_only", False))
        variants = [] if eval_only else [make_variant(v, str(exp.model)) for v in spec.get("variants", [])]
        if not eval_only and not variants:
            raise ValueError(f"experiment {exp.name}: row {spec.get('id')!r} has no variants and is not eval_only")
        rows.append(Row(
            id=str(spec["id"]), label=str(spec.get("label", spec["id"])), rank=str(spec.get("rank", "-")),
            eval_only=eval_only, chat=bool(spec.get("chat", True)), variants=variants,
            lr=float(spec["lr"]) if spec.get("lr") is not None else None,
            lr_sweep=[float(x) for x in spec.get("lr_sweep") or []],
            extra={k: v for k, v in spec.items() if k not in ROW_KEYS}))
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"experiment {exp.name}: duplicate row ids {ids}")
    return rows


def short_hash(items: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(items).encode()).hexdigest()[:8]


def eval_dir_name(backend: str, tasks: Sequence[str], chat: bool, overrides: Sequence[str] = ()) -> str:
    """``eval_<backend>_<tasks>_<chat|nochat>[_<hash of the evaluation overrides>]``: an evaluation with other
    settings (a subset, another protocol, another dtype) never reuses this one's result."""
    name = f"eval_{backend}_{'-'.join(tasks)}_{'chat' if chat else 'nochat'}"
    return name + (f"_{short_hash(list(overrides))}" if overrides else "")


@dataclass
class Grid:
    experiment: str
    rows: list[Row]
    cells: list[Cell]  # unique cells, in plan order
    subrow_cells: int  # cells counted per (row, variant): a variant shared by two rows counts twice

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise KeyError(f"no cell {cell_id!r} in experiment {self.experiment}")


def build_grid(cfg: DictConfig, rows: Iterable[str] | None = None, datasets: Iterable[str] | None = None,
               seeds: Iterable[int] | None = None) -> Grid:
    """Expand the experiment into cells, optionally restricted to some rows / datasets / seeds."""
    exp = cfg.experiment
    all_rows = build_rows(cfg)
    feeds = experiment_datasets(exp)
    want_rows = set(rows) if rows else None
    want_ds = set(datasets) if datasets else None
    want_seeds = {int(s) for s in seeds} if seeds else None
    known_rows = {r.id for r in all_rows}
    if want_rows and want_rows - known_rows:
        raise ValueError(f"unknown rows {sorted(want_rows - known_rows)}; {exp.name} has {sorted(known_rows)}")
    if want_ds and want_ds - set(feeds):
        raise ValueError(f"unknown datasets {sorted(want_ds - set(feeds))}; {exp.name} trains on {list(feeds)}")
    runs = repo_path(cfg.runs_dir)
    backend = str(cfg.eval_backend)
    extra_train = [str(x) for x in exp.train_overrides]
    extra_eval = [str(x) for x in exp.eval_overrides]
    cells: dict[str, Cell] = {}
    subrow_cells = 0
    seeds_all = [int(s) for s in exp.seeds]
    for row in all_rows:
        if want_rows and row.id not in want_rows:
            continue
        if row.eval_only:
            seed = int(exp.eval_seed if exp.eval_seed is not None else seeds_all[0])
            if want_seeds and seed not in want_seeds:
                continue
            tasks = all_tasks(exp)
            cid = f"{row.id}__eval__seed{seed}"
            cells[cid] = Cell(
                id=cid, experiment=exp.name, rows=[row.id], variant=None, model=exp.model, dataset=None,
                tasks=tasks, lr=None, seed=seed, max_steps=0, eval_only=True, chat=row.chat, run_dir=None,
                eval_dir=runs / exp.model / "base" / eval_dir_name(backend, tasks, row.chat, extra_eval),
                train_overrides=[], eval_overrides=extra_eval)
            subrow_cells += 1
            continue
        row_train = extra_train + [str(x) for x in row.extra.get("train_overrides", [])]
        for variant in row.variants:
            for ds, tasks in feeds.items():
                if want_ds and ds not in want_ds:
                    continue
                for lr in row.train_lrs(ds, exp, bool(cfg.lr_sweep)):
                    for seed in seeds_all:
                        if want_seeds and seed not in want_seeds:
                            continue
                        subrow_cells += 1
                        cid = f"{variant.id}__{ds}__lr{fmt_lr(lr)}__seed{seed}"
                        if cid in cells:
                            cells[cid].rows.append(row.id)
                            continue
                        leaf = f"lr{fmt_lr(lr)}_steps{int(exp.max_steps)}_seed{seed}"
                        if row_train:
                            leaf += "_" + short_hash(row_train)
                        run_dir = runs / exp.model / ds / variant.id / leaf
                        cells[cid] = Cell(
                            id=cid, experiment=exp.name, rows=[row.id], variant=variant, model=exp.model,
                            dataset=ds, tasks=list(tasks), lr=float(lr), seed=seed,
                            max_steps=int(exp.max_steps), eval_only=False, chat=True, run_dir=run_dir,
                            eval_dir=run_dir / eval_dir_name(backend, tasks, True, extra_eval),
                            train_overrides=row_train, eval_overrides=extra_eval)
    return Grid(experiment=exp.name, rows=[r for r in all_rows if not want_rows or r.id in want_rows],
                cells=list(cells.values()), subrow_cells=subrow_cells)


def cells_dir(cfg: DictConfig, experiment: str) -> Path:
    return repo_path(cfg.results_dir) / experiment / "cells"


# --------------------------------------------------------------------------------------------- commands


def command(base: Sequence[str]) -> list[str]:
    """A configured command; a leading ``python`` is this interpreter."""
    cmd = [str(x) for x in base]
    if cmd and cmd[0] in ("python", "python3"):
        cmd[0] = sys.executable
    return cmd


def train_args(cfg: DictConfig, cell: Cell) -> list[str]:
    """The Hydra overrides ``train.py`` gets for a training cell."""
    assert cell.variant is not None and cell.run_dir is not None
    logger = str(cfg.train_logger)
    args = [f"model={cell.model}", *cell.variant.overrides, f"dataset={cell.dataset}", f"seed={cell.seed}",
            f"optim.lr={cell.lr!r}", f"trainer.max_steps={cell.max_steps}",
            f"experiment_name={cell.experiment}", f"output_dir={cell.run_dir}", f"logger={logger}"]
    if logger == "wandb":
        args.append(f"logger.wandb.group={cell.experiment}")
    args.append(f"data_dir={repo_path(cfg.data_dir)}")
    if cfg.get("resume_training", True):
        args.append("trainer.resume=true")  # a killed run continues from its last complete checkpoint
    return args + cell.train_overrides


def train_command(cfg: DictConfig, cell: Cell) -> list[str]:
    return command(cfg.commands.train) + train_args(cfg, cell)


def eval_command(cfg: DictConfig, cell: Cell) -> list[str]:
    if cell.eval_only:
        args = ["checkpoint=null", f"model={cell.model}"]
    else:
        assert cell.run_dir is not None
        args = [f"checkpoint={cell.run_dir / 'final'}"]
    args += [f"tasks=[{','.join(cell.tasks)}]", f"backend={cfg.eval_backend}",
             f"data_dir={repo_path(cfg.eval_data_dir)}", f"chat={'true' if cell.chat else 'false'}",
             f"output_dir={cell.eval_dir}", f"logger={cfg.train_logger}", f"experiment_name={cell.experiment}",
             *cell.eval_overrides]  # Hydra's run dir follows output_dir; W&B: the training's run, or group=experiment
    return command(cfg.commands.evaluate) + args
