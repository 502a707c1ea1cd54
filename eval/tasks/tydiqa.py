"""TyDi QA GoldP, open-instruct ``eval/tydiqa/run_eval.py`` (Feb 2024): gold passage, 1-shot with a
same-language exemplar, 100 questions per language (``random.seed(42)``; languages in sorted order),
passages cut to 512 tokens, 50 new tokens, SQuAD F1 and EM (official normalisation) per language,
then averaged over languages. ``no_context=True`` is the closed-book variant (no passage).

Prompt (English, with context)::

    Answer the following question based on the information in the given passage.\n\n
    Passage: {exemplar context}\nQuestion: {exemplar question}\nAnswer: {exemplar answer}\n\n
    Passage: {context}\nQuestion: {question}\nAnswer:

Chat: the text up to and including ``Question: {question}\n`` is the user turn, then
``<|assistant|>\n`` + ``Answer:``. No-chat generation stops at "\n"; outputs are stripped.

Data: the dev file (SQuAD json, ids prefixed with the language) is configurable (``dev_file``; the
full ``tydiqa-goldp-v1.1-dev.json`` by default), exemplars come from ``tydiqa-one-shot.json``
(``{language: [{"id", "lang", "context", "question", "answers"}]}``, one train-set example per
language, as open-instruct samples them from the train set).

Deviation: open-instruct truncates with ``tokenizer.encode(context)`` (BOS included, so 511 passage
tokens and a literal "<s>" in the decoded passage); here the passage is encoded without special
tokens and cut to exactly ``max_context_tokens`` tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from eval.metrics import squad_em, squad_scores
from eval.tasks.base import GenSpec, Task, chat_format, register, require, sample

LAYOUT = """  tydiqa/tydiqa-goldp-v1.1-dev.json   (SQuAD v1.1 json; question ids start with "<language>-")
  tydiqa/tydiqa-one-shot.json          ({language: [{"id","lang","context","question","answers"}]})"""

# open-instruct's per-language templates: (instruction, passage label, question label, answer label)
WITH_CONTEXT = {
    'english': ('Answer the following question based on the information in the given passage.', 'Passage:', 'Question:', 'Answer:'),
    'arabic': ('أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.', 'المقطع:', 'السؤال:', 'الإجابة:'),
    'bengali': ('প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।', 'অধ্যায়:', 'প্রশ্ন:', 'উত্তর:'),
    'finnish': ('Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.', 'Kappale:', 'Kysymys:', 'Vastaus:'),
    'indonesian': ('Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.', 'Bagian:', 'Pertanyaan:', 'Jawaban:'),
    'korean': ('주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.', '문단:', '질문:', '답변:'),
    'russian': ('Ответьте на следующий вопрос на основе информации в данном отрывке.', 'Отрывок:', 'Вопрос:', 'Ответ:'),
    'swahili': ('Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.', 'Kifungu:', 'Swali:', 'Jibu:'),
    'telugu': ('ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.', 'పేరా:', 'ప్రశ్న:', 'సమాధానం:'),
}

WITHOUT_CONTEXT = {
    'english': ('Answer the following question.', 'Question:', 'Answer:'),
    'arabic': ('أجب على السؤال التالي.', 'السؤال:', 'الإجابة:'),
    'bengali': ('নিম্নলিখিত প্রশ্নের উত্তর দিন।', 'প্রশ্ন:', 'উত্তর:'),
    'finnish': ('Vastaa seuraavaan kysymykseen.', 'Kysymys:', 'Vastaus:'),
    'indonesian': ('Jawab pertanyaan berikut.', 'Pertanyaan:', 'Jawaban:'),
    'korean': ('다음 질문에 답하십시오.', '질문:', '답변:'),
    'russian': ('Ответьте на следующий вопрос.', 'Вопрос:', 'Ответ:'),
    'swahili': ('Jibu swali lifuatalo.', 'Swali:', 'Jibu:'),
    'telugu': ('క్రింది ప్రశ్నకు సమాధానం ఇవ్వండి.', 'ప్రశ్న:', 'సమాధానం:'),
}


@register
@dataclass
class TyDiQA(Task):
    name = "tydiqa"
    layout = LAYOUT
    columns = {"tydiqa_f1": ("TyDiQA F1", "f1"), "tydiqa_em": ("TyDiQA EM", "exact_match")}

    max_per_lang: int | None = 100  # a random subset per language; None: every dev question
    dev_file: str = "tydiqa-goldp-v1.1-dev.json"  # relative to <data_dir>/tydiqa/ (or absolute)
    oneshot_file: str = "tydiqa-one-shot.json"
    n_shot: int = 1
    no_context: bool = False  # closed-book variant (not a Table 2 column)
    max_context_tokens: int | None = 512
    max_new_tokens: int = 50

    def __post_init__(self) -> None:
        self.exemplars: dict[str, list[dict]] = {}

    def load(self, data_dir) -> list[dict]:
        root = Path(data_dir) / "tydiqa"
        dev_path = require(root / self.dev_file, self.name, LAYOUT)
        with open(dev_path, encoding="utf-8") as f:
            dev = json.load(f)
        data = []
        for article in dev["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    data.append({"id": qa["id"], "lang": qa["id"].split("-")[0], "context": paragraph["context"],
                                 "question": qa["question"], "answers": qa["answers"]})
        languages = sorted({ex["lang"] for ex in data})
        unknown = [lang for lang in languages if lang not in WITH_CONTEXT]
        if unknown:
            raise ValueError(f"tydiqa: no prompt template for language(s) {unknown}")
        rng = random.Random(self.seed)
        examples = []
        for lang in languages:
            examples += sample([ex for ex in data if ex["lang"] == lang], self.max_per_lang, rng)
        if self.n_shot > 0:
            with open(require(root / self.oneshot_file, self.name, LAYOUT), encoding="utf-8") as f:
                shots = json.load(f)
            for lang in languages:
                if len(shots.get(lang, [])) < self.n_shot:
                    raise ValueError(f"tydiqa: {self.oneshot_file} has fewer than {self.n_shot} exemplar(s) for {lang}")
                self.exemplars[lang] = shots[lang][: self.n_shot]
        return examples

    def _truncate(self, context: str, tokenizer) -> str:
        if tokenizer is None or not self.max_context_tokens:
            return context
        ids = tokenizer.encode(context, add_special_tokens=False)
        if len(ids) <= self.max_context_tokens:
            return context
        return tokenizer.decode(ids[: self.max_context_tokens], skip_special_tokens=True)

    def prompt(self, example: dict, tokenizer=None) -> str:
        lang = example["lang"]
        if self.no_context:
            prompt, q_label, a_label = WITHOUT_CONTEXT[lang]
            p_label = ""
        else:
            prompt, p_label, q_label, a_label = WITH_CONTEXT[lang]
        prompt += "\n\n"
        if self.n_shot > 0:
            demos = []
            for shot in self.exemplars[lang]:
                answer = shot["answers"][0]["text"]
                if self.no_context:
                    demos.append(q_label + " " + shot["question"] + "\n" + a_label + " " + answer)
                else:
                    demos.append(p_label + " " + self._truncate(shot["context"], tokenizer) + "\n" + q_label + " "
                                 + shot["question"] + "\n" + a_label + " " + answer)
            prompt += "\n\n".join(demos) + "\n\n"
        if self.no_context:
            prompt += q_label + " " + example["question"] + "\n"
        else:
            prompt += (p_label + " " + self._truncate(example["context"], tokenizer) + "\n" + q_label + " "
                       + example["question"] + "\n")
        return chat_format(prompt, a_label) if self.chat else prompt + a_label

    def generation(self) -> GenSpec:
        return GenSpec(max_new_tokens=self.max_new_tokens, stop=[] if self.chat else ["\n"])

    def parse(self, output: str, example: dict) -> str:
        return output.strip()

    def target(self, example: dict) -> list[str]:
        return [a["text"] for a in example["answers"]]

    def score(self, examples, predictions) -> dict:
        by_lang: dict[str, tuple[list[str], list[list[str]]]] = {}
        for ex, p in zip(examples, predictions):
            preds, refs = by_lang.setdefault(ex["lang"], ([], []))
            preds.append(p[0])
            refs.append(self.target(ex))
        per_lang = {lang: {**squad_scores(p, r), "n": len(p)} for lang, (p, r) in by_lang.items()}
        n = max(1, len(per_lang))
        f1 = sum(s["f1"] for s in per_lang.values()) / n
        em = sum(s["exact_match"] for s in per_lang.values()) / n
        return {"score": f1, "f1": f1, "exact_match": em, "languages": per_lang,
                "per_example": [{"correct": bool(squad_em(p[0], self.target(ex)))}
                                for ex, p in zip(examples, predictions)]}
