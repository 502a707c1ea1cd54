"""Is a difference between two cells of a grid larger than noise?  Δ with 95% intervals from the saved predictions.

Table 2's gaps between methods (0.2 to 1.5 points) are about the size of seed-to-seed noise and of a
benchmark's sampling error, so each compared value gets two intervals (:mod:`eval.stats`, scipy):

* **items**: a paired bootstrap over the benchmark's examples, the same examples on both sides (their ids
  aligned), from ``predictions/<task>.jsonl`` of every seed both sides finished.  An item's value is its
  per-example score (0/100 correct, F1, a problem's unbiased pass@1 from its n samples: the task's
  :meth:`~eval.tasks.base.Task.item_values`) averaged over those seeds, and the statistic is the benchmark's
  own aggregate (macro over BBH tasks / TyDi QA languages), so Δ is exactly the table's difference of means.
  Before anything is resampled, each seed's items are checked to reproduce the score its cell recorded.
* **seeds**: a paired t-interval over the seeds both sides finished (fewer than 2: none).

A value is marked (▲ better / ▼ worse than its baseline) only when every interval it has excludes 0.  The
bootstrap is seeded (``seed=0``, 10,000 resamples, BCa), so the same files always give the same interval.

A single value's score gets the same two intervals of its own (:func:`score_interval`: the item bootstrap against a
zero baseline, the t-interval of the seeds' mean): the error bars of the matched-budget Pareto view.

Which cells are compared: the experiment's ``compare`` list (``[{row: prolora_r8, baseline: lora_r2}, ...]``:
PRoLoRA against LoRA at the same parameter budget) for tables, and every cell of Figure 2's heatmap against
its best cell.  ``python -m recipes.paper.significance --experiment demo prolora_r8 lora_r2`` compares any
two rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.stats import Interval, load_predictions, paired_bootstrap, seed_interval
from eval.tasks import TASKS
from recipes.paper.facts import COLUMNS, Index, csv_number, fmt_lr, load_cells
from recipes.paper.figures import ScorePoint
from recipes.paper.grid import build_grid, cells_dir, dataset_of, load_config
from recipes.paper.tables import build_table

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass
class Comparison:
    """Δ = B − A on one column (percentage points) with its intervals, or why there is none."""

    b: str  # what is compared, in words (a row label, a heatmap cell)
    a: str
    column: str
    delta: float | None = None
    items: Interval | None = None
    seeds: Interval | None = None
    n_seeds: int = 0
    reason: str = ""  # why there is no interval (no common seeds, predictions missing, ...)

    @property
    def beyond_noise(self) -> bool:
        """Every interval there is excludes 0 (the item interval must exist)."""
        if self.items is None or not self.items.significant:
            return False
        return self.seeds is None or self.seeds.low is None or self.seeds.significant

    @property
    def mark(self) -> str:
        if not self.beyond_noise or self.delta is None:
            return ""
        return "▲" if self.delta > 0 else "▼"

    def text(self) -> str:
        if self.items is None:
            return f"— ({self.reason})"
        s = f"{self.delta:+.2f} [{self.items.low:+.2f}, {self.items.high:+.2f}] over {self.items.n} items"
        if self.seeds is not None and self.seeds.low is not None:
            s += f"; seeds [{self.seeds.low:+.2f}, {self.seeds.high:+.2f}] over {self.seeds.n}"
        elif self.n_seeds:
            s += f"; {self.n_seeds} seed(s): no seed interval"
        return s


class PredictionError(ValueError):
    """The saved predictions cannot back an interval (missing, other items, not the recorded score)."""


def _task_records(cell: dict[str, Any], task: str) -> list[dict]:
    eval_dir = (cell.get("paths") or {}).get("eval_dir")
    path = Path(eval_dir or "") / "predictions" / f"{task}.jsonl"
    if not eval_dir or not path.exists():
        raise PredictionError(f"no predictions file {path}")
    return load_predictions(path)


def macro_mean(values: np.ndarray, groups: list[str] | None) -> float:
    """The benchmark's aggregate of per-item values: their mean, or the mean of the group means (BBH tasks,
    TyDi QA languages)."""
    if groups is None:
        return float(values.mean())
    g = np.asarray(groups)
    return float(np.mean([values[g == k].mean() for k in np.unique(g)]))


def item_matrix(cells: dict[int, dict[str, Any]], seeds: list[int], column: str
                ) -> tuple[list[str], np.ndarray, list[str] | None]:
    """Items (ids in a fixed order), their values per seed (seeds × items) and groups, for one side."""
    task, metric = COLUMNS[column].task, COLUMNS[column].metric
    cls = TASKS[task]
    ids: list[str] | None = None
    rows, groups = [], None
    for seed in seeds:
        records = _task_records(cells[seed], task)
        values, grp = cls.item_values(records, metric)
        by_id = {str(r["id"]): i for i, r in enumerate(records)}
        if len(by_id) != len(records):
            raise PredictionError(f"duplicate example ids in the {task} predictions of seed {seed}")
        if ids is None:
            ids = sorted(by_id)
        elif set(ids) != set(by_id):
            raise PredictionError(f"seed {seed} scored other {task} examples than seed {seeds[0]}")
        order = [by_id[i] for i in ids]
        arr = np.asarray(values, dtype=float)[order]
        grp = None if grp is None else [grp[j] for j in order]
        recorded = ((cells[seed].get("metrics") or {}).get(column))
        if recorded is None or not math.isclose(macro_mean(arr, grp), float(recorded), abs_tol=1e-6):
            raise PredictionError(f"the {task} predictions of seed {seed} give {macro_mean(arr, grp):.6f}, the cell "
                                  f"recorded {recorded}: saved by an older version, or not this cell's")
        rows.append(arr)
        groups = grp
    assert ids is not None
    return ids, np.vstack(rows), groups


def compare(index, source_b: tuple, source_a: tuple, column: str, seeds: list[int], label_b: str = "B",
            label_a: str = "A") -> Comparison:
    """Δ of ``column`` between the cells behind two table values (``Value.source``) over the seeds both
    finished (a base model's single evaluation stands for every seed; it has no seed interval)."""
    out = Comparison(b=label_b, a=label_a, column=column)
    cells_b, cells_a = index.cells.get(source_b, {}), index.cells.get(source_a, {})
    base_b, base_a = source_b[0] == "eval_only", source_a[0] == "eval_only"
    wanted = list(seeds) or sorted(set(cells_b) | set(cells_a))
    common = [s for s in wanted if s in cells_b and s in cells_a]
    seeds_b = sorted(cells_b) if base_b else ([s for s in wanted if s in cells_b] if base_a else common)
    seeds_a = sorted(cells_a) if base_a else ([s for s in wanted if s in cells_a] if base_b else common)
    out.n_seeds = min(len(seeds_b), len(seeds_a))
    if not seeds_b or not seeds_a:
        out.reason = "no seed finished on both sides"
        return out
    try:
        ids_b, mat_b, groups = item_matrix(cells_b, seeds_b, column)
        ids_a, mat_a, _ = item_matrix(cells_a, seeds_a, column)
    except (PredictionError, ValueError) as e:
        out.reason = str(e)
        return out
    if ids_b != ids_a:
        out.reason = "the two sides scored different examples"
        return out
    out.items = paired_bootstrap(mat_a.mean(axis=0), mat_b.mean(axis=0), confidence=CONFIDENCE,
                                 n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED, groups=groups)
    out.delta = out.items.delta
    if not (base_a or base_b):
        out.seeds = seed_interval({s: float(cells_a[s]["metrics"][column]) for s in common},
                                  {s: float(cells_b[s]["metrics"][column]) for s in common}, confidence=CONFIDENCE)
    return out


def score_interval(index, source: tuple, column: str, seeds: list[int]) -> tuple[Interval | None, Interval | None, str]:
    """The 95% intervals of one table value's score itself (not a difference): the bootstrap of
    :func:`compare` over the items against a zero baseline (so Δ is the score and the interval its own), and
    the t-interval of the per-seed scores' mean; (items, seeds, why there is no item interval)."""
    cells = index.cells.get(source, {})
    have = [s for s in (list(seeds) or sorted(cells)) if s in cells] if source[0] != "eval_only" else sorted(cells)
    if not have:
        return None, None, "no seed finished"
    try:
        _, mat, groups = item_matrix(cells, have, column)
    except (PredictionError, ValueError) as e:
        return None, None, str(e)
    values = mat.mean(axis=0)
    items = paired_bootstrap(np.zeros_like(values), values, confidence=CONFIDENCE, n_resamples=N_RESAMPLES,
                             seed=BOOTSTRAP_SEED, groups=groups, label="bootstrap of the score over items")
    scores = {s: float(cells[s]["metrics"][column]) for s in have}
    seed_iv = seed_interval({s: 0.0 for s in scores}, scores, confidence=CONFIDENCE) if len(have) > 1 else None
    return items, seed_iv, ""


def score_points(cfg, table, index) -> list[ScorePoint]:
    """Every trained row's (params, score) on every column with its intervals: the Pareto view's points."""
    exp = cfg.experiment
    seeds = [int(s) for s in exp.seeds]
    points = []
    for tr in table:
        if tr.row.eval_only or not tr.params:
            continue
        for col in exp.columns:
            v = tr.values[col]
            p = ScorePoint(row=tr.row.id, label=tr.row.label, budget=tr.row.rank, params=max(tr.params), column=col,
                           mean=v.mean, n_seeds=v.n)
            if v.mean is not None and v.source is not None:
                items, seed_iv, p.reason = score_interval(index, v.source, col, seeds)
                if items is not None:
                    p.item_low, p.item_high = items.low, items.high
                if seed_iv is not None and seed_iv.low is not None:
                    p.seed_low, p.seed_high = seed_iv.low, seed_iv.high
            points.append(p)
    return points


# ------------------------------------------------------------------------------------------------ tables
def pairs(exp) -> list[tuple[str, str]]:
    """(row, baseline) ids of the experiment's ``compare`` list, checked against its rows."""
    ids = {str(r.get("id")) for r in exp.rows}
    out = []
    for spec in exp.get("compare") or []:
        row, base = str(spec.get("row")), str(spec.get("baseline"))
        unknown = [x for x in (row, base) if x not in ids]
        if unknown:
            raise ValueError(f"experiment {exp.name}: compare names unknown row(s) {unknown}; rows: {sorted(ids)}")
        out.append((row, base))
    return out


def table_comparisons(cfg, table, index) -> list[Comparison]:
    """Every configured (row, baseline) pair on every column; marks the row's values (``Value.mark``)."""
    exp = cfg.experiment
    by_id = {tr.row.id: tr for tr in table}
    seeds = [int(s) for s in exp.seeds]
    out = []
    listed = pairs(exp)
    baselines: dict[str, int] = {}
    for row_id, _ in listed:
        baselines[row_id] = baselines.get(row_id, 0) + 1
    marks: dict[tuple[str, str], list[str]] = {}
    for row_id, base_id in listed:
        if row_id not in by_id or base_id not in by_id:
            continue
        b, a = by_id[row_id], by_id[base_id]
        for col in exp.columns:
            vb, va = b.values[col], a.values[col]
            label_b, label_a = (f"{r.row.label} {r.row.rank}" if str(r.row.rank or "-") != "-" else r.row.label
                                for r in (b, a))
            if vb.mean is None or va.mean is None or vb.source is None or va.source is None:
                continue  # nothing to compare yet (the table shows —)
            c = compare(index, vb.source, va.source, col, seeds, label_b, label_a)
            if c.mark:  # a row with several baselines names the one each mark is against
                marks.setdefault((row_id, col), []).append(c.mark if baselines[row_id] == 1 else f"{c.mark}[{base_id}]")
            out.append(c)
    for (row_id, col), row_marks in marks.items():
        by_id[row_id].values[col].mark = " ".join(row_marks)
    return out


def markdown(comparisons: list[Comparison], title: str = "Significance") -> str:
    if not comparisons:
        return ""
    lines = ["", f"## {title}", "",
             f"Δ = row − baseline in points with {CONFIDENCE:.0%} intervals: a paired bootstrap over the benchmark's "
             f"items (predictions averaged over the seeds both finished; scipy BCa, {N_RESAMPLES} resamples, "
             f"seed {BOOTSTRAP_SEED}) and a paired t-interval over seeds (≥ 2 seeds). ▲/▼: every interval "
             "excludes 0.", "", "| row | baseline | column | Δ and intervals | beyond noise |", "|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c.b} | {c.a} | {COLUMNS[c.column].header} | {c.text()} | {c.mark or 'no'} |")
    return "\n".join(lines) + "\n"


def csv_text(comparisons: list[Comparison]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "baseline", "column", "delta", "items_low", "items_high", "n_items", "seeds_low", "seeds_high",
                "n_seeds", "beyond_noise", "reason"])

    for c in comparisons:
        it, se = c.items, c.seeds
        w.writerow([c.b, c.a, c.column, csv_number(c.delta), csv_number(it and it.low), csv_number(it and it.high),
                    it.n if it else "", csv_number(se and se.low), csv_number(se and se.high), c.n_seeds,
                    int(c.beyond_noise), c.reason])
    return buf.getvalue()


def forest_plot(comparisons: list[Comparison], out: Path, title: str) -> bool:
    """Δ with its item interval (thick) and seed interval (thin) per comparison; False when nothing to draw."""
    drawn = [c for c in comparisons if c.items is not None]
    if not drawn:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(drawn) + 1.4))
    for y, c in enumerate(reversed(drawn)):
        color = "tab:green" if c.mark == "▲" else "tab:red" if c.mark == "▼" else "tab:gray"
        if c.seeds is not None and c.seeds.low is not None:
            ax.plot([c.seeds.low, c.seeds.high], [y, y], color=color, linewidth=1, alpha=0.6)
        ax.plot([c.items.low, c.items.high], [y, y], color=color, linewidth=4, solid_capstyle="butt")
        ax.plot([c.delta], [y], "o", color="black", markersize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(drawn)), [f"{c.b} − {c.a}: {COLUMNS[c.column].header}" for c in reversed(drawn)], fontsize=7)
    ax.set_xlabel(f"Δ (points); thick: {CONFIDENCE:.0%} item bootstrap, thin: seed t-interval")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------ Figure 2
def heatmap_vs_best(cfg, grid_rows, index) -> tuple[tuple[int, int] | None, list[list[Comparison | None]]]:
    """Every heatmap cell against the best one (highest mean): its position and the comparisons by (row, lr)."""
    exp = cfg.experiment
    col = exp.columns[0]
    ds = dataset_of(exp, col)
    lrs = [float(x) for x in exp.lr_grid]
    seeds = [int(s) for s in exp.seeds]
    values = [[index.value(row.variants[0].id, ds, lr, col, seeds) for lr in lrs] for row in grid_rows]
    best, best_mean = None, -math.inf
    for i, vals in enumerate(values):
        for j, v in enumerate(vals):
            if v.mean is not None and v.mean > best_mean:
                best, best_mean = (i, j), v.mean
    grid: list[list[Comparison | None]] = [[None] * len(lrs) for _ in grid_rows]
    if best is None:
        return None, grid
    bi, bj = best
    best_label = f"{grid_rows[bi].label} lr {fmt_lr(lrs[bj])}"
    for i, vals in enumerate(values):
        for j, v in enumerate(vals):
            if (i, j) == best or v.mean is None:
                continue
            grid[i][j] = compare(index, v.source, values[bi][bj].source, col, seeds,
                                 f"{grid_rows[i].label} lr {fmt_lr(lrs[j])}", best_label)
    return best, grid


def heatmap_markdown(grid_rows, lrs, best, grid) -> str:
    if best is None:
        return ""
    lines = ["", "## Against the best cell", "",
             f"Δ = cell − best cell ({grid_rows[best[0]].label}, lr {fmt_lr(lrs[best[1]])}) with the "
             f"{CONFIDENCE:.0%} item-bootstrap interval; ≈: not distinguishable from the best (an interval "
             "includes 0).", "",
             "| Unshared rank | " + " | ".join(f"lr {fmt_lr(x)}" for x in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for i, row in enumerate(grid_rows):
        cells = []
        for j in range(len(lrs)):
            c = grid[i][j]
            if (i, j) == best:
                cells.append("best")
            elif c is None or c.items is None:
                cells.append("—")
            else:
                cells.append(f"{c.delta:+.2f} [{c.items.low:+.2f}, {c.items.high:+.2f}]"
                             + ("" if c.beyond_noise else " ≈"))
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def heatmap_plot(grid_rows, lrs, best, grid, out: Path, title: str) -> bool:
    if best is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.full((len(grid_rows), len(lrs)), np.nan)
    for i in range(len(grid_rows)):
        for j in range(len(lrs)):
            c = grid[i][j]
            if (i, j) == best:
                data[i, j] = 0.0
            elif c is not None and c.delta is not None:
                data[i, j] = c.delta
    fig, ax = plt.subplots(figsize=(1.3 * len(lrs) + 2.5, 0.5 * len(grid_rows) + 1.8))
    span = np.nanmax(np.abs(data)) if not np.all(np.isnan(data)) else 1.0
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-span or -1, vmax=span or 1, aspect="auto")
    for i in range(len(grid_rows)):
        for j in range(len(lrs)):
            c = grid[i][j]
            text = "best" if (i, j) == best else "—" if c is None or c.items is None else (
                f"{c.delta:+.2f}\n[{c.items.low:+.1f},{c.items.high:+.1f}]" + ("" if c.beyond_noise else " ≈"))
            dark = not np.isnan(data[i, j]) and abs(data[i, j]) > 0.6 * span
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(range(len(lrs)), [fmt_lr(x) for x in lrs])
    ax.set_yticks(range(len(grid_rows)), [r.label for r in grid_rows])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("unshared rank u")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="Δ vs best (points)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.paper.significance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True)
    p.add_argument("--results-dir", help="where <experiment>/cells/ is (default: results_dir of reproduce.yaml)")
    p.add_argument("row", help="the row compared (e.g. prolora_r8)")
    p.add_argument("baseline", help="the row it is compared with (e.g. lora_r2)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of configs/reproduce.yaml")
    args = p.parse_intermixed_args(argv)
    overrides = [f"experiment={args.experiment}", *args.overrides,
                 f"++experiment.compare=[{{row:{args.row},baseline:{args.baseline}}}]"]
    if args.results_dir:
        overrides.append(f"results_dir={Path(args.results_dir).resolve()}")
    try:
        cfg = load_config(overrides)
        index = Index(load_cells(cells_dir(cfg, str(cfg.experiment.name))))
        table = build_table(cfg, build_grid(cfg).rows, index, {}, counts=False)
        comparisons = table_comparisons(cfg, table, index)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(comparisons, f"{args.row} vs {args.baseline}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
