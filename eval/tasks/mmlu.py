"""MMLU, open-instruct ``eval/mmlu/run_eval.py``: 0-shot (``ntrain=0``) by default, the answer is the
argmax of the next-token probabilities of " A".." D", micro-averaged accuracy over all test rows.

Prompt (``format_subject`` puts a space before every word, hence the double space after "about"):

    The following are multiple choice questions (with answers) about  abstract algebra.\\n\\n
    {question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:

Chat: ``<|user|>\\n{that}\\n<|assistant|>\\nThe answer is:``. Candidate ids: the last token of
``tokenizer.encode(" A", add_special_tokens=False)`` etc., as open-instruct (LLaMA's tokenizer encodes
"A" and " A" differently after "The answer is:"/"Answer:").

Deviation: files are read with the ``csv`` module, so every cell stays the string in the file; pandas
(open-instruct) infers column types, which rewrites a few all-numeric option columns (e.g. "0.50" →
"0.5", a bare "None" → "nan"). Optional per-subject subsampling (``max_per_subject``) uses
``random.Random(seed)`` per subject, not pandas' ``sample(random_state=42)``.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.tasks.base import Task, chat_format, register, require, sample

CHOICES = ["A", "B", "C", "D"]

LAYOUT = """  mmlu/dev/<subject>_dev.csv     (no header: question,A,B,C,D,answer)
  mmlu/test/<subject>_test.csv"""


def format_subject(subject: str) -> str:
    return "".join(" " + part for part in subject.split("_"))


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    for i, row in enumerate(rows):
        if len(row) != 6 or row[5] not in CHOICES:
            raise ValueError(f"{path}: row {i + 1} is not question,A,B,C,D,answer(A-D): {row!r}")
    return rows


def format_example(row: Sequence[str], include_answer: bool = True) -> str:
    prompt = row[0]
    for letter, option in zip(CHOICES, row[1:5]):
        prompt += f"\n{letter}. {option}"
    prompt += "\nAnswer:"
    if include_answer:
        prompt += f" {row[5]}\n\n"
    return prompt


@register
@dataclass
class MMLU(Task):
    name = "mmlu"
    kind = "choice"
    layout = LAYOUT
    columns = {"mmlu_em": ("MMLU EM", "accuracy")}

    precision: str | None = "8bit"  # the paper loads the model in 8-bit for MMLU (hf backend); null: the run's
    ntrain: int = 0  # 0-shot, as the paper
    max_per_subject: int | None = None  # None: all 14,042 test questions
    subjects: list[str] | None = None  # None: every subject in mmlu/test/
    max_prompt_tokens: int = 2048  # few-shot examples are dropped until the prompt fits (open-instruct)

    def __post_init__(self) -> None:
        self.dev: dict[str, list[list[str]]] = {}

    def load(self, data_dir) -> list[dict]:
        root = Path(data_dir) / "mmlu"
        test_dir = require(root / "test", self.name, LAYOUT)
        found = sorted(p.name[: -len("_test.csv")] for p in test_dir.glob("*_test.csv"))
        if not found:
            raise FileNotFoundError(f"mmlu: no <subject>_test.csv in {test_dir}. Expected layout:\n{LAYOUT}")
        subjects = self.subjects or found
        missing = [s for s in subjects if s not in found]
        if missing:
            raise ValueError(f"mmlu: unknown subject(s) {missing}; found {found}")
        examples = []
        for subject in subjects:
            if self.ntrain > 0:
                dev_path = require(root / "dev" / f"{subject}_dev.csv", self.name, LAYOUT)
                self.dev[subject] = read_rows(dev_path)[: self.ntrain]
            rows = read_rows(test_dir / f"{subject}_test.csv")
            indexed = sample(list(enumerate(rows)), self.max_per_subject, random.Random(self.seed))
            for i, row in indexed:
                examples.append({"id": f"{subject}/{i}", "subject": subject, "question": row[0],
                                 "choices": row[1:5], "answer": row[5]})
        return examples

    def _prompt(self, example: dict, k: int) -> str:
        row = [example["question"], *example["choices"], example["answer"]]
        prompt = ("The following are multiple choice questions (with answers) about {}.\n\n"
                  .format(format_subject(example["subject"])))
        for dev_row in self.dev.get(example["subject"], [])[:k]:
            prompt += format_example(dev_row)
        prompt += format_example(row, include_answer=False)
        if self.chat:
            prompt = chat_format(prompt, "The answer is:")
        return prompt

    def prompt(self, example: dict, tokenizer=None) -> str:
        k = self.ntrain
        prompt = self._prompt(example, k)
        # open-instruct drops few-shot examples until the prompt fits in 2048 tokens
        while tokenizer is not None and k > 0 and \
                len(tokenizer(prompt, add_special_tokens=False).input_ids) > self.max_prompt_tokens:
            k -= 1
            prompt = self._prompt(example, k)
        return prompt

    def candidates(self, tokenizer) -> list[int]:
        return [tokenizer.encode(" " + c, add_special_tokens=False)[-1] for c in CHOICES]

    def parse(self, output, example: dict) -> str:
        return CHOICES[int(output)]

    def target(self, example: dict) -> str:
        return example["answer"]

    def score(self, examples, predictions) -> dict:
        correct = [p[0] == ex["answer"] for ex, p in zip(examples, predictions)]
        by_subject: dict[str, list[bool]] = {}
        for ex, ok in zip(examples, correct):
            by_subject.setdefault(ex["subject"], []).append(ok)
        acc = 100.0 * sum(correct) / max(1, len(correct))
        return {"score": acc, "accuracy": acc,
                "subjects": {s: 100.0 * sum(v) / len(v) for s, v in by_subject.items()},
                "per_example": [{"correct": ok} for ok in correct]}
