"""Shared bits of the data tests: fixture paths and a LLaMA-like (sentencepiece-style) tokenizer."""

import string
from functools import lru_cache
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"


@lru_cache(maxsize=2)
def sentencepiece_like_tokenizer(merge_newlines: bool = False):
    """A small BPE built like LLaMA-2's fast tokenizer: ``▁`` prepended to every text segment and used for
    spaces, byte-fallback BPE, BOS added by the post-processor, ``</s>`` a special token. Like LLaMA-2, no
    token contains ``"\\n"`` unless ``merge_newlines``: then merges cross the chat-format boundaries
    (``|>\\n2``), an adversarial case for the label computation."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["<|user|>\nWhat is 2 + 3?\n<|assistant|>\n2 + 3 = 5.\n",
              "Definition: Given a word, write its antonym.\n\n Positive Example 1 -\nInput: hot.\n Output: cold.",
              "The quick brown fox jumps over the lazy dog. def square(x):\n    return x * x",
              string.printable] * 20
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    if not merge_newlines:
        tk.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.pad_token = tok.eos_token
    return tok
