"""The figures of an experiment, drawn from its cell files: Figure 2's heatmap (unshared rank x learning rate,
with its Markdown/CSV twin) and the training-loss curves of each cell."""

from __future__ import annotations

import csv
import io
import math
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
