"""Benchmarks: one dataclass per task, registered by name (see :mod:`eval.tasks.base` for the interface).

Every module of this package (but ``base`` and private ``_*`` ones) is imported here and registers its task
with ``@register``: a new benchmark is one module.
"""

from __future__ import annotations

import importlib
import pkgutil

from eval.tasks.base import TASKS, Column, DataMissingError, GenSpec, Task, chat_format, register

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

PAPER_TASKS = ["mmlu", "bbh", "gsm", "tydiqa", "humaneval"]


def get_task(name: str, **options) -> Task:
    """``get_task("gsm", chat=True, max_examples=20)``."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
    return cls(**options)


__all__ = ["TASKS", "PAPER_TASKS", "get_task", "register", "Task", "Column", "GenSpec", "DataMissingError", "chat_format"]
