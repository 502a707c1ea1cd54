"""The task interface shared by every benchmark, and the registry.

A task is a small dataclass whose fields are its options (``chat``, sample sizes, seed, ...: the recipe's
Hydra schema is generated from these fields, so every option is reachable as ``<task>.<field>=`` and its
default is written once, here) and that knows how to

* ``load(data_dir) -> list[dict]``: read the published files (and sample, deterministically);
* ``prompt(example, tokenizer=None) -> str``: the exact prompt string (a tokenizer is needed only where
  the protocol counts tokens: TyDi QA's 512-token passages, MMLU's 2048-token few-shot limit);
* ``generation() -> GenSpec`` (``kind == "generate"``) or ``candidates(tokenizer)`` (``kind == "choice"``);
* ``parse(output, example)``: turn one raw output (text, or for choice tasks the candidate index) into
  a prediction;
* ``score(examples, predictions) -> dict``: ``predictions[i]`` is the list of the ``n`` parsed samples
  for example ``i``; returns metrics in percent with the headline one under ``"score"``.

``columns`` names the table columns the task feeds (``{"gsm_em": Column("GSM EM", "exact_match", "gsm")}``: header,
metric key in the task's scores, and the short name runs are compared by: W&B summary keys, sweep tables).
:meth:`Task.item_values` gives, from the saved per-example records, the per-item values whose mean (macro over a
``group`` the records carry: BBH's task, TyDi QA's language) IS a column's metric: the paired bootstrap of
:mod:`eval.stats` resamples those.  ``load`` sets ``available`` (how many examples the files hold, of the parts the options select
from) and ``full_size`` is the published size of the whole set (None where the harness cannot know it), so
the driver records whether a score is on a subset or on an incomplete file, and ``info()`` what the task read
(e.g. which exemplars).  A new benchmark is one module in ``eval/tasks/`` with a ``@register``-ed subclass: the
package imports every module, the evaluation schema and the tables pick it up.  The driver
(:mod:`eval.driver`) does the rest, identically for every task.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from prolora.data.chat import prompt_for_generation

TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task known by its ``name`` (``get_task``, the schema, the tables)."""
    if not cls.name or cls.name in TASKS and TASKS[cls.name] is not cls:
        raise TypeError(f"{cls.__name__}: task name {cls.name!r} is empty or already registered")
    TASKS[cls.name] = cls
    return cls


def chat_format(user_text: str, answer_prefix: str = "") -> str:
    """open-instruct's Tulu chat format for one user turn (the library's
    :func:`~prolora.data.chat.prompt_for_generation`, as the model was trained), then the task's answer
    prefix, joined the way every open-instruct eval script joins it (directly after a trailing newline or
    space, else after a space)."""
    prompt = prompt_for_generation(user_text)
    if answer_prefix:
        prompt += answer_prefix if prompt[-1] in ("\n", " ") else " " + answer_prefix
    return prompt


class Column(NamedTuple):
    """One table column a task feeds: its header, the key of the metric in the task's scores (percent), and its
    short name (the W&B summary key and the sweep tables': Table 2's ``mmlu``, ``bbh``, ``gsm``, ``tydiqa_f1``,
    ``tydiqa_em``, ``humaneval_pass@1``)."""

    header: str
    metric: str
    key: str


class DataMissingError(FileNotFoundError):
    """A benchmark file is missing; the message names the expected layout."""


class BadBenchmarkFile(ValueError):
    """A benchmark file that does not parse (truncated, garbled, another format); names the file and line."""


def read_json(path: Path, task: str) -> Any:
    """A whole-file JSON benchmark file; a damaged one raises :class:`BadBenchmarkFile` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise BadBenchmarkFile(f"{task}: {path} is not valid JSON ({e}): a truncated or damaged copy? "
                               "get the file again") from None


def read_jsonl(path: Path, task: str, parse: Callable[[dict], dict]) -> list[dict]:
    """Each non-blank line of a JSON-lines benchmark file through ``parse``; a line that does not parse (bad
    JSON, bad UTF-8, a missing field) raises :class:`BadBenchmarkFile` naming the file and the line: a benchmark
    is never scored on whatever rows happened to parse."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    rows.append(parse(json.loads(line)))
            except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as e:
                raise BadBenchmarkFile(f"{task}: {path}:{lineno} does not parse ({type(e).__name__}: {e}): a "
                                       "truncated or damaged copy? get the file again") from None
    return rows


def require(path: Path, task: str, layout: str) -> Path:
    """``path``, or one line saying it is missing and what a benchmark directory holds."""
    if not path.exists():
        expected = "; ".join(" ".join(line.split()) for line in layout.strip().splitlines())
        raise DataMissingError(f"{task}: {path} not found (a benchmark directory holds: {expected}): point data_dir= "
                               "at one laid out like this")
    return path


@dataclass
class GenSpec:
    """Decoding settings a generation task asks for (the protocol's values)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)


@dataclass
class Task:
    """Options every task has.  ``chat``: prompt in the chat format (the run sets it); ``seed``: sampling of
    subsets and exemplars (the run sets it); ``precision``: load the model in this precision for this task
    (hf backend; ``None``: the run's)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "generate"  # generate | choice
    layout: ClassVar[str] = ""
    columns: ClassVar[dict[str, Column]] = {}
    # per-example record field behind a metric (``item_values``); pass@k metrics read ``passed`` instead
    item_fields: ClassVar[dict[str, str]] = {"exact_match": "correct", "accuracy": "correct"}
    full_size: ClassVar[int | None] = None  # the published size of the whole evaluation set

    chat: bool = False
    seed: int = 42
    precision: str | None = None

    # --- to implement
    def load(self, data_dir: str | Path) -> list[dict]:
        raise NotImplementedError

    def prompt(self, example: dict, tokenizer=None) -> str:
        raise NotImplementedError

    def generation(self) -> GenSpec:
        return GenSpec()

    def candidates(self, tokenizer) -> list[int]:
        raise NotImplementedError

    def parse(self, output: Any, example: dict) -> Any:
        return output

    def target(self, example: dict) -> Any:
        return example.get("target")

    def info(self) -> dict:
        """What the last ``load`` read beyond the options (files, exemplar sources), for the result file."""
        return {}

    def score(self, examples: Sequence[dict], predictions: Sequence[Sequence[Any]]) -> dict:
        raise NotImplementedError

    @classmethod
    def item_values(cls, records: Sequence[dict], metric: str) -> tuple[list[float], list[str] | None]:
        """The per-item values (percent) behind ``metric`` in saved prediction records, and each item's group
        (None: the metric is the plain mean).  The metric = the mean over groups of the within-group means:
        ``correct`` (0/1) for accuracy and exact match, ``f1`` (0..1) where a task records it, the unbiased
        pass@k of a problem's ``passed`` samples.  A record without the field raises ValueError naming it."""
        from eval.metrics import pass_at_k

        values: list[float] = []
        for i, rec in enumerate(records):
            if metric.startswith("pass@"):
                k, flags = int(metric[5:]), rec.get("passed")
                if not isinstance(flags, list) or len(flags) < k:
                    raise ValueError(f"{cls.name}: record {i} (id {rec.get('id')!r}) has no list of >= {k} 'passed' "
                                     "samples")
                values.append(100.0 * pass_at_k(len(flags), sum(map(bool, flags)), k))
                continue
            name = cls.item_fields.get(metric, metric)
            if name not in rec:
                raise ValueError(f"{cls.name}: record {i} (id {rec.get('id')!r}) has no {name!r} field (saved by an "
                                 f"older version? evaluate again)")
            values.append(100.0 * float(rec[name]))
        groups = [str(rec["group"]) for rec in records] if records and "group" in records[0] else None
        return values, groups


def sample(items: list, k: int | None, rng: random.Random) -> list:
    """``random.sample(items, k)`` when ``k`` is set and smaller than the population (open-instruct's
    rule: ``if max_n and len(data) > max_n: data = random.sample(data, max_n)``), else everything."""
    if k is not None and k > 0 and len(items) > k:
        return rng.sample(items, k)
    return list(items)
