"""Loaders on the real published files in ../shared/data (skipped where that directory is absent)."""

import pytest

from eval.tasks import get_task


def test_mmlu_counts(shared_data):
    task = get_task("mmlu")
    examples = task.load(shared_data)
    assert len(examples) == 14042
    assert len({e["subject"] for e in examples}) == 57
    assert all(e["answer"] in "ABCD" and len(e["choices"]) == 4 for e in examples)
    first = examples[0]
    assert first["subject"] == "abstract_algebra"
    assert task.prompt(first).startswith(
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n")
    assert task.prompt(first).endswith("\nAnswer:")


def test_bbh_first_task_prompt(shared_data):
    task = get_task("bbh")
    examples = task.load(shared_data)
    assert len(examples) == 27 * 40
    ex = examples[0]
    assert ex["task"] == "boolean_expressions"
    prompt = task.prompt(ex)
    assert prompt.startswith("Evaluate the result of a random Boolean expression.\n\n"
                             "Q: not ( ( not not True ) ) is\nA: False.\n\n")
    assert "Let's think step by step" not in prompt
    assert prompt.endswith("\n\nQ: " + ex["input"] + "\nA:")
    assert prompt.count("\nA: ") == 3


def test_gsm_sample(shared_data):
    import json
    import random

    task = get_task("gsm")
    examples = task.load(shared_data)
    assert len(examples) == 200
    lines = (shared_data / "gsm" / "test.jsonl").read_text().splitlines()
    assert len(lines) == 1319
    picked = random.Random(42).sample(range(1319), 200)  # open-instruct: random.seed(42); random.sample
    assert [e["question"] for e in examples] == [json.loads(lines[i])["question"] for i in picked]
    assert all("," not in e["answer"] for e in examples)


def test_tydiqa_ini_file_and_exemplars(shared_data):
    task = get_task("tydiqa", dev_file="tydiqa-goldp-v1.1-dev_ini.json")
    examples = task.load(shared_data)
    assert len(examples) == 9
    assert sorted(task.exemplars) == ["arabic", "bengali", "english", "finnish", "indonesian", "korean",
                                      "russian", "swahili", "telugu"]
    en = next(e for e in examples if e["lang"] == "english")
    prompt = task.prompt(en)
    assert prompt.startswith("Answer the following question based on the information in the given passage.\n\nPassage: ")
    assert prompt.endswith("\nQuestion: " + en["question"] + "\nAnswer:")


def test_full_tydiqa_dev_is_reported_missing(shared_data):
    with pytest.raises(FileNotFoundError, match="tydiqa-goldp-v1.1-dev.json"):
        get_task("tydiqa").load(shared_data)
