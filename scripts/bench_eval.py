"""Generation throughput (tokens/s, prompts/s) of the evaluation backends on GSM- and BBH-shaped prompts, with a
random-weight Llama (LLaMA2-7B on a GPU, the ~100M CPU profile without one) loaded through the evaluators' path.

    python -m scripts.bench_eval                                  # no CUDA: the CPU profile, fp32
    python -m scripts.bench_eval --shape 7b --device cuda         # LLaMA2-7B shapes, bf16, 64 prompts x 512 new tokens
    python -m scripts.bench_eval --shape 7b --backends hf,vllm    # both backends on the same prompts, vllm/hf ratio
    python -m scripts.bench_eval --out results/bench/eval-cpu.json

Prints a table; ``--out`` writes it as JSON (per backend and benchmark: wall seconds, generated tokens, tokens/s,
prompts/s, rows that reached full length; vllm/hf and static/dynamic KV-cache ratios).  How the prompts, their
lengths and the token counts are made: ``results/bench/README.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from prolora.models import LLAMA2_COMMON, TINY_DIR, llama2_config, load_tokenizer
from scripts._benchkit import (
    MEDIUM_SHAPE,
    SHARED_DATA,
    describe_device,
    pick_device,
    release,
    sync,
    versions,
    write_report,
)

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


# ---------------------------------------------------------------------------------------------- backends
class HFCounter:
    """Records the ids each batch produced (the backend keeps only text): wraps ``backend.model.generate``
    (sampling, the static cache) and the backend's own greedy loop ``backend._greedy`` (the dynamic cache)."""

    def __init__(self, backend):
        self.backend, self.model = backend, backend.model
        self.original, self.greedy = self.model.generate, backend._greedy
        self.reset()
        self.model.generate = self  # instance attributes: shadow the methods, removed in restore()
        backend._greedy = self.count_greedy

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

    def count_greedy(self, *args, **kwargs):
        new = self.greedy(*args, **kwargs)  # each row's new ids, EOS excluded; a finished row leaves the batch
        self.per_row.extend(len(row) for row in new)
        self.steps += max((len(row) for row in new), default=0)
        self.slots += sum(len(row) for row in new)
        return new

    def restore(self):
        del self.model.generate
        del self.backend._greedy


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
            "token_count_source": "ids returned by model.generate (wrapped; per row up to and including EOS) or by "
                                  "the backend's greedy loop (HFBackend._greedy, wrapped; EOS excluded)"}


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
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench_eval", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--data-dir", default=str(SHARED_DATA),
                    help="benchmark files for real prompt lengths (default ../shared/data; absent: fixed deciles)")
    ap.add_argument("--chars-per-token", type=float, default=3.7,
                    help="LLaMA-2 token estimate: digits + other chars / this")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: CUDA all usable cores; CPU the cores idle at start, >= 1)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=None, help="write the results as JSON (e.g. results/bench/eval-cpu.json)")
    args = ap.parse_args(argv)
    args.device = pick_device(args.device)
    args.cuda = args.device.startswith("cuda")
    if args.cuda and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    for b in args.backends:
        if b not in ("hf", "hf-static", "vllm"):
            ap.error(f"--backends: unknown {b!r}")
    for b in args.benchmarks:
        if b not in STOPS:
            ap.error(f"--benchmarks: unknown {b!r}")
    return args


def resolve_profile(args: argparse.Namespace) -> None:
    """Shape, prompt count, generation length and threads: the 7B GPU setting, or the CPU profile."""
    if not args.cuda:
        print("=" * 100 + "\nNO CUDA: running the SMALL-SHAPE CPU profile (a ~100M Llama with LLaMA2-7B's proportions, "
              "fewer prompts, shorter generation).\nThese numbers are NOT the 7B GPU setting; run on a GPU "
              "with --shape 7b for that.\n" + "=" * 100, file=sys.stderr, flush=True)
    args.shape = args.shape or ("7b" if args.cuda else "medium")
    args.prompts = args.prompts or (64 if args.cuda else 16)
    args.max_new_tokens = args.max_new_tokens or (512 if args.cuda else 128)
    if args.cuda:
        torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    else:
        torch.set_num_threads(args.threads or idle_cores())
        print(f"torch threads: {torch.get_num_threads()} ({'--threads' if args.threads else 'cores idle now'}; "
              f"{len(os.sched_getaffinity(0))} usable)", file=sys.stderr, flush=True)
    args.dtype = torch.bfloat16 if args.cuda else torch.float32


def make_prompts(args: argparse.Namespace, tok, rng: random.Random) -> tuple[dict, dict, dict]:
    """Per benchmark: the prompts (random words, exact token counts), their target lengths and where the lengths
    came from; the same strings for every backend."""
    words = word_tokens(tok)
    data_dir = Path(args.data_dir)
    prompts, targets, source = {}, {}, {}
    for bench in args.benchmarks:
        key = "bbh_cot" if bench == "bbh" and args.bbh_cot else ("bbh_direct" if bench == "bbh" else "gsm")
        if data_dir.is_dir():
            pool = real_prompt_lengths(bench, data_dir, args.bbh_cot, args.chars_per_token)
            lengths = [rng.choice(pool) for _ in range(args.prompts)]
            source[bench] = (f"{key}: {len(pool)} prompts built by eval.tasks.{bench} from {data_dir}, "
                             f"LLaMA-2 tokens estimated as digits + other chars / {args.chars_per_token} + BOS")
        else:
            lengths = fallback_lengths(key, args.prompts, rng)
            source[bench] = f"{key}: fixed decile table FALLBACK_DECILES (no {data_dir})"
        targets[bench] = lengths
        prompts[bench] = [make_prompt(n, words, tok, rng) for n in lengths]
    args.warmup_prompts = [make_prompt(32, words, tok, rng)] * 2  # short: warms the batched path only
    return prompts, targets, source


def new_report(args: argparse.Namespace, length_source: dict) -> dict:
    settings = {"shape": args.shape, "model_config": "llama2_7b" if args.shape == "7b" else MEDIUM_SHAPE,
                "precision": args.precision, "compute_dtype": str(args.dtype).replace("torch.", ""),
                "batch_size": args.batch_size, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                "seed": args.seed, "threads": torch.get_num_threads(), "temperature": 0.0,
                "stop": {b: STOPS[b] for b in args.benchmarks}, "bbh_prompts": "cot" if args.bbh_cot else "direct",
                "prompt_lengths": length_source, "weights": "random; lm_head rows of EOS and newline tokens zeroed"}
    return {"device": describe_device(args.device),
            "versions": versions("torch", "transformers", "bitsandbytes", "vllm"), "settings": settings,
            "note": ("small-shape CPU profile (~100M Llama with LLaMA2-7B proportions, fp32), NOT the "
                     "7B GPU setting" if not args.cuda or args.shape != "7b" else
                     "LLaMA2-7B shapes with random weights on GPU"),
            "runs": [], "skipped": {}}


def save_random_model(args: argparse.Namespace, tok, model_dir: str, report: dict) -> None:
    """The random Llama (EOS and newline rows of the LM head zeroed) and the tiny tokenizer in ``model_dir``."""
    print(f"building a random {args.shape} Llama on {args.device} ({args.dtype}) ...", file=sys.stderr, flush=True)
    silence = sorted({tok.eos_token_id} | {i for i in range(len(tok)) if "\n" in tok.decode([i])})
    model = build_random_model(args.shape, args.device, args.dtype, args.seed, silence)
    report["settings"]["parameters"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    del model
    release(args.device)


def bench_backend(name: str, model_dir: str, args: argparse.Namespace, prompts: dict, targets: dict,
                  report: dict) -> None:
    """Load one backend and time it on every benchmark's prompts; a backend that cannot run here is recorded."""
    why = vllm_status(args.device, args.precision) if name == "vllm" else None
    if why:
        report["skipped"]["vllm"] = report["vllm"] = why
        print(f"vllm: {why}", file=sys.stderr, flush=True)
        return
    args.kv_cache = "static" if name == "hf-static" else "dynamic"
    opener, timer = (open_hf, time_hf) if name.startswith("hf") else (open_vllm, time_vllm)
    try:
        backend, load_s = opener(model_dir, args, args.device)
    except Exception as e:  # a backend that cannot load here (e.g. 8bit on CPU) is reported, not fatal
        report["skipped"][name] = f"load failed: {type(e).__name__}: {e}"
        print(f"{name}: load failed: {e}", file=sys.stderr, flush=True)
        return
    print(f"{name}: loaded in {load_s:.1f}s", file=sys.stderr, flush=True)
    for bench in args.benchmarks:
        ps = prompts[bench]
        lens = [len(backend.encode(p)) for p in ps]
        r = timer(backend, ps, STOPS[bench], args, args.device, f"{name} {bench}")
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
    release(args.device)


def add_ratios(report: dict, benches: list[str]) -> None:
    """vllm/hf and hf static/dynamic KV cache tokens/s, per benchmark where both ran."""
    by = {(r["backend"], r["benchmark"]): r for r in report["runs"]}
    for key, (a, b), label in (("vllm_over_hf_tokens_per_s", ("vllm", "hf"), "vllm/hf"),
                               ("hf_static_over_dynamic_kv_cache_tokens_per_s", ("hf-static", "hf"),
                                "hf static/dynamic KV cache")):
        ratios = {x: by[a, x]["tokens_per_s"] / by[b, x]["tokens_per_s"] for x in benches if (a, x) in by and (b, x) in by}
        if ratios:
            report[key] = ratios
            print(f"{label} tokens/s: " + ", ".join(f"{x} {v:.2f}x" for x, v in ratios.items()))


def print_table(report: dict, args: argparse.Namespace) -> None:
    s = report["settings"]
    print(f"\ndevice: {report['device']}\nshape={args.shape} ({s['parameters'] / 1e6:.0f}M params) "
          f"precision={args.precision} ({s['compute_dtype']}) batch={args.batch_size} "
          f"prompts={args.prompts} max_new_tokens={args.max_new_tokens} seed={args.seed}")
    print(f"{'backend':<11}{'bench':<6}{'prompts':>8}{'prompt tok':>11}{'gen tok':>9}{'full rows':>10}"
          f"{'wall s':>9}{'tok/s':>9}{'prompts/s':>10}")
    for r in report["runs"]:
        print(f"{r['backend']:<11}{r['benchmark']:<6}{r['prompts']:>8}{r['prompt_tokens_mean']:>11.0f}"
              f"{r['generated_tokens']:>9}{r['full_length_rows']:>6}/{r['prompts']:<3}{r['wall_s']:>9.1f}"
              f"{r['tokens_per_s']:>9.1f}{r['prompts_per_s']:>10.3f}")
    for name, why in report["skipped"].items():
        print(f"{name}: {why}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    resolve_profile(args)
    from transformers import set_seed

    set_seed(args.seed)
    tok = load_tokenizer(TINY_DIR)
    tok.model_max_length = LLAMA2_COMMON["max_position_embeddings"]  # the tiny model's 512 limit does not apply
    prompts, targets, length_source = make_prompts(args, tok, random.Random(args.seed))
    report = new_report(args, length_source)
    with tempfile.TemporaryDirectory(prefix="prolora-bench-eval-") as model_dir:
        save_random_model(args, tok, model_dir, report)
        for name in args.backends:
            bench_backend(name, model_dir, args, prompts, targets, report)
    print_table(report, args)
    add_ratios(report, args.benchmarks)
    print(f"note: {report['note']}")
    if args.out:
        write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
