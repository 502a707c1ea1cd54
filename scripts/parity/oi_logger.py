"""Runs one of open-instruct's eval scripts, unmodified, from a checkout, and logs every prompt, its token ids and
the raw outputs; or builds the reference side's model directory.  Launched by ``python -m scripts.parity
reference`` in the reference interpreter (cwd and PYTHONPATH: the checkout, whose ``eval`` package must win over
the project's), so it imports nothing of the project and only the standard library at module level.

    python oi_logger.py run --log LOG.jsonl [--metrics-dir DIR] [--seed N] [--prompts-only] MODULE [ARGS...]
    python oi_logger.py convert GGUF TOKENIZER_JSON OUT

``run`` wraps ``eval.utils.generate_completions`` and ``get_next_word_predictions`` (the two calls every script's HF
path makes) to append one JSON line per prompt: ``call`` (the call's index), ``fn``, ``prompt``, ``input_ids`` (the
script's own tokenizer call), and ``output`` or the candidate ``probs``.  ``--prompts-only`` returns empty outputs
without generating.  ``--metrics-dir`` reads ``evaluate.load(name)`` scripts from ``DIR/<name>`` (a checkout of
huggingface/evaluate's ``metrics/``) instead of the hub.  ``vllm`` is stubbed where it is not installed (the
scripts import it at the top; the HF path never uses it).  ``glob.glob`` returns its matches sorted: its order is
the file system's (unspecified), and BBH's script draws its examples task after task in that order.

``convert`` writes the model as transformers of this interpreter converts the GGUF file (weights, config) with the
tokenizer of ``TOKENIZER_JSON`` as a GPT-2 BPE tokenizer (vocab.json + merges.txt, so the scripts'
``--use_slow_tokenizer`` loads it): transformers 4.x's own GGUF tokenizer for SmolLM2 adds a BOS and names
``<|im_start|>`` as EOS, against the file's metadata.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import itertools
import json
import os
import runpy
import sys
import types


def append(log, entry: dict) -> None:
    log.write(json.dumps(entry, ensure_ascii=False) + "\n")
    log.flush()


def patch_eval_utils(log, prompts_only: bool) -> None:
    """Wrap the scripts' two model calls so that each prompt, its ids and its result are logged."""
    import eval.utils as utils

    generate, next_word = utils.generate_completions, utils.get_next_word_predictions
    calls = itertools.count()

    def ids(tokenizer, prompt, add_special_tokens):
        return tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids

    def generate_completions(model, tokenizer, prompts, *args, add_special_tokens=True, **kwargs):
        call = next(calls)
        n = kwargs.get("num_return_sequences", 1)
        outputs = ([""] * len(prompts) * n if prompts_only else
                   generate(model, tokenizer, prompts, *args, add_special_tokens=add_special_tokens, **kwargs))
        for i, prompt in enumerate(prompts):
            append(log, {"call": call, "fn": "generate_completions", "prompt": prompt,
                         "input_ids": ids(tokenizer, prompt, add_special_tokens), "outputs": outputs[i * n:(i + 1) * n]})
        return outputs

    def get_next_word_predictions(model, tokenizer, prompts, *args, add_special_tokens=True, **kwargs):
        call = next(calls)
        predictions, probs = next_word(model, tokenizer, prompts, *args, add_special_tokens=add_special_tokens, **kwargs)
        for prompt, pred, p in zip(prompts, predictions, probs):
            append(log, {"call": call, "fn": "get_next_word_predictions", "prompt": prompt,
                         "input_ids": ids(tokenizer, prompt, add_special_tokens), "prediction": pred, "probs": p})
        return predictions, probs

    utils.generate_completions = generate_completions
    utils.get_next_word_predictions = get_next_word_predictions


def patch_evaluate(metrics_dir: str) -> None:
    import evaluate

    load = evaluate.load

    def local_load(path, *args, **kwargs):
        local = os.path.join(metrics_dir, path)
        return load(local if os.path.isdir(local) else path, *args, **kwargs)

    evaluate.load = local_load


def sort_glob() -> None:
    unsorted = glob.glob

    def sorted_glob(*args, **kwargs):
        return sorted(unsorted(*args, **kwargs))

    glob.glob = sorted_glob


def run(args) -> None:
    sort_glob()
    if importlib.util.find_spec("vllm") is None:
        sys.modules["vllm"] = types.ModuleType("vllm")
    if args.metrics_dir:
        patch_evaluate(os.path.abspath(args.metrics_dir))
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    with open(args.log, "w", encoding="utf-8") as log:
        patch_eval_utils(log, args.prompts_only)
        sys.argv = [args.module, *args.args]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)


def convert(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast

    folder, name = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.save_pretrained(args.out)
    with open(os.path.join(os.path.dirname(args.tokenizer_json), "tokenizer_config.json"), encoding="utf-8") as f:
        special = {k: v for k, v in json.load(f).items() if k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    GPT2TokenizerFast(tokenizer_file=args.tokenizer_json, **special).save_pretrained(args.out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--log", required=True)
    r.add_argument("--metrics-dir")
    r.add_argument("--seed", type=int)
    r.add_argument("--prompts-only", action="store_true")
    r.add_argument("module")
    r.add_argument("args", nargs=argparse.REMAINDER)
    c = sub.add_parser("convert")
    c.add_argument("gguf")
    c.add_argument("tokenizer_json")
    c.add_argument("out")
    args = ap.parse_args()
    (run if args.command == "run" else convert)(args)


if __name__ == "__main__":
    main()
