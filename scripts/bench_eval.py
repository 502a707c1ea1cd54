"""Generation throughput (tokens/s, prompts/s) of the evaluation backends on GSM- and BBH-shaped prompts.

    python scripts/bench_eval.py                                  # no CUDA: small-shape profile (~100M Llama), fp32
    python scripts/bench_eval.py --shape 7b --device cuda         # LLaMA2-7B shapes, bf16, 64 prompts x 512 new tokens
    python scripts/bench_eval.py --shape 7b --backends hf,vllm    # both backends on the same prompts, vllm/hf ratio
    python scripts/bench_eval.py --precision nf4 --batch-size 16 --prompts 32 --max-new-tokens 256
    python scripts/bench_eval.py --out results/bench/eval-cpu.json

A Llama with RANDOM weights (LLaMA2-7B's published config, or on a machine without CUDA a ~100M model
with LLaMA2-7B's proportions: hidden 768, intermediate 2064, 8 layers, 6 heads of 128, vocab 32000) is
saved to a temporary directory with the project's tiny tokenizer and loaded back through the loading
path the evaluators use (``HFBackend.load`` -> ``prolora.models.load_base_model`` in nf4 / 8bit / full;
``VLLMBackend(model_dir)``), then timed through the backend's public ``generate`` with the task's own
stop sequences (GSM "\\n", BBH "\\n\\n"), greedy, as ``eval.driver`` calls it.

* Prompt lengths: the real GSM (8-shot CoT, ``eval.tasks.gsm.GSM``) and BBH (3-shot, direct answers as
  ``recipes.evaluate`` runs it, or CoT with ``--bbh-cot``; ``eval.tasks.bbh.BBH``) prompts built from
  ``../shared/data`` when present; no LLaMA tokenizer is available offline, so each prompt's LLaMA-2
  token count is ESTIMATED as digits + other characters / ``--chars-per-token`` (3.7; SentencePiece
  splits numbers into digits) + BOS. Without the data: a fixed table of deciles of those estimates.
  Prompts of exactly that many tokens are random words of the tiny tokenizer (each " word" is one
  token, so the lengths are exact; ids < 512 are valid inputs to a 32000-vocab model).
* Full-length generation: random weights babble, and EOS or a stop sequence would end rows at random.
  The lm_head rows of EOS and of every tiny-tokenizer token containing a newline are zeroed (logit 0,
  never the argmax over 32000 random logits), so greedy decoding runs to ``--max-new-tokens`` while the
  stop-sequence check still runs every step (its cost is part of what is measured). Checked: the JSON
  reports how many rows reached full length.
* Token counts: from the ids the engine produced (hf: ``model.generate``'s output, wrapped to record it,
  per row up to EOS; vllm: ``RequestOutput.outputs[].token_ids``), not by re-tokenizing the text (ids
  >= 512 decode to nothing with the tiny tokenizer).
* hf runs twice on the same prompts: ``hf`` as the evaluators run it (transformers' dynamic KV cache) and
  ``hf-static`` with the backend's preallocated-cache option (``kv_cache="static"``).
* Timing: one short warm-up call (2 x 32 tokens) per benchmark, then one timed ``generate`` over all prompts of a
  benchmark (hf: the backend's sorted, left-padded batches of ``--batch-size``; vllm: its own continuous
  batching, ``--batch-size`` does not apply). Model loading is timed separately (``load_s``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _benchkit import MEDIUM_SHAPE, describe_device, versions, write_report  # noqa: E402

from prolora.models import LLAMA2_COMMON, TINY_DIR, llama2_config, load_tokenizer  # noqa: E402

# Fallback without ../shared/data: deciles (0%, 10%, ..., 100%) of the estimated LLaMA-2 prompt lengths
# (BOS included) of the prompts the task classes build from the real files (GSM: 200, BBH: 27 x 40).
FALLBACK_DECILES = {
    "gsm": [745, 759, 766, 771, 778, 784, 790, 798, 807, 817, 910],
    "bbh_direct": [62, 132, 169, 233, 263, 379, 476, 537, 584, 712, 1321],
    "bbh_cot": [243, 494, 680, 740, 827, 862, 896, 946, 1048, 1372, 2033],
}
STOPS = {"gsm": ["\n"], "bbh": ["\n\n"]}  # eval.tasks.gsm / bbh: GenSpec.stop without chat


def estimate_llama_tokens(text: str, chars_per_token: float) -> int:
    digits = sum(ch.isdigit() for ch in text)
    return round(digits + (len(text) - digits) / chars_per_token) + 1  # + BOS


def real_prompt_lengths(bench: str, data_dir: Path, bbh_cot: bool, chars_per_token: float) -> list[int]:
    """Estimated LLaMA-2 token counts of every prompt the project's task class builds (as evaluated)."""
    from eval.tasks.bbh import BBH
    from eval.tasks.gsm import GSM

    task = GSM() if bench == "gsm" else BBH(cot=bbh_cot)
    return [estimate_llama_tokens(task.prompt(ex), chars_per_token) for ex in task.load(data_dir)]


def fallback_lengths(key: str, n: int, rng: random.Random) -> list[int]:
    q = FALLBACK_DECILES[key]
    out = []
    for _ in range(n):
        u = rng.random() * 10
        i = min(int(u), 9)
        out.append(round(q[i] + (u - i) * (q[i + 1] - q[i])))
    return out


def word_tokens(tok) -> list[int]:
    """Tiny-tokenizer ids of space-prefixed alphabetic words that encode back to exactly themselves: the
    byte-level pre-tokenizer splits at spaces, so a string of them has exactly one token per word."""
    ids = []
    for i in range(len(tok)):
        s = tok.decode([i])
        if s.startswith(" ") and s[1:].isalpha() and tok(s, add_special_tokens=False).input_ids == [i]:
            ids.append(i)
    return ids


def make_prompt(length: int, words: list[int], tok, rng: random.Random) -> str:
    """A prompt the backend encodes to exactly ``length`` tokens (BOS + length - 1 words)."""
    return tok.decode([rng.choice(words) for _ in range(max(1, length - 1))])


def build_random_model(shape: str, device: str, dtype: torch.dtype, seed: int, silence: list[int]):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = llama2_config("llama2_7b") if shape == "7b" else LlamaConfig(**MEDIUM_SHAPE, **LLAMA2_COMMON)
    config.pad_token_id = config.eos_token_id
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise 7B directly in bf16 (no 27 GB fp32 copy)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # never EOS, never a newline: every row runs to max_new_tokens
        model.lm_head.weight[silence] = 0
    return model.eval()


def idle_cores(interval: float = 0.5) -> int:
    """Cores left idle by other processes (``/proc/stat`` over ``interval``), at least 1: with MKL/OpenMP
    on a shared 2-core machine, a thread more than the idle cores makes every small GEMM wait a time slice."""
    usable = len(os.sched_getaffinity(0))

    def snap():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        t0, i0 = snap()
        time.sleep(interval)
        t1, i1 = snap()
    except (OSError, ValueError, IndexError):
        return usable
    idle = (i1 - i0) / max(1, t1 - t0) * (os.cpu_count() or usable)
    return max(1, min(usable, round(idle)))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- backends
class HFCounter:
    """Wraps ``backend.model.generate`` to record the ids each batch produced (the backend keeps only text)."""

    def __init__(self, backend):
        self.backend, self.model = backend, backend.model
        self.original = self.model.generate
        self.reset()
        self.model.generate = self  # instance attribute: shadows the method, removed in restore()

    def reset(self):
        self.per_row: list[int] = []
        self.steps = 0
        self.slots = 0

    def __call__(self, *args, input_ids=None, **kwargs):
        out = self.original(*args, input_ids=input_ids, **kwargs)
        new = out[:, input_ids.shape[1]:].tolist()
        eos = set(self.backend.eos_ids)
        for row in new:
            n = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
            self.per_row.append(n)
        self.steps += len(new[0]) if new else 0
        self.slots += sum(len(r) for r in new)
        return out

    def restore(self):
        del self.model.generate


def open_hf(model_dir: str, args, device: str):
    from eval.backends.hf import HFBackend

    t0 = time.perf_counter()
    backend = HFBackend.load(model_dir, precision=args.precision, device=device, batch_size=args.batch_size,
                             kv_cache=args.kv_cache)
    sync(device)
    return backend, time.perf_counter() - t0


def timed_generate(backend, prompts: list[str], stop: list[str], args, device: str, desc: str,
                   after_warmup) -> float:
    """A short warm-up call, ``after_warmup()`` (drop what it recorded), then the wall time of one
    ``backend.generate`` over all ``prompts`` (synchronised on CUDA)."""
    backend.generate(args.warmup_prompts, max_new_tokens=4, stop=stop, seed=args.seed, desc="warm-up")
    after_warmup()
    sync(device)
    t0 = time.perf_counter()
    backend.generate(prompts, max_new_tokens=args.max_new_tokens, stop=stop, seed=args.seed, desc=desc)
    sync(device)
    return time.perf_counter() - t0


def time_hf(backend, prompts: list[str], stop: list[str], args, device: str, desc: str) -> dict:
    counter = HFCounter(backend)
    try:
        wall = timed_generate(backend, prompts, stop, args, device, desc, after_warmup=counter.reset)
    finally:
        counter.restore()
    return {"wall_s": wall, "generated_tokens": sum(counter.per_row), "per_row": counter.per_row,
            "decode_steps": counter.steps, "batch_slots": counter.slots,
            "token_count_source": "ids returned by model.generate (wrapped), per row up to and including EOS"}


def open_vllm(model_dir: str, args, device: str):
    from eval.backends.vllm import VLLMBackend

    t0 = time.perf_counter()
    backend = VLLMBackend(model_dir, dtype="auto", seed=args.seed,
                          quantization="bitsandbytes" if args.precision == "nf4" else None)
    return backend, time.perf_counter() - t0


def time_vllm(backend, prompts: list[str], stop: list[str], args, device: str, desc: str) -> dict:
    captured: list = []
    original = backend.llm.generate

    def generate(*a, **kw):
        outputs = original(*a, **kw)
        captured.extend(outputs)
        return outputs

    backend.llm.generate = generate
    try:
        wall = timed_generate(backend, prompts, stop, args, device, desc, after_warmup=captured.clear)
    finally:
        backend.llm.generate = original
    per_row = [len(o.token_ids) for out in captured for o in out.outputs]
    return {"wall_s": wall, "generated_tokens": sum(per_row), "per_row": per_row,
            "token_count_source": "vLLM RequestOutput.outputs[].token_ids"}


def vllm_status(device: str, precision: str) -> str | None:
    """None when vLLM can run here, else why not."""
    if importlib.util.find_spec("vllm") is None:
        return "not installed"
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return "no CUDA"
    if precision == "8bit":
        return "skipped: --precision 8bit (this benchmark serves vLLM in full precision or nf4 only)"
    return None


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    ap.add_argument("--shape", choices=["medium", "7b"], default=None, help="default: 7b on CUDA, medium on CPU")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per benchmark (default: 64 CUDA, 16 CPU)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 512 CUDA (the protocol), 128 CPU")
    ap.add_argument("--batch-size", type=int, default=8, help="hf backend batch size (recipes.evaluate: 8)")
    ap.add_argument("--precision", choices=["nf4", "8bit", "full"], default="full",
                    help="full = bf16 on CUDA / fp32 on CPU (the paper scores a merged model in bf16)")
    ap.add_argument("--backends", default="hf,hf-static,vllm",
                    help="comma-separated subset of hf (the hf backend as the evaluators run it: dynamic KV cache), "
                         "hf-static (its preallocated KV cache option) and vllm")
    ap.add_argument("--benchmarks", default="gsm,bbh", help="comma-separated subset of gsm,bbh")
    ap.add_argument("--bbh-cot", action="store_true",
                    help="BBH chain-of-thought prompts (default: direct answers, as recipes.evaluate runs BBH)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                    help="benchmark files for real prompt lengths (default ../shared/data; absent: fixed deciles)")
    ap.add_argument("--chars-per-token", type=float, default=3.7,
                    help="LLaMA-2 token estimate: digits + other chars / this")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: CUDA all usable cores; CPU the cores idle at start, >= 1)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=None, help="write the results as JSON (e.g. results/bench/eval-cpu.json)")
    args = ap.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {device}: CUDA is not available here")
    if not cuda:
        print("=" * 100 + "\nNO CUDA: running the SMALL-SHAPE CPU profile (a ~100M Llama with LLaMA2-7B's proportions, "
              "fewer prompts, shorter generation).\nThese numbers are NOT the 7B GPU setting; run on a GPU "
              "with --shape 7b for that.\n" + "=" * 100, file=sys.stderr, flush=True)
    args.shape = args.shape or ("7b" if cuda else "medium")
    args.prompts = args.prompts or (64 if cuda else 16)
    args.max_new_tokens = args.max_new_tokens or (512 if cuda else 128)
    if cuda:
        torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    else:
        torch.set_num_threads(args.threads or idle_cores())
        print(f"torch threads: {torch.get_num_threads()} ({'--threads' if args.threads else 'cores idle now'}; "
              f"{len(os.sched_getaffinity(0))} usable)", file=sys.stderr, flush=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    benches = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    for b in backends:
        if b not in ("hf", "hf-static", "vllm"):
            ap.error(f"--backends: unknown {b!r}")
    for b in benches:
        if b not in STOPS:
            ap.error(f"--benchmarks: unknown {b!r}")

    from transformers import set_seed

    set_seed(args.seed)
    rng = random.Random(args.seed)
    tok = load_tokenizer(TINY_DIR)
    tok.model_max_length = LLAMA2_COMMON["max_position_embeddings"]  # the tiny model's 512 limit does not apply
    words = word_tokens(tok)
    silence = sorted({tok.eos_token_id} | {i for i in range(len(tok)) if "\n" in tok.decode([i])})

    # prompts: the same strings for every backend
    data_dir = Path(args.data_dir)
    prompts: dict[str, list[str]] = {}
    targets: dict[str, list[int]] = {}
    length_source = {}
    for bench in benches:
        key = "bbh_cot" if bench == "bbh" and args.bbh_cot else ("bbh_direct" if bench == "bbh" else "gsm")
        if data_dir.is_dir():
            pool = real_prompt_lengths(bench, data_dir, args.bbh_cot, args.chars_per_token)
            lengths = [rng.choice(pool) for _ in range(args.prompts)]
            length_source[bench] = (f"{key}: {len(pool)} prompts built by eval.tasks.{bench} from {data_dir}, "
                                    f"LLaMA-2 tokens estimated as digits + other chars / {args.chars_per_token} + BOS")
        else:
            lengths = fallback_lengths(key, args.prompts, rng)
            length_source[bench] = f"{key}: fixed decile table FALLBACK_DECILES (no {data_dir})"
        targets[bench] = lengths
        prompts[bench] = [make_prompt(n, words, tok, rng) for n in lengths]
    args.warmup_prompts = [make_prompt(32, words, tok, rng)] * 2  # short: warms the batched path only

    dtype = torch.bfloat16 if cuda else torch.float32
    settings = {"shape": args.shape, "model_config": "llama2_7b" if args.shape == "7b" else MEDIUM_SHAPE,
                "precision": args.precision, "compute_dtype": str(dtype).replace("torch.", ""),
                "batch_size": args.batch_size, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                "seed": args.seed, "threads": torch.get_num_threads(), "temperature": 0.0,
                "stop": {b: STOPS[b] for b in benches}, "bbh_prompts": "cot" if args.bbh_cot else "direct",
                "prompt_lengths": length_source, "weights": "random; lm_head rows of EOS and newline tokens zeroed"}
    report: dict = {"device": describe_device(device), "versions": versions("torch", "transformers", "bitsandbytes", "vllm"), "settings": settings,
                    "note": ("small-shape CPU profile (~100M Llama with LLaMA2-7B proportions, fp32), NOT the "
                             "7B GPU setting" if not cuda or args.shape != "7b" else
                             "LLaMA2-7B shapes with random weights on GPU"),
                    "runs": [], "skipped": {}}

    print(f"building a random {args.shape} Llama on {device} ({dtype}) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="prolora-bench-eval-") as model_dir:
        model = build_random_model(args.shape, device, dtype, args.seed, silence)
        report["settings"]["parameters"] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

        for name in backends:
            if name == "vllm":
                why = vllm_status(device, args.precision)
                if why:
                    report["skipped"]["vllm"] = why
                    report["vllm"] = why
                    print(f"vllm: {why}", file=sys.stderr, flush=True)
                    continue
            args.kv_cache = "static" if name == "hf-static" else "dynamic"
            opener, timer = (open_hf, time_hf) if name.startswith("hf") else (open_vllm, time_vllm)
            try:
                backend, load_s = opener(model_dir, args, device)
            except Exception as e:  # a backend that cannot load here (e.g. 8bit on CPU) is reported, not fatal
                report["skipped"][name] = f"load failed: {type(e).__name__}: {e}"
                print(f"{name}: load failed: {e}", file=sys.stderr, flush=True)
                continue
            print(f"{name}: loaded in {load_s:.1f}s", file=sys.stderr, flush=True)
            for bench in benches:
                ps = prompts[bench]
                lens = [len(backend.encode(p)) for p in ps]
                r = timer(backend, ps, STOPS[bench], args, device, f"{name} {bench}")
                per_row = r.pop("per_row")
                r.update(backend=name, benchmark=bench, prompts=len(ps), load_s=load_s,
                         prompt_tokens_mean=statistics.mean(lens), prompt_tokens_min=min(lens),
                         prompt_tokens_max=max(lens), prompt_tokens_target_mean=statistics.mean(targets[bench]),
                         full_length_rows=sum(n == args.max_new_tokens for n in per_row),
                         tokens_per_s=r["generated_tokens"] / r["wall_s"], prompts_per_s=len(ps) / r["wall_s"])
                report["runs"].append(r)
                print(f"{name} {bench}: {r['generated_tokens']} tokens in {r['wall_s']:.1f}s "
                      f"({r['tokens_per_s']:.1f} tok/s)", file=sys.stderr, flush=True)
            backend.close()
            del backend
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()

    # table
    print(f"\ndevice: {report['device']}\nshape={args.shape} ({report['settings']['parameters'] / 1e6:.0f}M params) "
          f"precision={args.precision} ({settings['compute_dtype']}) batch={args.batch_size} "
          f"prompts={args.prompts} max_new_tokens={args.max_new_tokens} seed={args.seed}")
    print(f"{'backend':<11}{'bench':<6}{'prompts':>8}{'prompt tok':>11}{'gen tok':>9}{'full rows':>10}"
          f"{'wall s':>9}{'tok/s':>9}{'prompts/s':>10}")
    for r in report["runs"]:
        print(f"{r['backend']:<11}{r['benchmark']:<6}{r['prompts']:>8}{r['prompt_tokens_mean']:>11.0f}"
              f"{r['generated_tokens']:>9}{r['full_length_rows']:>6}/{r['prompts']:<3}{r['wall_s']:>9.1f}"
              f"{r['tokens_per_s']:>9.1f}{r['prompts_per_s']:>10.3f}")
    for name, why in report["skipped"].items():
        print(f"{name}: {why}")
    by = {(r["backend"], r["benchmark"]): r for r in report["runs"]}
    ratios = {b: by["vllm", b]["tokens_per_s"] / by["hf", b]["tokens_per_s"]
              for b in benches if ("hf", b) in by and ("vllm", b) in by}
    if ratios:
        report["vllm_over_hf_tokens_per_s"] = ratios
        print("vllm/hf tokens/s: " + ", ".join(f"{b} {x:.2f}x" for b, x in ratios.items()))
    static = {b: by["hf-static", b]["tokens_per_s"] / by["hf", b]["tokens_per_s"]
              for b in benches if ("hf", b) in by and ("hf-static", b) in by}
    if static:
        report["hf_static_over_dynamic_kv_cache_tokens_per_s"] = static
        print("hf static/dynamic KV cache tokens/s: " + ", ".join(f"{b} {x:.2f}x" for b, x in static.items()))
    print(f"note: {report['note']}")
    if args.out:
        write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
