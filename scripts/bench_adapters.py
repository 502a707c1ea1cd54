"""Forward+backward time and peak memory of each adapter method against PEFT's own LoRA of the same rank, on one
frozen decoder layer's seven linears (or a real LlamaDecoderLayer) at LLaMA2-7B shapes, the two stepped in turn.

    python -m scripts.bench_adapters                         # CPU: batch 2 x 64 tokens, LLaMA2-7B shapes, fp32
    python -m scripts.bench_adapters --device cuda           # GPU: the paper's 16 x 512, bf16 base
    python -m scripts.bench_adapters --module decoder_layer  # one full LlamaDecoderLayer instead of the 7 linears
    python -m scripts.bench_adapters --out results/bench/cpu.json

Prints a table; ``--out`` writes it as JSON (per method: ms per step, MB, and both as ratios to PEFT LoRA).  How
time and memory are measured: ``results/bench/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import torch
from torch import nn

import prolora
from prolora.models import llama2_config
from scripts._benchkit import pick_device, sync, write_report

SEVEN = list(prolora.SEVEN_MODULES)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}

METHODS = {  # label: (config builder, rank)
    "lora_r8": lambda: prolora.LoRAConfig(r=8),
    "prolora_r8_u1_m7": lambda: prolora.make_config("prolora", r=8, u=1, m=7),
    "prolora_r32_u4_m7": lambda: prolora.make_config("prolora", r=32, u=4, m=7),
    "clora_r16_m2": lambda: prolora.make_config("clora", r=16, m=2),
    "rolora_r16_m2": lambda: prolora.make_config("rolora", r=16, m=2),
    "vera_r256": lambda: prolora.VeRAConfig(r=256),
    "tied_lora_r256": lambda: prolora.TiedLoRAConfig(r=256),
}


class SevenLinears(nn.Module):
    """A decoder layer's seven projections at real shapes, without attention: enough to time adapters."""

    def __init__(self, hidden: int, intermediate: int, kv: int, dtype: torch.dtype, device: str):
        super().__init__()
        kw = dict(bias=False, dtype=dtype, device=device)
        self.q_proj, self.k_proj = nn.Linear(hidden, hidden, **kw), nn.Linear(hidden, kv, **kw)
        self.v_proj, self.o_proj = nn.Linear(hidden, kv, **kw), nn.Linear(hidden, hidden, **kw)
        self.gate_proj, self.up_proj = nn.Linear(hidden, intermediate, **kw), nn.Linear(hidden, intermediate, **kw)
        self.down_proj = nn.Linear(intermediate, hidden, **kw)
        self.rep = hidden // kv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        h = x + self.o_proj(q + (k + v).repeat_interleave(self.rep, dim=-1))
        return h + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


class DecoderLayer(nn.Module):
    """One real ``LlamaDecoderLayer`` with its rotary embedding."""

    def __init__(self, config, dtype: torch.dtype, device: str):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        self.layer = LlamaDecoderLayer(config, layer_idx=0).to(device=device, dtype=dtype)
        self.rotary = LlamaRotaryEmbedding(config).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand(x.shape[0], -1)
        out = self.layer(x, position_embeddings=self.rotary(x, pos), position_ids=pos)
        return out[0] if isinstance(out, tuple) else out


class Runner:
    """One model under test: a timed forward+backward step, and its memory."""

    def __init__(self, model: nn.Module, x: torch.Tensor, device: str):
        self.model, self.x, self.device = model.train(), x, device
        self.frozen = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def step(self, measure_saved: bool = False) -> int:
        saved: dict[int, int] = {}

        def pack(t):
            if measure_saved and t.data_ptr() not in self.frozen:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        for p in self.trainable:
            p.grad = None
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = self.model(self.x)
        out.float().pow(2).mean().backward()
        return sum(saved.values())

    def timed_step(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        self.step()
        sync(self.device)
        return time.perf_counter() - t0

    def memory_mb(self) -> tuple[float, str]:
        adapter_bytes = sum(p.numel() * p.element_size() for p in self.trainable)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.step()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base + adapter_bytes) / 2**20, "cuda_peak_above_base"
        # activations saved for the backward + adapter params + their grads
        return (self.step(measure_saved=True) + 2 * adapter_bytes) / 2**20, "saved_activations_plus_adapter"


def paired_stats(ours: Runner, ref: Runner, repeats: int) -> tuple[dict, dict, float]:
    """Time the method and its baseline in alternation (A B A B ...), so drift and other load on the
    machine hit both alike; the time ratio is the median of the per-pair ratios."""
    for r in (ours, ref):
        r.step()  # warm-up
    t_ours, t_ref = [], []
    for _ in range(repeats):
        t_ours.append(ours.timed_step())
        t_ref.append(ref.timed_step())
    out = []
    for r, t in ((ours, t_ours), (ref, t_ref)):
        mem, kind = r.memory_mb()
        out.append({"time_ms": 1000 * statistics.median(t), "mem_mb": mem, "mem_kind": kind,
                    "trainable": sum(p.numel() for p in r.trainable)})
    return out[0], out[1], statistics.median(a / b for a, b in zip(t_ours, t_ref))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench_adapters", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 16 on CUDA")
    ap.add_argument("--seq", type=int, default=None, help="default: 64 on CPU, 512 on CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                    help="base dtype (default float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--module", choices=["seven_linears", "decoder_layer"], default="seven_linears")
    ap.add_argument("--model", default="llama2_7b", help="shapes from this LLaMA-2 config")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                    help=f"subset of {list(METHODS)}")
    ap.add_argument("--out", default=None, help="write the results as JSON (e.g. results/bench/cpu.json)")
    args = ap.parse_args(argv)
    args.device = pick_device(args.device)
    cuda = args.device.startswith("cuda")
    args.batch, args.seq = args.batch or (16 if cuda else 2), args.seq or (512 if cuda else 64)
    args.dtype = DTYPES[args.dtype or ("bfloat16" if cuda else "float32")]
    return args


def frozen_base(args: argparse.Namespace, cfg) -> nn.Module:
    kv = cfg.hidden_size // cfg.num_attention_heads * cfg.num_key_value_heads
    torch.manual_seed(0)
    if args.module == "seven_linears":
        model = SevenLinears(cfg.hidden_size, cfg.intermediate_size, kv, args.dtype, args.device)
    else:
        model = DecoderLayer(cfg, args.dtype, args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def bench_method(label: str, model: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict:
    """The method on one copy of the base against PEFT LoRA of its rank on another, in alternation."""
    from peft import LoraConfig, get_peft_model

    config = METHODS[label]()
    ours = prolora.attach(copy.deepcopy(model), config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = get_peft_model(copy.deepcopy(model), LoraConfig(r=config.r, lora_alpha=16, lora_dropout=0.1,
                                                              target_modules=SEVEN))
    stats, ref_stats, ratio = paired_stats(Runner(ours, x, args.device), Runner(ref, x, args.device), args.repeats)
    stats.update(method=config.method, r=config.r, peft_lora=ref_stats, time_ratio_vs_peft_lora=ratio,
                 mem_ratio_vs_peft_lora=stats["mem_mb"] / ref_stats["mem_mb"])
    print(f"done {label}", file=sys.stderr, flush=True)
    return stats


def print_table(results: dict, args: argparse.Namespace) -> None:
    cuda = args.device.startswith("cuda")
    print(f"device={args.device} ({torch.cuda.get_device_name() if cuda else 'cpu'}, {torch.get_num_threads()} "
          f"threads)  module={args.module} shapes={args.model}  batch={args.batch}x{args.seq}  base dtype={args.dtype}"
          f"  repeats={args.repeats}")
    print(f"{'method':<20}{'r':>5}{'trainable':>12}{'ms':>10}{'PEFT ms':>10}{'t ratio':>9}"
          f"{'MB':>10}{'PEFT MB':>10}{'m ratio':>9}")
    for label, s in results.items():
        ref = s["peft_lora"]
        print(f"{label:<20}{s['r']:>5}{s['trainable']:>12,}{s['time_ms']:>10.1f}{ref['time_ms']:>10.1f}"
              f"{s['time_ratio_vs_peft_lora']:>9.2f}{s['mem_mb']:>10.1f}{ref['mem_mb']:>10.1f}"
              f"{s['mem_ratio_vs_peft_lora']:>9.2f}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = llama2_config(args.model)
    model = frozen_base(args, cfg)
    x = torch.randn(args.batch, args.seq, cfg.hidden_size, dtype=args.dtype, device=args.device)
    results = {label: bench_method(label, model, x, args) for label in args.methods}
    print_table(results, args)
    report = {"device": args.device, "module": args.module, "shapes": args.model, "batch": args.batch,
              "seq": args.seq, "dtype": str(args.dtype), "repeats": args.repeats, "threads": torch.get_num_threads(),
              "results": results}
    if args.out:
        write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
