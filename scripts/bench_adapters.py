"""Forward+backward time and peak memory of each adapter method against PEFT's own LoRA of the same rank.

    python scripts/bench_adapters.py                         # CPU: batch 2 x 64 tokens, LLaMA2-7B shapes, fp32
    python scripts/bench_adapters.py --device cuda           # GPU: the paper's 16 x 512, bf16 base
    python scripts/bench_adapters.py --module decoder_layer  # one full LlamaDecoderLayer instead of the 7 linears
    python scripts/bench_adapters.py --out results/bench/cpu.json

One process, one frozen base (a decoder layer's seven linears q,k,v,o,gate,up,down at LLaMA2-7B shapes
wired as attention-free block, or a real LlamaDecoderLayer from the 7B config); each method is attached,
timed against PEFT's LoRA of the same rank on its own copy of the base, the two stepped in alternation
(A B A B …, --repeats pairs after a warm-up) so that drift and other load on the machine hit both
alike: the time ratio is the median of the per-pair ratios.  Memory: on CUDA the peak
``torch.cuda.max_memory_allocated`` above the resident base; on CPU the bytes autograd saves for the
backward (activations, excluding the frozen weights) plus adapter parameters and their gradients.
Ratios are against PEFT LoRA with the same rank on the same seven modules (Tied LoRA adapts q/k/v only).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _benchkit import write_report  # noqa: E402

import prolora  # noqa: E402
from prolora.models import llama2_config  # noqa: E402

SEVEN = list(prolora.SEVEN_MODULES)

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
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.step()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 16 on CUDA")
    ap.add_argument("--seq", type=int, default=None, help="default: 64 on CPU, 512 on CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default=None, help="base dtype: float32 | bfloat16 (default fp32 CPU, bf16 CUDA)")
    ap.add_argument("--module", choices=["seven_linears", "decoder_layer"], default="seven_linears")
    ap.add_argument("--model", default="llama2_7b", help="shapes from this LLaMA-2 config")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), help=f"subset of {list(METHODS)}")
    ap.add_argument("--out", default=None, help="write the results as JSON (e.g. results/bench/cpu.json)")
    args = ap.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    batch, seq = args.batch or (16 if cuda else 2), args.seq or (512 if cuda else 64)
    dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16}[args.dtype or ("bfloat16" if cuda else "float32")]
    cfg = llama2_config(args.model)
    kv = cfg.hidden_size // cfg.num_attention_heads * cfg.num_key_value_heads
    torch.manual_seed(0)
    if args.module == "seven_linears":
        model = SevenLinears(cfg.hidden_size, cfg.intermediate_size, kv, dtype, device)
    else:
        model = DecoderLayer(cfg, dtype, device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, seq, cfg.hidden_size, dtype=dtype, device=device)

    from peft import LoraConfig, get_peft_model

    results: dict[str, dict] = {}
    for label in args.methods:
        config = METHODS[label]()
        ours = prolora.attach(copy.deepcopy(model), config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = get_peft_model(copy.deepcopy(model), LoraConfig(r=config.r, lora_alpha=16, lora_dropout=0.1,
                                                                  target_modules=SEVEN))
        stats, ref_stats, ratio = paired_stats(Runner(ours, x, device), Runner(ref, x, device), args.repeats)
        del ours, ref
        stats.update(method=config.method, r=config.r, peft_lora=ref_stats, time_ratio_vs_peft_lora=ratio,
                     mem_ratio_vs_peft_lora=stats["mem_mb"] / ref_stats["mem_mb"])
        results[label] = stats
        print(f"done {label}", file=sys.stderr, flush=True)

    header = (f"{'method':<20}{'r':>5}{'trainable':>12}{'ms':>10}{'PEFT ms':>10}{'t ratio':>9}"
              f"{'MB':>10}{'PEFT MB':>10}{'m ratio':>9}")
    print(f"device={device} ({torch.cuda.get_device_name() if cuda else 'cpu'}, {torch.get_num_threads()} threads)  "
          f"module={args.module} shapes={args.model}  batch={batch}x{seq}  base dtype={dtype}  repeats={args.repeats}")
    print(header)
    for label, s in results.items():
        ref = s["peft_lora"]
        print(f"{label:<20}{s['r']:>5}{s['trainable']:>12,}{s['time_ms']:>10.1f}{ref['time_ms']:>10.1f}"
              f"{s['time_ratio_vs_peft_lora']:>9.2f}{s['mem_mb']:>10.1f}{ref['mem_mb']:>10.1f}"
              f"{s['mem_ratio_vs_peft_lora']:>9.2f}")
    report = {"device": device, "module": args.module, "shapes": args.model, "batch": batch, "seq": seq,
              "dtype": str(dtype), "repeats": args.repeats, "threads": torch.get_num_threads(),
              "results": results}
    if args.out:
        write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
