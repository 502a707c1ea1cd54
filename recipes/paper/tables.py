"""An experiment's table, built from its cell result files only, next to the paper's numbers.

Each value is our mean ± sample std (n-1) over the seeds that finished, with the paper's value and ours − paper
beside it; a row with two variants ("4/8", "16/32") or several LRs (``--lr-sweep``) keeps, per benchmark, the
candidate with the better mean, as the paper does, and names it ([r32], [lr 0.01]).  ``n=2/3``: only 2 of the
3 planned seeds are in; ``†``: the pick was made while another candidate still had missing seeds, so it may
change; ``—``: no result yet (never filled in); Avg. = the mean of the row's columns as the paper computes it
(only when every column has a value); ``ˢ``: at least one number behind the value was scored on a subset of
the benchmark (the cell file's ``subsets``): not comparable to the paper.

Gives the Markdown and CSV text (and Table 4's 2 x 2 sharing/rotation grid, and for the matched-budget layout the
measured training cost of each row: step time and peak memory from the same runs); :mod:`recipes.paper.render`
writes them with the figures and the significance of the compared rows.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from recipes.paper.facts import COLUMNS, DASH, Index, Value, csv_number, fmt_int, fmt_lr, lr_key, summarize
from recipes.paper.grid import Row, dataset_of
from recipes.paper.plan import count_params, paper_formula_count, params_check


@dataclass
class TableRow:
    row: Row
    values: dict[str, Value]
    params: list[int | None]
    params_paper: str | None
    params_flag: str
    avg: Value
    notes: list[str] = field(default_factory=list)


def row_values(exp: DictConfig, row: Row, index: Index, ref_row: dict[str, Any]) -> dict[str, Value]:
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
                                                 f"lr {fmt_lr(lr)}" if many_lrs else "") if x)
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


def build_table(cfg: DictConfig, grid_rows: list[Row], index: Index, ref: dict[str, Any],
                counts: bool = True) -> list[TableRow]:
    exp = cfg.experiment
    rows = []
    for row in grid_rows:
        ref_row = (ref.get("rows") or {}).get(row.id, {})
        values = row_values(exp, row, index, ref_row)
        params = [count_params(exp.model, v.method) for v in row.variants] if counts else []
        flag = ""
        notes: list[str] = []
        for v, n in zip(row.variants, params):
            chk = params_check(n, ref_row.get("params"), paper_formula_count(exp.model, v.method))
            if chk.startswith("MISMATCH"):
                flag = "≠"
                if ref_row.get("params_note") and ref_row["params_note"] not in notes:
                    notes.append(ref_row["params_note"])
        avg = Value(paper=ref_row.get("avg"))
        if exp.avg and all(values[c].mean is not None for c in exp.columns):
            avg.mean = statistics.fmean(values[c].mean for c in exp.columns)  # type: ignore[misc]
            avg.n = avg.planned = 1
            avg.subset = any(values[c].subset for c in exp.columns)
            avg.modified = any(values[c].modified for c in exp.columns)
        if ref_row.get("note"):
            notes.append(ref_row["note"])
        rows.append(TableRow(row=row, values=values, params=params, params_paper=ref_row.get("params"),
                             params_flag=flag, avg=avg, notes=notes))
    return rows


# --------------------------------------------------------------------------------------------- output


def params_text(tr: TableRow) -> str:
    if tr.row.eval_only:
        return "-"
    ours = " / ".join(fmt_int(n) for n in tr.params) if tr.params else DASH
    if tr.params_paper:
        ours += f" ({tr.params_paper}{' ' + tr.params_flag if tr.params_flag else ''})"
    return ours


def markdown(cfg: DictConfig, table: list[TableRow], ref: dict[str, Any], records: list[dict[str, Any]]) -> str:
    exp = cfg.experiment
    cols = list(exp.columns)
    heads = ["Method", "Rank", "Param. ours (paper)"] + [COLUMNS[c].header for c in cols] + (["Avg."] if exp.avg else [])
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
                 "ᵐ: a checkpoint behind it was modified after training and scored anyway (allow_modified=true); "
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
        task = COLUMNS[col].task
        seen = set()
        for r in records:
            entry = (((r.get("eval") or {}).get("tasks") or {}).get(task)) or {}
            if entry.get("n_examples") is not None:
                seen.add((entry["n_examples"], entry.get("full_size") or entry.get("n_available"),
                          bool(entry.get("subset"))))
        for n, of, sub in sorted(seen, key=str):
            sizes.append(f"{COLUMNS[col].header} {n:,}" + (f" of {of:,}" if of else "") + (" (a subset)" if sub else ""))
    out = [f"Cells ran at git commit(s) {', '.join(commits)}."]
    if steps:
        out.append(f"Training steps per cell: {', '.join(str(x) for x in steps)}.")
    if sizes:
        out.append(f"Examples scored: {'; '.join(sizes)}.")
    return out


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
            line += [csv_number(v.mean), csv_number(v.std), v.n, v.choice, int(v.subset), csv_number(v.paper), csv_number(v.delta)]
        if exp.avg:
            line += [csv_number(tr.avg.mean), csv_number(tr.avg.paper), csv_number(tr.avg.delta)]
        w.writerow(line)
    return buf.getvalue()


def share_rotate_grid(table: list[TableRow], col: str) -> str:
    """Table 4's layout: sharing dimension (rows) x rotation dimension (columns)."""
    by = {(tr.row.extra.get("share"), tr.row.extra.get("rotate")): tr for tr in table}
    lines = ["", f"Sharing \\ Rotation ({COLUMNS[col].header}), as the paper's Table 4:", "",
             "| Sharing / Rotation | Hidden. | Rank. |", "|---|---|---|"]
    for share in ("hidden", "rank"):
        cells = []
        for rot in ("hidden", "rank"):
            tr = by.get((share, rot))
            cells.append(tr.values[col].text() if tr else DASH)
        lines.append(f"| {share.capitalize()}. | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- cost


def row_cost(exp: DictConfig, row: Row, index: Index) -> dict[str, float] | None:
    """A trained row's measured cost, the mean over its finished seeds of each cell's ``cost`` (the runner reads it
    off the trainer's metrics.jsonl): median step time (s), the first step's peak (MiB) and the adapter's own
    tensors (MiB); None before any seed finished (or for runs that recorded no cost)."""
    if row.eval_only or not row.variants:
        return None
    ds = dataset_of(exp, exp.columns[0])
    lr = row.candidate_lrs(ds)[0]
    cells = index.cells.get((row.variants[0].id, ds, lr_key(lr)), {})
    costs = [rec.get("cost") or {} for rec in cells.values()]
    steps = [c["step_s_median"] for c in costs if c.get("step_s_median") is not None]
    peaks = [c for c in costs if c.get("step_peak_bytes") is not None and c.get("adapter_bytes") is not None]
    if not steps and not peaks:
        return None
    mib = 2**20
    out = {"n": float(len(costs)), "step_s": statistics.fmean(steps) if steps else None}
    if peaks:
        out["peak_mib"] = statistics.fmean((c["step_peak_bytes"] + c["adapter_bytes"]) / mib for c in peaks)
        out["adapter_mib"] = statistics.fmean(c["adapter_bytes"] / mib for c in peaks)
    return out


def cost_markdown(cfg: DictConfig, table: list[TableRow], index: Index, baselines: dict[str, str]) -> str:
    """Each trained row's measured step time and peak memory, and their ratios to its baseline row (LoRA at the
    same budget), from the same runs as the scores."""
    exp = cfg.experiment
    costs = {tr.row.id: row_cost(exp, tr.row, index) for tr in table}
    if not any(costs.values()):
        return ""
    recorded = [rec["cost"] for cells in index.cells.values() for rec in cells.values() if rec.get("cost")]
    methods = sorted({c.get("memory_method") or "cpu profiler allocation peak" for c in recorded
                      if c.get("step_peak_bytes") is not None})  # costs recorded before the method was named
    lines = ["", "## Training cost (the same runs)", "",
             "Step: the median wall time of a cell's logged steps (its first, measured step left out), mean over "
             "seeds. Peak: the first step's memory above the frozen base model (activations, gradients, the "
             "optimizer's moments; measured as: " + "; ".join(methods or ["—"]) + ") plus the adapter's own tensors "
             "(trained and frozen). Ratios against the row's baseline. CPU step times on a shared machine wander "
             "(±20% and more); the memory is counted, not sampled.", "",
             "| row | budget | params | step (s) | × baseline | peak (MiB) | adapter (MiB) | × baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for tr in table:
        c = costs.get(tr.row.id)
        if not c:
            continue
        base = costs.get(baselines.get(tr.row.id, ""))
        step_x = f"{c['step_s'] / base['step_s']:.2f}" if base and base.get("step_s") and c.get("step_s") else ""
        peak_x = f"{c['peak_mib'] / base['peak_mib']:.2f}" if base and base.get("peak_mib") and c.get("peak_mib") \
            else ""
        step = f"{c['step_s']:.3f}" if c.get("step_s") is not None else DASH
        peak = f"{c['peak_mib']:.2f}" if c.get("peak_mib") is not None else DASH
        adapter = f"{c['adapter_mib']:.3f}" if c.get("adapter_mib") is not None else DASH
        lines.append(f"| {tr.row.label} | {tr.row.rank} | {fmt_int(max(tr.params)) if tr.params else DASH} | "
                     f"{step} | {step_x} | {peak} | {adapter} | {peak_x} |")
    return "\n".join(lines) + "\n"
