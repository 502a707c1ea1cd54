"""Build the assets the project ships for CPU tests and the demo (run once; outputs are committed).

* ``prolora/assets/demo/{train,test}.jsonl``: the demo task (two-digit addition and word reversal),
  in the harness record shape ``{"dataset", "id", "messages"}``.
* ``prolora/assets/tiny/corpus.txt``: the text the tiny tokenizer is trained on (the demo task in
  the open-instruct chat format plus a little English and Python).
* ``prolora/assets/tiny/tokenizer.json`` + ``tokenizer_config.json``: a byte-level BPE tokenizer
  (``tokenizers`` library) with LLaMA's special tokens ``<s>``/``</s>``/``<unk>``; ``<|user|>`` and
  ``<|assistant|>`` are plain text, as they are for LLaMA-2 in open-instruct.
* ``prolora/assets/tiny/config.json`` + ``model.safetensors``: the tiny Llama (:data:`TINY_CONFIG`) with
  random weights (seed 0), a checkpoint directory like any other, for tests.
* ``prolora/assets/tiny_pretrained/``: the tiny Llama *pretrained* (full training, plain language
  modelling) on the demo task written WITHOUT the chat format (``{question}\n{answer}</s>``), so that, like
  LLaMA-2, the base knows the task but not the chat format: prompted in the chat format it fails, and
  the demo's adapters have something real to learn (the mapping from the chat format to the answer).
  ~70 s on one quiet CPU thread. The committed weights are the reference the demo reads: 3,000 steps of
  float32 training depend on the thread count and CPU that ran them (a rebuild here with OMP_NUM_THREADS=1
  gave weights up to 0.78 apart), so a rebuild is not expected to match them bit for bit.

Usage: ``python -m scripts.build_tiny_assets [--skip-pretrain]``. Everything but the pretrained weights rebuilds
bit for bit (checked with ``--skip-pretrain`` on a clean checkout: no file changed).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "prolora" / "assets" / "tiny"
TINY_PRETRAINED = ROOT / "prolora" / "assets" / "tiny_pretrained"
PRETRAIN_STEPS, PRETRAIN_LR, PRETRAIN_BATCH = 3000, 3e-3, 32
# The tiny Llama's shape: every linear width a multiple of 32 and every input width of 64 (bitsandbytes' packed
# CPU path), hidden 64 and intermediate 192 not multiples of the sharing rate 7, GQA (k/v 32 wide).
TINY_CONFIG = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                   hidden_act="silu", tie_word_embeddings=False)
DEMO = ROOT / "prolora" / "assets" / "demo"

WORDS = (
    "red green blue cat dog bird fish tree river stone cloud rain sun moon star lamp door book "
    "apple pear plum milk bread salt ship road hill lake wind snow fire leaf seed rock sand"
).split()

ENGLISH = """\
The following are multiple choice questions (with answers) about general knowledge.
Answer the question using the passage below. Let's think step by step. So the answer is yes.
Question: A farmer has 12 cows and buys 7 more. How many cows does the farmer have now?
Answer: The farmer starts with 12 cows and buys 7 more, so 12 + 7 = 19. The answer is 19.
Complete the following python function. Here is the completed function:
Definition: In this task you are given a sentence. Your job is to repeat it word by word.
Positive Example 1 - Input: the cat sat on the mat. Output: the cat sat on the mat.
Now complete the following example - Input: the dog ran. Output:
"""

PYTHON = '''\
def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return a + b


def reverse_words(text):
    words = text.split()
    return " ".join(reversed(words))


class Counter:
    def __init__(self):
        self.count = 0

    def step(self, n=1):
        for _ in range(n):
            self.count += 1
        if self.count > 10:
            print("large")
        return self.count
'''


def demo_examples(n: int, seed: int) -> list[dict]:
    """The demo task: two-digit addition and reversing a short list of words, as chat records."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(10, 49), rng.randint(10, 49)
            prompt, answer = f"What is {a} + {b}?", f"{a + b}"
        else:
            words = rng.sample(WORDS, 3)
            prompt, answer = f"Reverse: {' '.join(words)}", " ".join(reversed(words))
        out.append({
            "dataset": "demo",
            "id": f"demo_{seed}_{i}",
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        })
    return out


def chat_text(record: dict) -> str:
    text = ""
    for m in record["messages"]:
        if m["role"] == "user":
            text += "<|user|>\n" + m["content"].strip() + "\n"
        else:
            text += "<|assistant|>\n" + m["content"].strip() + "</s>\n"
    return text


def plain_text(record: dict) -> str:
    """The demo record without the chat format (what the tiny base is pretrained on)."""
    return f"{record['messages'][0]['content']}\n{record['messages'][1]['content']}"


def pretrain(records: list[dict]) -> None:
    """Full training of the tiny Llama on the plain-text task (all tokens in the loss), then save it in
    the Hugging Face layout with the tokenizer, so ``from_pretrained`` loads it like any checkpoint."""
    import shutil

    import torch

    from prolora.models import build_tiny_llama, load_tokenizer
    from prolora.trainer import OptimArgs, TrainArgs, Trainer

    torch.manual_seed(0)
    tok = load_tokenizer(TINY)
    ids = [tok(plain_text(r) + tok.eos_token).input_ids for r in records]
    model = build_tiny_llama(seed=0).train()

    def batches(step: int) -> list[dict]:
        g = torch.Generator().manual_seed(step)
        pick = torch.randint(len(ids), (PRETRAIN_BATCH,), generator=g).tolist()
        width = max(len(ids[i]) for i in pick)
        x = torch.full((PRETRAIN_BATCH, width), tok.pad_token_id)
        mask = torch.zeros_like(x)
        for row, i in enumerate(pick):
            x[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        return [{"input_ids": x, "attention_mask": mask, "labels": x.masked_fill(mask == 0, -100)}]

    args = TrainArgs(max_steps=PRETRAIN_STEPS, batch_size=PRETRAIN_BATCH, micro_batch_size=PRETRAIN_BATCH,
                     save_every=0, log_every=500, device="cpu", gradient_checkpointing=False)
    optim = OptimArgs(name="adamw", lr=PRETRAIN_LR, max_grad_norm=1.0)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(model, batches, args, optim, tmp, save_fn=lambda m, d: None,
                         load_fn=lambda m, d: None).train()
    print(f"pretrained tiny base: loss {result.initial_loss:.3f} -> {result.final_loss:.3f} "
          f"in {result.wall_time_s:.0f}s")
    if TINY_PRETRAINED.exists():
        shutil.rmtree(TINY_PRETRAINED)
    model.eval().save_pretrained(TINY_PRETRAINED)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TINY / name, TINY_PRETRAINED / name)


def write_tiny_model() -> None:
    """``prolora/assets/tiny``: the config (shape + the shipped tokenizer's ids) and random weights (seed 0)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prolora.models import load_tokenizer

    tok = load_tokenizer(TINY)
    config = LlamaConfig(**TINY_CONFIG, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.eval().save_pretrained(TINY)


def main() -> None:
    TINY.mkdir(parents=True, exist_ok=True)
    DEMO.mkdir(parents=True, exist_ok=True)
    train, test = demo_examples(2000, seed=1), demo_examples(160, seed=2)
    train_prompts = {r["messages"][0]["content"] for r in train}
    test = [r for r in test if r["messages"][0]["content"] not in train_prompts]
    for name, rows in (("train", train), ("test", test)):
        with open(DEMO / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    corpus = "".join(chat_text(r) for r in train[:600]) + ENGLISH * 4 + PYTHON * 4
    corpus += " ".join(str(i) for i in range(200)) + "\n" + " ".join(WORDS) + "\n"
    (TINY / "corpus.txt").write_text(corpus)

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus], trainer=trainer)
    bos = tok.token_to_id("<s>")
    # LLaMA prepends BOS and appends nothing.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tok.save(str(TINY / "tokenizer.json"))
    (TINY / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")
    (TINY / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}, indent=2) + "\n")
    write_tiny_model()
    print(f"vocab={tok.get_vocab_size()} demo train={len(train)} test={len(test)} -> {TINY}, {DEMO}")
    if "--skip-pretrain" not in sys.argv:
        pretrain(train)


if __name__ == "__main__":
    main()
