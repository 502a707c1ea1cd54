"""``--plan``: every cell with its state, each variant's parameter count beside the paper's printed one, and
a rough GPU-hour estimate.  Also the paper's reference numbers (``results/paper_reference.json``: THE
paper's numbers, labelled as such) and the count checks the tables reuse.

Counts come from the library's one counter (:func:`prolora.count_for`, the real adapter layers attached on
the meta device); :func:`prolora.paper_count` gives the paper's own h/m formula for the "ok with the paper's
formula" check.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipes import REPO
from recipes.paper.facts import fmt_int, fmt_lr
from recipes.paper.grid import Cell, Grid, experiment_datasets, make_variant, model_info
from recipes.paper.state import cell_state
from recipes.run_config import counting_ref

PAPER_REFERENCE = REPO / "results" / "paper_reference.json"


# --------------------------------------------------------------------------------------------- counts


@functools.cache
def _count(model: str, method_json: str) -> tuple[int, int | float]:
    import prolora

    config = prolora.make_config(**json.loads(method_json))
    ref = counting_ref(model_info(model))
    return prolora.count_for(ref, config), float(prolora.paper_count(ref, config))


def count_params(model: str, method: dict[str, Any]) -> int:
    """Trainable parameters of ``method`` (a variant's resolved method dict) on ``model``."""
    return _count(model, json.dumps(method, sort_keys=True))[0]


def paper_formula_count(model: str, method: dict[str, Any]) -> float:
    """The same with the paper's h/m chunks (equal to :func:`count_params` outside the PRoLoRA family)."""
    return _count(model, json.dumps(method, sort_keys=True))[1]


def parse_millions(text: str | None) -> float | None:
    if not text or text in ("-", "—"):
        return None
    return float(str(text).rstrip("M"))


def params_check(count: int | None, printed: str | None, paper_formula: float | None = None) -> str:
    """'ok' when the count rounds to the paper's printed value (x.xxM); 'ok with the paper's h/m formula ...'
    when only the paper's fractional-chunk count does; else a MISMATCH flag."""
    want = parse_millions(printed)
    if want is None or count is None:
        return ""
    if round(count / 1e6, 2) == want:
        return "ok"
    if paper_formula is not None and round(paper_formula / 1e6, 2) == want:
        return (f"ok with the paper's h/m formula ({fmt_int(paper_formula)}); ceil(h/m) chunks add "
                f"{fmt_int(count - paper_formula)}")
    return f"MISMATCH: paper prints {printed}"


# --------------------------------------------------------------------------------------------- paper


@functools.cache
def _paper_reference(path: str) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def paper_table(experiment: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The paper's numbers for one experiment (empty for the demo)."""
    return _paper_reference(str(path or PAPER_REFERENCE)).get(experiment, {})


# --------------------------------------------------------------------------------------------- plan


def gpu_hours(cfg: DictConfig, cell: Cell) -> float:
    exp = cfg.experiment
    per_task = exp.eval_gpu_hours or {}
    ev = sum(float(per_task.get(t, 0.0)) for t in cell.tasks)
    if cell.eval_only:
        return ev
    return float(model_info(cell.model).get("gpu_hours_per_1k_steps", 0.0)) * cell.max_steps / 1000 + ev


def _count_lines(cfg: DictConfig, grid: Grid) -> list[str]:
    exp = cfg.experiment
    ref_rows = paper_table(exp.name).get("rows", {})
    lines: list[str] = []
    budget_n = None
    if exp.budget:
        bv = make_variant(OmegaConf.to_container(exp.budget))  # type: ignore[arg-type]
        budget_n = count_params(exp.model, bv.method)
        lines.append(f"Budget: {bv.id} = {fmt_int(budget_n)}")
    lines.append("Param. (trainable parameters; counter: prolora.count_for on the meta device)")
    lines.append(f"  {'row':<18} {'rank':<6} {'variant':<34} {'params':>12}  {'paper':>7}  check")
    flagged = 0
    for row in grid.rows:
        if row.eval_only:
            continue
        pr = ref_rows.get(row.id, {})
        for v in row.variants:
            n = count_params(exp.model, v.method)
            check = params_check(n, pr.get("params"), paper_formula_count(exp.model, v.method))
            if check.startswith("MISMATCH"):
                flagged += 1
                if pr.get("params_note"):
                    check += f" ({pr['params_note']})"
            target, what = (v.budget.target, v.budget.label) if v.budget else (budget_n, "budget")
            if target:
                check = (check + "; " if check else "") + f"{100 * (n / target - 1):+.3f}% vs {what}"
            lines.append(f"  {row.id:<18} {row.rank:<6} {v.id:<34} {fmt_int(n):>12}  "
                         f"{pr.get('params') or '-':>7}  {check}")
    if paper_table(exp.name).get("budget_note"):
        lines.append(f"  note: {paper_table(exp.name)['budget_note']}")
    lines.append(f"  {flagged} printed value(s) differ from the count")
    return lines


def budget_lines(cfg: DictConfig, grid: Grid) -> list[str]:
    """The variants given a ``budget:``, one line per method with each budget's solved config side by side: the
    knob the solver turned, the exact count and its share of the budget (exact / under / capped)."""
    rows = [r for r in grid.rows if not r.eval_only and any(v.budget for v in r.variants)]
    if not rows:
        return []
    budgets: dict[str, int] = {}
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        for v in row.variants:
            if v.budget is None:
                continue
            b = v.budget
            budgets.setdefault(b.label, b.target)
            table.setdefault(row.label, {})[b.label] = (
                f"{v.id:<22} {f'{b.knob}={b.value}':<15} {fmt_int(b.count):>11} {100 * b.count / b.target:6.1f}% "
                f"{b.status:<6}")
    cols = sorted(budgets, key=budgets.get)
    width = len(next(iter(next(iter(table.values())).values())))
    lines = [f"Matched budgets (prolora.solve_budget on {cfg.experiment.model}'s shapes; knob = the field it turned):",
             "  " + f"{'method':<14}" + "  ".join(f"{f'{c} = {fmt_int(budgets[c])}':<{width}}" for c in cols)]
    for label, cells in table.items():
        lines.append("  " + f"{label:<14}" + "  ".join(f"{cells.get(c, '-'):<{width}}" for c in cols))
    return lines + [""]


PROTOCOLS = {"authors": "the PRoLoRA authors' scripts: full sets, their MMLU prompt, TyDi QA exemplars from the "
                         "train file",
             "upstream": "open-instruct's own scripts: full sets",
             "quick": "SUBSETS (GSM 200, BBH 40/task, TyDi QA 100/language): not comparable to the paper"}


def eval_line(cfg: DictConfig) -> str:
    """How the cells are evaluated: backend, protocol and the experiment's evaluation overrides."""
    overrides = [str(x) for x in cfg.experiment.eval_overrides]
    protocol = next((o.split("=", 1)[1] for o in overrides if o.startswith("protocol=")), "authors")
    return (f"Evaluation: recipes.evaluate backend={cfg.eval_backend} {' '.join(overrides)}; protocol {protocol}: "
            f"{PROTOCOLS.get(protocol, 'custom')}")


def plan_text(cfg: DictConfig, grid: Grid) -> str:
    exp = cfg.experiment
    n_train = sum(1 for c in grid.cells if not c.eval_only)
    n_eval = len(grid.cells) - n_train
    trained_rows = [r for r in grid.rows if not r.eval_only]
    subrows = sum(len(r.variants) for r in trained_rows)
    variants = {v.id for r in trained_rows for v in r.variants}
    lines = [f"Experiment {exp.name}: {exp.title}",
             f"model {exp.model}, {exp.max_steps} steps, seeds {list(exp.seeds)}, datasets "
             + ", ".join(f"{d} -> {'+'.join(t)}" for d, t in experiment_datasets(exp).items())
             + (f", LR grid {[fmt_lr(x) for x in exp.lr_grid]}" if exp.lr_grid else "")
             + (", LR sweep on" if cfg.lr_sweep else ""),
             f"Rows: {len(grid.rows)} ({len(trained_rows)} trained, {len(grid.rows) - len(trained_rows)} "
             f"eval-only); sub-rows (a 4/8 or 16/32 row counts each of its variants): {subrows}; "
             f"distinct trained variants: {len(variants)}",
             f"Cells: {len(grid.cells)} = {n_train} training + {n_eval} eval-only; counted per sub-row "
             f"(a variant shared by two rows counted in each): {grid.subrow_cells - n_eval} training + {n_eval} "
             f"eval-only", eval_line(cfg), ""]
    lines += budget_lines(cfg, grid)
    lines += _count_lines(cfg, grid)
    lines += ["", f"  {'state':<8} {'cell':<52} {'rows':<26} {'params':>12} {'GPU h':>6}  detail"]
    states: dict[str, int] = {}
    total_h = remaining_h = 0.0
    for c in grid.cells:
        state, detail = cell_state(cfg, c)
        states[state] = states.get(state, 0) + 1
        h = gpu_hours(cfg, c)
        total_h += h
        if state != "done":
            remaining_h += h
        n = fmt_int(count_params(c.model, c.variant.method)) if c.variant else "-"
        lines.append(f"  {state:<8} {c.id:<52} {','.join(c.rows):<26.26} {n:>12} {h:>6.2f}  {detail}")
    lines += ["", "Summary: " + ", ".join(f"{s} {states.get(s, 0)}" for s in ("done", "running", "failed", "to do"))
              + f"; GPU hours (rough, A100): total {total_h:.1f}, remaining {remaining_h:.1f}"]
    return "\n".join(lines)
