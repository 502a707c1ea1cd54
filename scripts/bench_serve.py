"""Many adapters on one base model, on the real model (SmolLM2-135M-Instruct, CPU, fp32): every way in one
process, ratios against the baseline of the same run (benchmarks print ratios; there are no timed tests).

    make bench-serve                                    # = python -m scripts.bench_serve
    python -m scripts.bench_serve --parts memory,throughput --rounds 5
    python -m scripts.bench_serve --out results/bench/serve-smollm2-cpu.json

The adapters are random PRoLoRA r8 u1 m7 (n = 7, the LoRA-r2 budget): A_u and A_0 as ``attach`` initialises
them, B_u and B_0 ~ N(0, 0.02²) so that each changes the model's outputs; each is saved compact
(``prolora.save_adapter``) and exported as the exact rank-8 LoRA (``prolora.export_lora``) that PEFT and vLLM load.

* ``layers``: one PRoLoRA layer at SmolLM2's shapes, its compact forward (``delta_output`` without grad) against
  its expanded one (``expanded_output``): forward + backward at a training batch (``--train-tokens``), and the
  forward alone at a prefill (1 x 512) and a decoding step (8 x 1); alternating, median of ``--layer-reps``.
  What decides that a forward with grad (training) takes the expanded product.
* ``memory``: bytes one adapter holds resident with N = 1, 8, 64, 512 adapters loaded: compact
  (``prolora.serving``: its saved tensors, ``MultiAdapter.memory()``, and the process's resident-set growth),
  expanded (its rank-8 factors A_full, B_full, held by the same server as LoRA adapters) and PEFT (the LoRA
  export loaded into ``peft.PeftModel``; and its file); 512 expanded or PEFT adapters are not allocated on this
  shared machine but computed from the measured bytes per adapter; how many of each fit in 1 GiB.
* ``throughput``: a batch of 8 requests (random prompts of ``--prompt-tokens``), each with its own adapter:
  prefill tokens/s (one forward of the batch) and decode tokens/s (``--decode-steps`` greedy steps) of the base
  model alone (the ceiling), the compact mixed batch, the expanded mixed batch, PEFT's mixed batch
  (``adapter_names=``) on the LoRA exports, and the adapters one after another (batch 1 each).  Ways alternate
  step by step (prefill by prefill, decoding step by decoding step, in rotated order) so that the load of a
  shared machine hits all alike; each figure is the median over ``--rounds`` rounds.
* ``together``: K = 8 checkpoints scored by ``recipes.evaluate`` in one pass (``checkpoints=[...]``) against 8
  separate runs (each loading the base), on the same GSM subset with the same settings (``--together-*``);
  the separate runs go 4 before and 4 after the pass; predictions compared output by output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scripts._benchkit import describe_device, versions, write_report

REPO = Path(__file__).resolve().parents[1]
PARTS = ("layers", "memory", "throughput", "together")
GIB = 2**30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    p.add_argument("--adapters", type=int, default=8, help="requests in the batch, each with its own adapter")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory-n", default="1,8,64,512")
    p.add_argument("--train-tokens", default="4x256", help="the layers part's training batch (rows x tokens)")
    p.add_argument("--layer-reps", type=int, default=7)
    p.add_argument("--together-k", type=int, default=8)
    p.add_argument("--together-examples", type=int, default=8, help="GSM questions per checkpoint")
    p.add_argument("--together-shots", type=int, default=0, help="GSM exemplars in each prompt")
    p.add_argument("--together-max-new-tokens", type=int, default=96)
    p.add_argument("--together-batch", type=int, default=64, help="batch_size of every run, alone or together")
    p.add_argument("--model", default=None, help="HF model directory (default: SmolLM2-135M-Instruct via prolora.gguf)")
    p.add_argument("--model-config", default="smollm2_135m", help="the same model as recipes.evaluate's model= name")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "results" / "bench" / "serve-smollm2-cpu.json"))
    args = p.parse_args(argv)
    bad = sorted(set(args.parts.split(",")) - set(PARTS))
    if bad:
        p.error(f"--parts {bad}: choose from {PARTS}")
    return args


def load_fp32(path: str):
    from prolora.models import load_base_model

    return load_base_model(path, quantize=False, compute_dtype="float32", device="cpu")


def config():
    import prolora

    return prolora.make_config("prolora", r=8, u=1, m=7)


def random_state(shapes: dict, seed: int) -> dict[str, torch.Tensor]:
    """An adapter's saved tensors: A parts uniform in PEFT's init bound, B parts N(0, 0.02²)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.rsplit(".", 1)[-1].startswith("A"):
            out[key] = (torch.rand(shape, generator=g) * 2 - 1) / shape[-1] ** 0.5 if key.endswith("A_u") else \
                (torch.rand(shape, generator=g) * 2 - 1) / (7 * shape[-1]) ** 0.5  # A_0: fan-in h = 7 chunks
        else:
            out[key] = torch.randn(shape, generator=g) * 0.02
    return out


def make_checkpoints(path: str, n: int, out: Path) -> list[dict]:
    """``n`` adapters saved compact and exported as rank-8 LoRA: ``[{name, compact, peft}]``."""
    import prolora

    base = load_fp32(path)
    shapes = meta_shapes(path, config())
    made = []
    for i in range(n):
        model = prolora.attach(base, config())
        state = prolora.adapter_state(model, buffers=True)
        with torch.no_grad():
            for key, t in random_state(shapes, seed=i).items():
                state[key].copy_(t)
        item = {"name": f"a{i}", "compact": str(out / f"a{i}" / "final"), "peft": str(out / f"a{i}" / "peft")}
        prolora.save_adapter(model, item["compact"])
        prolora.export_lora(model, item["peft"])
        prolora.detach(model)
        made.append(item)
    return made


def meta_shapes(path: str, cfg) -> dict[str, tuple[int, ...]]:
    """The saved tensors' keys and shapes of ``cfg`` on the model at ``path`` (meta device: no weights read)."""
    import prolora
    from prolora.counting import meta_model

    return {k: tuple(t.shape) for k, t in prolora.adapter_state(prolora.attach(meta_model(path), cfg), True).items()}


def expanded_state(peft_dir: str) -> tuple[object, dict[str, torch.Tensor]]:
    """A LoRA export read back as a LoRA adapter of this harness: (config, {path.lora_A/B: tensor})."""
    from safetensors.torch import load_file

    import prolora

    meta = json.loads((Path(peft_dir) / "adapter_config.json").read_text())
    cfg = prolora.make_config("lora", r=meta["r"], alpha=meta["lora_alpha"], dropout=0.0,
                              target_modules=sorted(meta["target_modules"]))
    tensors = load_file(str(Path(peft_dir) / "adapter_model.safetensors"))
    state = {k.removeprefix("base_model.model.").removesuffix(".weight"): t for k, t in tensors.items()}
    return cfg, state


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------- layers
def layers_part(path: str, checkpoints: list[dict], args) -> dict:
    """Compact vs expanded forward of one PRoLoRA layer per SmolLM2 shape and layout (random weights)."""
    import prolora
    from prolora.counting import model_config
    from prolora.methods.prolora import PRoLoRALayer

    model = model_config(path)
    h, o = model.hidden_size, model.intermediate_size
    rows, tokens = (int(v) for v in args.train_tokens.split("x"))
    shapes = {"train_fwd_bwd": (rows, tokens), "prefill": (1, 512), "decode": (8, 1)}
    result = {}
    for fields in (dict(r=8, u=1, m=7), dict(r=32, u=4, m=7)):
        cfg = prolora.make_config("prolora", dropout=0.0, **fields)
        for width_in, width_out in ((h, h), (h, o), (o, h)):
            layer = PRoLoRALayer(torch.nn.Linear(width_in, width_out, bias=False), cfg, "q_proj")
            with torch.no_grad():
                for param in (q for q in layer.parameters() if q.requires_grad):
                    param.normal_(0, 0.02)
            key = f"{cfg.tag()}:{width_in}x{width_out}"
            result[key] = {name: compare_forward(layer, shape, name == "train_fwd_bwd", args.layer_reps)
                           for name, shape in shapes.items()}
    return {"shapes": {k: list(v) for k, v in shapes.items()}, "layers": result}


def compare_forward(layer, shape: tuple[int, int], backward: bool, reps: int) -> dict:
    """Median seconds of the compact and the expanded forward (+ backward), alternating."""
    x = torch.randn(*shape, layer.in_features)
    times = {"compact": [], "expanded": []}

    def compact():
        return layer.compact_output(x, None, layer.pack(layer.compact_tensors()))

    for _ in range(reps + 1):
        for name, fn in (("compact", compact), ("expanded", lambda: layer.expanded_output(x))):
            t0 = time.perf_counter()
            with torch.set_grad_enabled(backward):
                out = fn()
                if backward:
                    out.sum().backward()
            times[name].append(time.perf_counter() - t0)
    compact_s, expanded_s = (statistics.median(t[1:]) for t in (times["compact"], times["expanded"]))
    return {"compact_s": compact_s, "expanded_s": expanded_s, "compact_over_expanded_time": compact_s / expanded_s}


# ---------------------------------------------------------------------------------------------- memory
def memory_part(path: str, checkpoints: list[dict], args) -> dict:
    """Bytes per adapter resident: compact (N up to 512, allocated), expanded and PEFT (measured on 8, the rest
    computed from the bytes per adapter)."""
    import prolora
    from prolora.serving import MultiAdapter

    counts = sorted(int(n) for n in args.memory_n.split(","))
    served = MultiAdapter(load_fp32(path))
    shapes = served.state_shapes(config())
    rows, rss0, added = {}, rss_bytes(), 0
    for n in counts:
        while added < n:
            served.add(f"m{added}", config(), random_state(shapes, seed=1000 + added))
            added += 1
        mem = served.memory()
        rows[n] = {"compact_bytes": mem.adapters, "compact_allocated": mem.allocated, "group_constants": mem.shared,
                   "rss_growth": rss_bytes() - rss0}
    per_compact = served.memory().per_adapter["m0"]
    trainable = prolora.count_for(path, config())
    lora_cfg, lora_state = expanded_state(checkpoints[0]["peft"])
    for i in range(min(8, len(checkpoints))):
        cfg, state = expanded_state(checkpoints[i]["peft"])
        served.add(f"e{i}", cfg, state)
    per_expanded = served.memory().per_adapter["e0"]
    peft_bytes, peft_file = peft_memory(path, checkpoints[: min(8, len(checkpoints))])
    for n, row in rows.items():
        row["expanded_bytes"], row["peft_bytes"] = n * per_expanded, n * peft_bytes
        row["expanded_allocated"] = row["peft_allocated"] = n <= 8
    return {"adapter": "prolora r8 u1 m7 n7", "trainable_params": trainable,
            "bytes_per_adapter": {"compact": per_compact, "trainable_x_4": 4 * trainable, "expanded": per_expanded,
                                  "expanded_rank": lora_cfg.r, "peft_resident": peft_bytes, "peft_file": peft_file},
            "group_constants_bytes": served.memory().shared,
            "group_constants_over_one_adapter": served.memory().shared / per_compact,
            "n": rows, "fit_in_1GiB": {"compact": GIB // per_compact, "expanded": GIB // per_expanded,
                                       "peft": GIB // peft_bytes}}


def peft_memory(path: str, checkpoints: list[dict]) -> tuple[int, int]:
    """(bytes of one adapter's tensors in a PeftModel holding all of ``checkpoints``, its export file's size)."""
    model = peft_model(path, checkpoints)
    name = checkpoints[0]["name"]
    tensors = [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]
    file = Path(checkpoints[0]["peft"]) / "adapter_model.safetensors"
    return sum(t.numel() * t.element_size() for t in tensors), file.stat().st_size


def peft_model(path: str, checkpoints: list[dict]):
    """A PeftModel on its own fp32 base holding every checkpoint's LoRA export under the checkpoint's name."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_fp32(path), checkpoints[0]["peft"], adapter_name=checkpoints[0]["name"])
    for item in checkpoints[1:]:
        model.load_adapter(item["peft"], adapter_name=item["name"])
    return model.eval()


# ---------------------------------------------------------------------------------------------- throughput
class Way:
    """One way of serving the batch: ``lanes`` (the rows it runs at once: one lane of all rows, or one per row)
    and ``forward(rows, ids, cache) -> (logits, cache)``.  Its greedy tokens are kept per row."""

    def __init__(self, forward, lanes: list[list[int]]):
        self.forward, self.lanes = forward, lanes

    def prefill(self, ids: torch.Tensor) -> list:
        states = []
        for rows in self.lanes:
            logits, cache = self.forward(rows, ids[rows], None)
            states.append([cache, logits[:, -1].argmax(-1, keepdim=True), []])
        return states

    def step(self, states: list) -> list:
        for rows, state in zip(self.lanes, states):
            cache, nxt, tokens = state
            tokens.append(nxt[:, 0].tolist())
            logits, state[0] = self.forward(rows, nxt, cache)
            state[1] = logits[:, -1].argmax(-1, keepdim=True)
        return states


def make_ways(plain, served_model, peft, names: list[str]) -> dict[str, Way]:
    import inspect

    from prolora.serving import MultiAdapter

    served = MultiAdapter.of(served_model)
    kw = "cache" if "cache" in inspect.signature(plain.forward).parameters else "past_key_values"

    def call(model, ids, cache, **extra):
        out = model(input_ids=ids, use_cache=True, **({kw: cache} if cache is not None else {}), **extra)
        return out.logits, getattr(out, "cache", None) or out.past_key_values

    def with_rows(prefix):
        def forward(rows, ids, cache):
            served.use([prefix + names[r] for r in rows])
            return call(served_model, ids, cache)
        return forward

    everyone = [list(range(len(names)))]
    return {"base": Way(lambda rows, ids, cache: call(plain, ids, cache), everyone),
            "compact": Way(with_rows(""), everyone),
            "expanded": Way(with_rows("x"), everyone),
            "peft": Way(lambda rows, ids, cache: call(peft, ids, cache, adapter_names=[names[r] for r in rows]),
                        everyone),
            "one_after_another": Way(with_rows(""), [[r] for r in range(len(names))])}


def alternate(ways: dict[str, Way], ids: torch.Tensor, rounds: int, steps: int) -> tuple[dict, dict, dict]:
    """Seconds of each way's prefills and decoding steps, the ways taking turns (rotated order) at every
    prefill and every step; a first round is a warm-up.  Returns (prefill s, step s, greedy tokens per row)."""
    prefill = {w: [] for w in ways}
    step = {w: [] for w in ways}
    tokens = {}
    with torch.no_grad():
        for r in range(rounds + 1):
            order = list(ways)[r % len(ways):] + list(ways)[: r % len(ways)]
            states = {}
            for w in order:
                t0 = time.perf_counter()
                states[w] = ways[w].prefill(ids)
                prefill[w].append(time.perf_counter() - t0)
            for s in range(steps if r else 2):
                for w in order[s % len(order):] + order[: s % len(order)]:
                    t0 = time.perf_counter()
                    states[w] = ways[w].step(states[w])
                    step[w].append(time.perf_counter() - t0)
            if r == 0:  # warm-up
                prefill, step = {w: [] for w in ways}, {w: [] for w in ways}
            tokens = {w: [t for lane in states[w] for t in zip(*lane[2])] for w in ways}
    return prefill, step, tokens


def throughput_part(path: str, checkpoints: list[dict], args) -> dict:
    from prolora.serving import MultiAdapter

    chosen = checkpoints[: args.adapters]
    names = [c["name"] for c in chosen]
    plain, served_model = load_fp32(path), load_fp32(path)
    served = MultiAdapter(served_model)
    for item in chosen:
        served.load(item["name"], item["compact"])
        cfg, state = expanded_state(item["peft"])
        served.add("x" + item["name"], cfg, state)
    ways = make_ways(plain, served_model, peft_model(path, chosen), names)
    vocab = plain.config.vocab_size
    ids = torch.randint(3, vocab, (len(names), args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    prefill, step, tokens = alternate(ways, ids, args.rounds, args.decode_steps)
    rows = len(names)
    result = {}
    for w in ways:
        result[w] = {"prefill_s": statistics.median(prefill[w]), "decode_step_s": statistics.median(step[w]),
                     "prefill_tokens_per_s": rows * args.prompt_tokens / statistics.median(prefill[w]),
                     "decode_tokens_per_s": rows / statistics.median(step[w]),
                     "greedy_tokens_equal_to_compact": sum(a == b for ra, rb in zip(tokens[w], tokens["compact"])
                                                           for a, b in zip(ra, rb)),
                     "greedy_tokens": sum(len(r) for r in tokens[w])}
    ratio = {f"{a}_over_{b}": {k: result[a][k] / result[b][k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s")}
             for a, b in (("compact", "base"), ("expanded", "base"), ("peft", "base"), ("one_after_another", "base"),
                          ("compact", "peft"), ("compact", "expanded"), ("compact", "one_after_another"))}
    return {"requests": rows, "prompt_tokens": args.prompt_tokens, "decode_steps": args.decode_steps,
            "rounds": args.rounds, "ways": result, "ratios": ratio}


# ---------------------------------------------------------------------------------------------- together
def together_part(path: str, checkpoints: list[dict], args) -> dict:
    """K checkpoints through ``recipes.evaluate``: one pass against K separate runs, same settings."""
    from hydra import compose, initialize_config_dir

    from recipes import CONFIG_DIR
    from recipes import evaluate as recipe

    chosen = checkpoints[: args.together_k]
    common = [f"model={args.model_config}", "tasks=[gsm]", f"data_dir={args.data_dir}", "precision=full", "gsm.precision=null",
              f"gsm.max_examples={args.together_examples}", f"gsm.n_shot={args.together_shots}",
              f"max_new_tokens={args.together_max_new_tokens}", f"batch_size={args.together_batch}", "logger=none",
              "device=cpu"]

    def cfg(extra):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="evaluate", overrides=common + extra)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        alone_s = []

        def alone(i):
            t0 = time.perf_counter()
            recipe.run(cfg([f"checkpoint={chosen[i]['compact']}", f"output_dir={tmp}/alone{i}"]))
            alone_s.append(time.perf_counter() - t0)

        together_s = []

        def together():
            t0 = time.perf_counter()
            recipe.run_together(cfg([f"checkpoints=[{','.join(c['compact'] for c in chosen)}]",
                                     f"output_dirs=[{','.join(f'{tmp}/together{i}' for i in range(len(chosen)))}]"]))
            together_s.append(time.perf_counter() - t0)

        for i in range(len(chosen) // 2):  # half the separate runs, a pass, the other half, a pass again
            alone(i)
        together()
        for i in range(len(chosen) // 2, len(chosen)):
            alone(i)
        together()
        same, total = compare_predictions(Path(tmp), len(chosen))
        floor = prefill_floor(path, Path(tmp), len(chosen))
    return {"k": len(chosen), "settings": common, "together_s": statistics.mean(together_s),
            "together_each_s": together_s, "separate_s": sum(alone_s), "separate_each_s": alone_s,
            "speedup": sum(alone_s) / statistics.mean(together_s), "predictions_identical": same,
            "predictions": total, "prefill_floor_s": floor}


def prefill_floor(path: str, tmp: Path, k: int) -> float:
    """Seconds to prefill every scored prompt once, one at a time, through the base model: work both ways do
    alike (each row is prefilled alone), which batching across adapters cannot shorten on this CPU."""
    from eval.backends.hf import HFBackend

    backend = HFBackend.load(path, precision="full", compute_dtype="float32", device="cpu")
    prompts = [json.loads(line)["prompt"] for i in range(k)
               for line in (tmp / f"alone{i}" / "predictions" / "gsm.jsonl").read_text().splitlines()]
    t0 = time.perf_counter()
    with torch.no_grad():
        for prompt in prompts:
            backend.model(input_ids=torch.tensor([backend.encode(prompt)]), logits_to_keep=1)
    return time.perf_counter() - t0


def compare_predictions(tmp: Path, k: int) -> tuple[int, int]:
    same = total = 0
    for i in range(k):
        read = [[json.loads(line) for line in (tmp / f"{way}{i}" / "predictions" / "gsm.jsonl").read_text().splitlines()]
                for way in ("alone", "together")]
        for a, b in zip(*read):
            same += a["outputs"] == b["outputs"]
            total += 1
    return same, total


# ---------------------------------------------------------------------------------------------- main
def summary_lines(report: dict) -> list[str]:
    lines = []
    if "layers" in report:
        for key, row in report["layers"]["layers"].items():
            lines.append(f"{key:>32}: compact/expanded time " + ", ".join(
                f"{name} {r['compact_over_expanded_time']:.2f}x" for name, r in row.items()))
    if "memory" in report:
        m = report["memory"]
        b = m["bytes_per_adapter"]
        lines += [f"memory per adapter: compact {b['compact']:,} B (= trainable x 4: {b['compact'] == b['trainable_x_4']}), "
                  f"expanded r{b['expanded_rank']} {b['expanded']:,} B ({b['expanded'] / b['compact']:.2f}x), PEFT "
                  f"{b['peft_resident']:,} B ({b['peft_resident'] / b['compact']:.2f}x); group constants "
                  f"{m['group_constants_over_one_adapter']:.2%} of one adapter",
                  f"adapters in 1 GiB: {m['fit_in_1GiB']}"]
    if "throughput" in report:
        t = report["throughput"]
        for w, r in t["ways"].items():
            lines.append(f"{w:>18}: prefill {r['prefill_tokens_per_s']:7.1f} tok/s, decode {r['decode_tokens_per_s']:6.1f} "
                         f"tok/s (greedy tokens = compact's: {r['greedy_tokens_equal_to_compact']}/{r['greedy_tokens']})")
        for k, r in t["ratios"].items():
            lines.append(f"{k:>30}: prefill {r['prefill_tokens_per_s']:.2f}x, decode {r['decode_tokens_per_s']:.2f}x")
    if "together" in report:
        g = report["together"]
        lines.append(f"K={g['k']} checkpoints: one pass {g['together_s']:.1f} s (mean of {len(g['together_each_s'])}), "
                     f"separately {g['separate_s']:.1f} s ({g['speedup']:.2f}x); predictions identical "
                     f"{g['predictions_identical']}/{g['predictions']}; prefilling every prompt alone takes "
                     f"{g['prefill_floor_s']:.1f} s of either")
    return lines


def main(argv=None) -> int:
    from prolora.gguf import smollm2_dir
    from recipes import git_commit

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    path = args.model or str(smollm2_dir())
    report = {"benchmark": "serve", "model": f"{path} (fp32)", "device": describe_device("cpu"),
              "threads": args.threads, "versions": versions("torch", "transformers", "peft"),
              "git_commit": git_commit(), "args": vars(args), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="bench-serve-ckpt-") as tmp:
        needed = any(part in parts for part in ("memory", "throughput", "together"))
        checkpoints = make_checkpoints(path, max(args.adapters, args.together_k), Path(tmp)) if needed else []
        for part, run in (("layers", layers_part), ("memory", memory_part), ("throughput", throughput_part),
                          ("together", together_part)):
            if part in parts:
                t0 = time.perf_counter()
                report[part] = run(path, checkpoints, args)
                report[part]["wall_s"] = time.perf_counter() - t0
                print("\n".join(summary_lines({part: report[part]})), flush=True)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
