"""Experiment grids of the paper (Tables 2-4, Figure 2, the demo): cells, plan, resumable runner, result files.

An experiment (``configs/experiment/<name>.yaml``) declares *rows* (a method with its rank settings; a
"4/8" or "16/32" row has two *variants* and the table keeps, per benchmark, the better one), the training
*datasets* with the benchmarks each feeds, *seeds*, and optionally an LR grid.  Expanding it gives *cells*:

* a training cell = (variant, dataset, lr, seed): ``train.py`` then ``recipes.evaluate`` on its checkpoint;
* an eval-only cell (Vanilla rows) = the base model scored once on every benchmark of the table.

Cells are identified by ``<variant>__<dataset>__lr<lr>__seed<seed>`` (``<row>__eval__seed<seed>`` for
eval-only ones).  A variant id is the method tag (``prolora_r8_u1_m7_n7``), so a variant used by two rows
(PRoLoRA r8 in the "8" and "4/8" rows) is one set of cells.

Where things go (all relative paths are taken from the repository root):

* ``<runs_dir>/<model>/<dataset>/<variant>/lr<lr>_steps<N>_seed<s>[_<hash of extra overrides>]/``: the
  training output (``final/``, ``metrics.jsonl``, ``train.stdout.log``, ``train.stderr.log``) and, below
  it, ``eval_<backend>_<tasks>_<chat|nochat>/eval.json``.  The path depends only on what the run is, so
  experiments share runs: Table 4's PRoLoRA cells reuse Table 2's r32 flan_v2 runs.
* ``<results_dir>/<experiment>/cells/<cell_id>.json``: one file per cell (written atomically), the
  record the tables are built from; ``<cell_id>.lock`` while a process works on it.

State of a cell: *done* (cell file with status done), *running* (lock of a live process, or a heartbeat
fresher than ``stale_lock_s``), *failed* (cell file with status failed: stage, return code, stderr
tail), *to do* otherwise.  Each step runs in its own subprocess, so a crash or OOM of one cell only
marks that cell failed; a killed grid resumes where it stopped (finished steps are never rerun:
``final/run.json`` marks a finished training, ``eval.json`` a finished evaluation).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipes import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
PAPER_REFERENCE = ROOT / "results" / "paper_reference.json"
CELL_SCHEMA = 1

# Paper column -> (benchmark task, header, metric key in eval.json's tasks.<task>): the evaluator
# (eval/driver.py write_results) writes {"scores": {task: headline}, "tasks": {task: {"score", <metric>: value,
# "n_examples", ...}}} with every metric already in percent.
COLUMNS: dict[str, tuple[str, str, str]] = {
    "mmlu_em": ("mmlu", "MMLU EM", "accuracy"),
    "bbh_em": ("bbh", "BBH EM", "exact_match"),
    "gsm_em": ("gsm", "GSM EM", "exact_match"),
    "tydiqa_f1": ("tydiqa", "TyDiQA F1", "f1"),
    "tydiqa_em": ("tydiqa", "TyDiQA EM", "exact_match"),
    "humaneval_p1": ("humaneval", "HumanEval P@1", "pass@1"),
    "demo_em": ("demo", "Demo EM", "exact_match"),
}

EXPERIMENT_DEFAULTS: dict[str, Any] = dict(
    name="", title="", model="llama2_7b", seeds=[1, 2, 3], eval_seed=None, max_steps=10_000, lr_grid=None,
    layout="table", loss_curves=False, datasets={}, columns=[], avg=False, budget=None,
    eval_gpu_hours={}, train_overrides=[], eval_overrides=[], rows=[],
)


# --------------------------------------------------------------------------------------------- config


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import recipes.schema  # noqa: F401  (structured configs + resolvers)

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (a --slurm cell job): same config dir
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The runner's config (``configs/reproduce.yaml`` + ``experiment=<name>``) with defaults filled in."""
    return normalize(_compose("reproduce", overrides))


def normalize(cfg: DictConfig) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(cfg, False)
    cfg.experiment = OmegaConf.merge(OmegaConf.create(EXPERIMENT_DEFAULTS), cfg.experiment)
    return cfg


def repo_path(p: str | os.PathLike) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else ROOT / p


def fmt_lr(lr: float) -> str:
    return f"{float(lr):g}"


@functools.cache
def dataset_lr(name: str) -> float:
    """The paper's LR for a training dataset (``configs/dataset/<name>.yaml``: ``lr``)."""
    return float(OmegaConf.load(Path(CONFIG_DIR) / "dataset" / f"{name}.yaml")["lr"])


@functools.cache
def model_info(name: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{name}.yaml"))  # type: ignore


# --------------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Variant:
    id: str  # the method tag: lora_r2, prolora_r8_u1_m7_n7
    short: str  # marks the chosen variant in a better-of row: r4, r8
    method: dict[str, Any]  # the resolved method config (schema fields)
    overrides: tuple[str, ...]  # method=... method.r=... for train.py


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
    rows: list[str]
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

    @property
    def row_label(self) -> str:
        return self.rows[0]

    def as_dict(self) -> dict[str, Any]:
        return dict(
            cell_id=self.id, experiment=self.experiment, rows=self.rows,
            variant=self.variant.id if self.variant else None,
            variant_short=self.variant.short if self.variant else None,
            method=self.variant.method if self.variant else None, model=self.model, dataset=self.dataset,
            eval_tasks=self.tasks, lr=self.lr, seed=self.seed, max_steps=None if self.eval_only else self.max_steps,
            eval_only=self.eval_only, chat=self.chat)


@functools.cache
def _base_train_config(model: str, name: str) -> DictConfig:
    return _compose("config", [f"model={model}", f"method={name}"])


@functools.cache
def _resolve_method(model: str, name: str, items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The method config train.py would get from ``model=<model> method=<name> method.<k>=<v> ...``."""
    cfg = OmegaConf.create(OmegaConf.to_container(_base_train_config(model, name), resolve=False))
    for k, v in items:
        OmegaConf.update(cfg, f"method.{k}", v, merge=False)
    return OmegaConf.to_container(cfg.method, resolve=True)  # type: ignore[return-value]


def _ov(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def make_variant(model: str, spec: dict[str, Any]) -> Variant:
    from recipes.schema import method_tag

    spec = dict(spec)
    name = spec.pop("method")
    items = tuple(sorted(spec.items()))
    method = _resolve_method(model, name, items)
    overrides = (f"method={name}",) + tuple(f"method.{k}={_ov(v)}" for k, v in items)
    return Variant(id=method_tag(method), short=f"r{method['r']}", method=method, overrides=overrides)


def build_rows(cfg: DictConfig) -> list[Row]:
    exp = cfg.experiment
    rows: list[Row] = []
    for spec in OmegaConf.to_container(exp.rows, resolve=True):  # type: ignore[union-attr]
        spec = dict(spec)
        eval_only = bool(spec.get("eval_only", False))
        variants = [] if eval_only else [make_variant(exp.model, v) for v in spec.get("variants", [])]
        if not eval_only and not variants:
            raise ValueError(f"experiment {exp.name}: row {spec.get('id')!r} has no variants and is not eval_only")
        rows.append(Row(
            id=str(spec["id"]), label=str(spec.get("label", spec["id"])), rank=str(spec.get("rank", "-")),
            eval_only=eval_only, chat=bool(spec.get("chat", True)), variants=variants,
            lr=float(spec["lr"]) if spec.get("lr") is not None else None,
            lr_sweep=[float(x) for x in spec.get("lr_sweep") or []],
            extra={k: v for k, v in spec.items()
                   if k not in ("id", "label", "rank", "eval_only", "chat", "variants", "lr", "lr_sweep")}))
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"experiment {exp.name}: duplicate row ids {ids}")
    return rows


def _hash(items: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(items).encode()).hexdigest()[:8]


def _eval_dir_name(backend: str, tasks: Sequence[str], chat: bool) -> str:
    return f"eval_{backend}_{'-'.join(tasks)}_{'chat' if chat else 'nochat'}"


def all_tasks(exp: DictConfig) -> list[str]:
    tasks: list[str] = []
    for ts in exp.datasets.values():
        for t in ts:
            if t not in tasks:
                tasks.append(str(t))
    return tasks


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
    want_rows = set(rows) if rows else None
    want_ds = set(datasets) if datasets else None
    want_seeds = {int(s) for s in seeds} if seeds else None
    known_rows = {r.id for r in all_rows}
    if want_rows and want_rows - known_rows:
        raise ValueError(f"unknown rows {sorted(want_rows - known_rows)}; {exp.name} has {sorted(known_rows)}")
    if want_ds and want_ds - set(exp.datasets):
        raise ValueError(f"unknown datasets {sorted(want_ds - set(exp.datasets))}; "
                         f"{exp.name} trains on {list(exp.datasets)}")
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
                eval_dir=runs / exp.model / "base" / _eval_dir_name(backend, tasks, row.chat),
                train_overrides=[], eval_overrides=extra_eval)
            subrow_cells += 1
            continue
        row_train = extra_train + [str(x) for x in row.extra.get("train_overrides", [])]
        for variant in row.variants:
            for ds, tasks in exp.datasets.items():
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
                            leaf += "_" + _hash(row_train)
                        run_dir = runs / exp.model / ds / variant.id / leaf
                        cells[cid] = Cell(
                            id=cid, experiment=exp.name, rows=[row.id], variant=variant, model=exp.model,
                            dataset=ds, tasks=[str(t) for t in tasks], lr=float(lr), seed=seed,
                            max_steps=int(exp.max_steps), eval_only=False, chat=True, run_dir=run_dir,
                            eval_dir=run_dir / _eval_dir_name(backend, tasks, True),
                            train_overrides=row_train, eval_overrides=extra_eval)
    return Grid(experiment=exp.name, rows=[r for r in all_rows if not want_rows or r.id in want_rows],
                cells=list(cells.values()), subrow_cells=subrow_cells)


# --------------------------------------------------------------------------------------------- commands


def _command(base: Sequence[str]) -> list[str]:
    cmd = [str(x) for x in base]
    if cmd and cmd[0] in ("python", "python3"):
        cmd[0] = sys.executable
    return cmd


def train_command(cfg: DictConfig, cell: Cell) -> list[str]:
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
    args += cell.train_overrides
    return _command(cfg.commands.train) + args


def eval_command(cfg: DictConfig, cell: Cell) -> list[str]:
    if cell.eval_only:
        args = ["checkpoint=null", f"model={cell.model}"]
    else:
        assert cell.run_dir is not None
        args = [f"checkpoint={cell.run_dir / 'final'}"]
    args += [f"tasks=[{','.join(cell.tasks)}]", f"backend={cfg.eval_backend}",
             f"data_dir={repo_path(cfg.eval_data_dir)}", f"chat={'true' if cell.chat else 'false'}",
             f"output_dir={cell.eval_dir}", *cell.eval_overrides]  # Hydra's run dir follows output_dir
    return _command(cfg.commands.evaluate) + args


# --------------------------------------------------------------------------------------------- counting

LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _shapes(model: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(layers, {module: (in, out)}) from the published configs in ``prolora.models``."""
    from prolora.models import LLAMA2_CONFIGS, TINY_CONFIG

    c = TINY_CONFIG if model in ("tiny", "tiny_pretrained") else LLAMA2_CONFIGS[model]
    h, i = c["hidden_size"], c["intermediate_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    return c["num_hidden_layers"], {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                                    "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def analytic_count(model: str, method: dict[str, Any], paper_formula: bool = False) -> int | None:
    """Trainable parameters from the layer shapes and SPEC section 3's formulas (the counter's cross-check).
    ``paper_formula``: chunks of h/m and o/n as the paper writes them instead of the real ceil(h/m)."""
    try:
        layers, shapes = _shapes(model)
    except (KeyError, ImportError):
        return None
    name, r = method["name"], int(method["r"])
    targets = method.get("target_modules") or list(LLAMA_MODULES)
    mods = [shapes[t] for t in targets]
    if name == "lora":
        return layers * sum(r * (i + o) for i, o in mods)
    if name == "vera":  # lambda_d (r) + lambda_b (o) per module; frozen A, B not counted
        return layers * sum(r + o for _, o in mods)
    if name == "tied_lora":  # one A (r x d), one B per q/k/v shared by all layers; per layer u (r), v (sum o)
        d = mods[0][0]
        outs = sum(o for _, o in mods)
        return r * d + r * outs + layers * (r + outs)
    if method.get("u") is not None and method.get("m") is not None:
        u, m = int(method["u"]), int(method["m"])
        n = int(method.get("n") or m)
        s = r - u
        if (method.get("share_dim") or "hidden") == "hidden":
            if paper_formula:
                return round(layers * sum(u * (i + o) + Fraction(i, m) * s + Fraction(o, n) * s for i, o in mods))
            return layers * sum(u * (i + o) + math.ceil(i / m) * s + math.ceil(o / n) * s for i, o in mods)
        return layers * sum(u * (i + o) + math.ceil(s / m) * i + math.ceil(s / n) * o for i, o in mods)
    return None


AUTHORITATIVE_ANALYTIC = {"lora", "vera", "tied_lora", "clora", "rolora", "prolora", "prolora_nr", "prolora_ni",
                          "share_hidden_rotate_hidden"}
_COUNTER_ERROR: list[str] = []


def _meta_count(model: str, config: Any) -> int:
    """``prolora.counting.count_for`` on the meta device.  For LLaMA2 it counts 1- and 2-layer skeletons
    of the real shapes and extrapolates to the model's depth (every method's count is affine in depth:
    per-layer adapter tensors + model-level shared ones, e.g. Tied LoRA's A/B), which equals counting
    the full model (tests check it) at a fraction of the time the plan would otherwise spend."""
    import torch

    from prolora.counting import count_for
    from prolora.models import LLAMA2_CONFIGS, llama2_config

    if model not in LLAMA2_CONFIGS:
        return int(count_for(model, config))
    from transformers import LlamaForCausalLM

    counts = []
    for depth in (1, 2):
        c = llama2_config(model)
        c.num_hidden_layers = depth
        with torch.device("meta"):
            counts.append(int(count_for(LlamaForCausalLM(c), config)))
    layers = int(LLAMA2_CONFIGS[model]["num_hidden_layers"])
    return counts[0] + (layers - 1) * (counts[1] - counts[0])


def library_config(method: dict[str, Any]) -> Any:
    from prolora import make_config

    return make_config(**{k: v for k, v in method.items() if v is not None})


@functools.cache
def _count(model: str, method_json: str) -> tuple[int | None, str, int | None]:
    method = json.loads(method_json)
    analytic = analytic_count(model, method)
    try:
        return _meta_count(model, library_config(method)), "counter", analytic
    except Exception as e:  # the library may not have the counter yet, or may reject a variant
        if not _COUNTER_ERROR:
            _COUNTER_ERROR.append(f"{type(e).__name__}: {e}")
        return analytic, "analytic", analytic


def count_params(model: str, method: dict[str, Any]) -> tuple[int | None, str, bool]:
    """(count, source, consistent): ``prolora.counting.count_for`` on the meta device, else the analytic
    formula; ``consistent`` is False when the two disagree for a method whose formula is exact."""
    n, source, analytic = _count(model, json.dumps(method, sort_keys=True))
    consistent = not (source == "counter" and analytic is not None and method["name"] in AUTHORITATIVE_ANALYTIC
                      and analytic != n)
    return n, source, consistent


def counter_error() -> str | None:
    return _COUNTER_ERROR[0] if _COUNTER_ERROR else None


# --------------------------------------------------------------------------------------------- paper


@functools.cache
def _paper_reference(path: str) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def paper_reference(path: str | os.PathLike | None = None) -> dict[str, Any]:
    return _paper_reference(str(path or PAPER_REFERENCE))


def paper_table(experiment: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
    return paper_reference(path).get(experiment, {})


def parse_millions(text: str | None) -> float | None:
    if not text or text in ("-", "—"):
        return None
    return float(str(text).rstrip("M"))


def params_check(count: int | None, printed: str | None, paper_formula: int | None = None) -> str:
    """'ok' when the count rounds to the paper's printed value (x.xxM); 'ok (paper's h/m formula ...)'
    when only the paper's fractional-chunk count does; else a MISMATCH flag."""
    want = parse_millions(printed)
    if want is None or count is None:
        return ""
    if round(count / 1e6, 2) == want:
        return "ok"
    if paper_formula is not None and round(paper_formula / 1e6, 2) == want:
        return (f"ok with the paper's h/m formula ({paper_formula:,}); ceil(h/m) chunks add "
                f"{count - paper_formula:,}")
    return f"MISMATCH: paper prints {printed}"


# --------------------------------------------------------------------------------------------- state


def cells_dir(cfg: DictConfig, experiment: str) -> Path:
    return repo_path(cfg.results_dir) / experiment / "cells"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped) is not alive
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def lock_alive(lock: dict[str, Any] | None, stale_s: float) -> bool:
    if not lock:
        return False
    if lock.get("host") == socket.gethostname():
        return any(_pid_alive(lock.get(k)) for k in ("pid", "child_pid"))
    return time.time() - float(lock.get("heartbeat", 0)) < stale_s


def cell_state(cfg: DictConfig, cell: Cell) -> tuple[str, str]:
    """(state, detail): state in done | running | failed | to do."""
    d = cells_dir(cfg, cell.experiment)
    lock = read_json(d / f"{cell.id}.lock")
    if lock_alive(lock, float(cfg.stale_lock_s)):
        return "running", f"pid {lock.get('pid')} on {lock.get('host')}, {lock.get('stage', '')}"
    rec = read_json(d / f"{cell.id}.json")
    if rec and rec.get("status") == "done":
        return "done", ""
    if rec and rec.get("status") == "failed":
        f = rec.get("failure") or {}
        return "failed", f"{f.get('stage')} rc={f.get('returncode')}"
    trained = cell.eval_only or (cell.run_dir is not None and (cell.run_dir / "final" / "run.json").exists())
    evaluated = (cell.eval_dir / "eval.json").exists()
    detail = "" if cell.eval_only else ("trained" if trained else "")
    if evaluated:
        detail = "trained+evaluated, to record"
    return "to do", detail


def gpu_hours(cfg: DictConfig, cell: Cell) -> float:
    exp = cfg.experiment
    per_task = exp.eval_gpu_hours or {}
    ev = sum(float(per_task.get(t, 0.0)) for t in cell.tasks)
    if cell.eval_only:
        return ev
    return float(model_info(cell.model).get("gpu_hours_per_1k_steps", 0.0)) * cell.max_steps / 1000 + ev


# --------------------------------------------------------------------------------------------- eval.json


def eval_to_columns(ev: dict[str, Any] | None, columns: Iterable[str]) -> dict[str, float]:
    """THE mapping eval.json -> the paper's columns (MMLU EM, BBH EM, GSM EM, TyDiQA F1, TyDiQA EM,
    HumanEval P@1; Demo EM), in percent as the evaluator writes them.  A column whose task or metric is
    absent (not evaluated, or the task failed) is left out, never filled in."""
    out: dict[str, float] = {}
    tasks = (ev or {}).get("tasks") or {}
    for col in columns:
        task, _, key = COLUMNS[col]
        value = (tasks.get(task) or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[col] = float(value)
    return out


# --------------------------------------------------------------------------------------------- plan


def _fmt_int(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def plan_text(cfg: DictConfig, grid: Grid) -> str:
    exp = cfg.experiment
    ref = paper_table(exp.name)
    ref_rows = ref.get("rows", {})
    lines: list[str] = []
    n_train = sum(1 for c in grid.cells if not c.eval_only)
    n_eval = len(grid.cells) - n_train
    trained_rows = [r for r in grid.rows if not r.eval_only]
    subrows = sum(len(r.variants) for r in trained_rows)
    variants = {v.id for r in trained_rows for v in r.variants}
    lines.append(f"Experiment {exp.name}: {exp.title}")
    lines.append(f"model {exp.model}, {exp.max_steps} steps, seeds {list(exp.seeds)}, datasets "
                 + ", ".join(f"{d} -> {'+'.join(t)}" for d, t in exp.datasets.items())
                 + (f", LR grid {[fmt_lr(x) for x in exp.lr_grid]}" if exp.lr_grid else "")
                 + (", LR sweep on" if cfg.lr_sweep else ""))
    lines.append(f"Rows: {len(grid.rows)} ({len(trained_rows)} trained, {len(grid.rows) - len(trained_rows)} "
                 f"eval-only); sub-rows (a 4/8 or 16/32 row counts each of its variants): {subrows}; "
                 f"distinct trained variants: {len(variants)}")
    lines.append(f"Cells: {len(grid.cells)} = {n_train} training + {n_eval} eval-only; counted per sub-row "
                 f"(a variant shared by two rows counted in each): {grid.subrow_cells - n_eval} training + {n_eval} "
                 f"eval-only")
    lines.append("")
    # ---- parameter counts
    budget_n = None
    if exp.budget:
        bv = make_variant(exp.model, OmegaConf.to_container(exp.budget))  # type: ignore[arg-type]
        budget_n = count_params(exp.model, bv.method)[0]
        lines.append(f"Budget: {bv.id} = {_fmt_int(budget_n)}")
    lines.append("Param. (trainable parameters; counter: prolora.counting.count_for on the meta device)")
    head = f"  {'row':<18} {'rank':<6} {'variant':<34} {'params':>12}  {'paper':>7}  check"
    lines.append(head)
    flagged = 0
    for row in grid.rows:
        if row.eval_only:
            continue
        pr = ref_rows.get(row.id, {})
        for v in row.variants:
            n, source, consistent = count_params(exp.model, v.method)
            check = params_check(n, pr.get("params"), analytic_count(exp.model, v.method, paper_formula=True))
            if check.startswith("MISMATCH"):
                flagged += 1
                if pr.get("params_note"):
                    check += f" ({pr['params_note']})"
            if budget_n and n:
                check = (check + "; " if check else "") + f"{100 * (n / budget_n - 1):+.3f}% vs budget"
            if source != "counter":
                check += " [analytic formula: counter unavailable]"
            if not consistent:
                check += f" [counter != formula {_fmt_int(analytic_count(exp.model, v.method))}]"
            lines.append(f"  {row.id:<18} {row.rank:<6} {v.id:<34} {_fmt_int(n):>12}  "
                         f"{pr.get('params') or '-':>7}  {check}")
    if ref.get("budget_note"):
        lines.append(f"  note: {ref['budget_note']}")
    if counter_error():
        lines.append(f"  (prolora.counting unavailable, analytic counts shown: {counter_error()})")
    lines.append(f"  {flagged} printed value(s) differ from the count")
    lines.append("")
    # ---- cells
    lines.append(f"  {'state':<8} {'cell':<52} {'rows':<26} {'params':>12} {'GPU h':>6}  detail")
    states: dict[str, int] = {}
    total_h = remaining_h = 0.0
    for c in grid.cells:
        state, detail = cell_state(cfg, c)
        states[state] = states.get(state, 0) + 1
        h = gpu_hours(cfg, c)
        total_h += h
        if state != "done":
            remaining_h += h
        n = count_params(c.model, c.variant.method)[0] if c.variant else None
        lines.append(f"  {state:<8} {c.id:<52} {','.join(c.rows):<26.26} {_fmt_int(n) if c.variant else '-':>12} "
                     f"{h:>6.2f}  {detail}")
    lines.append("")
    lines.append("Summary: " + ", ".join(f"{s} {states.get(s, 0)}" for s in ("done", "running", "failed", "to do"))
                 + f"; GPU hours (rough, A100): total {total_h:.1f}, remaining {remaining_h:.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- runner


def git_commit() -> dict[str, Any]:
    from recipes import git_commit as commit

    sha = commit()
    return {"commit": sha.removesuffix("-dirty") if sha else None, "dirty": bool(sha and sha.endswith("-dirty"))}


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _loss_curve(metrics: Path) -> list[list[float]]:
    curve = []
    try:
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("loss") is not None and rec.get("step") is not None:
                curve.append([rec["step"], rec["loss"]])
    except OSError:
        pass
    return curve


class Interrupted(Exception):
    pass


class Runner:
    """Runs the cells of a grid that are not done, one subprocess per step, recording each cell."""

    def __init__(self, cfg: DictConfig, grid: Grid, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.grid = grid
        self.log = log
        self.dir = cells_dir(cfg, grid.experiment)
        self._child: subprocess.Popen | None = None
        self._lock_path: Path | None = None
        self._lock: dict[str, Any] = {}
        self._stop = threading.Event()

    # -- locks
    def _write_lock(self) -> None:
        if self._lock_path is not None:
            self._lock["heartbeat"] = time.time()
            write_json_atomic(self._lock_path, self._lock)

    def _acquire(self, cell: Cell) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{cell.id}.lock"
        self._lock = {"pid": os.getpid(), "child_pid": None, "host": socket.gethostname(),
                      "started": time.time(), "heartbeat": time.time(), "stage": "starting"}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if lock_alive(read_json(path), float(self.cfg.stale_lock_s)):
                    return False
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._lock, f)
            self._lock_path = path
            return True
        return False

    def _release(self) -> None:
        if self._lock_path is not None:
            self._lock_path.unlink(missing_ok=True)
            self._lock_path = None

    def _heartbeat(self) -> None:
        while not self._stop.wait(30):
            try:
                self._write_lock()
            except OSError:
                pass

    # -- steps
    def _step(self, stage: str, cmd: list[str], log_dir: Path) -> tuple[int, float, Path]:
        log_dir.mkdir(parents=True, exist_ok=True)
        out, err = log_dir / f"{stage}.stdout.log", log_dir / f"{stage}.stderr.log"
        self._lock["stage"] = stage
        self.log(f"    {stage}: {' '.join(cmd)}")
        t0 = time.time()
        with open(out, "ab") as fo, open(err, "ab") as fe:
            fe.write(f"\n==== {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
            fe.flush()
            self._child = subprocess.Popen(cmd, cwd=ROOT, stdout=fo, stderr=fe)
            self._lock["child_pid"] = self._child.pid
            self._write_lock()
            try:
                rc = self._child.wait()
            finally:
                self._child = None
                self._lock["child_pid"] = None
        return rc, time.time() - t0, err

    def _terminate_child(self) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()

    def _record(self, cell: Cell, status: str, timings: dict[str, float], failure: dict[str, Any] | None,
                commands: dict[str, list[str]]) -> dict[str, Any]:
        run_json = read_json(cell.run_dir / "final" / "run.json") if cell.run_dir else None
        ev = read_json(cell.eval_dir / "eval.json")
        n = count_params(cell.model, cell.variant.method)[0] if cell.variant else None
        metrics_path = cell.run_dir / "metrics.jsonl" if cell.run_dir else None
        train_overrides = train_command(self.cfg, cell)[len(_command(self.cfg.commands.train)):] if cell.variant \
            else []
        try:
            resolved = OmegaConf.to_container(_compose("config", train_overrides), resolve=True) if cell.variant \
                else None
        except Exception as e:  # the recipe's config may reject the overrides: keep the record anyway
            resolved = {"error": f"{type(e).__name__}: {e}"}
        rec: dict[str, Any] = {
            "schema": CELL_SCHEMA, "status": status, **cell.as_dict(),
            "metrics": eval_to_columns(ev, COLUMNS) if ev else {},
            "trainable_params": n,
            "trainable_params_run": (run_json or {}).get("trainable_params"),
            "train": {k: (run_json or {}).get(k) for k in
                      ("wall_time_s", "tokens_per_s", "initial_loss", "final_loss", "steps")} if run_json else None,
            "loss_curve": _loss_curve(metrics_path) if metrics_path else [],
            "eval": ev,
            "timings": {**timings, "recorded_at": datetime.now(UTC).isoformat()},
            "git": git_commit(),
            "run_git_commit": (run_json or {}).get("git_commit"),
            "paths": {
                "run_dir": str(cell.run_dir) if cell.run_dir else None,
                "checkpoint": str(cell.run_dir / "final") if cell.run_dir else None,
                "metrics_jsonl": str(metrics_path) if metrics_path else None,
                "eval_dir": str(cell.eval_dir), "eval_json": str(cell.eval_dir / "eval.json")},
            "commands": commands,
            "config": {"train": resolved, "run": (run_json or {}).get("config"),
                       "experiment": OmegaConf.to_container(self.cfg.experiment, resolve=True)},
        }
        if failure:
            rec["failure"] = failure
        write_json_atomic(self.dir / f"{cell.id}.json", rec)
        return rec

    def _stage(self, cell: Cell, stage: str, command: list[str], cwd: Path, marker: Path,
               timings: dict[str, float], tail: int) -> dict | None:
        """Run one step of a cell unless its ``marker`` file shows it finished; the failure record or None."""
        if marker.exists():
            self.log(f"    {stage}: already done ({marker.parent.name}/{marker.name}), reusing")
            return None
        rc, secs, err = self._step(stage, command, cwd)
        timings[f"{stage}_s"] = round(secs, 3)
        if rc == 0 and marker.exists():
            return None
        why = f"exit code {rc}" if rc != 0 else f"exit code 0 but no {marker.name}"
        self.log(f"    {stage} FAILED ({why})")
        return {"stage": stage, "returncode": rc, "reason": why, "stderr_tail": _tail(err, tail),
                "stderr_log": str(err)}

    def run_cell(self, cell: Cell) -> str:
        """Run what is missing of one cell; returns done | failed | running (someone else has it)."""
        if not self._acquire(cell):
            return "running"
        self._stop.clear()
        hb = threading.Thread(target=self._heartbeat, daemon=True)
        hb.start()
        timings: dict[str, float] = {}
        commands: dict[str, list[str]] = {}
        tail = int(self.cfg.stderr_tail_chars)
        try:
            if not cell.eval_only:
                assert cell.run_dir is not None
                commands["train"] = train_command(self.cfg, cell)
                failure = self._stage(cell, "train", commands["train"], cell.run_dir,
                                      cell.run_dir / "final" / "run.json", timings, tail)
                if failure:
                    return self._record(cell, "failed", timings, failure, commands)["status"]
            commands["evaluate"] = eval_command(self.cfg, cell)
            failure = self._stage(cell, "eval", commands["evaluate"], cell.eval_dir, cell.eval_dir / "eval.json",
                                  timings, tail)
            if failure:
                return self._record(cell, "failed", timings, failure, commands)["status"]
            return self._record(cell, "done", timings, None, commands)["status"]
        except (KeyboardInterrupt, Interrupted):
            self._terminate_child()
            raise
        finally:
            self._stop.set()
            self._release()

    def run(self, cells: Sequence[Cell] | None = None, max_cells: int | None = None,
            dry_run: bool = False) -> dict[str, list[str]]:
        cells = list(self.grid.cells if cells is None else cells)
        outcome: dict[str, list[str]] = {"done": [], "failed": [], "skipped": [], "running": []}
        ran = 0

        def on_term(signum, frame):  # noqa: ARG001
            raise Interrupted(f"signal {signum}")

        old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
            else None
        try:
            for i, cell in enumerate(cells, 1):
                state, _ = cell_state(self.cfg, cell)
                if state == "done" or (state == "failed" and not self.cfg.retry_failed):
                    outcome["skipped"].append(cell.id)
                    continue
                if state == "running":
                    self.log(f"[{i}/{len(cells)}] {cell.id}: running elsewhere, skipped")
                    outcome["running"].append(cell.id)
                    continue
                if max_cells is not None and ran >= max_cells:
                    break
                ran += 1
                self.log(f"[{i}/{len(cells)}] {cell.id} ({state}{', retry' if state == 'failed' else ''})")
                if dry_run:
                    if not cell.eval_only:
                        self.log("    train: " + " ".join(train_command(self.cfg, cell)))
                    self.log("    eval:  " + " ".join(eval_command(self.cfg, cell)))
                    continue
                status = self.run_cell(cell)
                outcome.setdefault(status, []).append(cell.id)
                self.log(f"    -> {status}")
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return outcome
