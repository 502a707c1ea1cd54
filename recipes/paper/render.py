"""Render an experiment from its cell result files only: table, figures, significance, W&B, and the CLI.

Reads ``<results_dir>/<experiment>/cells/*.json`` (written by the runner; only cells with status ``done``
count) and the paper's numbers (``results/paper_reference.json``), and writes into ``<out_dir>`` (default
``<results_dir>/<experiment>``): ``table.md`` and ``table.csv`` (:mod:`recipes.paper.tables`); for compared
rows (the experiment's ``compare``) their Δ and intervals in the table, ``significance.csv`` and
``significance.png`` (:mod:`recipes.paper.significance`); for Table 4 (layout ``share_rotate``) the paper's
2 x 2 sharing/rotation grid; for the matched budgets (layout ``budget``) ``pareto.png`` (score against trainable
parameters with 95% intervals, the non-dominated front) and the measured step time and peak memory of each row; for
Figure 2 (layout ``heatmap``) ``figure2.png`` (unshared rank x learning rate)
and ``figure2_vs_best.png``; with ``loss_curves: true`` (the demo) ``loss_curves.png``
(:mod:`recipes.paper.figures`).

CLI: ``python -m scripts.render_tables --experiment table2`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from prolora.io import write_text_atomic
from recipes.paper import figures, significance, tables
from recipes.paper.facts import COLUMNS, Index, load_cells
from recipes.paper.grid import Row, build_grid, cells_dir, load_config
from recipes.paper.plan import paper_table
from recipes.paper.tables import build_table, csv_text, markdown, share_rotate_grid


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


def render_heatmap(cfg: DictConfig, name: str, rows: list[Row], index: Index, out_dir: Path,
                   written: list[Path]) -> tuple[str, str]:
    """Figure 2: the heatmap and each cell against the best one; (Markdown, CSV), the plots added to ``written``."""
    exp = cfg.experiment
    md, body = figures.heatmap(cfg, rows, index, out_dir / f"{name}.png")
    written.append(out_dir / f"{name}.png")
    lrs = [float(x) for x in exp.lr_grid]
    best, vs_best = significance.heatmap_vs_best(cfg, rows, index)
    md += significance.heatmap_markdown(rows, lrs, best, vs_best)
    if significance.heatmap_plot(rows, lrs, best, vs_best, out_dir / f"{name}_vs_best.png",
                                 f"{name}: Δ {COLUMNS[exp.columns[0]].header} against the best cell, 95% item "
                                 "intervals (≈: not distinguishable)"):
        written.append(out_dir / f"{name}_vs_best.png")
    return md, body


def render_table(cfg: DictConfig, name: str, rows: list[Row], index: Index, ref: dict, records: list[dict],
                 out_dir: Path, written: list[Path]) -> tuple[str, str]:
    """A table (Table 4 with its 2 x 2 grid) and its compared rows; (Markdown, CSV), the significance files
    written and added to ``written``."""
    exp = cfg.experiment
    table = build_table(cfg, rows, index, ref)
    comparisons = significance.table_comparisons(cfg, table, index)  # marks the compared rows' values
    md = markdown(cfg, table, ref, records)
    if exp.layout == "share_rotate":
        md += share_rotate_grid(table, exp.columns[0])
    md += significance.markdown(comparisons)
    if exp.layout == "budget":
        md += render_budget(cfg, name, table, index, out_dir, written)
    if comparisons:
        write_text_atomic(out_dir / "significance.csv", significance.csv_text(comparisons))
        written.append(out_dir / "significance.csv")
        if significance.forest_plot(comparisons, out_dir / "significance.png",
                                    f"{name}: Δ against the baseline row, {significance.CONFIDENCE:.0%} intervals"):
            written.append(out_dir / "significance.png")
    return md, csv_text(cfg, table)


def render_budget(cfg: DictConfig, name: str, table, index: Index, out_dir: Path, written: list[Path]) -> str:
    """The matched-budget layout's sections: the Pareto view (``pareto.png``, one panel per column's file, and its
    table) and each row's measured training cost against its baseline row."""
    exp = cfg.experiment
    points = significance.score_points(cfg, table, index)
    base_row = next((tr for tr in table if tr.row.eval_only and tr.row.chat), None)  # the base model, chat format
    md = ""
    for col in exp.columns:
        pts = [p for p in points if p.column == col]
        md += figures.pareto_markdown(pts)
        out = out_dir / ("pareto.png" if len(exp.columns) == 1 else f"pareto_{col}.png")
        title = f"{name}: {COLUMNS[col].header} against trainable parameters, 95% intervals (thick: items, thin: seeds)"
        if figures.pareto(pts, out, title, baseline=base_row.values[col].mean if base_row else None):
            written.append(out)
    return md + tables.cost_markdown(cfg, table, index, dict(significance.pairs(exp)))


def render_experiment(cfg: DictConfig, experiment: str | None = None, out_dir: Path | None = None,
                      reference: Path | None = None, wandb: bool = False, echo: bool = False) -> list[Path]:
    """Render ``cfg``'s experiment from its cell files; returns the paths written."""
    exp = cfg.experiment
    name = experiment or str(exp.name)
    cells = cells_dir(cfg, name)
    out_dir = out_dir or cells.parent
    records = load_cells(cells)
    index = Index(records)
    ref = dict(paper_table(name, reference))
    ref["_source"] = "arXiv 2402.16902 " + name.replace("table", "Table ").replace("figure", "Figure ")
    rows = build_grid(cfg).rows
    written: list[Path] = []
    if exp.layout == "heatmap":
        md, body = render_heatmap(cfg, name, rows, index, out_dir, written)
    else:
        md, body = render_table(cfg, name, rows, index, ref, records, out_dir, written)
    write_text_atomic(out_dir / "table.md", md)
    write_text_atomic(out_dir / "table.csv", body)
    written[:0] = [out_dir / "table.md", out_dir / "table.csv"]
    if exp.loss_curves and figures.loss_curves(records, out_dir / "loss_curves.png", f"{name}: training loss"):
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
    cfg = load_config(overrides)
    written = render_experiment(cfg, out_dir=Path(args.out_dir).resolve() if args.out_dir else None,
                                reference=Path(args.reference).resolve() if args.reference else None,
                                wandb=args.wandb, echo=not args.quiet)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
