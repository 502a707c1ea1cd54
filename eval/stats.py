"""Paired significance for comparing two evaluation runs: Δ = B − A with a confidence interval.

Gaps between methods (0.2–1.5 points) are about the size of the evaluation noise, so a table should say
how sure a Δ is.  Two sources of noise, two tools:

* **Items** (which test questions happen to be in the benchmark): :func:`paired_bootstrap` resamples the
  items of one A run and one B run scored on the SAME items, :func:`paired_bootstrap_pass_at_k` does the
  same for HumanEval problems with ``n`` samples each.  Both use :func:`scipy.stats.bootstrap` (BCa).
* **Training seeds**: :func:`seed_interval` — a paired (or Welch) t-interval over per-seed scores.

Everything returns an :class:`Interval` in the units given (0/1 scores → a difference of fractions;
``Interval.scaled(100)`` turns that into percentage points).  For a results renderer::

    a = load_predictions("runs/lora/predictions/gsm.jsonl")
    b = load_predictions("runs/prolora/predictions/gsm.jsonl")
    iv = compare_records(a, b, field="correct").scaled(100)   # ids aligned, Δ in points
    f"{iv.delta:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]{'*' if iv.significant else ''}"

HumanEval records (``"passed"``: one boolean per sample) go through ``compare_records(a, b,
field="passed", k=1)``.  BBH / TyDi QA headline scores are macro averages over tasks / languages: pass
``groups=`` to :func:`paired_bootstrap`, or ``group_by`` to :func:`compare_records` (a record field, or a
function of the record: the saved records carry the group only in their id, e.g.
``group_by=lambda r: r["id"].split("/")[0]`` for BBH's ``"<task>/<i>"``, ``r["id"].split("-")[0]`` for
TyDi QA), so the Δ and its interval are of the same macro average the table shows.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from eval.metrics import pass_at_k

__all__ = [
    "Interval",
    "align_by_id",
    "compare_records",
    "load_predictions",
    "paired_bootstrap",
    "paired_bootstrap_pass_at_k",
    "pass_at_k_per_problem",
    "per_example_scores",
    "seed_interval",
]

# Resampled elements held at once (batch × n); bounds memory at ~32 MB of float64 whatever n is
# (MMLU: 14k items × 10k resamples would otherwise be a 1.1 GB index array, and BCa's jackknife n × n).
_MAX_BATCH_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """Δ = B − A with a two-sided ``confidence`` interval [low, high] (None when it cannot be formed).

    ``n``: items, problems or seeds (paired units) it rests on; ``method``: how it was computed, in words.
    """

    delta: float
    low: float | None
    high: float | None
    confidence: float
    n: int
    method: str

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (False when there is no interval)."""
        if self.low is None or self.high is None:
            return False
        return self.low > 0 or self.high < 0

    def scaled(self, factor: float) -> Interval:
        """Same interval in other units, e.g. ``scaled(100)``: fractions → percentage points."""
        return replace(self, delta=self.delta * factor,
                       low=None if self.low is None else self.low * factor,
                       high=None if self.high is None else self.high * factor)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


# --------------------------------------------------------------------------- item-level bootstrap
def _as_scores(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of per-item scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one scored item")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _group_codes(groups: Sequence[Hashable], n: int) -> np.ndarray:
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels for {n} items")
    _, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return codes.astype(np.intp)


def _macro_mean(d: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean over groups of the within-group mean of ``d`` along the last axis (``codes``: group of each
    element, same shape); a group absent from a resample is left out of that resample's average."""
    codes = np.broadcast_to(codes, d.shape)
    m = d.shape[-1]
    d2, c2 = d.reshape(-1, m), codes.reshape(-1, m)
    rows = d2.shape[0]
    flat = (np.arange(rows)[:, None] * n_groups + c2).ravel()
    sums = np.bincount(flat, weights=d2.ravel(), minlength=rows * n_groups).reshape(rows, n_groups)
    counts = np.bincount(flat, minlength=rows * n_groups).reshape(rows, n_groups)
    has = counts > 0
    means = np.where(has, sums / np.maximum(counts, 1), 0.0)
    return (means.sum(axis=1) / has.sum(axis=1)).reshape(d.shape[:-1])


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                     n_resamples: int = 10_000, seed: int = 0, groups: Sequence[Hashable] | None = None,
                     method: str = "BCa", label: str = "paired bootstrap") -> Interval:
    """Δ = mean(b) − mean(a) over the same items (same order), with a paired bootstrap interval.

    ``a``/``b``: per-item scores (0/1, or F1 in [0, 1] or [0, 100]; the units are kept).  Items are
    resampled with replacement, both runs together, by :func:`scipy.stats.bootstrap` (``method``:
    "BCa" by default — second-order accurate, and scipy's default; "percentile" / "basic" also
    accepted).  Resampling an item resamples its pair (a_i, b_i), so the statistic mean(b*) − mean(a*)
    equals the mean of the resampled differences d_i = b_i − a_i: the one-sample bootstrap of ``d``
    is exactly the paired bootstrap, at half the cost.  ``groups`` (one label per item, e.g. the BBH
    task or TyDi QA language): the statistic becomes the macro average over groups of the per-group
    Δ, as in those benchmarks' headline scores (items are still resampled jointly, not per group).

    Same inputs and ``seed`` → bit-identical interval.  When every d_i is equal (identical runs, or a
    single item) the bootstrap distribution is a point: the interval is exactly [Δ, Δ] (scipy would
    warn and return NaN).  If BCa is undefined on some other near-degenerate sample, the percentile
    interval of the same resamples is returned and ``method`` says so.
    """
    a_arr, b_arr = _as_scores(a, "a"), _as_scores(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired bootstrap needs scores of the same items: a has {a_arr.size} items, "
                         f"b has {b_arr.size}")
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = int(a_arr.size)
    d = b_arr - a_arr
    codes = None if groups is None else _group_codes(groups, n)
    if codes is None:
        delta = float(b_arr.mean() - a_arr.mean())
    else:
        n_groups = int(codes.max()) + 1
        delta = float(_macro_mean(d, codes, n_groups))
    what = f"{label}, {n} item{'s' if n != 1 else ''}" + ("" if codes is None else f", macro over {n_groups} groups")

    if np.all(d == d[0]):
        # Degenerate: every resample has the same statistic.  Handled here rather than letting scipy
        # emit DegenerateDataWarning and NaN; for identical runs this is exactly 0 and [0, 0].
        return Interval(delta, delta, delta, confidence, n,
                        f"{what}: every paired difference equal, zero-width interval")

    batch = max(1, min(n_resamples, _MAX_BATCH_ELEMENTS // n))
    if codes is None:
        data: tuple[np.ndarray, ...] = (d,)
        paired = False

        def statistic(x, axis=-1):
            return np.mean(x, axis=axis)
    else:
        data, paired = (d, codes), True

        def statistic(x, g, axis=-1):
            return _macro_mean(x, g, n_groups)

    def run(m: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 inside BCa's acceleration on odd data
            return stats.bootstrap(data, statistic, n_resamples=n_resamples, batch=batch, vectorized=True,
                                   paired=paired, confidence_level=confidence, method=m,
                                   rng=np.random.default_rng(seed))

    res = run(method)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    used = f"scipy {method}"
    if not (math.isfinite(low) and math.isfinite(high)):
        res = run("percentile")
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        used = f"scipy percentile ({method} undefined on this sample)"
    return Interval(delta, low, high, confidence, n, f"{what}, {used}, {n_resamples} resamples, seed {seed}")


def pass_at_k_per_problem(samples: Sequence[Sequence[bool]], k: int = 1, name: str = "samples") -> np.ndarray:
    """Unbiased pass@k (0..1) of each problem from its per-sample booleans (Chen et al. 2021,
    1 − C(n−c, k)/C(n, k) as the stable product of :func:`eval.metrics.pass_at_k`)."""
    if len(samples) == 0:
        raise ValueError(f"{name} is empty: need at least one problem")
    out = np.empty(len(samples))
    for i, s in enumerate(samples):
        flags = [bool(x) for x in s]
        if len(flags) < k:
            raise ValueError(f"{name}[{i}] has {len(flags)} samples; pass@{k} needs at least {k} per problem")
        out[i] = pass_at_k(len(flags), sum(flags), k)
    return out


def paired_bootstrap_pass_at_k(a_samples: Sequence[Sequence[bool]], b_samples: Sequence[Sequence[bool]],
                               k: int = 1, *, confidence: float = 0.95, n_resamples: int = 10_000,
                               seed: int = 0) -> Interval:
    """Δ of mean unbiased pass@k (0..1) between two runs on the same problems, problems resampled.

    ``a_samples[i]`` / ``b_samples[i]``: one boolean per sample for problem i (A and B may draw
    different numbers of samples).  A problem's pass@k estimate depends only on its own samples, so
    resampling problems (each with its n samples) is the paired bootstrap of the per-problem
    estimates: :func:`paired_bootstrap` on them, with the same determinism and degenerate handling.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(a_samples) != len(b_samples):
        raise ValueError(f"paired pass@k needs the same problems: a has {len(a_samples)} problems, "
                         f"b has {len(b_samples)}")
    a = pass_at_k_per_problem(a_samples, k, "a_samples")
    b = pass_at_k_per_problem(b_samples, k, "b_samples")
    return paired_bootstrap(a, b, confidence=confidence, n_resamples=n_resamples, seed=seed,
                            label=f"paired bootstrap of pass@{k} over problems")


# --------------------------------------------------------------------------- seed level
def _seed_scores(x: Mapping[Hashable, float] | Sequence[float], name: str) -> dict | list:
    if isinstance(x, Mapping):
        vals = {key: float(v) for key, v in x.items()}
        arr = np.asarray(list(vals.values()))
    else:
        vals = [float(v) for v in x]
        arr = np.asarray(vals)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one seed's score")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return vals


def seed_interval(a_by_seed: Mapping[Hashable, float] | Sequence[float],
                  b_by_seed: Mapping[Hashable, float] | Sequence[float], *, confidence: float = 0.95,
                  paired: bool | None = None) -> Interval:
    """Between-seed interval for Δ = mean over seeds of B − mean over seeds of A (a t-interval).

    ``a_by_seed`` / ``b_by_seed``: ``{seed: score}`` or plain lists of per-seed scores.  Paired when
    ``paired`` is True, or by default when both are mappings with the same seed ids (same seed → same
    data order / init, so the per-seed differences cancel the shared part): the paired t-interval of
    the differences (:func:`scipy.stats.ttest_rel`, df = n − 1).  Otherwise Welch's unequal-variance
    t-interval (:func:`scipy.stats.ttest_ind`, ``equal_var=False``).

    Why a t-interval and not a bootstrap: with 2–3 seeds a bootstrap has only 3 (n=2) or 10 (n=3)
    distinct resamples and its percentile interval ignores that the spread itself is estimated from
    1–2 degrees of freedom, so it is far too narrow.  The t-interval pays for that honestly
    (t₀.₉₇₅ = 12.7 with 2 seeds, 4.30 with 3), assuming roughly normal seed-to-seed variation.

    Fewer than 2 seeds (pairs, or on either side when unpaired): ``low``/``high`` are None and
    ``method`` says why.  Zero spread (all differences equal): a zero-width interval, said in ``method``.
    ``n`` is the number of pairs (paired) or the smaller side's seed count (unpaired).
    """
    _check_confidence(confidence)
    a, b = _seed_scores(a_by_seed, "a_by_seed"), _seed_scores(b_by_seed, "b_by_seed")
    both_maps = isinstance(a, dict) and isinstance(b, dict)
    if paired is None:
        paired = both_maps and set(a) == set(b)
    if paired:
        if both_maps:
            if set(a) != set(b):
                raise ValueError(f"paired seeds need the same seed ids: only in a {sorted(set(a) - set(b), key=str)}, "
                                 f"only in b {sorted(set(b) - set(a), key=str)}")
            keys = sorted(a, key=str)
            av, bv = np.array([a[s] for s in keys]), np.array([b[s] for s in keys])
        elif isinstance(a, dict) or isinstance(b, dict):
            raise ValueError("paired=True needs both sides keyed by seed, or both as lists in the same seed order")
        else:
            if len(a) != len(b):
                raise ValueError(f"paired seeds need equal counts: a has {len(a)}, b has {len(b)}")
            av, bv = np.array(a), np.array(b)
        diffs = bv - av
        n = int(diffs.size)
        delta = float(diffs.mean())
        what = f"paired t-interval over {n} seed{'s' if n != 1 else ''}"
        if n < 2:
            return Interval(delta, None, None, confidence, n, f"{what}: fewer than 2 seeds, no between-seed interval")
        if np.all(diffs == diffs[0]):
            return Interval(delta, delta, delta, confidence, n,
                            f"{what}: every per-seed difference equal, zero-width interval")
        ci = stats.ttest_rel(bv, av).confidence_interval(confidence_level=confidence)
        return Interval(delta, float(ci.low), float(ci.high), confidence, n, f"{what} (df={n - 1})")

    av = np.array(list(a.values()) if isinstance(a, dict) else a)
    bv = np.array(list(b.values()) if isinstance(b, dict) else b)
    delta = float(bv.mean() - av.mean())
    n = int(min(av.size, bv.size))
    what = f"Welch t-interval, unpaired seeds (a: {av.size}, b: {bv.size})"
    if n < 2:
        return Interval(delta, None, None, confidence, n,
                        f"{what}: fewer than 2 seeds on a side, no between-seed interval")
    if np.all(av == av[0]) and np.all(bv == bv[0]):
        return Interval(delta, delta, delta, confidence, n, f"{what}: no spread on either side, zero-width interval")
    res = stats.ttest_ind(bv, av, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return Interval(delta, float(ci.low), float(ci.high), confidence, n, f"{what} (df={float(res.df):.2f})")


# --------------------------------------------------------------------------- prediction files
def load_predictions(path: str | Path) -> list[dict]:
    """The records of a ``predictions/<task>.jsonl`` written by :func:`eval.driver.write_results`."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def align_by_id(a_records: Sequence[Mapping], b_records: Sequence[Mapping], *, key: str = "id"
                ) -> tuple[list[Mapping], list[Mapping]]:
    """Both record lists in A's order, matched on ``key``; ValueError on a missing key, a duplicate id,
    or id sets that differ (the two runs must have scored the same examples)."""
    def index(records: Sequence[Mapping], side: str) -> dict:
        out: dict = {}
        for i, rec in enumerate(records):
            if key not in rec:
                raise ValueError(f"{side} record {i} has no {key!r} field")
            rid = rec[key]
            if rid in out:
                raise ValueError(f"{side} has duplicate {key} {rid!r}")
            out[rid] = rec
        return out

    a_idx, b_idx = index(a_records, "a"), index(b_records, "b")
    if a_idx.keys() != b_idx.keys():
        only_a = sorted(set(a_idx) - set(b_idx), key=str)
        only_b = sorted(set(b_idx) - set(a_idx), key=str)
        raise ValueError(f"the runs scored different examples: {len(only_a)} ids only in a "
                         f"(e.g. {only_a[:5]}), {len(only_b)} only in b (e.g. {only_b[:5]})")
    return list(a_idx.values()), [b_idx[rid] for rid in a_idx]


def per_example_scores(records: Sequence[Mapping], field: str = "correct") -> np.ndarray:
    """``records[i][field]`` as floats (booleans → 0/1); ValueError naming the first record without it."""
    out = np.empty(len(records))
    for i, rec in enumerate(records):
        if field not in rec:
            raise ValueError(f"record {i} (id {rec.get('id')!r}) has no {field!r} field")
        out[i] = float(rec[field])
    return out


def compare_records(a_records: Sequence[Mapping], b_records: Sequence[Mapping], *, field: str = "correct",
                    k: int = 1, key: str = "id", group_by: str | Callable[[Mapping], Hashable] | None = None,
                    confidence: float = 0.95,
                    n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """Align two runs' prediction records by ``key`` and bootstrap Δ of ``field`` (units kept: 0/1 →
    fractions).  A list-valued field (HumanEval's ``"passed"``, one boolean per sample) → pass@``k``;
    ``group_by`` (a field name, or a function of the record) → macro average over its values."""
    a, b = align_by_id(a_records, b_records, key=key)
    if a and field in a[0] and isinstance(a[0][field], (list, tuple)):
        if group_by is not None:
            raise ValueError("group_by is not supported for pass@k fields")
        return paired_bootstrap_pass_at_k([r[field] for r in a], [r[field] for r in b], k,
                                          confidence=confidence, n_resamples=n_resamples, seed=seed)
    groups = None
    if callable(group_by):
        groups = [group_by(rec) for rec in a]
    elif group_by is not None:
        groups = []
        for i, rec in enumerate(a):
            if group_by not in rec:
                raise ValueError(f"record {i} (id {rec.get(key)!r}) has no {group_by!r} field")
            groups.append(rec[group_by])
    return paired_bootstrap(per_example_scores(a, field), per_example_scores(b, field), confidence=confidence,
                            n_resamples=n_resamples, seed=seed, groups=groups)
