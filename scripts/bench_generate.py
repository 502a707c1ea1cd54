"""Generation speed on a real model (SmolLM2-135M-Instruct, fp32): the hf backend's ways of generating against a
plain ``model.generate`` loop and against the machine's matmul limit, on the tasks' own prompts, in one process.

    make real-model
    python -m scripts.bench_generate                                    # GSM 8-shot no-chat, 16 prompts
    python -m scripts.bench_generate --task bbh --prompts 24 --max-new-tokens 64
    python -m scripts.bench_generate --out results/bench/generate-smollm2-cpu-gsm.json

Prints one line per way (``--ways``); ``--out`` writes them as JSON: wall seconds, tokens, prompts/s, tokens/s, the
outputs equal to the plain loop's, the speed over the plain loop and the fraction of the matmul limit.  What each
way runs and how FLOPs are counted: ``results/bench/README.md``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch

from scripts._benchkit import SHARED_DATA, describe_device, versions, write_report

WAYS = ("plain", "hf_b1", "hf_b8", "hf_b8_generate", "hf_b1_prefix", "hf_b8_prefix")
FLOPS_MODEL = ("2 x (non-embedding linear params + LM head) per token + 4 x layers x heads x head_dim x "
               "context; generated tokens at the mean prompt length's context. needed_gflop: every prompt "
               "run whole + the generated tokens (what any exact method must compute without reuse); "
               "executed_gflop: what the way ran (prefix ways: each shared prefix once); "
               "needed_over_limit_s: needed_gflop at the best matmul rate, the no-reuse compute limit")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m scripts.bench_generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model directory (default: SmolLM2-135M-Instruct via prolora.gguf)")
    p.add_argument("--task", default="gsm", choices=("gsm", "bbh"))
    p.add_argument("--chat", action="store_true", help="chat prompts (no stop sequence: runs to EOS)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated subset of {WAYS}")
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    args.ways = [w for w in args.ways.split(",") if w]
    unknown = sorted(set(args.ways) - set(WAYS))
    if unknown:
        p.error(f"--ways: unknown {unknown}; known: {WAYS}")
    return args


def task_prompts(task_name: str, chat: bool, data_dir: str, k: int):
    from eval.tasks import TASKS

    task = TASKS[task_name](chat=chat)
    examples = task.load(data_dir)
    rng = random.Random(42)
    chosen = rng.sample(examples, min(k, len(examples)))
    return task, [task.prompt(ex) for ex in chosen]


def flops_per_token(config, context: int) -> float:
    """Forward FLOPs for one token at ``context`` positions of attention."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // heads
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter
    linear = layers * per_layer + h * config.vocab_size  # + LM head
    return 2.0 * linear + 4.0 * layers * heads * hd * context


def prompt_flops(config, rows: list[list[int]], plan: list[tuple[int, list[int]]] | None = None) -> float:
    """FLOPs of running the prompts once each (token i of a prompt attends to i positions), or, with a prefix
    plan (``HFBackend._plan``), each group's shared prefix once and each row's own suffix."""
    def span(start: int, stop: int) -> float:  # tokens start+1..stop of one sequence
        return (stop - start) * flops_per_token(config, (start + stop) / 2)

    if plan is None:
        return sum(span(0, len(r)) for r in rows)
    total, seen = 0.0, set()
    for n, batch in plan:
        key = tuple(rows[batch[0]][:n])
        if n and key not in seen:
            seen.add(key)
            total += span(0, n)
        total += sum(span(n, len(rows[i])) for i in batch)
    return total


def matmul_gflops(config, repeats: int = 5) -> dict:
    """The best fp32 matmul rate of the model's prefill shapes (2048 tokens x its projections)."""
    h, inter = config.hidden_size, config.intermediate_size
    shapes = {"mlp_up": (2048, h, inter), "mlp_down": (2048, inter, h), "square_2048": (2048, 2048, 2048)}
    out = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[name] = 2.0 * m * k * n / best / 1e9
    return out


class Recorder:
    """Wraps ``model.generate`` to keep the ids it produced (row by row, up to EOS), so counts are of tokens
    (the backend's own greedy loop is counted by wrapping ``HFBackend._greedy``)."""

    def __init__(self, model, eos_ids):
        self.model, self.eos, self.rows = model, set(eos_ids), []
        self._orig = model.generate

    def __call__(self, *args, **kwargs):
        out = self._orig(*args, **kwargs)
        width = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]
        for row in out[:, width:].tolist():
            n = next((j for j, t in enumerate(row) if t in self.eos), len(row))
            self.rows.append(n)
        return out


def run_plain(model, tok, rows, max_new_tokens, stop, eos_ids, pad_id):
    from transformers import GenerationConfig

    from eval.backends.base import truncate_at_stop

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos_ids,
                              pad_token_id=pad_id, stop_strings=list(stop) or None)
    texts, new_lens = [], []
    for ids in rows:
        x = torch.tensor([ids])
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config,
                             tokenizer=tok)[0, len(ids):].tolist()
        n = next((j for j, t in enumerate(out) if t in eos_ids), len(out))
        new_lens.append(n)
        full = tok.decode(ids + out[:n], skip_special_tokens=True)
        head = tok.decode(ids, skip_special_tokens=True)
        texts.append(truncate_at_stop(full[len(head):] if full.startswith(head) else tok.decode(out[:n]), stop))
    return texts, new_lens


def load_model(args):
    """The model (fp32, eval mode) and its tokenizer; SmolLM2 through ``prolora.gguf`` unless ``--model``."""
    from transformers import AutoModelForCausalLM

    from prolora.models import load_tokenizer

    if args.model is None:
        from prolora import gguf

        args.model = str(gguf.smollm2_dir())
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    return model, load_tokenizer(args.model), time.perf_counter() - t0


def run_backend_way(way: str, model, tok, prompts: list[str], args, stop: list[str]):
    """The backend as ``way`` configures it, after a warm-up: its texts, each row's new-token count (the ids
    ``model.generate`` or the backend's own greedy loop produced), its wall time and the backend."""
    from eval.backends.hf import HFBackend

    be = HFBackend(model, tok, batch_size=8 if "_b8" in way else 1, prefix_cache=way.endswith("_prefix"),
                   evict_finished=not way.endswith("_generate"))
    be.generate(prompts[:2], max_new_tokens=8, stop=stop)  # warm-up
    rec = Recorder(model, be.eos_ids)
    model.generate = rec
    greedy = be._greedy  # the backend's own loop: record its rows' lengths too

    def counted(*a, **k):
        out = greedy(*a, **k)
        rec.rows.extend(len(r) for r in out)
        return out

    be._greedy = counted
    try:
        t = time.perf_counter()
        texts = [o[0] for o in be.generate(prompts, max_new_tokens=args.max_new_tokens, stop=stop)]
        wall = time.perf_counter() - t
    finally:
        del model.generate  # back to the class's method
    return texts, rec.rows, wall, be  # rows in batch order: only their sum is used


def run_way(way: str, model, tok, prompts: list[str], rows: list[list[int]], args, stop: list[str], backend):
    """``(texts, new-token counts, wall seconds, prefix plan or None)`` of one way."""
    if way != "plain":
        texts, new_lens, wall, be = run_backend_way(way, model, tok, prompts, args, stop)
        return texts, new_lens, wall, be._plan(rows) if way.endswith("_prefix") else None
    run_plain(model, tok, rows[:1], 8, stop, backend.eos_ids, backend.pad_id)  # warm-up
    t = time.perf_counter()
    texts, new_lens = run_plain(model, tok, rows, args.max_new_tokens, stop, backend.eos_ids, backend.pad_id)
    return texts, new_lens, time.perf_counter() - t, None


def measure(wall: float, new_lens: list[int], rows: list[list[int]], config, plan, peak: float) -> dict:
    """Speeds and FLOP rates of one way (``needed``: every prompt whole + the generated tokens)."""
    prompt_lens = [len(r) for r in rows]
    gen = sum(new_lens)
    decode = gen * flops_per_token(config, sum(prompt_lens) / len(rows))
    needed = prompt_flops(config, rows) + decode
    executed = prompt_flops(config, rows, plan) + decode
    r = {"wall_s": round(wall, 2), "prompts": len(rows), "prompt_tokens": sum(prompt_lens),
         "generated_tokens": gen, "prompts_per_s": round(len(rows) / wall, 3),
         "generated_tokens_per_s": round(gen / wall, 2),
         "needed_gflop": round(needed / 1e9, 1), "executed_gflop": round(executed / 1e9, 1),
         "executed_gflop_per_s": round(executed / wall / 1e9, 2),
         "fraction_of_matmul_limit": round(executed / wall / 1e9 / peak, 3),
         "needed_over_limit_s": round(needed / 1e9 / peak, 2)}
    if plan is not None:
        r["prefix_groups"] = sorted({n for n, _ in plan})
    return r


def run_ways(args, model, tok, backend, prompts: list[str], rows: list[list[int]], stop: list[str],
             peak: float) -> dict:
    """Every way on the same prompts; each one's outputs are compared with the plain loop's where it ran first."""
    results, reference = {}, None
    with torch.no_grad():
        for way in args.ways:
            texts, new_lens, wall, plan = run_way(way, model, tok, prompts, rows, args, stop, backend)
            r = measure(wall, new_lens, rows, model.config, plan, peak)
            if reference is None and way == "plain":
                reference = texts
            if reference is not None:
                r["outputs_equal_to_plain"] = sum(a == b for a, b in zip(texts, reference))
            results[way] = r
            print(f"  {way:14s} {wall:7.1f} s  {r['prompts_per_s']:.3f} prompts/s  {r['generated_tokens_per_s']:6.1f} "
                  f"tok/s  {r['executed_gflop_per_s']:6.1f} GFLOP/s ({100 * r['fraction_of_matmul_limit']:.0f}% of matmul)"
                  + (f"  equal to plain {r['outputs_equal_to_plain']}/{len(rows)}" if "outputs_equal_to_plain" in r else ""))
    if "plain" in results:
        for r in results.values():
            r["speed_over_plain"] = round(results["plain"]["wall_s"] / r["wall_s"], 2)
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("PROLORA_NO_PROGRESS", "1")  # one line per way instead of the backend's bars
    if args.threads:
        torch.set_num_threads(args.threads)
    from eval.backends.hf import HFBackend

    model, tok, load_s = load_model(args)
    task, prompts = task_prompts(args.task, args.chat, args.data_dir, args.prompts)
    stop = [s for s in task.generation().stop if s]
    backend = HFBackend(model, tok, batch_size=1)  # neutral generation config, encode() with the BOS rule
    rows = [backend.encode(p) for p in prompts]
    lens = [len(r) for r in rows]
    print(f"{args.task} ({'chat' if args.chat else 'no-chat'}): {len(rows)} prompts, {min(lens)}-{max(lens)} tokens "
          f"(mean {sum(lens) / len(rows):.0f}), max_new_tokens {args.max_new_tokens}, stop {stop}, "
          f"{torch.get_num_threads()} threads")
    limit = matmul_gflops(model.config)
    print("matmul GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in limit.items()))
    report = {
        "what": "generation speed of the hf backend vs a plain model.generate loop and the matmul limit, same "
                "process, same prompts, greedy (scripts/bench_generate.py)",
        "device": describe_device("cpu"), "versions": versions("torch", "transformers"),
        "settings": {"model": Path(args.model).name if args.model else None, "task": args.task, "chat": args.chat,
                     "prompts": len(rows), "max_new_tokens": args.max_new_tokens, "stop": stop,
                     "prompt_tokens": {"min": min(lens), "max": max(lens), "mean": round(sum(lens) / len(rows), 1)},
                     "threads": torch.get_num_threads(), "dtype": "float32", "load_s": round(load_s, 1)},
        "matmul_gflop_per_s": {k: round(v, 1) for k, v in limit.items()},
        "flops_model": FLOPS_MODEL,
        "runs": run_ways(args, model, tok, backend, prompts, rows, stop, max(limit.values())),
    }
    if args.out:
        write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
