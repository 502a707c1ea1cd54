"""TyDi QA GoldP as the PRoLoRA authors ran it (open-instruct ``eval/tydiqa/run_eval.py``, their
``eval_llama2_7b_superni_tydiqa.sh``): gold passage, 1-shot with a same-language exemplar, every dev
question, passages cut to 512 tokens, 50 new tokens, SQuAD F1 and EM (official normalisation) per
language, then averaged over languages.  ``no_context=True`` is the closed-book variant (no passage).

Prompt (English, with context)::

    Answer the following question based on the information in the given passage.\n\n
    Passage: {exemplar context}\nQuestion: {exemplar question}\nAnswer: {exemplar answer}\n\n
    Passage: {context}\nQuestion: {question}\nAnswer:

Chat: the text up to and including ``Question: {question}\n`` is the user turn, then
``<|assistant|>\n`` + ``Answer:``. No-chat generation stops at "\n"; outputs are stripped.

Sampling and exemplars (one ``random.Random(seed)``, seed 42, as the script's ``random.seed(42)``): first
``max_per_lang`` questions per language when set (languages in sorted order), then, with
``exemplars: train`` (the authors'), ``n_shot`` exemplars per language drawn with ``random.sample`` from the
gold-passage TRAIN file (``train_file`` under ``<data_dir>/tydiqa/``, questions of that language in file
order, languages sorted).  ``exemplars: oneshot`` takes the first entries of ``oneshot_file`` (a pre-made
``{language: [example]}`` file, upstream's quick setup); a missing train file falls back to it with a warning.
``info()`` records which source was used.

Context cut (``context_cut``), when a passage is longer than ``max_context_tokens``:

* ``authors``: ``tokenizer.decode(tokenizer.encode(context)[:max])`` exactly as the script: with LLaMA-2's
  tokenizer the ids include the BOS, so the passage keeps 511 tokens and starts with the text "<s> ";
* ``clean``: ``max`` tokens of the passage alone (no special tokens), decoded without special tokens.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from eval.metrics import squad_em, squad_f1, squad_scores
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

LAYOUT = """  tydiqa/tydiqa-goldp-v1.1-dev.json   (SQuAD v1.1 json; question ids start with "<language>-")
  tydiqa/tydiqa-goldp-v1.1-train.json (the same format: the authors' 1-shot exemplars are drawn from it)
  tydiqa/tydiqa-one-shot.json          ({language: [{"id","lang","context","question","answers"}]}, fallback)"""

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


EXEMPLAR_SOURCES = ("train", "oneshot")
CONTEXT_CUTS = ("authors", "clean")


def read_squad(path: Path) -> list[dict]:
    """Questions of a SQuAD-format file in file order: ``{"id", "lang", "context", "question", "answers"}``."""
    squad = read_json(path, "tydiqa")
    try:
        return [{"id": qa["id"], "lang": qa["id"].split("-")[0], "context": paragraph["context"],
                 "question": qa["question"], "answers": qa["answers"]}
                for article in squad["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    except (KeyError, TypeError, AttributeError) as e:
        raise BadBenchmarkFile(f"tydiqa: {path} is not in the SQuAD format (missing {e})") from None


@register
@dataclass
class TyDiQA(Task):
    name = "tydiqa"
    layout = LAYOUT
    columns = {"tydiqa_f1": Column("TyDiQA F1", "f1", "tydiqa_f1"),
               "tydiqa_em": Column("TyDiQA EM", "exact_match", "tydiqa_em")}

    max_per_lang: int | None = None  # None: every dev question (the paper); N: a random subset per language
    dev_file: str = "tydiqa-goldp-v1.1-dev.json"  # relative to <data_dir>/tydiqa/ (or absolute)
    exemplars: str = "train"  # train: drawn from train_file (the authors) | oneshot: the first of oneshot_file
    train_file: str = "tydiqa-goldp-v1.1-train.json"
    oneshot_file: str = "tydiqa-one-shot.json"
    n_shot: int = 1
    no_context: bool = False  # closed-book variant (not a Table 2 column)
    max_context_tokens: int | None = 512
    context_cut: str = "authors"  # authors: encode (BOS included), cut, decode back | clean: the passage alone
    max_new_tokens: int = 50

    def __post_init__(self) -> None:
        if self.exemplars not in EXEMPLAR_SOURCES:
            raise ValueError(f"tydiqa.exemplars={self.exemplars!r}: use one of {list(EXEMPLAR_SOURCES)}")
        if self.context_cut not in CONTEXT_CUTS:
            raise ValueError(f"tydiqa.context_cut={self.context_cut!r}: use one of {list(CONTEXT_CUTS)}")
        self.shots: dict[str, list[dict]] = {}
        self.exemplar_source: dict = {}

    def _path(self, root: Path, name: str) -> Path:
        return Path(name) if Path(name).is_absolute() else root / name

    def load(self, data_dir) -> list[dict]:
        root = Path(data_dir) / "tydiqa"
        data = read_squad(require(self._path(root, self.dev_file), self.name, LAYOUT))
        self.available = len(data)
        languages = sorted({ex["lang"] for ex in data})
        unknown = [lang for lang in languages if lang not in WITH_CONTEXT]
        if unknown:
            raise ValueError(f"tydiqa: no prompt template for language(s) {unknown}")
        rng = random.Random(self.seed)
        examples = []
        for lang in languages:
            examples += sample([ex for ex in data if ex["lang"] == lang], self.max_per_lang, rng)
        self.shots = {}
        self.exemplar_source = {}
        if self.n_shot > 0:
            self._draw_exemplars(root, languages, rng)
        return examples

    def _draw_exemplars(self, root: Path, languages: list[str], rng: random.Random) -> None:
        source = self.exemplars
        train = self._path(root, self.train_file)
        if source == "train" and not train.is_file():
            warnings.warn(f"tydiqa: {train} not found: the 1-shot exemplars come from {self.oneshot_file} instead "
                          "(not the authors' draw from the train file; recorded in eval.json)", stacklevel=2)
            source = "oneshot"
        if source == "train":
            by_lang: dict[str, list[dict]] = {lang: [] for lang in languages}
            for ex in read_squad(train):
                if ex["lang"] in by_lang:
                    by_lang[ex["lang"]].append(ex)
            for lang in languages:
                if len(by_lang[lang]) < self.n_shot:
                    raise ValueError(f"tydiqa: {train} has {len(by_lang[lang])} {lang} question(s), fewer than "
                                     f"n_shot={self.n_shot}")
                self.shots[lang] = rng.sample(by_lang[lang], self.n_shot)
            path = train
        else:
            path = require(self._path(root, self.oneshot_file), self.name, LAYOUT)
            shots = read_json(path, self.name)
            for lang in languages:
                if len(shots.get(lang, [])) < self.n_shot:
                    raise ValueError(f"tydiqa: {path} has fewer than {self.n_shot} exemplar(s) for {lang}")
                self.shots[lang] = shots[lang][: self.n_shot]
        self.exemplar_source = {"requested": self.exemplars, "used": source, "file": str(path),
                                "ids": {lang: [ex["id"] for ex in self.shots[lang]] for lang in languages}}

    def info(self) -> dict:
        return {"exemplars": self.exemplar_source, "context_cut": self.context_cut}

    def _truncate(self, context: str, tokenizer) -> str:
        if tokenizer is None or not self.max_context_tokens:
            return context
        if self.context_cut == "authors":
            ids = tokenizer.encode(context)
            return tokenizer.decode(ids[: self.max_context_tokens]) if len(ids) > self.max_context_tokens else context
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
            for shot in self.shots[lang]:
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
                "per_example": [{"correct": bool(squad_em(p[0], self.target(ex))),
                                 "f1": squad_f1(p[0], self.target(ex)), "group": ex["lang"]}
                                for ex, p in zip(examples, predictions)]}  # macro average over languages
