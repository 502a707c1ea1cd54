"""Every task's prompt for one fixture example, byte for byte, with and without the chat format."""

import pytest

from eval.tasks import DataMissingError, get_task
from eval.tasks.bbh import direct_prompt
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval"
TYDI_DEV = "tydiqa-goldp-v1.1-dev-fixture.json"


@pytest.fixture(scope="module")
def tok():
    from prolora.models import TINY_DIR, load_tokenizer

    return load_tokenizer(TINY_DIR)


def first(name, chat, **kw):
    task = get_task(name, chat=chat, **kw)
    examples = task.load(FIX)
    return task, examples


MMLU_BODY = ("The following are multiple choice questions (with answers) about  astronomy.\n\n"
             "Read the two statements.\nStatement 1: The Moon has no atmosphere to speak of.\n"
             "Statement 2: The Moon orbits the Earth.\nWhich are true?\n"
             "A. Only 1\nB. Only 2\nC. Both\nD. Neither\nAnswer:")


def test_mmlu_prompt_and_candidates(tok):
    task, examples = first("mmlu", False)
    assert [e["id"] for e in examples] == ["astronomy/0", "astronomy/1", "astronomy/2",
                                           "elementary_mathematics/0", "elementary_mathematics/1"]
    ex = examples[1]  # the quoted field with newlines
    assert task.prompt(ex, tok) == MMLU_BODY
    assert examples[0]["choices"][0] == "Mercury, Venus, Earth, Mars"  # quoted comma kept in one cell
    chat_task, chat_examples = first("mmlu", True)
    # the authors' fork: "The answer is " (trailing space, no colon); upstream open-instruct: "The answer is:"
    assert chat_task.prompt(chat_examples[1], tok) == "<|user|>\n" + MMLU_BODY + "\n<|assistant|>\nThe answer is "
    upstream, up_examples = first("mmlu", True, answer_prefix="The answer is:")
    assert upstream.prompt(up_examples[1], tok).endswith("<|assistant|>\nThe answer is:")
    # " A" encodes as [space, A] in the tiny tokenizer: the last token is the candidate
    assert task.candidates(tok) == [tok.encode(" " + c, add_special_tokens=False)[-1] for c in "ABCD"]
    assert task.parse(2, ex) == "C" and task.target(ex) == "C"


def test_mmlu_few_shot_prompt():
    task, examples = first("mmlu", False, ntrain=1)
    assert task.prompt(examples[3]) == (
        "The following are multiple choice questions (with answers) about  elementary mathematics.\n\n"
        "What is 7 x 8?\nA. 54\nB. 56\nC. 58\nD. 64\nAnswer: B\n\n"
        "What is 12 + 30?\nA. 32\nB. 40\nC. 42\nD. 52\nAnswer:")


BBH_BODY = ("Evaluate the result of a random Boolean expression.\n\n"
            "Q: not False and True is\nA: True.\n\n"
            "Q: True and False or False is\nA: False.\n\n"
            "Q: not ( True ) or True is\nA: True.\n\n"
            "Q: True and not False is")


def test_bbh_prompt():
    task, examples = first("bbh", False)
    ex = next(e for e in examples if e["id"] == "boolean_expressions/0")
    assert task.prompt(ex) == BBH_BODY + "\nA:"
    chat_task, _ = first("bbh", True)
    assert chat_task.prompt(ex) == "<|user|>\n" + BBH_BODY + "\n<|assistant|>\nA:"
    assert task.generation().stop == ["\n\n"] and chat_task.generation().stop == []
    assert task.parse("So the answer is (B). Because", ex) == "(B)"


def test_bbh_direct_prompt_keeps_only_the_answer():
    cot = ("Pick one.\n\nQ: a or b?\nA: Let's think step by step.\nIt is a. So the answer is (A).\n\n"
           "Q: c?\nA: Let's think step by step.\nSo the answer is so. So the answer is Yes.")
    assert direct_prompt(cot) == "Pick one.\n\nQ: a or b?\nA: (A).\n\nQ: c?\nA: Yes."


def test_bbh_sampling_is_seeded_and_per_task():
    a = get_task("bbh", max_per_task=2).load(FIX)
    b = get_task("bbh", max_per_task=2).load(FIX)
    assert [e["id"] for e in a] == [e["id"] for e in b]
    assert {e["task"] for e in a} == {"boolean_expressions", "plausible_sports"} and len(a) == 4
    only = get_task("bbh", max_per_task=2, tasks=["plausible_sports"]).load(FIX)
    assert [e["id"] for e in only] == [e["id"] for e in a if e["task"] == "plausible_sports"]


GSM_PREFIX = ("Answer the following questions.\n\n"
              "Question: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?\n"
              "Answer: There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. So the answer is 6.\n\n"
              "Question: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\n"
              "Answer: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.\n\n"
              "Question: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?\n"
              "Answer: Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. So the answer is 39.\n\n"
              "Question: Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?\n"
              "Answer: Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. So the answer is 8.\n\n"
              "Question: Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?\n"
              "Answer: Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. So the answer is 9.\n\n"
              "Question: There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?\n"
              "Answer: There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. So the answer is 29.\n\n"
              "Question: Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?\n"
              "Answer: Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33.\n\n"
              "Question: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\n"
              "Answer: Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. So the answer is 8.\n\n")


def test_gsm_prompt_and_targets():
    task, examples = first("gsm", False)
    ex = next(e for e in examples if e["id"] == "gsm/1")
    q = "Question: A school buys 1,200 pencils and gives away 35. How many are left?"
    assert task.prompt(ex) == GSM_PREFIX + q + "\nAnswer:"
    chat_task, _ = first("gsm", True)
    assert chat_task.prompt(ex) == "<|user|>\n" + GSM_PREFIX + q + "\n<|assistant|>\nAnswer:"
    assert ex["answer"] == "1165"  # "#### 1,165" without the comma
    assert task.generation().stop == ["\n"] and chat_task.generation().stop == []
    assert task.parse(" 1,200 - 35 = 1,165 pencils.", ex) == "1165"
    score = task.score([ex], [["1165"]])
    assert score["score"] == 100.0


def test_gsm_sampling_matches_random_sample_with_seed_42():
    import random

    task = get_task("gsm", max_examples=2)
    got = [e["id"] for e in task.load(FIX)]
    everything = [f"gsm/{i}" for i in range(4)]
    assert got == random.Random(42).sample(everything, 2)


TYDI_EN = ("Answer the following question based on the information in the given passage.\n\n"
           "Passage: Mount Everest is Earth's highest mountain above sea level.\n"
           "Question: What is Earth's highest mountain?\nAnswer: Mount Everest\n\n"
           "Passage: The Nile is a major river in northeastern Africa, about 6,650 km long.\n"
           "Question: How long is the Nile?\n")
TYDI_FI = ("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.\n\n"
           "Kappale: Turku on Suomen vanhin kaupunki.\nKysymys: Mikä on Suomen vanhin kaupunki?\nVastaus: Turku\n\n"
           "Kappale: Helsinki on Suomen pääkaupunki ja suurin kaupunki.\nKysymys: Mikä on Suomen pääkaupunki?\n")


def test_tydiqa_prompts_same_language_exemplar(tok):
    task, examples = first("tydiqa", False, dev_file=TYDI_DEV)
    assert [e["lang"] for e in examples] == ["english"] * 3 + ["finnish"] * 2
    en = next(e for e in examples if e["id"] == "english-1001-0")
    fi = next(e for e in examples if e["id"] == "finnish-2000-0")
    assert task.prompt(en, tok) == TYDI_EN + "Answer:"
    assert task.prompt(fi, tok) == TYDI_FI + "Vastaus:"
    chat_task, _ = first("tydiqa", True, dev_file=TYDI_DEV)
    assert chat_task.prompt(en, tok) == "<|user|>\n" + TYDI_EN + "\n<|assistant|>\nAnswer:"
    closed, _ = first("tydiqa", False, dev_file=TYDI_DEV, no_context=True)
    assert closed.prompt(en) == ("Answer the following question.\n\nQuestion: What is Earth's highest mountain?\n"
                                 "Answer: Mount Everest\n\nQuestion: How long is the Nile?\nAnswer:")
    gen = task.generation()
    assert (gen.max_new_tokens, gen.stop) == (50, ["\n"])
    assert task.target(en) == ["about 6,650 km"]


def test_tydiqa_truncates_passages_to_max_tokens(tok):
    # the authors' cut: tokenizer.encode(context) (BOS included) cut to 5 ids and decoded back: "<s>" + 4 tokens
    task, examples = first("tydiqa", False, dev_file=TYDI_DEV, max_context_tokens=5)
    ex = examples[0]
    cut = tok.decode(tok.encode(ex["context"])[:5])
    assert cut.startswith("<s>") and len(tok.encode(cut[3:], add_special_tokens=False)) == 4
    assert task.prompt(ex, tok).split("\n\n")[2].startswith("Passage: " + cut + "\nQuestion:")
    # the clean cut: 5 tokens of the passage alone
    clean, examples = first("tydiqa", False, dev_file=TYDI_DEV, max_context_tokens=5, context_cut="clean")
    cut = tok.decode(tok.encode(ex["context"], add_special_tokens=False)[:5])
    assert clean.prompt(examples[0], tok).split("\n\n")[2].startswith("Passage: " + cut + "\nQuestion:")
    assert "<s>" not in cut and len(tok.encode(cut, add_special_tokens=False)) <= 5
    per_lang = get_task("tydiqa", dev_file=TYDI_DEV, max_per_lang=1).load(FIX)
    assert sorted(e["lang"] for e in per_lang) == ["english", "finnish"]


def test_tydiqa_scores_per_language_then_average():
    task, examples = first("tydiqa", False, dev_file=TYDI_DEV)
    preds = {"english-1000-0": "Oslo", "english-1000-1": "Oslofjord", "english-1001-0": "6,650",
             "finnish-2000-0": "Helsinki", "finnish-2001-0": "Pyhäjärven"}
    scores = task.score(examples, [[preds[e["id"]]] for e in examples])
    assert scores["languages"]["english"]["exact_match"] == pytest.approx(200 / 3)
    assert scores["languages"]["finnish"]["exact_match"] == 50.0
    assert scores["exact_match"] == pytest.approx((200 / 3 + 50) / 2)
    assert scores["score"] == scores["f1"] > scores["exact_match"]


HUMANEVAL_0 = ('from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'
               '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
               '    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n'
               '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n')


def test_humaneval_prompt_and_decoding():
    task = get_task("humaneval")
    problems = task.load()
    assert len(problems) == 164
    ex = problems[0]
    assert ex["id"] == "HumanEval/0" and task.prompt(ex) == HUMANEVAL_0
    chat = get_task("humaneval", chat=True)
    assert chat.prompt(ex) == ("<|user|>\nComplete the following python function.\n\n\n" + HUMANEVAL_0
                               + "\n<|assistant|>\nHere is the completed function:\n\n\n" + HUMANEVAL_0)
    gen = task.generation()
    assert (gen.n, gen.temperature, gen.top_p, gen.max_new_tokens) == (20, 0.1, 0.95, 512)
    assert gen.stop == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert len(get_task("humaneval", max_examples=5).load()) == 5


def test_demo_prompt():
    task = get_task("demo", chat=True)
    examples = task.load()
    assert examples[0]["user"] == "What is 13 + 15?" and examples[0]["target"] == "28"
    assert task.prompt(examples[0]) == "<|user|>\nWhat is 13 + 15?\n<|assistant|>\n"
    assert get_task("demo").prompt(examples[0]) == "What is 13 + 15?\n"
    assert task.score(examples[:2], [["28"], ["cloud bird salt"]])["score"] == 50.0


@pytest.mark.parametrize("name,needle", [("mmlu", "mmlu/test/<subject>_test.csv"), ("bbh", "bbh/cot-prompts/<task>.txt"),
                                         ("gsm", "gsm/test.jsonl"), ("tydiqa", "tydiqa-one-shot.json")])
def test_missing_data_names_the_layout(tmp_path, name, needle):
    with pytest.raises(DataMissingError) as err:
        get_task(name).load(tmp_path)
    assert needle in str(err.value) and str(tmp_path) in str(err.value)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'squad'"):
        get_task("squad")
