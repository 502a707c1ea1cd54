"""GSM8K as the PRoLoRA authors ran it (open-instruct ``eval/gsm/run_eval.py``, their
``eval_llama2_7b_cot_gsm8k.sh``): 8-shot chain of thought with the fixed exemplars of Wei et al. (2022,
Table 20), all 1,319 test questions (the script's ``--max_num_examples`` is not passed; ``max_examples``
samples with ``random.seed(42)``/``random.sample`` as the script would), the model loaded in 8-bit (their
GSM run is on the transformers path with ``--load_in_8bit``), prediction = last number of the output
(thousands commas removed), exact match.

Prompt: ``"Answer the following questions.\\n\\n" + "\\n\\n".join("Question: {q}\\nAnswer: {cot}") +
"\\n\\n" + "Question: " + question.strip()``, then ``"\\nAnswer:"`` (no chat; generation stops at "\\n")
or the chat wrapping ``<|user|>\\n{...}\\n<|assistant|>\\nAnswer:`` (no stop sequence).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from eval.metrics import exact_match, last_number, normalize_exact, remove_digit_commas
from eval.tasks.base import Column, GenSpec, Task, chat_format, read_jsonl, register, require, sample

LAYOUT = """  gsm/test.jsonl                ({"question", "answer"} per line; answer ends with "#### <number>")"""

# Wei et al. (2022), "Chain-of-thought prompting", Table 20: the 8 GSM8K exemplars, in open-instruct's order.
EXEMPLARS = [
    {"question": "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "cot_answer": "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. So the answer is 6.",
     "short_answer": "6"},
    {"question": "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "cot_answer": "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
     "short_answer": "5"},
    {"question": "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "cot_answer": "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. So the answer is 39.",
     "short_answer": "39"},
    {"question": "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "cot_answer": "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. So the answer is 8.",
     "short_answer": "8"},
    {"question": "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "cot_answer": "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. So the answer is 9.",
     "short_answer": "9"},
    {"question": "There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "cot_answer": "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. So the answer is 29.",
     "short_answer": "29"},
    {"question": "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "cot_answer": "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33.",
     "short_answer": "33"},
    {"question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "cot_answer": "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. So the answer is 8.",
     "short_answer": "8"},
]


@register
@dataclass
class GSM(Task):
    name = "gsm"
    layout = LAYOUT
    columns = {"gsm_em": Column("GSM EM", "exact_match", "gsm")}

    full_size = 1_319

    precision: str | None = "8bit"  # the authors' GSM run: transformers + --load_in_8bit; null: the run's
    max_examples: int | None = None  # None: all 1,319 (the paper); N: a random subset (random.seed(42))
    n_shot: int = 8
    cot: bool = True  # chain-of-thought exemplars (the paper); false: direct answers
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        self.prefix = ""

    def load(self, data_dir) -> list[dict]:
        path = require(Path(data_dir) / "gsm" / "test.jsonl", self.name, LAYOUT)

        def parse(ex: dict) -> dict:
            answer = remove_digit_commas(ex["answer"].split("####")[1].strip())
            float(answer)  # every GSM8K answer is a number
            return {"question": ex["question"], "answer": answer}

        data = [{"id": f"gsm/{i}", **row} for i, row in enumerate(read_jsonl(path, self.name, parse))]
        self.available = len(data)
        rng = random.Random(self.seed)  # open-instruct: random.seed(42) once, then the samples below
        data = sample(data, self.max_examples, rng)
        exemplars = EXEMPLARS
        if self.n_shot and len(exemplars) > self.n_shot:
            exemplars = rng.sample(exemplars, self.n_shot)
        if self.n_shot:
            if self.cot:
                demos = ["Question: " + e["question"] + "\n" + "Answer: " + e["cot_answer"] for e in exemplars]
            else:  # sic: open-instruct's direct-answer exemplars read "Quesion:"
                demos = ["Quesion: " + e["question"] + "\n" + "Answer: " + e["short_answer"] for e in exemplars]
            self.prefix = "Answer the following questions.\n\n" + "\n\n".join(demos) + "\n\n"
        else:
            self.prefix = "Answer the following question.\n\n"
        return data

    def prompt(self, example: dict, tokenizer=None) -> str:
        prompt = self.prefix + "Question: " + example["question"].strip()
        return chat_format(prompt, "Answer:") if self.chat else prompt + "\nAnswer:"

    def generation(self) -> GenSpec:
        return GenSpec(max_new_tokens=self.max_new_tokens, stop=[] if self.chat else ["\n"])

    def parse(self, output: str, example: dict) -> str:
        return last_number(output)

    def target(self, example: dict) -> str:
        return example["answer"]

    def score(self, examples, predictions) -> dict:
        preds = [p[0] for p in predictions]
        refs = [ex["answer"] for ex in examples]
        em = 100.0 * exact_match(preds, refs)
        return {"score": em, "exact_match": em,
                "per_example": [{"correct": normalize_exact(p) == normalize_exact(r)} for p, r in zip(preds, refs)]}
