"""One driver for every task: load → prompts → backend (generate, or next-token log-probs) → parse →
score, with timings, sample counts and the raw predictions kept.

    from eval.driver import evaluate, write_results
    from eval.tasks import get_task
    results = evaluate([get_task("gsm", chat=True, max_examples=20)], backend, data_dir="/data/eval")
    write_results(results, "out/", extra={"model": ...})   # eval.json + predictions/<task>.jsonl
"""

from __future__ import annotations

import json
import time
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
    settings: dict  # chat, decoding settings actually used
    records: list[dict] = field(default_factory=list)  # one per example: prompt, outputs, predictions, target

    def summary(self) -> dict:
        return {"score": self.metrics.get("score"), **{k: v for k, v in self.metrics.items() if k != "score"},
                "n_examples": self.n_examples, "n_generations": self.n_generations,
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
    t0 = time.perf_counter()
    examples = task.load(data_dir)
    t1 = time.perf_counter()
    prompts = [task.prompt(ex, backend.tokenizer) for ex in examples]
    t2 = time.perf_counter()
    settings: dict = {"chat": task.chat, "kind": task.kind}
    if task.kind == "choice":
        cands = task.candidates(backend.tokenizer)
        logprobs = backend.next_token_logprobs(prompts, cands, desc=task.name)
        raw: list[list[Any]] = [[max(range(len(lp)), key=lp.__getitem__)] for lp in logprobs]
        settings["candidate_token_ids"] = cands
    else:
        spec = task.generation()
        if max_new_tokens is not None:
            spec.max_new_tokens = min(spec.max_new_tokens, max_new_tokens)
        settings.update(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_p=spec.top_p,
                        n=spec.n, stop=spec.stop, seed=seed)
        raw = backend.generate(prompts, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                               top_p=spec.top_p, n=spec.n, stop=spec.stop, seed=seed, desc=task.name)
        logprobs = None
    t3 = time.perf_counter()
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
    timings = {"load": t1 - t0, "prompts": t2 - t1, "inference": t3 - t2, "score": t4 - t3, "total": t4 - t0}
    return TaskResult(task.name, _jsonable(metrics), len(examples), sum(len(o) for o in raw), timings, settings,
                      records)


def evaluate(tasks: Sequence[Task], backend: Backend | Callable[[Task], Backend], data_dir: str | Path | None = None,
             max_new_tokens: int | None = None, seed: int = 42, log: Callable[[str], None] | None = print
             ) -> dict[str, TaskResult]:
    """Run every task; ``backend`` is one backend or a function choosing one per task (e.g. MMLU in 8-bit)."""
    results: dict[str, TaskResult] = {}
    for task in tasks:
        chosen = backend(task) if callable(backend) and not isinstance(backend, Backend) else backend
        result = evaluate_task(task, chosen, data_dir, max_new_tokens=max_new_tokens, seed=seed)
        results[task.name] = result
        if log:
            log(f"{task.name}: score {result.metrics.get('score'):.2f} on {result.n_examples} examples "
                f"({result.timings['total']:.1f}s)")
    return results


def write_results(results: dict[str, TaskResult], out_dir: str | Path, extra: dict | None = None) -> Path:
    """``eval.json`` (scores, per-task metrics/counts/timings, plus ``extra``) and
    ``predictions/<task>.jsonl``; returns the path of eval.json."""
    out = Path(out_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        with open(out / "predictions" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for rec in result.records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    summary = {
        "scores": {name: r.metrics.get("score") for name, r in results.items()},
        "tasks": {name: r.summary() for name, r in results.items()},
        **(extra or {}),
    }
    return write_json_atomic(out / "eval.json", _jsonable(summary), ensure_ascii=False)
