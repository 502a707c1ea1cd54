"""The figures of an experiment, drawn from its cell files: Figure 2's heatmap (unshared rank x learning rate,
with its Markdown/CSV twin), the training-loss curves of each cell, and the matched-budget Pareto view (score
against trainable parameters, each point with its 95% intervals, the non-dominated front drawn; the intervals are
:mod:`recipes.paper.significance`'s)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recipes.paper.facts import COLUMNS, DASH, Index, Value, csv_number, fmt_lr
from recipes.paper.grid import Row, dataset_of


def heatmap(cfg: DictConfig, grid_rows: list[Row], index: Index, out: Path) -> tuple[str, str]:
    """Figure 2: rows (unshared rank) x the LR grid; Markdown + CSV text, and the PNG at ``out``."""
    exp = cfg.experiment
    col = exp.columns[0]
    ds = dataset_of(exp, col)
    lrs = [float(x) for x in exp.lr_grid]
    seeds = [int(s) for s in exp.seeds]
    grid: list[list[Value]] = []
    for row in grid_rows:
        vt = row.variants[0]
        grid.append([index.value(vt.id, ds, lr, col, seeds) for lr in lrs])
    md = [f"# {exp.title} (reproduced)", "",
          f"{COLUMNS[col].header}: mean ± sample std over seeds {seeds}; {DASH}: no result yet. "
          "The paper gives Figure 2 only as an image (no numbers to compare with).", "",
          "| Unshared rank | variant | " + " | ".join(f"lr {fmt_lr(x)}" for x in lrs) + " |",
          "|---|---|" + "---|" * len(lrs)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "row", "variant", "lr", f"{col}_mean", f"{col}_std", f"{col}_n"])
    for row, vals in zip(grid_rows, grid):
        md.append(f"| {row.label} | {row.variants[0].id} | " + " | ".join(v.text() for v in vals) + " |")
        for lr, v in zip(lrs, vals):
            w.writerow([exp.name, row.id, row.variants[0].id, fmt_lr(lr), csv_number(v.mean), csv_number(v.std), v.n])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[np.nan if v.mean is None else v.mean for v in vals] for vals in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(lrs) + 2.5, 0.5 * len(grid_rows) + 1.8))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(lrs)), [fmt_lr(x) for x in lrs])
    ax.set_yticks(range(len(grid_rows)), [r.label for r in grid_rows])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("unshared rank u")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, DASH if math.isnan(data[i, j]) else f"{data[i, j]:.2f}", ha="center", va="center",
                    fontsize=8, color="black" if math.isnan(data[i, j]) else "white")
    ax.set_title(f"{exp.name}: {COLUMNS[col].header} (r=32, LoRA-r8 budget)", fontsize=10)
    if not np.all(np.isnan(data)):
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return "\n".join(md) + "\n", buf.getvalue()


def loss_curves(records: list[dict[str, Any]], out: Path, title: str) -> bool:
    curves = [(r, r.get("loss_curve") or []) for r in records if not r.get("eval_only")]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for rec, curve in sorted(curves, key=lambda rc: rc[0]["cell_id"]):
        ax.plot([p[0] for p in curve], [p[1] for p in curve],
                label=f"{rec['variant']} seed {rec.get('seed')} (lr {fmt_lr(rec['lr'])})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------- Pareto view


@dataclass
class ScorePoint:
    """One trained row on one column: its trainable count and mean score with the 95% intervals of the score (items:
    a bootstrap over the benchmark's items; seeds: a t-interval over seeds), or why there is none."""

    row: str
    label: str
    budget: str  # the rank column: "r2 budget"
    params: int
    column: str
    mean: float | None
    item_low: float | None = None
    item_high: float | None = None
    seed_low: float | None = None
    seed_high: float | None = None
    n_seeds: int = 0
    reason: str = ""


def pareto_front(points: list[ScorePoint]) -> set[int]:
    """Indices of the non-dominated points: none other has at most its parameters and at least its score with one
    of the two strictly better."""
    have = [(i, p) for i, p in enumerate(points) if p.mean is not None]
    front = set()
    for i, p in have:
        if not any(q.params <= p.params and q.mean >= p.mean and (q.params < p.params or q.mean > p.mean)
                   for _, q in have):
            front.add(i)
    return front


def pareto_markdown(points: list[ScorePoint]) -> str:
    if not any(p.mean is not None for p in points):
        return ""
    front = pareto_front(points)
    lines = ["", f"## Score against trainable parameters ({COLUMNS[points[0].column].header})", "",
             "Mean over the finished seeds with 95% intervals of the score: a bootstrap over the benchmark's items "
             "(the per-item values averaged over seeds) and a t-interval over seeds (≥ 2 seeds). ★: on the "
             "non-dominated front (no other row has at most its parameters and at least its score).", "",
             "| row | budget | params | score | items 95% | seeds 95% | front |", "|---|---|---|---|---|---|---|"]
    for i, p in sorted(enumerate(points), key=lambda ip: (ip[1].params, ip[1].row)):
        if p.mean is None:
            continue
        items = f"[{p.item_low:.2f}, {p.item_high:.2f}]" if p.item_low is not None else f"— ({p.reason})"
        seeds = f"[{p.seed_low:.2f}, {p.seed_high:.2f}] over {p.n_seeds}" if p.seed_low is not None else "—"
        lines.append(f"| {p.label} | {p.budget} | {round(p.params):,} | {p.mean:.2f} | {items} | {seeds} | "
                     f"{'★' if i in front else ''} |")
    return "\n".join(lines) + "\n"


DODGE = 0.006  # log10 units between the centres of points drawn side by side (1.4% on the axis)


def dodged_x(params: list[float], step: float = DODGE) -> list[float]:
    """Where to draw points at ``params`` on a log axis so that no two sit closer than ``step`` (log10): in the
    order of ``params``, runs of points closer than that are spread ``step`` apart around the run's mean position
    (runs that then touch are merged and spread again), so rows at one count (every method solved to one budget)
    stay visible side by side; a point with no neighbour that close is drawn where it is."""
    order = sorted(range(len(params)), key=lambda i: (params[i], i))
    logs = [math.log10(max(params[i], 1)) for i in order]
    runs: list[list[int]] = []  # indices into ``order``; each run is spread around its mean log
    for j in range(len(order)):
        runs.append([j])
        while len(runs) > 1:
            left, right = runs[-2], runs[-1]
            if _spread(logs, right, step)[0] - _spread(logs, left, step)[-1] >= step - 1e-12:
                break
            runs[-2:] = [left + right]
    x = [0.0] * len(params)
    for run in runs:
        for j, at in zip(run, _spread(logs, run, step)):
            x[order[j]] = params[order[j]] if len(run) == 1 else 10 ** at
    return x


def _spread(logs: list[float], run: list[int], step: float) -> list[float]:
    centre = sum(logs[j] for j in run) / len(run)
    return [centre + (n - (len(run) - 1) / 2) * step for n in range(len(run))]


def pareto(points: list[ScorePoint], out: Path, title: str, baseline: float | None = None) -> bool:
    """Score against trainable parameters (log x), one point per row: thick bars the item interval, thin bars the
    seed interval, the front as a step line, ``baseline`` (the base model's score) dashed; False when no point.
    Rows at (nearly) the same count are drawn side by side (:func:`dodged_x`; the note under the axis says so),
    the front's line at the true counts."""
    drawn = [p for p in points if p.mean is not None]
    if not drawn:
        return False
    xs = dodged_x([p.params for p in drawn])
    dodged = any(abs(x - p.params) > 1e-9 * p.params for x, p in zip(xs, drawn))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = sorted((points[i] for i in pareto_front(points)), key=lambda p: p.params)
    labels = sorted({p.label for p in drawn})
    colors = {lab: matplotlib.colormaps["tab10"](i % 10) for i, lab in enumerate(labels)}
    markers = {b: m for b, m in zip(sorted({p.budget for p in drawn}), "osD^v")}
    fig, ax = plt.subplots(figsize=(8, 5))
    for p, x in zip(drawn, xs):
        c = colors[p.label]
        if p.seed_low is not None:
            ax.plot([x, x], [p.seed_low, p.seed_high], color=c, lw=0.8, alpha=0.6)
        if p.item_low is not None:
            ax.plot([x, x], [p.item_low, p.item_high], color=c, lw=3, alpha=0.8)
        ax.scatter([x], [p.mean], color=c, marker=markers[p.budget], s=45, zorder=3, edgecolor="black", lw=0.5)
    ax.step([p.params for p in front], [p.mean for p in front], where="post", color="black", lw=1, ls="-",
            label="non-dominated front")
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="base model")
    for lab in labels:
        ax.scatter([], [], color=colors[lab], marker="o", label=lab)
    for b, m in markers.items():
        ax.scatter([], [], color="white", edgecolor="black", marker=m, label=b)
    lows = [x for p in drawn for x in (p.mean, p.item_low, p.seed_low) if x is not None]
    highs = [x for p in drawn for x in (p.mean, p.item_high, p.seed_high) if x is not None]
    ax.set_ylim(max(min(lows) - 5, -5), min(max(highs) + 5, 105))  # a 3-seed t-interval can leave 0..100
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)" + (
        "; rows at nearly the same count drawn side by side (exact counts: the table)" if dodged else ""),
        fontsize=9 if dodged else None)
    ax.set_ylabel(COLUMNS[drawn[0].column].header)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True
