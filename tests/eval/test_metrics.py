"""Metrics and answer extraction on hand-made cases."""

import math

import pytest

from eval import metrics


def test_last_number_commas_signs_and_decimals():
    assert metrics.last_number("The total is -1,234.5 dollars") == "-1234.5"
    assert metrics.last_number("So the answer is 1,234,567.") == "1234567"
    assert metrics.last_number("first 3, then +7 and finally 12") == "12"
    assert metrics.last_number("It costs .5 of that") == ".5"
    assert metrics.last_number("no digits here") == "no digits here"
    # open-instruct's regex: a sign only counts in front of a decimal point number
    assert metrics.last_number("the result is -12") == "12"


def test_gsm_exact_match_ignores_case_and_punctuation():
    assert metrics.exact_match(["-1234.5"], ["-1234.5"]) == 1.0
    assert metrics.exact_match(["1234.5"], ["-1234.5"]) == 1.0  # punctuation ('-', '.') is dropped
    assert metrics.exact_match(["18", "7"], ["18", "8"]) == 0.5
    assert metrics.exact_match(["Yes"], ["yes"]) == 1.0
    assert metrics.exact_match(["Yes"], ["yes"], ignore_case=False) == 0.0
    assert metrics.exact_match([" yes"], ["yes"]) == 0.0  # no stripping, as evaluate's exact_match


def test_bbh_extraction():
    assert metrics.extract_bbh_answer("Let me think. So the answer is (B). Done") == "(B)"
    assert metrics.extract_bbh_answer("the answer is False.") == "False"
    # the span ends at the FIRST period after the phrase, not the last one of the output
    assert metrics.extract_bbh_answer("So the answer is (B). It follows. Q: next.") == "(B)"
    assert metrics.extract_bbh_answer("  True.\n\nQ: next") == "True.\n\nQ: next"
    # trailing punctuation and case do not matter for the match
    pred = metrics.extract_bbh_answer("valid!!")
    assert pred == "valid!!" and metrics.exact_match([pred], ["Valid"]) == 1.0
    assert metrics.exact_match([metrics.extract_bbh_answer("(A)")], ["(A)"]) == 1.0


def test_squad_normalisation_and_scores():
    assert metrics.squad_normalize("The  Oslofjord!") == "oslofjord"
    assert metrics.squad_normalize("An apple, a pear and the plum.") == "apple pear and plum"
    assert metrics.squad_em("the Oslofjord.", ["Oslofjord"]) == 1.0
    assert metrics.squad_f1("Oslo city", ["Oslo"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert metrics.squad_f1("Bergen", ["Oslo"]) == 0.0
    assert metrics.squad_f1("about 6,650 km", ["6,650 km", "about 6,650 km"]) == 1.0  # max over answers
    scores = metrics.squad_scores(["Oslo", "Bergen city"], [["Oslo"], ["Bergen"]])
    assert scores["exact_match"] == 50.0
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


@pytest.mark.parametrize("n,c,k", [(20, 0, 1), (20, 1, 1), (20, 5, 1), (20, 5, 10), (20, 19, 10), (20, 20, 10),
                                   (200, 17, 100), (5, 2, 5), (10, 3, 7)])
def test_pass_at_k_matches_closed_form(n, c, k):
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edges():
    assert metrics.pass_at_k(20, 7, 1) == pytest.approx(7 / 20)
    assert metrics.pass_at_k(3, 1, 3) == 1.0  # n - c < k: some draw of k always contains the correct one
    with pytest.raises(ValueError, match="needs at least 10 samples"):
        metrics.pass_at_k(5, 2, 10)  # n < k cannot be estimated
    assert metrics.mean_pass_at_k([(5, 1), (5, 5)], 10) is None
    assert metrics.mean_pass_at_k([(2, 1), (2, 0)], 1) == pytest.approx(0.25)
    # numerically stable for huge n where the binomials overflow floats
    assert 0 < metrics.pass_at_k(100000, 3, 50000) <= 1
