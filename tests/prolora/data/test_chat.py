"""Chat format and loss mask: labels cover exactly the assistant contents + </s>, ids are the full text's."""

import pytest

from prolora.data import (
    IGNORE_INDEX,
    TokenizedDataset,
    format_messages,
    prompt_for_generation,
    tokenize_example,
)
from prolora.models import TINY_DIR, load_tokenizer

from .helpers import sentencepiece_like_tokenizer

TWO_TURNS = {"id": "t2", "messages": [
    {"role": "user", "content": "Hi! What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."},
    {"role": "user", "content": "And times 4?"}, {"role": "assistant", "content": "  5 * 4 = 20.\n"}]}
WITH_SYSTEM = {"id": "s", "messages": [
    {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."}]}


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(TINY_DIR)


TOKENIZERS = {"tiny_byte_level": lambda: load_tokenizer(TINY_DIR), "sentencepiece_like": sentencepiece_like_tokenizer}


def test_tokens_merging_across_the_header_boundary_are_masked():
    """A tokenizer whose merges cross ``<|assistant|>\\n`` | content: ids stay the full text's, the
    straddling token is masked, every label run is a suffix of its target ending with </s>."""
    tok = sentencepiece_like_tokenizer(merge_newlines=True)
    ex = tokenize_example(TWO_TURNS, tok, max_len=512)
    text = format_messages(TWO_TURNS["messages"], tok.eos_token)[:-1]
    assert ex["input_ids"] == tok(text)["input_ids"]
    runs = [tok.decode(r) for r in _label_runs(ex)]
    targets = _assistant_targets(TWO_TURNS, tok.eos_token)
    assert len(runs) == len(targets) and all(t.endswith(r) and r.endswith("</s>") for r, t in zip(runs, targets))
    assert "assistant" not in "".join(runs) and "|>" not in "".join(runs)


def test_format_strings_exact():
    assert format_messages(TWO_TURNS["messages"]) == (
        "<|user|>\nHi! What is 2 + 3?\n<|assistant|>\n2 + 3 = 5.</s>\n"
        "<|user|>\nAnd times 4?\n<|assistant|>\n5 * 4 = 20.</s>\n")
    assert format_messages(WITH_SYSTEM["messages"], eos="<EOS>") == (
        "<|system|>\nBe terse.\n<|user|>\nCapital of France?\n<|assistant|>\nParis.<EOS>\n")
    assert prompt_for_generation("What is 1 + 1?") == "<|user|>\nWhat is 1 + 1?\n<|assistant|>\n"


def _assistant_targets(record, eos):
    return [m["content"].strip() + eos for m in record["messages"] if m["role"] == "assistant"]


def _label_runs(ex):
    """Contiguous runs of labelled token ids."""
    runs, cur = [], []
    for i, lab in zip(ex["input_ids"], ex["labels"]):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


@pytest.mark.parametrize("tok_name", sorted(TOKENIZERS))
@pytest.mark.parametrize("record", [TWO_TURNS, WITH_SYSTEM], ids=["two_turns", "system"])
def test_labels_decode_to_assistant_contents(tok_name, record):
    tok = TOKENIZERS[tok_name]()
    ex = tokenize_example(record, tok, max_len=512)
    # ids are exactly those of the full text (BOS once, no trailing newline), as open-instruct tokenizes it
    text = format_messages(record["messages"], tok.eos_token)[:-1]
    assert ex["input_ids"] == tok(text)["input_ids"]
    assert ex["input_ids"].count(tok.bos_token_id) == 1 and ex["input_ids"][0] == tok.bos_token_id
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])
    runs = _label_runs(ex)
    assert [tok.decode(r) for r in runs] == _assistant_targets(record, tok.eos_token)


def test_every_labelled_token_is_inside_an_assistant_span(tiny):
    """Token by token (byte-level BPE: decoding a prefix of the ids gives a prefix of the text)."""
    ex = tokenize_example(TWO_TURNS, tiny, max_len=512)
    text = format_messages(TWO_TURNS["messages"], tiny.eos_token)[:-1]
    spans, pos = [], 0
    for target in _assistant_targets(TWO_TURNS, tiny.eos_token):
        start = text.index("<|assistant|>\n", pos) + len("<|assistant|>\n")
        assert text[start:start + len(target)] == target
        spans.append((start, start + len(target)))
        pos = start + len(target)
    ids = ex["input_ids"]
    for k in range(1, len(ids)):  # position 0 is BOS
        begin = len(tiny.decode(ids[1:k]))
        end = len(tiny.decode(ids[1:k + 1]))
        assert tiny.decode(ids[1:k + 1]) == text[:end]
        inside = any(s <= begin and end <= e for s, e in spans)
        assert (ex["labels"][k] != IGNORE_INDEX) == inside, (k, repr(text[begin:end]))
    assert ex["labels"][0] == IGNORE_INDEX


def test_right_truncation_keeps_prefix_and_drops_examples_without_targets(tiny):
    full = tokenize_example(TWO_TURNS, tiny, max_len=512)
    n = len(full["input_ids"])
    first_label = next(i for i, lab in enumerate(full["labels"]) if lab != IGNORE_INDEX)
    for max_len in (n - 1, first_label + 1, first_label + 3):
        cut = tokenize_example(TWO_TURNS, tiny, max_len=max_len)
        assert cut["input_ids"] == full["input_ids"][:max_len]
        assert cut["labels"] == full["labels"][:max_len]
    # cut before the first assistant token: nothing to learn -> None, and the dataset drops and counts it
    assert tokenize_example(TWO_TURNS, tiny, max_len=first_label) is None
    long_prompt = {"id": "long", "messages": [{"role": "user", "content": "word " * 200},
                                              {"role": "assistant", "content": "ok"}]}
    ds = TokenizedDataset([TWO_TURNS, long_prompt, WITH_SYSTEM], tiny, max_len=64)
    assert len(ds) == 2 and ds.dropped == ["long"] and ds.n_dropped == 1
    assert ds.ids == ["t2", "s"]
    assert max(ds.lengths) <= 64
    with pytest.raises(ValueError, match="no example has an assistant token"):
        TokenizedDataset([long_prompt], tiny, max_len=64)
