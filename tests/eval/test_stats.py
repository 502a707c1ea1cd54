"""eval.stats: paired bootstrap (items, pass@k problems), seed-level t-intervals, record alignment."""

import itertools
import json
import math
import random
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from eval.stats import (
    Interval,
    align_by_id,
    compare_records,
    load_predictions,
    paired_bootstrap,
    paired_bootstrap_pass_at_k,
    pass_at_k_per_problem,
    seed_interval,
)


def _b_better_on(n=1000, extra=80, seed=1):
    """A correct on ~half the items; B = A plus `extra` of A's wrong items right: Δ is exactly extra/n."""
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.5).astype(float)
    b = a.copy()
    b[rng.choice(np.flatnonzero(a == 0), extra, replace=False)] = 1.0
    return a, b


# --------------------------------------------------------------------------- paired_bootstrap
def test_interval_covers_the_known_delta_excludes_zero_and_has_paired_width():
    a, b = _b_better_on()
    iv = paired_bootstrap(a, b)
    assert iv.delta == pytest.approx(0.08, abs=1e-12)
    assert iv.low < 0.08 < iv.high
    assert iv.low > 0 and iv.significant
    assert iv.n == 1000 and iv.confidence == 0.95 and "BCa" in iv.method
    # Paired: the width follows the spread of the differences d = b - a (normal approximation), not the
    # much larger spread of two independent proportions (which would give about ±0.044).
    se = np.std(b - a, ddof=1) / math.sqrt(len(a))
    assert iv.low == pytest.approx(0.08 - 1.96 * se, abs=0.004)
    assert iv.high == pytest.approx(0.08 + 1.96 * se, abs=0.004)


def test_interval_covers_the_population_delta():
    # Items drawn from a population where B alone is right 10% of the time and A alone 2%: true Δ = 0.08.
    rng = np.random.default_rng(7)
    u = rng.random(1000)
    both = u < 0.50
    a = (both | (u >= 0.98)).astype(float)
    b = (both | ((u >= 0.50) & (u < 0.60))).astype(float)
    iv = paired_bootstrap(a, b, n_resamples=4000, seed=3)
    assert iv.low < 0.08 < iv.high
    assert iv.low > 0
    assert iv.high - iv.low < 0.05


def test_f1_scores_keep_their_units_and_scaled_converts():
    a, b = _b_better_on(n=400, extra=40)
    iv01 = paired_bootstrap(a, b, n_resamples=2000)
    iv100 = paired_bootstrap(100 * a, 100 * b, n_resamples=2000)
    assert iv100.delta == pytest.approx(100 * iv01.delta)
    assert iv100.low == pytest.approx(100 * iv01.low) and iv100.high == pytest.approx(100 * iv01.high)
    scaled = iv01.scaled(100)
    assert (scaled.delta, scaled.low, scaled.high) == pytest.approx((iv100.delta, iv100.low, iv100.high))
    assert scaled.n == iv01.n and scaled.method == iv01.method


def test_identical_runs_give_exactly_zero_without_warnings():
    rng = np.random.default_rng(0)
    a = (rng.random(500) < 0.4).astype(float)
    f1 = rng.random(500) * 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's DegenerateDataWarning / RuntimeWarning would raise here
        for x in (a, f1, [True, False, True]):
            iv = paired_bootstrap(x, x)
            assert (iv.delta, iv.low, iv.high) == (0.0, 0.0, 0.0)
            assert not iv.significant and "zero-width" in iv.method
            assert not any(isinstance(v, float) and math.isnan(v) for v in iv.to_dict().values())


def test_constant_difference_and_single_item_are_zero_width_at_delta():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv = paired_bootstrap([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
        assert (iv.delta, iv.low, iv.high) == (1.0, 1.0, 1.0) and iv.significant
        one = paired_bootstrap([0.0], [1.0])
        assert (one.delta, one.low, one.high, one.n) == (1.0, 1.0, 1.0, 1)
        assert "zero-width" in one.method


def test_same_seed_is_bit_identical_and_another_seed_differs():
    a, b = _b_better_on(n=300, extra=20)
    a += np.linspace(0, 0.3, 300)  # continuous scores, so endpoints are not restricted to a coarse grid
    first = paired_bootstrap(a, b, seed=11, n_resamples=3000)
    again = paired_bootstrap(list(a), list(b), seed=11, n_resamples=3000)
    assert first == again
    other = paired_bootstrap(a, b, seed=12, n_resamples=3000)
    assert other.delta == first.delta
    assert (other.low, other.high) != (first.low, first.high)


def test_groups_give_the_macro_average_delta():
    rng = np.random.default_rng(5)
    sizes = {"small": 30, "big": 300}
    groups = [g for g, m in sizes.items() for _ in range(m)]
    a = np.zeros(len(groups))
    b = np.concatenate([np.ones(30), (rng.random(300) < 0.1).astype(float)])  # small: +1.0, big: ~+0.1
    macro = np.mean([b[: 30].mean() - a[: 30].mean(), b[30:].mean() - a[30:].mean()])
    iv = paired_bootstrap(a, b, groups=groups, n_resamples=2000)
    assert iv.delta == pytest.approx(macro)
    assert iv.delta != pytest.approx(b.mean() - a.mean())  # micro average would be ~0.18, macro ~0.55
    assert iv.low < macro < iv.high and "macro over 2 groups" in iv.method


@pytest.mark.parametrize("a, b, match", [
    ([1, 0, 1], [1, 0], "a has 3 items, b has 2"),
    ([], [], "a is empty"),
    ([1, 0], [], "b is empty"),
    ([1, float("nan")], [1, 0], "NaN"),
    ([[1, 0], [0, 1]], [[1, 0], [0, 1]], "1-D"),
])
def test_bad_inputs_raise_clear_errors(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([0, 1], [1, 1], confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([0, 1], [1, 1], n_resamples=0)
    with pytest.raises(ValueError, match="groups has 1 labels for 2 items"):
        paired_bootstrap([0, 1], [1, 1], groups=["x"])


def test_interval_to_dict():
    d = Interval(0.5, 0.1, 0.9, 0.95, 10, "m").to_dict()
    assert d == {"delta": 0.5, "low": 0.1, "high": 0.9, "confidence": 0.95, "n": 10, "method": "m",
                 "significant": True}
    assert json.loads(json.dumps(d)) == d
    assert Interval(0.5, -0.1, 0.9, 0.95, 10, "m").significant is False
    assert Interval(-0.5, -0.9, -0.1, 0.95, 10, "m").significant is True
    assert Interval(0.5, None, None, 0.95, 1, "m").significant is False


# --------------------------------------------------------------------------- pass@k
def test_pass_at_k_estimator_matches_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k_per_problem([samples], k)[0] == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_needs_k_samples_per_problem():
    with pytest.raises(ValueError, match=r"a_samples\[1\] has 1 samples; pass@2 needs at least 2"):
        paired_bootstrap_pass_at_k([[True, False], [True]], [[True, True], [False, True]], k=2)
    with pytest.raises(ValueError, match="a has 2 problems, b has 1"):
        paired_bootstrap_pass_at_k([[True], [False]], [[True]])
    with pytest.raises(ValueError, match="k must be >= 1"):
        paired_bootstrap_pass_at_k([[True]], [[True]], k=0)


def test_pass_at_k_bootstrap_on_synthetic_samples():
    rng = np.random.default_rng(2)
    n_problems, n_samples = 164, 10
    p_a = rng.beta(0.6, 1.2, n_problems)
    p_b = np.clip(p_a + 0.15, 0, 1)
    true_delta = float(np.mean(p_b - p_a))  # expected pass@1 difference of the population
    a = [list(rng.random(n_samples) < p) for p in p_a]
    b = [list(rng.random(n_samples) < p) for p in p_b]
    iv = paired_bootstrap_pass_at_k(a, b, k=1, n_resamples=4000)
    expected = np.mean([sum(x) / n_samples for x in b]) - np.mean([sum(x) / n_samples for x in a])
    assert iv.delta == pytest.approx(expected)  # pass@1 is c/n per problem
    assert iv.low < true_delta < iv.high and iv.significant
    assert iv.n == n_problems and "pass@1" in iv.method
    iv5 = paired_bootstrap_pass_at_k(a, b, k=5, n_resamples=2000)
    assert iv5.delta == pytest.approx(np.mean(pass_at_k_per_problem(b, 5) - pass_at_k_per_problem(a, 5)))
    assert iv5.delta != pytest.approx(iv.delta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = paired_bootstrap_pass_at_k(a, a, k=5)
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- seeds
def test_paired_seed_interval_is_the_paired_t_interval():
    a = {0: 40.1, 1: 40.9, 2: 39.7}
    b = {2: 40.2, 0: 40.9, 1: 41.6}  # order differs: matched by seed id
    diffs = np.array([40.9 - 40.1, 41.6 - 40.9, 40.2 - 39.7])
    half = sps.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    iv = seed_interval(a, b)
    assert iv.delta == pytest.approx(diffs.mean())
    assert iv.low == pytest.approx(diffs.mean() - half) and iv.high == pytest.approx(diffs.mean() + half)
    assert iv.n == 3 and "paired t" in iv.method and iv.significant


def test_unpaired_seed_interval_is_welch_and_wider_when_seed_effects_are_shared():
    # A strong shared per-seed effect: the paired differences are nearly constant, the raw scores are not.
    a = [38.0, 41.0, 44.0]
    b = [38.6, 41.5, 44.7]
    welch = seed_interval(a, b)  # plain lists: no seed ids, so unpaired
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    d = np.mean(b) - np.mean(a)
    assert welch.low == pytest.approx(d - half) and welch.high == pytest.approx(d + half)
    assert "Welch" in welch.method and not welch.significant
    paired = seed_interval(a, b, paired=True)
    assert paired.significant and paired.high - paired.low < (welch.high - welch.low) / 10


def test_seed_interval_with_fewer_than_two_seeds_has_no_interval():
    iv = seed_interval({0: 40.0}, {0: 41.0})
    assert iv.delta == pytest.approx(1.0) and iv.low is None and iv.high is None
    assert "fewer than 2 seeds" in iv.method and not iv.significant
    welch = seed_interval([40.0, 40.5], [41.0])
    assert welch.low is None and "fewer than 2 seeds" in welch.method


def test_seed_interval_errors():
    with pytest.raises(ValueError, match="same seed ids"):
        seed_interval({0: 1.0, 1: 2.0}, {0: 1.5, 2: 2.5}, paired=True)
    with pytest.raises(ValueError, match="equal counts"):
        seed_interval([1.0, 2.0], [1.0], paired=True)
    with pytest.raises(ValueError, match="a_by_seed is empty"):
        seed_interval([], [1.0])
    # Different seed ids and no explicit pairing: falls back to the unpaired (Welch) interval.
    assert "Welch" in seed_interval({0: 1.0, 1: 2.0}, {0: 1.5, 2: 2.5}).method


# --------------------------------------------------------------------------- records
def _records(values, prefix="gsm"):
    return [{"id": f"{prefix}/{i}", "correct": bool(v)} for i, v in enumerate(values)]


def test_align_by_id_reorders_and_refuses_different_examples():
    a, b = _b_better_on(n=200, extra=20)
    ra, rb = _records(a), _records(b)
    shuffled = rb[:]
    random.Random(0).shuffle(shuffled)
    xa, xb = align_by_id(ra, shuffled)
    assert [r["id"] for r in xa] == [r["id"] for r in xb] == [r["id"] for r in ra]
    assert compare_records(ra, shuffled, n_resamples=2000) == paired_bootstrap(a, b, n_resamples=2000)
    with pytest.raises(ValueError, match=r"1 ids only in a \(e.g. \['gsm/199'\]\), 0 only in b"):
        align_by_id(ra, rb[:-1])
    with pytest.raises(ValueError, match="b has duplicate id 'gsm/0'"):
        align_by_id(ra, rb[:-1] + [rb[0]])
    with pytest.raises(ValueError, match="has no 'id' field"):
        align_by_id([{"correct": True}], [{"correct": True}])
    with pytest.raises(ValueError, match="has no 'f1' field"):
        compare_records(ra, rb, field="f1")


def test_compare_records_pass_at_k_and_groups(tmp_path):
    a = [{"id": f"HumanEval/{i}", "passed": [i % 2 == 0, False, False]} for i in range(20)]
    b = [{"id": f"HumanEval/{i}", "passed": [True, i % 3 == 0, False]} for i in range(20)]
    path = tmp_path / "humaneval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in b))
    b_loaded = load_predictions(path)
    iv = compare_records(a, b_loaded, field="passed", k=2, n_resamples=2000)
    ref = paired_bootstrap_pass_at_k([r["passed"] for r in a], [r["passed"] for r in b], k=2, n_resamples=2000)
    assert iv == ref and "pass@2" in iv.method
    ra = [{"id": f"{t}/{i}", "correct": False} for t, m in (("x", 10), ("y", 40)) for i in range(m)]
    rb = [{"id": r["id"], "correct": r["id"].startswith("x")} for r in ra]
    macro = compare_records(ra, rb, group_by=lambda r: r["id"].split("/")[0], n_resamples=2000)
    assert macro.delta == pytest.approx(0.5)  # x: +1, y: 0
    assert compare_records(ra, rb, n_resamples=2000).delta == pytest.approx(0.2)  # micro: 10/50
