"""Metrics of the open-instruct protocols, written here (the ``evaluate`` package fetches its metric
scripts from a hub at run time, which fails offline).

* :func:`exact_match` — ``evaluate``'s ``exact_match`` with ``ignore_case`` / ``ignore_punctuation``
  (lower-case, delete every character of ``string.punctuation``, compare whole strings; no stripping).
* :func:`squad_f1` / :func:`squad_em` / :func:`squad_scores` — the official SQuAD v1.1 script (what
  ``evaluate.load("squad")`` runs): normalise (lower, drop punctuation, drop the articles a/an/the,
  collapse whitespace), token-overlap F1, max over the gold answers, percentages.
* :func:`last_number` — GSM: commas between digits removed, last match of ``[-+]?\\d*\\.\\d+|\\d+``.
* :func:`extract_bbh_answer` — BBH: the text between "the answer is" and the next ".", else the output.
* :func:`pass_at_k` — the unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et al. (2021), computed as
  a stable product.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


# --------------------------------------------------------------------------- exact match
def normalize_exact(text: str, ignore_case: bool = True, ignore_punctuation: bool = True) -> str:
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCT_TABLE)
    return text


def exact_match(predictions: Sequence[str], references: Sequence[str], ignore_case: bool = True,
                ignore_punctuation: bool = True) -> float:
    """Fraction (0..1) of predictions equal to their reference after the chosen normalisation."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    hits = sum(normalize_exact(str(p), ignore_case, ignore_punctuation)
               == normalize_exact(str(r), ignore_case, ignore_punctuation)
               for p, r in zip(predictions, references))
    return hits / len(predictions)


# --------------------------------------------------------------------------- SQuAD (TyDi QA)
def squad_normalize(text: str) -> str:
    """Official SQuAD v1.1 ``normalize_answer``: lower, remove punctuation, articles, extra whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    pred_tokens = squad_normalize(prediction).split()
    truth_tokens = squad_normalize(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, ground_truths: Iterable[str]) -> float:
    return max((_f1(prediction, t) for t in ground_truths), default=0.0)


def squad_em(prediction: str, ground_truths: Iterable[str]) -> float:
    return max((float(squad_normalize(prediction) == squad_normalize(t)) for t in ground_truths), default=0.0)


def squad_scores(predictions: Sequence[str], ground_truths: Sequence[Sequence[str]]) -> dict[str, float]:
    """``{"f1", "exact_match"}`` in percent, as the official script (and ``evaluate``'s squad) reports."""
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions but {len(ground_truths)} references")
    if not predictions:
        return {"f1": 0.0, "exact_match": 0.0}
    f1 = sum(squad_f1(p, g) for p, g in zip(predictions, ground_truths))
    em = sum(squad_em(p, g) for p, g in zip(predictions, ground_truths))
    return {"f1": 100.0 * f1 / len(predictions), "exact_match": 100.0 * em / len(predictions)}


# --------------------------------------------------------------------------- GSM / BBH extraction
_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


def remove_digit_commas(text: str) -> str:
    """``1,234`` → ``1234`` (open-instruct's ``re.sub(r"(\\d),(\\d)", r"\\1\\2", ...)``)."""
    return re.sub(r"(\d),(\d)", r"\1\2", text)


def last_number(output: str) -> str:
    """The GSM prediction: the last number of the output after removing thousands commas; the whole
    output when it has no number (so it simply fails the exact match)."""
    numbers = _NUMBER.findall(remove_digit_commas(output))
    return numbers[-1] if numbers else output


# open-instruct (Feb 2024) writes the class as [t|T]; the "|" is harmless and kept for fidelity.
_BBH_ANSWER = re.compile(r"[t|T]he answer is (.*?)\.")


def extract_bbh_answer(output: str) -> str:
    """The first span between "the answer is" / "The answer is" and the next "."; else the stripped output."""
    found = _BBH_ANSWER.search(output)
    if found:
        return found.group(1).strip()
    return output.strip()


# --------------------------------------------------------------------------- pass@k
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` passed.

    Equals 1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the
    huge binomials. ``k > n`` cannot be estimated from ``n`` samples: ValueError.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n} c={c}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(samples: Sequence[tuple[int, int]], k: int) -> float | None:
    """Mean pass@k (0..1) over problems given ``(n, c)`` per problem; None when some problem has n < k."""
    if not samples or any(n < k for n, _ in samples):
        return None
    return sum(pass_at_k(n, c, k) for n, c in samples) / len(samples)
