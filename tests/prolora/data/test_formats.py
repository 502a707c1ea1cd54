"""Reformatters: each raw fixture -> the exact records; malformed rows skipped and reported; clear errors."""


import pytest

from prolora.data import get_converter, load_records, read_records
from prolora.data.formats import (
    convert_code_alpaca,
    convert_cot,
    convert_flan_v2,
    convert_messages,
    convert_superni,
    superni_prompt,
)

from .helpers import FIXTURES

BAD = FIXTURES / "malformed"

ANTONYM_PROMPT = (
    "Definition: Given a word, write its antonym.\n\n"
    " Positive Example 1 -\nInput: hot.\n Output: cold.\n\n"
    " Positive Example 2 -\nInput: tall.\n Output: short.\n\n"
    "Now complete the following example -\nInput: {x}.\nOutput: ")
SENTIMENT_PROMPT = (
    "Definition: Classify the sentiment of the review as \"positive\" or \"negative\".\n\n"
    " Positive Example 1 -\nInput: I loved every minute!\n Output: positive.\n\n"
    " Positive Example 2 -\nInput: Dull and far too long.\n Output: negative.\n\n"
    "Now complete the following example -\nInput: {x}\nOutput: ")


def rec(dataset, id, *turns):
    roles = ["user", "assistant"] * len(turns)
    return {"dataset": dataset, "id": id, "messages": [{"role": r, "content": c} for r, c in zip(roles, turns)]}


def test_superni_tk_instruct_template_exact():
    records, report = convert_superni(FIXTURES / "superni", template="tk_instruct", split="default",
                                      max_per_task=None)
    assert records == [
        rec("superni", "superni_task901-a1", ANTONYM_PROMPT.format(x="happy"), "sad"),
        rec("superni", "superni_task901-a3", ANTONYM_PROMPT.format(x="light"), "dark"),
        rec("superni", "superni_task902-b1", SENTIMENT_PROMPT.format(x="What a waste of money."), "negative"),
        rec("superni", "superni_task902-b2", SENTIMENT_PROMPT.format(x="Great acting, great story."), "positive"),
    ]
    # the empty target of task901-a2 and the task listed in the split but not downloaded are reported
    assert report.kept == 4 and report.n_skipped == 2
    by_reason = {s.reason: s for s in report.skipped}
    assert by_reason["instance 2: empty target"].path.endswith("task901_toy_antonyms.json")
    assert by_reason["task file missing"].path.endswith("task903_toy_not_downloaded.json")


def test_superni_few_shot_prompt_and_tk_instruct_cap():
    assert superni_prompt("Given a word, write its antonym", [{"input": "hot", "output": "cold"},
                                                              {"input": " tall ", "output": "short"}],
                          "happy", template="open_instruct") == (
        "Given a word, write its antonym\n\nInput:\nhot\nOutput:\ncold\n\nInput:\ntall\nOutput:\nshort\n\n"
        "Input:\nhappy\nOutput:\n")
    capped, _ = convert_superni(FIXTURES / "superni", template="tk_instruct", split="default", max_per_task=1, seed=3)
    again, _ = convert_superni(FIXTURES / "superni", template="tk_instruct", split="default", max_per_task=1, seed=3)
    assert capped == again and len(capped) <= 2  # one instance sampled per task (one may be the empty one)
    with pytest.raises(ValueError, match="unknown SuperNI template"):
        superni_prompt("d", [], "x", template="nope")


def test_superni_errors():
    with pytest.raises(FileNotFoundError, match="scripts.prepare_data superni"):
        convert_superni(FIXTURES / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="split file not found"):
        convert_superni(FIXTURES / "superni", split="xlingual")  # an explicit split never falls back
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*xlingual"):
        convert_superni(FIXTURES / "superni_xlingual" / "tasks")  # a directory with neither split
    with pytest.raises(ValueError, match="unknown SuperNI template"):
        convert_superni(FIXTURES / "superni", template="nope")
    # every task broken or absent: one ValueError naming the directory and the first reasons
    for template in ("open_instruct", "tk_instruct"):
        with pytest.raises(ValueError, match=r"no usable rows in .*superni_bad.*invalid JSON.*task file missing"):
            convert_superni(BAD / "superni_bad", template=template, split="default")


def test_flan_v2_exact():
    # open-instruct convert_flan_v2_data: "\n" appended unless the inputs end in "\n" or ":"; targets as is
    records, report = convert_flan_v2(FIXTURES / "flan_v2.jsonl")
    assert records == [
        rec("flan_v2", "flan_v2_0", "Translate to French: Good morning\n", "Bonjour"),
        rec("flan_v2", "flan_v2_1", "Premise: The cat sat on the mat.\nHypothesis: A cat is sitting.\n"
                                    "Does the premise entail the hypothesis?\nOPTIONS:\n- yes\n- no\n", "yes\n"),
        rec("flan_v2", "flan_v2_2", "Answer the question: what colour is the sky on a clear day?\nAnswer:", " blue"),
    ]
    assert report.n_skipped == 0


def test_cot_exact_and_several_sources(tmp_path):
    records, _ = convert_cot(FIXTURES / "cot.jsonl")
    assert records == [
        rec("cot", "cot_0", "Q: Tom has 3 apples and buys 2 more. How many apples does he have?\n"
                            "A: Let's think step by step.\n",
            "Tom starts with 3 apples. He buys 2 more, so 3 + 2 = 5. The answer is 5."),
        rec("cot", "cot_1", "Is the following sentence plausible? \"The fish climbed the tree.\"\n",
            "Fish cannot climb trees. So the answer is no."),
    ]
    both, _ = convert_cot([FIXTURES / "cot.jsonl", FIXTURES / "flan_v2.jsonl"])
    assert [r["id"] for r in both] == [f"cot_{i}" for i in range(5)]
    # open-instruct: random.sample(rows, k) of each file (zero-shot file first), kept in sampled order; with
    # random.Random(42): .sample(range(2), k=1) == [0] then .sample(range(3), k=1) == [0]; random.Random(0):
    # [1] then [1] (python's random module alone gives these)
    sampled, _ = convert_cot([FIXTURES / "cot.jsonl", FIXTURES / "flan_v2.jsonl"], max_per_source=1)
    assert [(r["id"], r["messages"][1]["content"]) for r in sampled] == [
        ("cot_0", "Tom starts with 3 apples. He buys 2 more, so 3 + 2 = 5. The answer is 5."), ("cot_1", "Bonjour")]
    sampled, _ = convert_cot([FIXTURES / "cot.jsonl", FIXTURES / "flan_v2.jsonl"], max_per_source=1, seed=0)
    assert [(r["id"], r["messages"][1]["content"]) for r in sampled] == [
        ("cot_0", "Fish cannot climb trees. So the answer is no."), ("cot_1", "yes\n")]


def test_code_alpaca_fixed_template_exact():
    records, report = convert_code_alpaca(FIXTURES / "code_alpaca.json", template="fixed")
    assert records == [
        rec("code_alpaca", "code_alpaca_0", "Write a Python function that returns the square of a number.",
            "def square(x):\n    return x * x"),
        rec("code_alpaca", "code_alpaca_1", "Reverse the given list in place.\n\nnums = [1, 2, 3]", "nums.reverse()"),
        rec("code_alpaca", "code_alpaca_2", "Print the length of the string.\n\ns = \"hello\"", "print(len(s))"),
    ]
    assert report.n_skipped == 0


def test_messages_multi_turn_system_and_sharegpt():
    records, report = convert_messages(FIXTURES / "messages.jsonl")
    assert records == [
        {"dataset": "toy_chat", "id": "chat_1", "messages": [
            {"role": "user", "content": "Hi! What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."},
            {"role": "user", "content": "And times 4?"}, {"role": "assistant", "content": "5 * 4 = 20."}]},
        {"dataset": "messages", "id": "chat_2", "messages": [
            {"role": "system", "content": "You answer tersely."}, {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."}]},
        rec("messages", "messages_2", "Name a prime number.", "7"),
    ]
    assert report.n_skipped == 0


def test_malformed_rows_are_skipped_with_path_line_reason():
    records, report = convert_messages(BAD / "messages_bad.jsonl")
    assert [r["id"] for r in records] == ["ok"]
    got = [(s.line, s.reason) for s in report.skipped]
    assert got == [
        (2, "no assistant turn"),
        (3, "wrong role order: message 0 is 'assistant', expected 'user'"),
        (4, "message 1: empty assistant content"),
        (5, "missing field 'messages'"),
        (6, "message 1 has unknown role 'bot'"),
        (7, "invalid JSON (Expecting value at column 1)"),
    ]
    assert all(s.path.endswith("messages_bad.jsonl") for s in report.skipped)
    assert "kept 1, skipped 6" in report.summary()

    flan, rep = convert_flan_v2(BAD / "flan_v2_bad.jsonl")
    assert [r["messages"][1]["content"] for r in flan] == ["hi", "bye"]
    assert [(s.line, s.reason) for s in rep.skipped] == [
        (2, "invalid JSON (Expecting value at column 1)"), (3, "missing field 'targets'"), (4, "empty target")]

    code, rep = convert_code_alpaca(BAD / "code_alpaca_bad.json")
    assert len(code) == 1
    assert [s.reason for s in rep.skipped] == ["item 2: missing field 'output'", "item 3: empty target"]


def test_no_assistant_turn_in_record_file_is_a_reported_skip():
    records, report = read_records(BAD / "messages_bad.jsonl")
    assert len(records) == 1 and report.n_skipped == 6
    with pytest.warns(UserWarning, match="skipped 6"):
        assert load_records(BAD / "messages_bad.jsonl") == records


def test_files_with_no_usable_rows_and_missing_files():
    with pytest.raises(ValueError, match=r"no usable rows in .*empty\.jsonl.*the file has no rows"):
        load_records(BAD / "empty.jsonl")
    with pytest.raises(ValueError, match=r"all_bad\.jsonl.*:1: no assistant turn.*:2: invalid JSON"):
        load_records(BAD / "all_bad.jsonl")
    with pytest.raises(ValueError, match=r"truncated\.json.*invalid JSON"):
        convert_code_alpaca(BAD / "truncated.json")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl[\s\S]*python -m scripts.prepare_data superni"):
        load_records(FIXTURES / "missing.jsonl", name="superni")
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl[\s\S]*scripts.prepare_data flan_v2"):
        convert_flan_v2(FIXTURES / "nope.jsonl")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'alpaca_gpt5'; known: code_alpaca, cot, flan_v2, messages, superni"):
        get_converter("alpaca_gpt5")
    records, _ = get_converter("code_alpaca")(FIXTURES / "code_alpaca.json")
    assert len(records) == 3
