"""Tables and figures of an experiment, rendered from its cell result files only, next to the paper's numbers.

Reads ``<results_dir>/<experiment>/cells/*.json`` (written by the runner; only cells with status ``done``
count) and the paper's numbers (``results/paper_reference.json``), and writes ``<out_dir>/table.md`` and
``table.csv`` (out_dir defaults to ``<results_dir>/<experiment>``):

* each value is our mean ± sample std (n-1) over the seeds that finished, with the paper's value and
  ours − paper beside it; a row with two variants ("4/8", "16/32") or several LRs (``--lr-sweep``) keeps,
  per benchmark, the candidate with the better mean, as the paper does, and names it ([r32], [lr 0.01]);
* ``n=2/3``: only 2 of the 3 planned seeds are in; ``†``: the pick was made while another candidate still
  had missing seeds, so it may change; ``—``: no result yet (never filled in);
* Avg. = the mean of the row's columns as the paper computes it (only when every column has a value);
* ``ˢ``: at least one of the numbers behind the value was scored on a subset of the benchmark (a sample, or
  benchmark files that lack part of the set; the cell file's ``subsets``): not comparable to the paper.

Figure 2 (layout ``heatmap``) also gets ``figure2.png`` (unshared rank x learning rate), Table 4 (layout
``share_rotate``) the paper's 2 x 2 sharing/rotation grid, and experiments with ``loss_curves: true``
(the demo) ``loss_curves.png`` from each cell's training loss (the plots: :mod:`recipes.paper.figures`);
compared rows get their Δ and intervals (:mod:`recipes.paper.significance`).

The table columns are the benchmarks' own (each task class declares its ``columns``): :data:`COLUMNS`.
CLI: ``python scripts/render_tables.py --experiment table2`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prolora.io import read_json, write_text_atomic
from recipes.paper import grid as G
from recipes.paper import plan as P


def _columns() -> dict[str, tuple[str, str, str]]:
    """Table column -> (benchmark task, header, metric key in eval.json's ``tasks.<task>``)."""
    from eval.tasks import TASKS

    return {col: (name, spec[0], spec[1]) for name, cls in TASKS.items() for col, spec in cls.columns.items()}


COLUMNS: dict[str, tuple[str, str, str]] = _columns()


def eval_to_columns(ev: dict[str, Any] | None, columns) -> dict[str, float]:
    """THE mapping eval.json -> table columns (MMLU EM, BBH EM, GSM EM, TyDiQA F1, TyDiQA EM, HumanEval P@1;
    Demo EM), in percent as the evaluator writes them.  A column whose task or metric is absent (not
    evaluated, or the task failed) is left out, never filled in."""
    out: dict[str, float] = {}
    tasks = (ev or {}).get("tasks") or {}
    for col in columns:
        task, _, key = COLUMNS[col]
        value = (tasks.get(task) or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[col] = float(value)
    return out


DASH = "—"


# --------------------------------------------------------------------------------------------- data


def load_cells(cells_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(cells_dir.glob("*.json")):
        rec = read_json(p)
        if isinstance(rec, dict) and rec.get("status") == "done":
            out.append(rec)
    return out


def _key(lr: float | None) -> str:
    return "none" if lr is None else G.fmt_lr(lr)


class Index:
    """Done cells by (variant, dataset, lr) -> {seed: metrics} and eval-only rows by row id."""

    def __init__(self, records: list[dict[str, Any]]):
        self.trained: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
        self.eval_only: dict[str, dict[int, dict[str, float]]] = {}
        self.subsets: set[tuple] = set()  # (variant, dataset, lr, seed, col) / (row, seed, col) scored on a subset
        self.records = records
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
                k = (rec["variant"], rec.get("dataset") or "", _key(rec.get("lr")))
                self.trained.setdefault(k, {})[seed] = metrics
                self.subsets |= {(*k, seed, col) for col in rec.get("subsets") or {}}
                self.cells.setdefault(k, {})[seed] = rec

    def values(self, variant: str, dataset: str, lr: float, col: str, seeds: list[int]) -> list[float]:
        by_seed = self.trained.get((variant, dataset, _key(lr)), {})
        return [float(by_seed[s][col]) for s in seeds if s in by_seed and by_seed[s].get(col) is not None]

    def value(self, variant: str, dataset: str, lr: float, col: str, seeds: list[int]) -> Value:
        """The candidate's mean ± std over the finished seeds, marked when any of them is a subset number."""
        v = summarize(self.values(variant, dataset, lr, col, seeds), len(seeds))
        v.subset = any((variant, dataset, _key(lr), s, col) in self.subsets for s in seeds)
        v.source = (variant, dataset, _key(lr))
        return v


@dataclass
class Value:
    mean: float | None = None
    std: float | None = None
    n: int = 0
    planned: int = 0
    choice: str = ""  # the candidate kept ([r32], [lr 0.01])
    unsettled: bool = False  # another candidate still misses seeds
    paper: float | None = None
    subset: bool = False  # some number behind it was scored on a subset of the benchmark
    source: tuple | None = None  # the cells behind it: (variant, dataset, lr) or ("eval_only", row) -> Index.cells
    mark: str = ""  # significance against the row's baseline (recipes.paper.significance): ▲ / ▼

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper

    def text(self) -> str:
        if self.mean is None:
            s = DASH
        else:
            s = f"{self.mean:.2f}" + (" ˢ" if self.subset else "")
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
    if not values:
        return Value(planned=planned)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Value(mean=statistics.fmean(values), std=std, n=len(values), planned=planned)


@dataclass
class TableRow:
    row: G.Row
    values: dict[str, Value]
    params: list[int | None]
    params_paper: str | None
    params_flag: str
    avg: Value
    notes: list[str] = field(default_factory=list)


def dataset_of(exp: DictConfig, col: str) -> str | None:
    task = COLUMNS[col][0]
    for ds, tasks in G.experiment_datasets(exp).items():
        if task in tasks:
            return str(ds)
    return None


def row_values(exp: DictConfig, row: G.Row, index: Index, ref_row: dict[str, Any]) -> dict[str, Value]:
    seeds = [int(s) for s in exp.seeds]
    out: dict[str, Value] = {}
    for col in exp.columns:
        paper = (ref_row.get("values") or {}).get(col)
        if row.eval_only:
            by_seed = index.eval_only.get(row.id, {})
            vals = [float(m[col]) for _, m in sorted(by_seed.items()) if m.get(col) is not None]
            v = summarize(vals, 1)
            v.planned = v.n or 1
            v.subset = any((row.id, s, col) in index.subsets for s in by_seed)
            v.source = ("eval_only", row.id)
        else:
            ds = dataset_of(exp, col)
            cands = []
            lrs_by_variant = {vt.id: row.candidate_lrs(ds) if ds else [] for vt in row.variants}
            many_lrs = any(len(x) > 1 for x in lrs_by_variant.values())
            for vt in row.variants:
                for lr in lrs_by_variant[vt.id]:
                    label = " ".join(x for x in (vt.short if len(row.variants) > 1 else "",
                                                 f"lr {G.fmt_lr(lr)}" if many_lrs else "") if x)
                    cands.append((label, index.value(vt.id, ds, lr, col, seeds)))
            have = [(lab, v) for lab, v in cands if v.mean is not None]
            if have:
                label, v = max(have, key=lambda lv: lv[1].mean)  # first of equals wins
                v.choice = label if len(cands) > 1 else ""
                v.unsettled = len(cands) > 1 and any(c.n < c.planned for _, c in cands)
            else:
                v = Value(planned=len(seeds))
        v.paper = paper
        out[col] = v
    return out


def build_table(cfg: DictConfig, grid_rows: list[G.Row], index: Index, ref: dict[str, Any],
                counts: bool = True) -> list[TableRow]:
    exp = cfg.experiment
    rows = []
    for row in grid_rows:
        ref_row = (ref.get("rows") or {}).get(row.id, {})
        values = row_values(exp, row, index, ref_row)
        params = [P.count_params(exp.model, v.method) for v in row.variants] if counts else []
        flag = ""
        notes: list[str] = []
        for v, n in zip(row.variants, params):
            chk = P.params_check(n, ref_row.get("params"), P.paper_formula_count(exp.model, v.method))
            if chk.startswith("MISMATCH"):
                flag = "≠"
                if ref_row.get("params_note") and ref_row["params_note"] not in notes:
                    notes.append(ref_row["params_note"])
        avg = Value(paper=ref_row.get("avg"))
        if exp.avg and all(values[c].mean is not None for c in exp.columns):
            avg.mean = statistics.fmean(values[c].mean for c in exp.columns)  # type: ignore[misc]
            avg.n = avg.planned = 1
            avg.subset = any(values[c].subset for c in exp.columns)
        if ref_row.get("note"):
            notes.append(ref_row["note"])
        rows.append(TableRow(row=row, values=values, params=params, params_paper=ref_row.get("params"),
                             params_flag=flag, avg=avg, notes=notes))
    return rows


# --------------------------------------------------------------------------------------------- output


def params_text(tr: TableRow) -> str:
    if tr.row.eval_only:
        return "-"
    ours = " / ".join(P.fmt_int(n) for n in tr.params) if tr.params else DASH
    if tr.params_paper:
        ours += f" ({tr.params_paper}{' ' + tr.params_flag if tr.params_flag else ''})"
    return ours


def markdown(cfg: DictConfig, table: list[TableRow], ref: dict[str, Any], records: list[dict[str, Any]]) -> str:
    exp = cfg.experiment
    cols = list(exp.columns)
    heads = ["Method", "Rank", "Param. ours (paper)"] + [COLUMNS[c][1] for c in cols] + (["Avg."] if exp.avg else [])
    lines = [f"# {exp.title or exp.name} (reproduced)", ""]
    if ref.get("rows"):
        lines.append(f"Ours: mean ± sample std over seeds {list(exp.seeds)}, in percent; in parentheses the paper's "
                     f"value and ours − paper (paper: {ref.get('_source')}, via results/paper_reference.json).")
    else:
        lines.append(f"Ours: mean ± sample std over seeds {list(exp.seeds)}, in percent (the paper has no numbers "
                     f"for this experiment).")
    lines.append(f"[r32] / [lr x]: the candidate a multi-variant row kept for that benchmark (better mean, as the paper); "
                 f"n=k/{len(exp.seeds)}: seeds finished so far; †: a candidate still misses seeds; {DASH}: no result yet; "
                 "ˢ: scored on a subset of the benchmark, not comparable to the paper; "
                 "▲/▼: better/worse than its baseline row beyond the 95% intervals (Significance, below; ▲[id]: against row id, where a row has several baselines); "
                 f"≠: our parameter count does not round to the paper's.")
    lines.append(f"Built from {len(records)} finished cell file(s).")
    lines += provenance(cfg, records)
    lines.append("")
    lines.append("| " + " | ".join(heads) + " |")
    lines.append("|" + "|".join("---" for _ in heads) + "|")
    for tr in table:
        cells = [tr.row.label, tr.row.rank, params_text(tr)] + [tr.values[c].text() for c in cols]
        if exp.avg:
            cells.append(tr.avg.text())
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {tr.row.label} {tr.row.rank}: {n}" for tr in table for n in tr.notes]
    if ref.get("budget_note"):
        notes.append(f"- {ref['budget_note']}")
    if notes:
        lines += ["", "Notes:"] + notes
    return "\n".join(lines) + "\n"


def provenance(cfg: DictConfig, records: list[dict[str, Any]]) -> list[str]:
    """Where the numbers come from, read off the cell files: the commits that ran them, the training steps,
    and how many examples each column's numbers were scored on."""
    if not records:
        return []
    commits = sorted({f"{(r.get('git') or {}).get('commit') or 'unrecorded'}"[:12] + (" (with uncommitted changes)"
                      if (r.get("git") or {}).get("dirty") else "") for r in records})
    steps = sorted({(r.get("train") or {}).get("steps") for r in records if r.get("train")} - {None})
    sizes = []
    for col in cfg.experiment.columns:
        task = COLUMNS[col][0]
        seen = set()
        for r in records:
            entry = (((r.get("eval") or {}).get("tasks") or {}).get(task)) or {}
            if entry.get("n_examples") is not None:
                seen.add((entry["n_examples"], entry.get("full_size") or entry.get("n_available"),
                          bool(entry.get("subset"))))
        for n, of, sub in sorted(seen, key=str):
            sizes.append(f"{COLUMNS[col][1]} {n:,}" + (f" of {of:,}" if of else "") + (" (a subset)" if sub else ""))
    out = [f"Cells ran at git commit(s) {', '.join(commits)}."]
    if steps:
        out.append(f"Training steps per cell: {', '.join(str(x) for x in steps)}.")
    if sizes:
        out.append(f"Examples scored: {'; '.join(sizes)}.")
    return out


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def csv_text(cfg: DictConfig, table: list[TableRow]) -> str:
    exp = cfg.experiment
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["experiment", "row", "label", "rank", "params", "params_paper"]
    for c in exp.columns:
        head += [f"{c}_mean", f"{c}_std", f"{c}_n", f"{c}_choice", f"{c}_subset", f"{c}_paper", f"{c}_delta"]
    if exp.avg:
        head += ["avg", "avg_paper", "avg_delta"]
    w.writerow(head)
    for tr in table:
        line = [exp.name, tr.row.id, tr.row.label, tr.row.rank,
                " / ".join(str(n) for n in tr.params if n is not None), tr.params_paper or ""]
        for c in exp.columns:
            v = tr.values[c]
            line += [_num(v.mean), _num(v.std), v.n, v.choice, int(v.subset), _num(v.paper), _num(v.delta)]
        if exp.avg:
            line += [_num(tr.avg.mean), _num(tr.avg.paper), _num(tr.avg.delta)]
        w.writerow(line)
    return buf.getvalue()


def share_rotate_grid(table: list[TableRow], col: str) -> str:
    """Table 4's layout: sharing dimension (rows) x rotation dimension (columns)."""
    by = {(tr.row.extra.get("share"), tr.row.extra.get("rotate")): tr for tr in table}
    lines = ["", f"Sharing \\ Rotation ({COLUMNS[col][1]}), as the paper's Table 4:", "",
             "| Sharing / Rotation | Hidden. | Rank. |", "|---|---|---|"]
    for share in ("hidden", "rank"):
        cells = []
        for rot in ("hidden", "rank"):
            tr = by.get((share, rot))
            cells.append(tr.values[col].text() if tr else DASH)
        lines.append(f"| {share.capitalize()}. | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def log_wandb(cfg: DictConfig, csv_body: str, out_dir: Path) -> None:
    """Log the table as a W&B table in the experiment's group (offline unless configured)."""
    try:
        import wandb

        rows = list(csv.reader(io.StringIO(csv_body)))
        mode = os.environ.get("WANDB_MODE") or "offline"
        run = wandb.init(project="prolora", group=str(cfg.experiment.name), job_type="table",
                         name=f"{cfg.experiment.name}-table", mode=mode, dir=str(out_dir), reinit="finish_previous")
        run.log({f"{cfg.experiment.name}_table": wandb.Table(columns=rows[0], data=rows[1:])})
        run.finish()
        print(f"logged the table to W&B ({mode}, group {cfg.experiment.name})")
    except Exception as e:  # never fail the rendering for W&B
        print(f"warning: W&B logging skipped: {type(e).__name__}: {e}", file=sys.stderr)


def render_experiment(cfg: DictConfig, experiment: str | None = None, out_dir: Path | None = None,
                      reference: Path | None = None, wandb: bool = False, echo: bool = False) -> list[Path]:
    """Render ``cfg``'s experiment from its cell files; returns the paths written."""
    exp = cfg.experiment
    name = experiment or str(exp.name)
    cells_dir = G.cells_dir(cfg, name)
    out_dir = out_dir or cells_dir.parent
    records = load_cells(cells_dir)
    index = Index(records)
    ref = dict(P.paper_table(name, reference))
    ref["_source"] = "arXiv 2402.16902 " + name.replace("table", "Table ").replace("figure", "Figure ")
    rows = G.build_grid(cfg).rows
    written: list[Path] = []
    from recipes.paper import figures as F
    from recipes.paper import significance as S

    if exp.layout == "heatmap":
        md, body = F.heatmap(cfg, rows, index, out_dir / f"{name}.png")
        written.append(out_dir / f"{name}.png")
        lrs = [float(x) for x in exp.lr_grid]
        best, vs_best = S.heatmap_vs_best(cfg, rows, index)
        md += S.heatmap_markdown(rows, lrs, best, vs_best)
        if S.heatmap_plot(rows, lrs, best, vs_best, out_dir / f"{name}_vs_best.png",
                          f"{name}: Δ {COLUMNS[exp.columns[0]][1]} against the best cell, 95% item intervals "
                          "(≈: not distinguishable)"):
            written.append(out_dir / f"{name}_vs_best.png")
    else:
        table = build_table(cfg, rows, index, ref)
        comparisons = S.table_comparisons(cfg, table, index)  # marks the compared rows' values
        md = markdown(cfg, table, ref, records)
        if exp.layout == "share_rotate":
            md += share_rotate_grid(table, exp.columns[0])
        md += S.markdown(comparisons)
        body = csv_text(cfg, table)
        if comparisons:
            write_text_atomic(out_dir / "significance.csv", S.csv_text(comparisons))
            written.append(out_dir / "significance.csv")
            if S.forest_plot(comparisons, out_dir / "significance.png",
                             f"{name}: Δ against the baseline row, {S.CONFIDENCE:.0%} intervals"):
                written.append(out_dir / "significance.png")
    write_text_atomic(out_dir / "table.md", md)
    write_text_atomic(out_dir / "table.csv", body)
    written[:0] = [out_dir / "table.md", out_dir / "table.csv"]
    if exp.loss_curves and F.loss_curves(records, out_dir / "loss_curves.png", f"{name}: training loss"):
        written.append(out_dir / "loss_curves.png")
    if echo:
        print(md)
    if wandb:
        log_wandb(cfg, body, out_dir)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="table2 | table3 | table4 | figure2 | demo")
    p.add_argument("--results-dir", help="where <experiment>/cells/ is (default: results_dir of reproduce.yaml)")
    p.add_argument("--out-dir", help="where to write table.md/.csv/plots (default <results-dir>/<experiment>)")
    p.add_argument("--reference", help="paper reference JSON (default results/paper_reference.json)")
    p.add_argument("--wandb", action="store_true", help="also log the table as a W&B table (offline-safe)")
    p.add_argument("--quiet", action="store_true", help="do not print the Markdown table")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of configs/reproduce.yaml (e.g. lr_sweep=true)")
    args = p.parse_intermixed_args(argv)
    overrides = [f"experiment={args.experiment}", *args.overrides]
    if args.results_dir:
        overrides.append(f"results_dir={Path(args.results_dir).resolve()}")
    cfg = G.load_config(overrides)
    written = render_experiment(cfg, out_dir=Path(args.out_dir).resolve() if args.out_dir else None,
                                reference=Path(args.reference).resolve() if args.reference else None,
                                wandb=args.wandb, echo=not args.quiet)
    for path in written:
        print(f"wrote {path}")
    return 0
