"""MMLU as the PRoLoRA authors ran it (their fork of open-instruct's ``eval/mmlu/run_eval.py``): 0-shot
(``ntrain=0``), all 14,042 test questions, the answer is the argmax of the next-token probabilities of
" A".." D", micro-averaged accuracy.  The model is loaded in 8-bit (``precision: 8bit``, hf backend), as their
``eval_llama2_7b_superni_mmlu.sh`` does (``--load_in_8bit``).

Prompt (``format_subject`` puts a space before every word, hence the double space after "about"):

    The following are multiple choice questions (with answers) about  abstract algebra.\\n\\n
    {question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:

Chat: ``<|user|>\\n{that}\\n<|assistant|>\\n`` + ``answer_prefix``.  The authors' fork appends
``"The answer is "`` (trailing space, no colon; with LLaMA-2's tokenizer the prompt then ends in the token
"▁"); upstream open-instruct appends ``"The answer is:"`` (``protocol=upstream``).  Candidate ids: the last
token of ``tokenizer.encode(" A", add_special_tokens=False)`` etc., as open-instruct.

Files are read as both open-instruct versions read them, with pandas (``reader: pandas``): its default NA
parsing turns a bare ``None`` cell into ``nan`` in the prompt (10 of the 14,042 test rows) and would turn an
all-numeric column into numbers (``"{}".format`` of the value).  ``reader: csv`` keeps every cell as the text
in the file.  Optional per-subject subsampling (``max_per_subject``) uses ``random.Random(seed)`` per
subject, not pandas' ``sample(random_state=42)``.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.tasks.base import BadBenchmarkFile, Column, Task, chat_format, register, require, sample

CHOICES = ["A", "B", "C", "D"]

LAYOUT = """  mmlu/dev/<subject>_dev.csv     (no header: question,A,B,C,D,answer)
  mmlu/test/<subject>_test.csv"""


def format_subject(subject: str) -> str:
    return "".join(" " + part for part in subject.split("_"))


READERS = ("pandas", "csv")


def read_rows(path: Path, reader: str = "pandas") -> list[list[str]]:
    """The rows of one MMLU CSV as the prompt will show them: ``"{}".format`` of what pandas parsed (as
    open-instruct), or the raw text of each cell (``reader="csv"``)."""
    if reader == "pandas":
        import pandas as pd

        try:
            df = pd.read_csv(path, header=None)
        except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError / EmptyDataError are ValueErrors
            raise BadBenchmarkFile(f"mmlu: {path} does not parse as CSV ({e}): a truncated or damaged copy?") from None
        rows = [[f"{df.iloc[i, j]}" for j in range(df.shape[1])] for i in range(len(df))]
    else:
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
    columns = {"mmlu_em": Column("MMLU EM", "accuracy", "mmlu")}

    full_size = 14_042

    precision: str | None = "8bit"  # the authors load the model in 8-bit for MMLU (hf backend); null: the run's
    ntrain: int = 0  # 0-shot, as the paper
    max_per_subject: int | None = None  # None: all 14,042 test questions
    subjects: list[str] | None = None  # None: every subject in mmlu/test/
    max_prompt_tokens: int = 2048  # few-shot examples are dropped until the prompt fits (open-instruct)
    answer_prefix: str = "The answer is "  # chat format: the authors' fork; upstream open-instruct "The answer is:"
    reader: str = "pandas"  # pandas (both open-instruct versions) | csv (every cell as written)

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise ValueError(f"mmlu.reader={self.reader!r}: use one of {list(READERS)}")
        self.dev: dict[str, list[list[str]]] = {}

    def load(self, data_dir) -> list[dict]:
        root = Path(data_dir) / "mmlu"
        test_dir = require(root / "test", self.name, LAYOUT)
        found = sorted(p.name[: -len("_test.csv")] for p in test_dir.glob("*_test.csv"))
        if not found:
            raise FileNotFoundError(f"mmlu: no <subject>_test.csv in {test_dir}: point data_dir= at the MMLU files")
        subjects = self.subjects or found
        missing = [s for s in subjects if s not in found]
        if missing:
            raise ValueError(f"mmlu: unknown subject(s) {missing}; found {found}")
        self.available = 0
        if self.subjects:  # a chosen subset of subjects is a subset of the benchmark
            self.available = sum(len(read_rows(test_dir / f"{s}_test.csv", "csv")) for s in found if s not in subjects)
        examples = []
        for subject in subjects:
            if self.ntrain > 0:
                dev_path = require(root / "dev" / f"{subject}_dev.csv", self.name, LAYOUT)
                self.dev[subject] = read_rows(dev_path, self.reader)[: self.ntrain]
            rows = read_rows(test_dir / f"{subject}_test.csv", self.reader)
            self.available += len(rows)
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
            prompt = chat_format(prompt, self.answer_prefix)
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
