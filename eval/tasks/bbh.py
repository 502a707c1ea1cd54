"""BIG-Bench-Hard as the PRoLoRA authors ran it (open-instruct ``eval/bbh/run_eval.py``, their
``eval_llama2_7b_flan_v2.sh``): 3-shot, direct answers (``--no_cot``), all 6,511 examples (no
``--max_num_examples_per_task``; ``max_per_task`` samples with ``random.seed(42)`` then ``random.sample``
task after task, as the script would), exact match ignoring case and punctuation, averaged over tasks.

Task prompt: the official CoT prompt file minus its first two lines (canary, ``-----``); in direct mode
each ``Q:`` block becomes ``question + "\\nA: " + <text after the last "So the answer is", stripped>``.
Example prompt: ``task_prompt.strip() + "\\n\\nQ: " + input + "\\nA:"``; chat:
``<|user|>\\n{task_prompt.strip()}\\n\\nQ: {input}\\n<|assistant|>\\nA:``. No-chat generation stops at
"\\n\\n"; chat generation runs until EOS. Prediction: text between "the answer is" and the next ".",
else the stripped output.

Sampling order: open-instruct walks ``glob`` order (file-system dependent); here tasks are sampled in
sorted order with one ``random.Random(seed)``, which is open-instruct's result when glob returns
sorted names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from eval.metrics import exact_match, extract_bbh_answer, normalize_exact
from eval.tasks.base import (
    BadBenchmarkFile,
    Column,
    GenSpec,
    Task,
    chat_format,
    read_json,
    register,
    require,
    sample,
)

LAYOUT = """  bbh/bbh/<task>.json           ({"examples": [{"input", "target"}]})
  bbh/cot-prompts/<task>.txt    (canary line, "-----", description, three Q:/A: exemplars)"""


def direct_prompt(cot_prompt: str) -> str:
    """Strip the chain of thought from the official exemplars, keeping what follows "So the answer is"."""
    fields = cot_prompt.split("\n\n")
    out = []
    for field in fields:
        if field.startswith("Q:"):
            if "So the answer is" not in field or "\nA:" not in field:
                raise ValueError(f"BBH exemplar without 'So the answer is' / '\\nA:': {field[:80]!r}")
            answer = field.split("So the answer is")[-1].strip()
            question = field.split("\nA:")[0].strip()
            out.append(question + "\nA: " + answer)
        else:
            out.append(field)
    return "\n\n".join(out)


def read_task_prompt(path: Path, cot: bool = False) -> str:
    with open(path, encoding="utf-8") as f:
        text = "".join(f.readlines()[2:])
    return text if cot else direct_prompt(text)


@register
@dataclass
class BBH(Task):
    name = "bbh"
    layout = LAYOUT
    columns = {"bbh_em": Column("BBH EM", "exact_match", "bbh")}

    full_size = 6_511

    max_per_task: int | None = None  # None: all 6,511 examples (the paper); N: a random subset per task
    tasks: list[str] | None = None  # None: every task in bbh/bbh/
    cot: bool = False  # the paper: direct answers
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        self.task_prompts: dict[str, str] = {}

    def load(self, data_dir) -> list[dict]:
        root = Path(data_dir) / "bbh"
        data = require(root / "bbh", self.name, LAYOUT)
        prompts = require(root / "cot-prompts", self.name, LAYOUT)
        names = sorted(p.stem for p in data.glob("*.json"))
        prompt_names = sorted(p.stem for p in prompts.glob("*.txt"))
        if not names:
            raise FileNotFoundError(f"bbh: no task files in {data}: point data_dir= at the BBH files")
        if set(names) != set(prompt_names):
            raise ValueError(f"bbh: task files and prompt files differ: only data {sorted(set(names) - set(prompt_names))}, "
                             f"only prompts {sorted(set(prompt_names) - set(names))}")
        rng = random.Random(self.seed)
        examples = []
        self.available = 0
        for name in names:
            content = read_json(data / f"{name}.json", self.name)
            if not isinstance(content, dict) or not isinstance(content.get("examples"), list):
                raise BadBenchmarkFile(f"bbh: {data / f'{name}.json'} has no \"examples\" list")
            task_examples = content["examples"]
            self.available += len(task_examples)
            indexed = sample(list(enumerate(task_examples)), self.max_per_task, rng)
            if self.tasks is not None and name not in self.tasks:
                continue  # sampled anyway so the chosen tasks get the same examples as in a full run
            self.task_prompts[name] = read_task_prompt(prompts / f"{name}.txt", self.cot)
            for i, ex in indexed:
                examples.append({"id": f"{name}/{i}", "task": name, "input": ex["input"], "target": ex["target"]})
        if self.tasks is not None:
            unknown = set(self.tasks) - set(names)
            if unknown:
                raise ValueError(f"bbh: unknown task(s) {sorted(unknown)}")
        return examples

    def prompt(self, example: dict, tokenizer=None) -> str:
        prompt = self.task_prompts[example["task"]].strip() + "\n\nQ: " + example["input"]
        return chat_format(prompt, "A:") if self.chat else prompt + "\nA:"

    def generation(self) -> GenSpec:
        return GenSpec(max_new_tokens=self.max_new_tokens, stop=[] if self.chat else ["\n\n"])

    def parse(self, output: str, example: dict) -> str:
        return extract_bbh_answer(output)

    def score(self, examples, predictions) -> dict:
        by_task: dict[str, tuple[list[str], list[str]]] = {}
        for ex, p in zip(examples, predictions):
            preds, refs = by_task.setdefault(ex["task"], ([], []))
            preds.append(p[0])
            refs.append(ex["target"])
        per_task = {t: 100.0 * exact_match(p, r) for t, (p, r) in by_task.items()}
        avg = sum(per_task.values()) / max(1, len(per_task))
        per_example = [{"correct": normalize_exact(p[0]) == normalize_exact(ex["target"]), "group": ex["task"]}
                       for ex, p in zip(examples, predictions)]  # the score is the macro average over tasks
        return {"score": avg, "exact_match": avg, "tasks": per_task, "per_example": per_example}
