"""The methods added after PRoLoRA: each one's compact forward (``delta_output``) against its expanded form, and the
cost of LoRA-XS's SVD at LLaMA2-7B shapes.

    python -m scripts.bench_methods                      # CPU, one 4096->4096 and one 4096->11008 linear, fp32
    python -m scripts.bench_methods --svd                # also the SVD of a 4096x4096 and an 11008x4096 weight
    python -m scripts.bench_methods --out results/bench/methods-cpu.json

Forms compared, in one process, alternating A B A B … after a warm-up so that load on the machine hits both alike
(the ratio is the median of the per-pair ratios):

* MoS: the gathered shards used as stored vs the base class's (x A_fullᵀ) B_fullᵀ;
* VB-LoRA: bank projections (never building A or B) vs A and B built from the bank (PEFT's forward);
* LoRA-XS: B(R(A x)) vs (x (R A)ᵀ) Bᵀ;
* DoRA: the cached inference factor m / ‖W₀ + s·B A‖ vs recomputing it each call (what training must do).

``--svd``: ``torch.linalg.svd`` (exact) and ``torch.svd_lowrank`` (the default, rank 149 + 10 extra columns, 10
power iterations) of one 4096 x 4096 and one 11008 x 4096 fp32 weight, extrapolated to LLaMA2-7B's 224 adapted
linears (32 layers x (4 square + 3 of the 11008 x 4096 shape; down_proj is its transpose, the same cost)).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import prolora
from prolora.methods.base import AdapterLayer
from recipes import git_commit

CONFIGS = {
    "mos": dict(method="mos", r=8, pool_rank=2, private_rank=1, shards=4),
    "vblora": dict(method="vblora", r=4, num_vectors=127, vector_length=256),
    "lora_xs": dict(method="lora_xs", r=149),
    "dora": dict(method="dora", r=1),
}


def one_linear(h: int, o: int, spec: dict) -> AdapterLayer:
    """A bare ``nn.Linear(h, o)`` (random weights) wrapped by the method, alone in a 32-layer-sized pool for MoS."""
    model = nn.ModuleDict({"q_proj": nn.Linear(h, o, bias=False)})
    spec = {**spec, "dropout": 0.0, "target_modules": ["q_proj"]}
    if spec["method"] == "mos":
        spec["r"] = 2  # one layer: (e - p)·L = 1 public vector, so r <= 2 here; the gather's cost is the same kind
    prolora.attach(model, prolora.make_config(spec.pop("method"), **spec))
    layer = model["q_proj"]
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    return layer


def forms(name: str, layer: AdapterLayer) -> tuple[Callable, Callable]:
    """(expanded, compact) adapter terms of one layer: f(x, base_out)."""
    compact = layer.delta_output
    if name == "vblora":
        return (lambda x, base: layer.expanded_output(x)), compact
    if name == "dora":
        def uncached(x, base):
            layer._cache = None
            return layer.delta_output(x, base)
        return uncached, compact
    return (lambda x, base: AdapterLayer.delta_output(layer, x, base)), compact


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median times of a and b run alternately, and the median of the per-pair ratios b / a."""
    for _ in range(2):
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return {"expanded_s": statistics.median(ta), "compact_s": statistics.median(tb),
            "compact_over_expanded": statistics.median(y / x for x, y in zip(ta, tb))}


def bench_forms(tokens: int, repeats: int) -> list[dict]:
    rows = []
    for name, spec in CONFIGS.items():
        for h, o in ((4096, 4096), (4096, 11008)):
            layer = one_linear(h, o, dict(spec))
            expanded, compact = forms(name, layer)
            x = torch.randn(tokens, h)
            with torch.no_grad():
                base = layer.base_layer(x)
                diff = (compact(x, base) - expanded(x, base)).abs().max() / expanded(x, base).abs().max()
                infer = paired(lambda f=expanded, x=x, b=base: f(x, b), lambda f=compact, x=x, b=base: f(x, b),
                               repeats)
            xg = x.clone().requires_grad_(True)
            grads = paired(lambda f=expanded, x=xg, b=base: f(x, b).sum().backward(),
                           lambda f=compact, x=xg, b=base: f(x, b).sum().backward(), repeats)
            rows.append({"method": name, "shape": [h, o], "tokens": tokens, "max_rel_diff": float(diff),
                         "inference": infer, "train": grads})
            print(f"{name:8s} {h}->{o:<6} tokens {tokens:5d}: inference compact/expanded "
                  f"{infer['compact_over_expanded']:.2f} ({infer['expanded_s'] * 1e3:.1f} ms expanded), fwd+bwd "
                  f"{grads['compact_over_expanded']:.2f} ({grads['expanded_s'] * 1e3:.1f} ms); rel. diff {diff:.1e}",
                  flush=True)
    return rows


def bench_svd(r: int) -> dict:
    out = {}
    for h, o in ((4096, 4096), (11008, 4096)):
        w = torch.randn(h, o) / o**0.5
        t = time.perf_counter()
        torch.svd_lowrank(w, q=r + 10, niter=10)
        randomized = time.perf_counter() - t
        t = time.perf_counter()
        torch.linalg.svd(w, full_matrices=False)
        exact = time.perf_counter() - t
        out[f"{h}x{o}"] = {"randomized_s": randomized, "exact_s": exact}
        print(f"SVD {h}x{o} fp32: randomized (rank {r}+10, 10 iterations) {randomized:.2f} s, exact {exact:.2f} s",
              flush=True)
    for kind in ("randomized_s", "exact_s"):
        total = 32 * (4 * out["4096x4096"][kind] + 3 * out["11008x4096"][kind])
        out[f"llama2_7b_{kind}"] = total
        print(f"LLaMA2-7B, 224 weights, {kind[:-2]}: {total:.0f} s ({total / 60:.1f} min), extrapolated", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="16,1024", help="tokens per forward, comma-separated")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--svd", action="store_true", help="also time LoRA-XS's SVD at 7B shapes")
    p.add_argument("--svd-rank", type=int, default=149, help="rank of the randomized SVD (LoRA r2's budget: 149)")
    p.add_argument("--out", help="write the measurements as JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    report = {"command": "python -m scripts.bench_methods " + " ".join(argv or []), "git_commit": git_commit(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
              "forms": [row for t in args.tokens.split(",") for row in bench_forms(int(t), args.repeats)]}
    if args.svd:
        report["svd"] = bench_svd(args.svd_rank)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
