"""open-instruct's chat format (Tulu v1/v2) and the loss-masked tokenization of one record.

Text of a conversation (``format_messages``), every content stripped as open-instruct does::

    <|system|>\\n{system}\\n            (optional, first)
    <|user|>\\n{user}\\n
    <|assistant|>\\n{assistant}</s>\\n
    <|user|>\\n{user}\\n
    <|assistant|>\\n{assistant}</s>\\n

``</s>`` is the tokenizer's ``eos_token`` string (one special token); ``<|user|>``/``<|assistant|>`` are plain
text, as with LLaMA-2. This is ``_concat_messages`` of ``encode_with_messages_format`` in open-instruct's
``open_instruct/finetune.py``.

Tokenization (:func:`tokenize_example`) follows ``encode_with_messages_format``:

* the training text is ``format_messages(...)`` with the final ``"\\n"`` removed (open-instruct tokenizes
  ``_concat_messages(messages).strip()``), so a sequence ends with ``</s>`` (the tokenizer's EOS); in front
  go the special tokens the tokenizer itself adds, as open-instruct's ``tokenizer(text)`` and the
  evaluators' prompts (:meth:`eval.backends.base.Backend.encode`): LLaMA-2's and the tiny tokenizers put BOS
  ``<s>`` once at the start, SmolLM2's adds nothing (its BOS ``<|im_start|>`` is never added; EOS ``<|im_end|>``);
* the label positions are found by tokenizing growing prefixes of the same text, as open-instruct does;
  the ``input_ids`` are always those of the full text. Where a token of the full text straddles the
  ``<|assistant|>\n``/content boundary (the prefix's ids are then not a prefix of the full ids; this does not
  happen with LLaMA-2's or the tiny tokenizer, in which ``"\n"`` never merges with a neighbour) that token
  is masked, located with a fast tokenizer's offsets, so labels line up with the real ids and never cover
  header text;
* labels are ``-100`` everywhere except on the tokens of each assistant content plus its ``</s>``. The
  ``<|assistant|>\\n`` header, system and user turns are masked, as in open-instruct. The ``"\\n"`` after an
  inner ``</s>`` (before the next ``<|user|>``) is **masked** here; open-instruct leaves it unmasked (its user
  span starts at the length of the tokenized previous turns, which includes that newline). For single-turn
  data (all four training sets of the paper) the two are identical: the last ``"\\n"`` is not in the sequence;
* right truncation at ``max_len`` tokens keeps the prefix. An example left with no assistant label token is
  not returned (``None``): the caller drops and counts it (:class:`prolora.data.batching.TokenizedDataset`).
"""

from __future__ import annotations

from collections.abc import Sequence

IGNORE_INDEX = -100
USER, ASSISTANT, SYSTEM = "<|user|>\n", "<|assistant|>\n", "<|system|>\n"


def _segments(messages: Sequence[dict], eos: str) -> list[tuple[str, bool]]:
    """``(text, is_target)`` pieces whose concatenation is ``format_messages(messages, eos)``."""
    out: list[tuple[str, bool]] = []
    for m in messages:
        role, content = m["role"], m["content"].strip()
        if role == "system":
            out.append((SYSTEM + content + "\n", False))
        elif role == "user":
            out.append((USER + content + "\n", False))
        elif role == "assistant":
            out += [(ASSISTANT, False), (content + eos, True), ("\n", False)]
        else:
            raise ValueError(f"invalid role {role!r}: use system, user or assistant")
    return out


def format_messages(messages: Sequence[dict], eos: str = "</s>") -> str:
    """The chat text of ``messages``: ``<|user|>\\n{c}\\n`` and ``<|assistant|>\\n{c}{eos}\\n`` per turn."""
    return "".join(text for text, _ in _segments(messages, eos))


def prompt_for_generation(user_text: str) -> str:
    """``<|user|>\\n{user_text}\\n<|assistant|>\\n``: the prompt a finetuned model answers (evaluation).

    ``user_text`` is used as given (open-instruct's eval ``create_prompt_with_tulu_chat_format`` does not
    strip user messages); no BOS: the tokenizer adds it when encoding, so do not add another one."""
    return USER + user_text + "\n" + ASSISTANT


def _encode(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` with the special tokens the tokenizer adds itself (a BOS only where it adds one)."""
    return list(tokenizer(text)["input_ids"])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _first_token_from(tokenizer, text: str, ids: Sequence[int], char_pos: int, lo: int) -> int:
    """Index (in ``ids``, the special tokens in front included) of the first token starting at or after
    ``char_pos``; tokens from ``lo`` on are candidates. Uses the offsets of a fast tokenizer; without them,
    skips one token."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        shift = len(ids) - len(enc["input_ids"])  # the special tokens the tokenizer put in front
        if list(enc["input_ids"]) == list(ids[shift:]):
            for j in range(max(lo, shift), len(ids)):
                if enc["offset_mapping"][j - shift][0] >= char_pos:
                    return j
            return len(ids)
    return lo + 1


def tokenize_example(record: dict, tokenizer, max_len: int) -> dict | None:
    """``{"input_ids", "labels", "attention_mask"}`` (lists of ints, length <= ``max_len``) of a record, or
    ``None`` when truncation left no assistant token to learn from. See the module docstring."""
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; the chat format needs one")
    segs = _segments(record["messages"], eos)
    text = "".join(t for t, _ in segs)
    assert text.endswith("\n")
    text = text[:-1]  # open-instruct: _concat_messages(messages).strip()
    ids = _encode(tokenizer, text)
    labels = [IGNORE_INDEX] * len(ids)
    pos = 0
    for seg, is_target in segs:
        start_char, pos = pos, pos + len(seg)
        if not is_target:
            continue
        prefix = _encode(tokenizer, text[:start_char])
        start = common_prefix(prefix, ids)
        if start < len(prefix):  # a token of the full text straddles the header/content boundary: mask it
            start = _first_token_from(tokenizer, text, ids, start_char, start)
        if start >= max_len:
            break
        end = common_prefix(_encode(tokenizer, text[:pos]), ids)  # ends with </s>: a clean boundary
        labels[start:end] = ids[start:end]
    ids, labels = ids[:max_len], labels[:max_len]
    if all(x == IGNORE_INDEX for x in labels):
        return None
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
