"""The project demo: exact match on ``prolora/assets/demo/test.jsonl`` (records with ``messages``: the
first user turn is the prompt, the following assistant turn the target), greedy decoding.

Chat prompt: ``<|user|>\\n{user}\\n<|assistant|>\\n`` (what the demo model is trained on); no chat: the
user text followed by "\\n". Prediction: the stripped output; exact (case-sensitive) string match.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from eval.tasks.base import Column, GenSpec, Task, chat_format, read_jsonl, register, require, sample


def default_file() -> Path:
    from prolora.models import DEMO_DATA_DIR

    return DEMO_DATA_DIR / "test.jsonl"


@register
@dataclass
class Demo(Task):
    name = "demo"
    layout = "  a jsonl of {\"messages\": [{\"role\": \"user\", ...}, {\"role\": \"assistant\", ...}]} (file=)"
    columns = {"demo_em": Column("Demo EM", "exact_match", "demo")}

    file: str | None = None  # None: prolora/assets/demo/test.jsonl
    max_examples: int | None = None
    max_new_tokens: int = 32

    def load(self, data_dir=None) -> list[dict]:
        path = require(Path(self.file) if self.file else default_file(), self.name, self.layout)

        def parse(record: dict) -> dict:
            messages = record["messages"]
            user = next(j for j, m in enumerate(messages) if m["role"] == "user")
            answer = next(m["content"] for m in messages[user + 1:] if m["role"] == "assistant")
            return {"id": record.get("id"), "user": messages[user]["content"], "target": answer}

        examples = [{**row, "id": row["id"] or f"demo/{i}"}
                    for i, row in enumerate(read_jsonl(path, self.name, parse))]
        self.available = len(examples)
        return sample(examples, self.max_examples, random.Random(self.seed))

    def prompt(self, example: dict, tokenizer=None) -> str:
        return chat_format(example["user"]) if self.chat else example["user"] + "\n"

    def generation(self) -> GenSpec:
        return GenSpec(max_new_tokens=self.max_new_tokens, stop=[] if self.chat else ["\n"])

    def parse(self, output: str, example: dict) -> str:
        return output.strip()

    def score(self, examples, predictions) -> dict:
        correct = [p[0] == ex["target"].strip() for ex, p in zip(examples, predictions)]
        em = 100.0 * sum(correct) / max(1, len(correct))
        return {"score": em, "exact_match": em, "per_example": [{"correct": c} for c in correct]}
