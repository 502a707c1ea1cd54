"""Benchmarks: one class per task, one registry name each (see :mod:`eval.tasks.base` for the interface)."""

from __future__ import annotations

from eval.tasks.base import DataMissingError, GenSpec, Task, chat_format
from eval.tasks.bbh import BBH
from eval.tasks.demo import Demo
from eval.tasks.gsm import GSM
from eval.tasks.humaneval import HumanEval
from eval.tasks.mmlu import MMLU
from eval.tasks.tydiqa import TyDiQA

TASKS: dict[str, type[Task]] = {"mmlu": MMLU, "bbh": BBH, "gsm": GSM, "tydiqa": TyDiQA, "humaneval": HumanEval,
                                "demo": Demo}
PAPER_TASKS = ["mmlu", "bbh", "gsm", "tydiqa", "humaneval"]


def get_task(name: str, **options) -> Task:
    """``get_task("gsm", chat=True, max_examples=20)``."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
    return cls(**options)


__all__ = ["TASKS", "PAPER_TASKS", "get_task", "Task", "GenSpec", "DataMissingError", "chat_format",
           "MMLU", "BBH", "GSM", "TyDiQA", "HumanEval", "Demo"]
