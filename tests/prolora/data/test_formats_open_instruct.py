"""The default reformatters reproduce open-instruct's ``reformat_datasets.py`` (commit 5cf790a52) exactly.

Every expected string below is hard-coded for seed 42 (open-instruct's default): derived by hand from
open-instruct's algorithm (``random.seed(42)``; per SuperNI task ``random.sample(Instances, k=80)`` when
longer, the first 60 zero-shot via ``random.choices(templates, weights)``, the last 20 few-shot with
``random.sample(Positive Examples, k=2)``) and checked once against open-instruct's own script run on these
fixtures; none is computed with our code.
"""

import random

import pytest

from prolora.data.formats import convert_code_alpaca, convert_superni
from prolora.data.templates import (
    ENCODING_TEMPLATES_W_INPUT,
    ENCODING_TEMPLATES_WO_INPUT,
    choose_template,
    encode_few_shot_example,
    encode_instruction_example,
)

from .helpers import FIXTURES

XL = FIXTURES / "superni_xlingual"  # splits/xlingual: task905 (85 instances), an _mmmlu_ task, task907 (3)
DEF = "Write the number that comes after the given number."  # Definition[0] stripped

# the 80 of task905's 85 instances random.Random(42).sample(Instances, k=80) picks, in sampled order
SAMPLED_905 = [81, 14, 3, 35, 31, 28, 17, 13, 69, 11, 54, 4, 82, 75, 27, 29, 64, 72, 25, 53, 79, 57, 37, 78, 51,
               55, 0, 48, 60, 10, 44, 70, 21, 61, 9, 77, 63, 52, 6, 5, 24, 46, 22, 42, 38, 16, 2, 76, 34, 7, 74,
               45, 18, 23, 32, 43, 41, 40, 1, 47, 84, 50, 65, 36, 67, 12, 8, 83, 71, 33, 15, 56, 20, 59, 73, 26,
               68, 19, 80, 66]


class _FixedRandom(random.Random):
    """A generator whose random() always returns ``value`` (to pick a given template)."""

    def __init__(self, value):
        super().__init__(0)
        self.value = value

    def random(self):
        return self.value


def rec(id, user, assistant):
    return {"dataset": "super_ni", "id": f"super_ni_{id}",
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def test_template_tables_are_open_instructs():
    assert len(ENCODING_TEMPLATES_W_INPUT) == len(ENCODING_TEMPLATES_WO_INPUT) == 14
    assert sum(w for *_, w in ENCODING_TEMPLATES_W_INPUT) == pytest.approx(1.0)
    assert sum(w for *_, w in ENCODING_TEMPLATES_WO_INPUT) == pytest.approx(1.0)
    assert ENCODING_TEMPLATES_W_INPUT[0] == ("{instruction}\n\n{input}\n\n", "{output}", 0.2)
    assert ENCODING_TEMPLATES_WO_INPUT[2] == ("{instruction}", "\n{output}", 0.1)
    assert ENCODING_TEMPLATES_WO_INPUT[11][0] == "Plase answer the following request: {instruction}\nAnswer:"
    assert ENCODING_TEMPLATES_W_INPUT[13][0] == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:")


def test_encoders_by_hand():
    # random.Random(42).random() == 0.6394...; cumulative with-input weights .2 .3 .4 .45 .5 .55 .6 .65 ...:
    # 0.639 falls in the 8th slot (index 7, "Task: ...\nInput: ...\nOutput:"); one draw consumed
    rng = random.Random(42)
    enc = encode_instruction_example(" Add one. ", " 4 ", " 5 ", rng)
    assert enc == {"prompt": "Task: Add one.\nInput: 4\nOutput:", "completion": "5", "template": 7}
    ref = random.Random(42)
    ref.random()
    assert rng.getstate() == ref.getstate()  # exactly one random() consumed, as by random.choices
    assert choose_template(random.Random(42), True) == 7
    # blank input: the without-input table, same cumulative weights -> index 7, "Instruction: {instruction}\n"
    assert encode_instruction_example("Add one.", "  ", "5", random.Random(42)) == {
        "prompt": "Instruction: Add one.\n", "completion": "5", "template": 7}
    # index 2 of the without-input table puts the newline into the completion (0.0 -> index 0; 0.35 -> 2)
    assert encode_instruction_example("Add one.", None, "5", _FixedRandom(0.35)) == {
        "prompt": "Add one.", "completion": "\n5", "template": 2}
    # random_template=False: open-instruct's fixed join, no draw
    assert encode_instruction_example("Add one.", "4", "5", None, random_template=False)["prompt"] == \
        "Add one.\n\n4\n\n"
    assert encode_few_shot_example(" Add one. ", [{"input": "1", "output": " 2"}], " 4", "5 ") == {
        "prompt": "Add one.\n\nInput:\n1\nOutput:\n2\n\nInput:\n4\nOutput:\n", "completion": "5"}


def test_superni_open_instruct_exact_seed_42():
    records, report = convert_superni(XL)  # defaults: open_instruct, splits/xlingual, seed 42, 60 + 20, 2-shot
    # the _mmmlu_ task listed in the split is dropped by name (its file is absent: no "task file missing")
    assert report.n_skipped == 0 and report.kept == len(records) == 80 + 3
    assert [r["id"] for r in records] == ([f"super_ni_task905-{i}" for i in SAMPLED_905]
                                          + ["super_ni_task907-c1", "super_ni_task907-c2", "super_ni_task907-c3"])
    assert all(r["dataset"] == "super_ni" for r in records)
    assert [r["messages"][1]["content"] for r in records[:80]] == [str(i + 1) for i in SAMPLED_905]

    # 60 zero-shot (random templates, none ends in "Output:\n") then 20 few-shot with 2 exemplars each
    assert not any(r["messages"][0]["content"].endswith("Output:\n") for r in records[:60])
    few = [r["messages"][0]["content"] for r in records[60:80]]
    assert all(u.startswith(DEF + "\n\nInput:\n") and u.count("Input:\n") == 3 and u.endswith("Output:\n")
               for u in few)

    # zero-shot, with input: templates W_INPUT[2], [13] (alpaca), [7], [6]
    assert records[0] == rec("task905-81", DEF + "\n81\n", "82")
    assert records[1] == rec("task905-14", "Below is an instruction that describes a task, paired with an input "
                             "that provides further context. Write a response that appropriately completes the "
                             "request.\n\n### Instruction:\n" + DEF + "\n\n### Input:\n14\n\n### Response:", "15")
    assert records[2] == rec("task905-3", "Task: " + DEF + "\nInput: 3\nOutput:", "4")
    assert records[3] == rec("task905-35", DEF + "\n\nAdditional Context:\n35\n\nAnswer:", "36")
    # zero-shot, blank input ("69", "29" have input ""): templates WO_INPUT[0] and [8]
    assert records[8] == rec("task905-69", DEF + "\n\n", "70")
    assert records[15] == rec("task905-29", "Instruction: " + DEF + "\nOutput:", "30")
    # few-shot: exemplars random.sample(3 positives, k=2) per instance: (1, 7), (1, 41), ..., (7, 1)
    assert records[60] == rec("task905-84", DEF + "\n\nInput:\n1\nOutput:\n2\n\nInput:\n7\nOutput:\n8\n\n"
                                            "Input:\n84\nOutput:\n", "85")
    assert records[61] == rec("task905-50", DEF + "\n\nInput:\n1\nOutput:\n2\n\nInput:\n41\nOutput:\n42\n\n"
                                            "Input:\n50\nOutput:\n", "51")
    assert records[73] == rec("task905-59", DEF + "\n\nInput:\n1\nOutput:\n2\n\nInput:\n41\nOutput:\n42\n\n"
                                            "Input:\n\nOutput:\n", "60")
    assert records[79] == rec("task905-66", DEF + "\n\nInput:\n7\nOutput:\n8\n\nInput:\n1\nOutput:\n2\n\n"
                                            "Input:\n66\nOutput:\n", "67")
    # task907 has 3 <= 80 instances: all, in file order, all zero-shot (" " input -> without-input table)
    cap = "Name the capital of the given country."
    assert records[80:] == [rec("task907-c1", cap + "\n\nAdditional Context:\nItaly\n\nAnswer:", "Rome"),
                            rec("task907-c2", cap + "\nPeru\n\n", "Lima"),
                            rec("task907-c3", cap + "\n", "?")]


def test_superni_open_instruct_rng_and_options():
    records, _ = convert_superni(XL)
    assert convert_superni(XL, rng=random.Random(42))[0] == records
    assert convert_superni(XL, seed=0)[0] != records
    # a shared generator is advanced (open-instruct's next dataset continues from there)
    rng = random.Random(42)
    convert_superni(XL, rng=rng)
    assert rng.getstate() != random.Random(42).getstate()
    # counts are options: 5 zero-shot + 3 few-shot of task905 (8 < 85: sampled), all 3 of task907
    small, _ = convert_superni(XL, zero_shot_per_task=5, few_shot_per_task=3, n_few_shot=1)
    assert len(small) == 8 + 3
    assert [u["messages"][0]["content"].count("Input:\n") for u in small[5:8]] == [2, 2, 2]
    # the tk_instruct option on the same split: Tk-Instruct prompts, 100 per task, file order
    tk, _ = convert_superni(XL, template="tk_instruct", max_per_task=None)
    assert len(tk) == 85 + 3 and tk[0]["id"] == "superni_task905-0"
    assert tk[0]["messages"][0]["content"].startswith("Definition: " + DEF + "\n\n Positive Example 1 -")


def test_superni_split_fallback_warns():
    with pytest.warns(UserWarning, match=r"xlingual.*not found.*splits/default"):
        records, report = convert_superni(FIXTURES / "superni")
    assert [r["id"] for r in records] == ["super_ni_task901-a1", "super_ni_task901-a3",
                                          "super_ni_task902-b1", "super_ni_task902-b2"]
    assert {s.reason for s in report.skipped} == {"instance 2: empty target", "task file missing"}


def test_code_alpaca_open_instruct_exact_seed_42():
    records, report = convert_code_alpaca(FIXTURES / "code_alpaca.json")
    # draws of random.Random(42): 0.639 -> WO_INPUT[7] (blank input; cumulative .2 .3 .4 .45 .5 .55 .6 .65),
    # then 0.025 -> W_INPUT[0], then 0.275 -> W_INPUT[1]
    assert records == [
        {"dataset": "code_alpaca", "id": "code_alpaca_0", "messages": [
            {"role": "user", "content": "Instruction: Write a Python function that returns the square of a number.\n"},
            {"role": "assistant", "content": "def square(x):\n    return x * x"}]},
        {"dataset": "code_alpaca", "id": "code_alpaca_1", "messages": [
            {"role": "user", "content": "Reverse the given list in place.\n\nnums = [1, 2, 3]\n\n"},
            {"role": "assistant", "content": "nums.reverse()"}]},
        {"dataset": "code_alpaca", "id": "code_alpaca_2", "messages": [
            {"role": "user", "content": "Print the length of the string.\ns = \"hello\"\n\n"},
            {"role": "assistant", "content": "print(len(s))"}]},
    ]
    assert report.n_skipped == 0
    assert convert_code_alpaca(FIXTURES / "code_alpaca.json", seed=1)[0] != records
    with pytest.raises(ValueError, match="unknown CodeAlpaca template"):
        convert_code_alpaca(FIXTURES / "code_alpaca.json", template="tk_instruct")


def test_code_alpaca_real_sample(shared_data):
    records, report = convert_code_alpaca(shared_data / "code_alpaca" / "code_alpaca_2k.json")
    # two rows have a blank output: open-instruct writes them with an empty completion, our reader would reject
    # them; they are skipped but keep their template draw and their id number
    assert report.n_skipped == 2 and len(records) == report.kept
    assert "code_alpaca_237" not in {r["id"] for r in records}
    assert records[-1]["id"].startswith("code_alpaca_") and int(records[-1]["id"].split("_")[-1]) == \
        len(records) + 1
