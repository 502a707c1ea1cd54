"""One driver for every task: load → prompts → backend (generate, or next-token log-probs) → parse →
score, with timings, sample counts and the raw predictions kept.

    from eval.driver import ResultWriter, evaluate, write_results
    from eval.tasks import get_task
    results = evaluate([get_task("gsm", chat=True, max_examples=20)], backend, data_dir="/data/eval")
    write_results(results, "out/", extra={"model": ...})   # eval.json + predictions/<task>.jsonl

With a :class:`ResultWriter` (``evaluate(..., writer=...)``) every task's result is written the moment it is
scored and a task that fails is recorded with its error while the others go on, so a late failure loses no
finished task; ``eval.json``'s ``status`` is ``complete`` only when every planned task was scored.

:func:`evaluate_together` scores several adapters served by one backend (``HFBackend.load(adapter_dirs=...)``)
in one pass: each task's prompts are built once, every (prompt, adapter) row goes through one backend call, and
each adapter gets its own :class:`TaskResult` and writer, the ones it gets scored alone (greedy rows and
log-probabilities do not depend on what they are batched with).  Sampled tasks (HumanEval's n samples) run one
adapter at a time with the same seed, because a sample depends on the random stream its batch draws.

Every task's entry records its sample size: ``n_examples`` scored of the ``n_available`` its files hold
(``subset`` when fewer), and ``complete`` (the files hold the published ``full_size``; a warning otherwise).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.backends.base import Backend
from eval.tasks.base import Task
from prolora.io import write_json_atomic


@dataclass
class TaskResult:
    name: str
    metrics: dict  # percentages; the headline under "score"
    n_examples: int
    n_generations: int
    timings: dict  # seconds: load, prompts, inference, score, total
    settings: dict  # chat, decoding settings actually used, what the task read (task.info())
    records: list[dict] = field(default_factory=list)  # one per example: prompt, outputs, predictions, target
    n_available: int | None = None  # examples the files hold (of the parts the options select from)
    full_size: int | None = None  # the published size of the whole set, where known

    @property
    def subset(self) -> bool:
        """Scored on fewer examples than the whole set (a sample, or files that lack part of the set)."""
        return (self.n_available is not None and self.n_examples < self.n_available) or self.complete is False

    @property
    def complete(self) -> bool | None:
        """The files hold the published set (None: its size is not known to the harness)."""
        return None if self.full_size is None or self.n_available is None else self.n_available >= self.full_size

    def summary(self) -> dict:
        return {"score": self.metrics.get("score"), **{k: v for k, v in self.metrics.items() if k != "score"},
                "n_examples": self.n_examples, "n_available": self.n_available, "full_size": self.full_size,
                "subset": self.subset, "complete": self.complete, "n_generations": self.n_generations,
                "timings_s": self.timings, "settings": self.settings}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def evaluate_task(task: Task, backend: Backend, data_dir: str | Path | None = None,
                  max_new_tokens: int | None = None, seed: int = 42) -> TaskResult:
    """Score one task on one backend. ``max_new_tokens`` caps the protocol's value (smoke tests)."""
    return evaluate_task_together(task, backend, None, data_dir, max_new_tokens, seed)[None]


def evaluate_task_together(task: Task, backend: Backend, adapters: Sequence[str] | None,
                           data_dir: str | Path | None = None, max_new_tokens: int | None = None,
                           seed: int = 42) -> dict[str | None, TaskResult]:
    """Score one task for each of ``adapters`` (served by ``backend``; None: the backend's own model) in one
    pass; ``{adapter: its result}``."""
    t0 = time.perf_counter()
    task.available = None
    examples = task.load(data_dir)
    n_available = task.available
    if task.full_size is not None and n_available is not None and n_available < task.full_size:
        warnings.warn(f"{task.name}: the files under {data_dir} hold {n_available} examples, the published set "
                      f"{task.full_size}: this score is on an INCOMPLETE set (recorded as complete=false)",
                      stacklevel=2)
    t1 = time.perf_counter()
    prompts = [task.prompt(ex, backend.tokenizer) for ex in examples]
    t2 = time.perf_counter()
    settings: dict = {"chat": task.chat, "kind": task.kind, **task.info()}
    names = list(adapters) if adapters else [None]
    if task.kind == "choice":
        cands = task.candidates(backend.tokenizer)
        settings["candidate_token_ids"] = cands
        outputs = _per_adapter(names, len(prompts), lambda rows, kw: backend.next_token_logprobs(
            prompts * rows, cands, desc=task.name, **kw))
    else:
        spec = task.generation()
        if max_new_tokens is not None:
            spec.max_new_tokens = min(spec.max_new_tokens, max_new_tokens)
        settings.update(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_p=spec.top_p,
                        n=spec.n, stop=spec.stop, seed=seed)

        def generate(rows, kw):
            return backend.generate(prompts * rows, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                                    top_p=spec.top_p, n=spec.n, stop=spec.stop, seed=seed, desc=task.name, **kw)

        outputs = _per_adapter(names, len(prompts), generate, one_at_a_time=spec.temperature > 0)
    t3 = time.perf_counter()
    timings = {"load": t1 - t0, "prompts": t2 - t1, "inference": t3 - t2}
    return {name: _task_result(task, examples, prompts, out, settings, timings, n_available)
            for name, out in outputs.items()}


def _per_adapter(names: list[str | None], n_prompts: int, call: Callable[[int, dict], list],
                 one_at_a_time: bool = False) -> dict[str | None, list]:
    """``call(k, kwargs)`` runs the prompts k times over: once for the backend's own model (``names ==
    [None]``), or every adapter's copy of them in one call (``adapters=`` names each row), or one call per
    adapter (``one_at_a_time``)."""
    if names == [None]:
        return {None: call(1, {})}
    if one_at_a_time:
        return {name: call(1, {"adapters": [name] * n_prompts}) for name in names}
    out = call(len(names), {"adapters": [name for name in names for _ in range(n_prompts)]})
    return {name: out[i * n_prompts:(i + 1) * n_prompts] for i, name in enumerate(names)}


def _task_result(task: Task, examples: list, prompts: list[str], out: list, settings: dict, timings: dict,
                 n_available: int | None) -> TaskResult:
    """Parse and score one adapter's outputs (log-probabilities for a choice task, else completions)."""
    t3 = time.perf_counter()
    if task.kind == "choice":
        logprobs, raw = out, [[max(range(len(lp)), key=lp.__getitem__)] for lp in out]
    else:
        logprobs, raw = None, out
    predictions = [[task.parse(o, ex) for o in outs] for ex, outs in zip(examples, raw)]
    metrics = task.score(examples, predictions)
    per_example = metrics.pop("per_example", None) or [{} for _ in examples]
    t4 = time.perf_counter()
    records = []
    for i, (ex, prompt, outs, preds) in enumerate(zip(examples, prompts, raw, predictions)):
        rec = {"id": ex.get("id", i), "prompt": prompt, "target": task.target(ex)}
        if logprobs is not None:
            rec["logprobs"] = logprobs[i]
            rec["prediction"] = preds[0]
        else:
            rec["outputs"] = outs
            rec["predictions"] = preds
        rec.update(per_example[i])
        records.append(_jsonable(rec))
    timings = {**timings, "score": t4 - t3, "total": sum(timings.values()) + t4 - t3}
    return TaskResult(task.name, _jsonable(metrics), len(examples), sum(len(o) for o in raw), timings,
                      _jsonable(settings), records, n_available=n_available, full_size=task.full_size)


def evaluate(tasks: Sequence[Task], backend: Backend | Callable[[Task], Backend], data_dir: str | Path | None = None,
             max_new_tokens: int | None = None, seed: int = 42, log: Callable[[str], None] | None = print,
             writer: ResultWriter | None = None) -> dict[str, TaskResult]:
    """Run every task; ``backend`` is one backend or a function choosing one per task (e.g. MMLU in 8-bit).
    With a ``writer`` each result is written as soon as it is scored and a failing task is recorded there
    (with its error) while the others go on; without one, the first error propagates."""
    results: dict[str, TaskResult] = {}
    for task in tasks:
        try:
            chosen = backend(task) if callable(backend) and not isinstance(backend, Backend) else backend
            result = evaluate_task(task, chosen, data_dir, max_new_tokens=max_new_tokens, seed=seed)
        except Exception as e:  # noqa: BLE001  (recorded, the next task still runs)
            if writer is None:
                raise
            writer.fail(task.name, e)
            if log:
                log(f"{task.name}: FAILED ({type(e).__name__}: {e})")
            continue
        results[task.name] = result
        if writer is not None:
            writer.add(result)
        if log:
            subset = f" of {result.n_available} (a subset)" if result.subset else ""
            log(f"{task.name}: score {result.metrics.get('score'):.2f} on {result.n_examples} examples{subset} "
                f"({result.timings['total']:.1f}s)")
    return results


def evaluate_together(tasks: Sequence[Task], backend: Backend | Callable[[Task], Backend], adapters: Sequence[str],
                      writers: dict[str, ResultWriter], data_dir: str | Path | None = None,
                      max_new_tokens: int | None = None, seed: int = 42,
                      log: Callable[[str], None] | None = print) -> dict[str, dict[str, TaskResult]]:
    """:func:`evaluate` for several adapters served by one backend: every task in one pass over all of them,
    each adapter's result written to its own writer as soon as the task is scored; a task that fails is
    recorded as failed for every adapter while the others go on."""
    results: dict[str, dict[str, TaskResult]] = {name: {} for name in adapters}
    for task in tasks:
        try:
            chosen = backend(task) if callable(backend) and not isinstance(backend, Backend) else backend
            scored = evaluate_task_together(task, chosen, adapters, data_dir, max_new_tokens=max_new_tokens, seed=seed)
        except Exception as e:  # noqa: BLE001  (recorded, the next task still runs)
            for name in adapters:
                writers[name].fail(task.name, e)
            if log:
                log(f"{task.name}: FAILED for all {len(adapters)} adapters ({type(e).__name__}: {e})")
            continue
        for name, result in scored.items():
            results[name][task.name] = result
            writers[name].add(result)
        if log:
            scores = ", ".join(f"{r.metrics.get('score'):.2f}" for r in scored.values())
            log(f"{task.name}: scores {scores} for {len(adapters)} adapters on {next(iter(scored.values())).n_examples} "
                f"examples each ({next(iter(scored.values())).timings['total']:.1f}s together)")
    return results


class ResultWriter:
    """``eval.json`` + ``predictions/<task>.jsonl`` in ``out_dir``, rewritten atomically after every task.

    ``eval.json`` has ``status`` (``complete`` once every planned task is scored, else ``incomplete``),
    ``tasks_failed`` ({task: error}) and ``tasks_pending`` besides the scores; ``extra`` is merged in."""

    def __init__(self, out_dir: str | Path, planned: Sequence[str], extra: dict | None = None):
        self.out = Path(out_dir)
        self.planned = list(planned)
        self.extra = dict(extra or {})
        self.results: dict[str, TaskResult] = {}
        self.failed: dict[str, str] = {}
        (self.out / "predictions").mkdir(parents=True, exist_ok=True)

    def add(self, result: TaskResult) -> Path:
        _write_predictions(self.out, result)
        self.results[result.name] = result
        self.failed.pop(result.name, None)
        return self.write()

    def fail(self, name: str, error: BaseException) -> Path:
        self.failed[name] = f"{type(error).__name__}: {error}"
        return self.write()

    @property
    def complete(self) -> bool:
        return all(name in self.results for name in self.planned)

    def write(self, **more) -> Path:
        self.extra.update(more)
        pending = [n for n in self.planned if n not in self.results and n not in self.failed]
        return _write_summary(self.out, self.results, {
            "status": "complete" if self.complete else "incomplete", "tasks_planned": self.planned,
            "tasks_failed": self.failed, "tasks_pending": pending, **self.extra})


def _write_predictions(out: Path, result: TaskResult) -> None:
    from prolora.io import write_text_atomic

    write_text_atomic(out / "predictions" / f"{result.name}.jsonl",
                      "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in result.records))


def _write_summary(out: Path, results: dict[str, TaskResult], extra: dict) -> Path:
    summary = {"scores": {name: r.metrics.get("score") for name, r in results.items()},
               "tasks": {name: r.summary() for name, r in results.items()}, **extra}
    return write_json_atomic(out / "eval.json", _jsonable(summary), ensure_ascii=False)


def write_results(results: dict[str, TaskResult], out_dir: str | Path, extra: dict | None = None) -> Path:
    """``eval.json`` (scores, per-task metrics/counts/timings, plus ``extra``) and
    ``predictions/<task>.jsonl`` for finished results; returns the path of eval.json."""
    writer = ResultWriter(out_dir, list(results), extra)
    for result in results.values():
        _write_predictions(writer.out, result)
    writer.results.update(results)
    return writer.write()
