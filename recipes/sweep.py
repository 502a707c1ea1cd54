"""Sweep summary: which learning rate won, per method, from the result files of a multirun or experiment dir.

    python -m recipes.sweep multirun/adhoc/2026-11-30_10-00-00          # a `train.py -m` sweep + its evaluations
    python -m recipes.sweep outputs/figure2 --metric gsm                 # any dir holding runs (or a results dir
    python -m recipes.sweep results/figure2                              #  with cells/*.json from the runner)

Reads only files: every training run under the directory (``<run>/final/run.json`` and ``<run>/metrics.jsonl``)
and every evaluation of those checkpoints (``eval.json``, found under the directory, or through the runner's
cell files); never a W&B server.  Runs are grouped by what they share apart from the learning rate and the
seed (same method, rank settings, dataset, steps, ...: the run identity without ``optim.lr`` and ``seed``);
within a group, each LR gets its score's mean ± sample std over seeds and its final training loss (run.json's
``final_loss``: the mean loss of the last 10 optimizer steps), mean ± std.

The score is the benchmark the training dataset maps to (its config's ``eval_tasks``: the first one that has
an evaluation; its first column), or ``--metric`` (a column name such as ``gsm_em`` or its short name ``gsm``).
The best LR of a group is the one with the highest mean score (the first of equals in LR order); a group
without scores gets no best LR.  Two evaluations of one checkpoint that disagree on the metric are an
error naming both (choose with ``--eval-glob``), never a silent pick.

Writes ``sweep.md``, ``sweep.csv`` and ``sweep.png`` (score and final loss against LR, one line per group,
the best LR starred) into ``--out`` (default: the directory), and prints the table and each best LR.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prolora.io import read_json_object, write_text_atomic
from recipes.paper.facts import COLUMNS, DASH


class SweepError(ValueError):
    """The directory's files cannot be summarised as asked (no runs, conflicting evaluations, unknown metric)."""


@dataclass
class RunResult:
    run_dir: Path
    group: str  # what the runs of one line share (method, ranks, dataset, steps, ...)
    label: str  # the group in words: method tag + dataset (+ a hash when two groups would read alike)
    dataset: str
    lr: float
    seed: int
    final_loss: float | None
    column: str | None = None
    score: float | None = None
    eval_path: Path | None = None
    n_examples: int | None = None
    subset: bool = False
    protocol: str | None = None


@dataclass
class LrRow:
    lr: float
    scores: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subset: bool = False

    @property
    def score(self) -> tuple[float | None, float | None]:
        return _mean_std(self.scores)

    @property
    def loss(self) -> tuple[float | None, float | None]:
        return _mean_std(self.losses)


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


# ------------------------------------------------------------------------------------------------ finding
def _cell_paths(root: Path) -> tuple[list[Path], list[Path]]:
    """Run and eval dirs named by the runner's cell files under ``root`` (``cells/*.json``, done ones)."""
    runs, evals = [], []
    for path in sorted(root.rglob("cells/*.json")):
        rec = read_json_object(path)
        if not isinstance(rec, dict) or rec.get("status") != "done":
            continue
        paths = rec.get("paths") or {}
        if paths.get("run_dir"):
            runs.append(Path(paths["run_dir"]))
        if paths.get("eval_dir"):
            evals.append(Path(paths["eval_dir"]))
    return runs, evals


def find_runs(root: Path) -> list[Path]:
    """Every finished training run under ``root`` (dirs with ``final/run.json``), and those its cell files name."""
    found = {p.parent.parent.resolve() for p in root.rglob("final/run.json")}
    found |= {p.resolve() for p in _cell_paths(root)[0] if (p / "final" / "run.json").exists()}
    return sorted(found)


def find_evals(root: Path, eval_glob: str | None = None) -> dict[Path, list[tuple[Path, dict]]]:
    """Evaluations under ``root`` (and those the cell files name), by the checkpoint they scored."""
    paths = set(root.rglob("eval.json")) | {d / "eval.json" for d in _cell_paths(root)[1] if (d / "eval.json").exists()}
    out: dict[Path, list[tuple[Path, dict]]] = {}
    for path in sorted(p.resolve() for p in paths):
        if eval_glob and not fnmatch.fnmatch(str(path.parent), eval_glob):
            continue
        ev = read_json_object(path)
        adapter = ((ev or {}).get("model") or {}).get("adapter_dir") if isinstance(ev, dict) else None
        if adapter:
            out.setdefault(Path(adapter).resolve(), []).append((path, ev))
    return out


# ------------------------------------------------------------------------------------------------ reading
def resolve_metric(metric: str) -> str:
    """A column id (``gsm_em``) from itself or its short name (``gsm``)."""
    if metric in COLUMNS:
        return metric
    for col, column in COLUMNS.items():
        if column.key == metric:
            return col
    raise SweepError(f"--metric {metric}: unknown; use one of {sorted(COLUMNS)} or their short names "
                     f"{sorted(column.key for column in COLUMNS.values())}")


def _group_key(run_json: dict) -> str:
    identity = json.loads(json.dumps(run_json.get("identity") or {}, default=str))
    identity.pop("seed", None)
    (identity.get("optim") or {}).pop("lr", None)
    for part in ("dataset", "model"):  # where the files lie does not make another setting
        (identity.get(part) or {}).pop("train_file", None)
    identity.pop("data_sha256", None)
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


def _label(run_json: dict) -> str:
    import prolora

    try:
        tag = prolora.config_from_dict(run_json.get("adapter") or {}).tag()
    except Exception:  # noqa: BLE001  (an adapter this version does not know: name it as recorded)
        tag = str(run_json.get("method"))
    return tag


def _score(run: RunResult, run_json: dict, evals: list[tuple[Path, dict]], metric: str | None) -> None:
    """Fill ``run``'s score from its evaluations: ``metric`` or its dataset's first evaluated benchmark."""
    col = metric
    if col is None:
        tasks = ((run_json.get("config") or {}).get("dataset") or {}).get("eval_tasks") or []
        evaluated = {t for _, ev in evals for t in (ev.get("tasks") or {})}
        task = next((t for t in tasks if t in evaluated), tasks[0] if tasks else None)
        col = next((c for c, column in COLUMNS.items() if column.task == task), None)
    if col is None:
        return
    task, metric_key = COLUMNS[col].task, COLUMNS[col].metric
    run.column = col
    found = [(path, ev, ev["tasks"][task]) for path, ev in evals
             if isinstance((ev.get("tasks") or {}).get(task), dict) and metric_key in ev["tasks"][task]]
    values = {round(float(entry[metric_key]), 9) for _, _, entry in found}
    if len(values) > 1:
        raise SweepError(f"{run.run_dir}: {len(found)} evaluations score {col} differently "
                         f"({', '.join(f'{p.parent}: {e[metric_key]:.4g}' for p, _, e in found)}): pass --eval-glob "
                         "to choose which evaluation directories count")
    if found:
        path, ev, entry = found[0]
        run.score, run.eval_path = float(entry[metric_key]), path
        run.n_examples, run.subset, run.protocol = entry.get("n_examples"), bool(entry.get("subset")), ev.get("protocol")


def collect(root: Path, metric: str | None = None, eval_glob: str | None = None) -> list[RunResult]:
    """Every run under ``root`` with its LR, seed, final loss and score."""
    root = Path(root)
    if not root.is_dir():
        raise SweepError(f"{root}: no such directory (give the multirun / experiment / results directory)")
    metric = resolve_metric(metric) if metric else None
    evals = find_evals(root, eval_glob)
    runs = []
    for run_dir in find_runs(root):
        run_json = read_json_object(run_dir / "final" / "run.json")
        if not isinstance(run_json, dict):
            print(f"warning: {run_dir / 'final' / 'run.json'} is unreadable; skipped", file=sys.stderr)
            continue
        config = run_json.get("config") or {}
        run = RunResult(run_dir=run_dir, group=_group_key(run_json), label=_label(run_json),
                        dataset=str((config.get("dataset") or {}).get("name")),
                        lr=float((config.get("optim") or {}).get("lr")), seed=int(config.get("seed")),
                        final_loss=run_json.get("final_loss"))
        _score(run, run_json, evals.get((run_dir / "final").resolve(), []), metric)
        runs.append(run)
    if not runs:
        raise SweepError(f"{root}: no finished training runs (<run>/final/run.json) below it")
    # two settings that would read alike (e.g. another max_steps) get their group hash in the label
    labels: dict[tuple[str, str], set[str]] = {}
    for r in runs:
        labels.setdefault((r.label, r.dataset), set()).add(r.group)
    for r in runs:
        if len(labels[(r.label, r.dataset)]) > 1:
            r.label = f"{r.label} [{r.group}]"
    return runs


@dataclass
class Group:
    label: str
    dataset: str
    column: str | None
    rows: list[LrRow]
    best: LrRow | None
    protocol: str | None


def summarize(runs: list[RunResult]) -> list[Group]:
    by: dict[tuple[str, str], list[RunResult]] = {}
    for r in runs:
        by.setdefault((r.dataset, r.label), []).append(r)
    groups = []
    for (dataset, label), members in sorted(by.items()):
        rows: dict[float, LrRow] = {}
        for r in sorted(members, key=lambda r: (r.lr, r.seed)):
            row = rows.setdefault(r.lr, LrRow(lr=r.lr))
            row.seeds.append(r.seed)
            if r.final_loss is not None and math.isfinite(r.final_loss):
                row.losses.append(float(r.final_loss))
            if r.score is not None:
                row.scores.append(r.score)
                row.subset |= r.subset
        ordered = [rows[lr] for lr in sorted(rows)]
        scored = [row for row in ordered if row.scores]
        best = max(scored, key=lambda row: row.score[0]) if scored else None  # type: ignore[arg-type,return-value]
        columns = {r.column for r in members if r.column}
        protocols = {r.protocol for r in members if r.protocol}
        groups.append(Group(label=label, dataset=dataset, column=columns.pop() if len(columns) == 1 else None,
                            rows=ordered, best=best, protocol=protocols.pop() if len(protocols) == 1 else None))
    return groups


# ------------------------------------------------------------------------------------------------ output
def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return DASH
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _header(col: str | None) -> str:
    if col is None:
        return "score"
    return COLUMNS[col].header


def markdown(groups: list[Group], root: Path) -> str:
    lines = [f"# LR sweep: {root}", "",
             "Score: the benchmark the training dataset maps to, mean ± sample std over seeds (percent); "
             "final loss: mean training loss of the last 10 steps, mean ± std over seeds; ★ the best LR of its group; "
             "ˢ scored on a subset of the benchmark.", "",
             "| dataset | method | lr | score | seeds | final loss | best |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        for row in g.rows:
            score = _fmt(*row.score) + (" ˢ" if row.subset and row.scores else "")
            lines.append(f"| {g.dataset} | {g.label} | {row.lr:g} | {_header(g.column)} {score} | "
                         f"{len(row.scores)}/{len(row.seeds)} | {_fmt(*row.loss, digits=4)} | "
                         f"{'★' if row is g.best else ''} |")
    lines += ["", "Best LR per group:"]
    lines += [f"- {line}" for line in best_lines(groups)]
    return "\n".join(lines) + "\n"


def best_lines(groups: list[Group]) -> list[str]:
    out = []
    for g in groups:
        if g.best is None:
            out.append(f"{g.label} on {g.dataset}: no evaluated run, no best LR")
        else:
            out.append(f"{g.label} on {g.dataset}: best lr {g.best.lr:g} ({_header(g.column)} "
                       f"{_fmt(*g.best.score)} over {len(g.best.scores)} seed(s), final loss {_fmt(*g.best.loss, 4)}"
                       f"{', protocol ' + g.protocol if g.protocol else ''})")
    return out


def csv_text(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "method", "column", "lr", "score_mean", "score_std", "n_scored", "n_runs",
                "final_loss_mean", "final_loss_std", "best", "subset", "seeds"])
    for g in groups:
        for row in g.rows:
            (sm, ss), (lm, ls) = row.score, row.loss
            w.writerow([g.dataset, g.label, g.column or "", f"{row.lr:g}", "" if sm is None else f"{sm:.4f}",
                        "" if ss is None else f"{ss:.4f}", len(row.scores), len(row.seeds),
                        "" if lm is None else f"{lm:.6f}", "" if ls is None else f"{ls:.6f}", int(row is g.best),
                        int(row.subset), " ".join(map(str, row.seeds))])
    return buf.getvalue()


def plot(groups: list[Group], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_s, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    for g in groups:
        name = f"{g.label} ({g.dataset})"
        pts = [(row.lr, *row.score) for row in g.rows if row.scores]
        if pts:
            line = ax_s.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0.0 for p in pts],
                                 marker="o", capsize=3, label=name)
            if g.best is not None:
                ax_s.plot([g.best.lr], [g.best.score[0]], marker="*", markersize=16, color=line[0].get_color(),
                          markeredgecolor="black")
        lpts = [(row.lr, *row.loss) for row in g.rows if row.losses]
        if lpts:
            ax_l.errorbar([p[0] for p in lpts], [p[1] for p in lpts], yerr=[p[2] or 0.0 for p in lpts], marker="o",
                          capsize=3, label=name)
    every_lr = sorted({row.lr for g in groups for row in g.rows})
    for ax in (ax_s, ax_l):
        if len(every_lr) > 1:
            ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(every_lr, [f"{lr:g}" for lr in every_lr])
    cols = {g.column for g in groups if g.column}
    ax_s.set_ylabel(" / ".join(sorted(_header(c) for c in cols)) + " (%)" if cols else "score (%)")
    ax_s.set_title("benchmark score (mean ± std over seeds; ★ best LR)", fontsize=9)
    ax_l.set_ylabel("final training loss")
    ax_l.set_title("final training loss (mean ± std over seeds)", fontsize=9)
    for ax in (ax_s, ax_l):
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    handles, labels = ax_l.get_legend_handles_labels()
    if handles:
        ax_l.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a multirun / experiment / results directory")
    p.add_argument("--metric", help="the column to pick LRs by (e.g. gsm_em or gsm); default: each dataset's benchmark")
    p.add_argument("--eval-glob", help="only evaluations whose directory matches this glob count")
    p.add_argument("--out", help="where sweep.md/.csv/.png go (default: the directory)")
    args = p.parse_args(argv)
    root = Path(args.dir)
    try:
        groups = summarize(collect(root, args.metric, args.eval_glob))
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else root
    md = markdown(groups, root)
    write_text_atomic(out / "sweep.md", md)
    write_text_atomic(out / "sweep.csv", csv_text(groups))
    plot(groups, out / "sweep.png", f"LR sweep: {root.name}")
    print(md)
    for name in ("sweep.md", "sweep.csv", "sweep.png"):
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
