"""The authors' evaluation protocol where it differs from upstream open-instruct: TyDi QA's exemplar draw from
the train file and its context cut, and what eval.json records about it."""

from __future__ import annotations

import json
import random

import pytest

from eval.tasks import get_task
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval"
DEV = "tydiqa-goldp-v1.1-dev-fixture.json"
TRAIN = "tydiqa-goldp-v1.1-train-fixture.json"


def _reference_draw(max_per_lang: int | None, n_shot: int = 1) -> tuple[list[str], dict[str, list[str]]]:
    """The authors' eval/tydiqa/run_eval.py, step for step: random.seed(42); per sorted language, sample the
    dev questions when there are more than max_per_lang; then per sorted language random.sample(n_shot) of
    that language's train questions in file order."""
    rng = random.Random(42)

    def questions(name):
        data = json.loads((FIX / "tydiqa" / name).read_text())
        return [qa["id"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]

    dev = questions(DEV)
    langs = sorted({q.split("-")[0] for q in dev})
    picked = []
    for lang in langs:
        of_lang = [q for q in dev if q.startswith(lang + "-")]
        if max_per_lang and len(of_lang) > max_per_lang:
            of_lang = rng.sample(of_lang, max_per_lang)
        picked += of_lang
    train = questions(TRAIN)
    shots = {lang: rng.sample([q for q in train if q.startswith(lang + "-")], n_shot) for lang in langs}
    return picked, shots


@pytest.mark.parametrize("max_per_lang", [None, 2])
def test_tydiqa_exemplars_are_drawn_from_the_train_file_as_the_authors(max_per_lang):
    task = get_task("tydiqa", dev_file=DEV, train_file=TRAIN, max_per_lang=max_per_lang)
    examples = task.load(FIX)
    picked, shots = _reference_draw(max_per_lang)
    assert [e["id"] for e in examples] == picked
    assert {lang: [s["id"] for s in v] for lang, v in task.shots.items()} == shots
    info = task.info()["exemplars"]
    assert (info["requested"], info["used"], info["ids"]) == ("train", "train", shots)
    # the exemplar is in the prompt, with its own passage, question and answer
    en = next(e for e in examples if e["lang"] == "english")
    shot = task.shots["english"][0]
    assert f"Question: {shot['question']}\nAnswer: {shot['answers'][0]['text']}\n\n" in task.prompt(en)


def test_tydiqa_two_shot_draw_and_a_missing_train_file():
    task = get_task("tydiqa", dev_file=DEV, train_file=TRAIN, n_shot=2)
    task.load(FIX)
    assert {lang: [s["id"] for s in v] for lang, v in task.shots.items()} == _reference_draw(None, n_shot=2)[1]
    fallback = get_task("tydiqa", dev_file=DEV, train_file="absent.json")
    with pytest.warns(UserWarning, match="absent.json not found.*tydiqa-one-shot.json"):
        fallback.load(FIX)
    assert fallback.info()["exemplars"]["used"] == "oneshot"
    assert get_task("tydiqa", dev_file=DEV, exemplars="oneshot").load(FIX)  # asked for: no warning
    with pytest.raises(ValueError, match="tydiqa.exemplars='first'"):
        get_task("tydiqa", exemplars="first")
    with pytest.raises(ValueError, match="tydiqa.context_cut="):
        get_task("tydiqa", context_cut="bos")


def test_context_cut_of_a_600_token_passage_both_ways():
    """The authors cut ``tokenizer.encode(context)[:512]`` and decode it back: with a tokenizer that adds a BOS
    (LLaMA-2's, and the tiny one) the passage keeps 511 tokens and starts with the BOS text; the clean cut
    keeps 512 passage tokens and no BOS."""
    from prolora.models import TINY_DIR, load_tokenizer

    tok = load_tokenizer(TINY_DIR)
    words = "red green blue cat dog bird fish tree river stone".split()
    passage = " ".join(words[i % len(words)] for i in range(700))
    ids = tok.encode(passage, add_special_tokens=False)
    assert len(ids) >= 600 and tok.bos_token and tok.encode(passage)[0] == tok.bos_token_id
    authors = get_task("tydiqa")._truncate(passage, tok)
    assert authors == tok.decode(tok.encode(passage)[:512]) and authors.startswith(tok.bos_token)
    assert tok.encode(authors[len(tok.bos_token):], add_special_tokens=False) == ids[:511]
    clean = get_task("tydiqa", context_cut="clean")._truncate(passage, tok)
    assert tok.bos_token not in clean and tok.encode(clean, add_special_tokens=False) == ids[:512]
    short = " ".join(words)
    assert get_task("tydiqa")._truncate(short, tok) == short  # under the limit: untouched in both modes
    assert get_task("tydiqa", context_cut="clean")._truncate(short, tok) == short


def test_empty_stop_sequence_does_not_crash_the_hf_backend():
    from eval.backends.hf import HFBackend
    from prolora.models import TINY_DIR, build_tiny_llama, load_tokenizer

    backend = HFBackend(build_tiny_llama(seed=0), load_tokenizer(TINY_DIR), batch_size=2)
    prompts = ["<|user|>\nWhat is 12 + 30?\n<|assistant|>\n", "Reverse: red cat sun\n"]
    assert backend.generate(prompts, max_new_tokens=5, stop=[""]) == backend.generate(prompts, max_new_tokens=5)
    assert backend.generate(prompts, max_new_tokens=5, stop=["", "\n"]) == \
        backend.generate(prompts, max_new_tokens=5, stop=["\n"])


def test_flan_v2_default_source_is_the_tulu_v1_100k_resample():
    from prolora.data.sources import DOWNLOADS, HUB_SOURCES

    assert HUB_SOURCES["flan_v2"] == [
        "https://beaker.org/api/v3/datasets/01GZTTS2EJFPA83PXS4FQCS1SA/files/flan_v2_resampled_100k.jsonl"]
    assert "tulu_v1_resampled_flan_100k.jsonl" in DOWNLOADS["flan_v2"]
