"""QLoRA training speed and memory: one optimizer step of each adapter method and of the HF Trainer + PEFT LoRA r8
baseline, on the same batches in one process, plus a loss-parity phase (harness LoRA r8 = baseline, same init).

    python -m scripts.bench_train                        # no GPU: the CPU profile (~106M Llama, 4 x 256, fp32)
    python -m scripts.bench_train --device cuda          # GPU: LLaMA2-7B shape, NF4 base, bf16, 16 x 512
    python -m scripts.bench_train --variants all,auto,4  # LoRA/PRoLoRA r8: every layer, auto, 4 layers recomputed
    python -m scripts.bench_train --methods lora_r8,prolora_r8_u1_m7 --steps 1 --warmup 0 --rounds 12 --no-baseline

Writes ``results/bench/train-<cpu|cuda>.json`` (``--out``): per row the step time (median), tokens/s, peak memory,
the ratios to LoRA r8 and to the baseline, and the parity losses.  What each row runs and how time and memory are
measured: ``results/bench/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

import prolora
from prolora.checkpointing import decoder_layers, peak_memory
from prolora.models import LLAMA2_COMMON, LLAMA2_CONFIGS, load_base_model
from scripts._benchkit import (
    MEDIUM_SHAPE,
    REPO,
    describe_device,
    pick_device,
    release,
    sync,
    versions,
    write_report,
)

SHAPES = {
    "7b": dict(LLAMA2_CONFIGS["llama2_7b"]),
    "medium": MEDIUM_SHAPE,  # LLaMA2-7B's proportions at ~106M parameters
    # Seconds on a CPU, for a smoke run of the script itself.
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=32000),
    # The GPU check's CPU dry run (scripts/gpu_check.py --dry-run): its code path in seconds.
    "tiny": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=1,
                 num_key_value_heads=1, vocab_size=4096),
}

METHODS = {
    "lora_r8": lambda: prolora.LoRAConfig(r=8),
    "prolora_r8_u1_m7": lambda: prolora.make_config("prolora", r=8, u=1, m=7),
    "prolora_r32_u4_m7": lambda: prolora.make_config("prolora", r=32, u=4, m=7),
    "vera_r256": lambda: prolora.VeRAConfig(r=256),
    "tied_lora_r256": lambda: prolora.TiedLoRAConfig(r=256),
}
BASELINE = "hf_peft_lora_r8"
LR = 2e-4


# -- memory ------------------------------------------------------------------------------------------------
def resident_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
            qs = getattr(t, "quant_state", None)  # NF4 absmax etc.
            if qs is not None and getattr(qs, "absmax", None) is not None:
                total += qs.absmax.numel() * qs.absmax.element_size()
    return total


# -- data ---------------------------------------------------------------------------------------------------
def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int, ragged: bool) -> list[dict]:
    """``n`` collated batches: random token ids; each example's first 30–70% (the "prompt") has label -100.
    ``ragged``: lengths drawn from [seq/4, seq] and grouped by length as the harness's sampler does."""
    from prolora.data.batching import LengthGroupedSampler, PadCollator

    rng = np.random.default_rng(seed)
    count = n * batch
    lengths = rng.integers(seq // 4, seq + 1, count) if ragged else np.full(count, seq)
    examples = []
    for length in lengths:
        ids = rng.integers(3, vocab, int(length)).tolist()
        cut = int(length * rng.uniform(0.3, 0.7))
        examples.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:], "attention_mask": [1] * len(ids)})
    sampler = LengthGroupedSampler([len(e["input_ids"]) for e in examples], batch, seed=seed,
                                   group_by_length=True, mega_batch_mult=n)
    collate = PadCollator(pad_token_id=0)
    return [collate([examples[i] for i in sampler.batch(j)]) for j in range(n)]


# -- the configurations ----------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    kind: str  # harness | baseline
    checkpointed_layers: int
    variant: str = "baseline"
    trainable: int = 0
    resident: int = 0
    step_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_step: int = 0
    expansion_ms: float | None = None

    def summary(self) -> dict:
        t = statistics.median(self.step_s)
        tok = statistics.median(self.tokens)
        return {"label": self.label, "kind": self.kind, "variant": self.variant,
                "checkpointed_layers": self.checkpointed_layers,
                "trainable_params": self.trainable, "step_s_median": t,
                "step_s_all": [round(x, 4) for x in self.step_s], "tokens_per_step": tok, "tokens_per_s": tok / t,
                "resident_mib": self.resident / 2**20, "peak_step_mib": self.peak_step / 2**20,
                "peak_mib": (self.resident + self.peak_step) / 2**20,
                "losses": [round(x, 5) for x in self.losses], "adapter_expansion_ms_per_step": self.expansion_ms}


class HarnessRun:
    """``train.py``'s path: load → prepare_for_training → attach → Trainer.train_step()."""

    kind = "harness"

    def __init__(self, label: str, config, model_dir: str, batches: list[dict], device: torch.device,
                 variant: str, compute_dtype: torch.dtype, seed: int, total_steps: int):
        from prolora.trainer import OptimArgs, TrainArgs, Trainer, causal_lm_loss, full_logits_loss

        self.model = load_base_model(model_dir, quantize=True, compute_dtype=compute_dtype, device=device.type)
        n = len(decoder_layers(self.model))
        # before: every layer recomputed and every position's logits (this harness before issue 8);
        # all: every layer recomputed; auto: the default (as few layers as fit); an int: that many layers
        setting = n if variant in ("before", "all") else ("auto" if variant == "auto" else int(variant))
        self.model = prolora.models.prepare_for_training(self.model, quantized=True)
        torch.manual_seed(seed)
        self.model = prolora.attach(self.model, config)
        args = TrainArgs(max_steps=total_steps, batch_size=batches[0]["input_ids"].shape[0],
                         micro_batch_size=batches[0]["input_ids"].shape[0], save_every=0, progress=False,
                         device=str(device), gradient_checkpointing=setting)
        self.batches = batches
        autocast = compute_dtype if device.type == "cuda" and compute_dtype != torch.float32 else None
        self.trainer = Trainer(self.model, lambda step: [batches[step % len(batches)]], args, OptimArgs(lr=LR),
                               tempfile.mkdtemp(prefix="bench-train-"), save_fn=prolora.save_adapter,
                               load_fn=prolora.load_adapter, autocast_dtype=autocast,
                               loss_fn=full_logits_loss if variant == "before" else causal_lm_loss)
        k = self.trainer.configure_checkpointing()
        self.row = Row(label, self.kind, k, variant=variant, trainable=prolora.count_trainable(self.model),
                       resident=resident_bytes(self.model))
        self.model.train()

    def expansion_ms(self, repeats: int = 10) -> float:
        """Milliseconds per step spent building every adapter layer's (A_full, B_full) and back-propagating
        through it (once; a checkpointed layer builds them once more): the method's own overhead over a
        plain matmul pair, measured apart from the noisy step time."""
        layers = [m for m in self.model.modules() if isinstance(m, prolora.methods.base.AdapterLayer)]

        def once():
            total = 0
            for layer in layers:
                a, b = layer.factors()
                total = total + a.sum() + b.sum()
            total.backward()

        once()
        sync(self.trainer.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            once()
        sync(self.trainer.device)
        self.trainer.optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / repeats * 1e3

    def block(self, steps: int) -> list[tuple[float, int, float]]:
        self.trainer.step = 0  # each block replays batches 0, 1, … like the baseline's
        out = []
        for _ in range(steps):
            row = self.trainer.train_step()
            ntok = int(self.batches[(self.trainer.step - 1) % len(self.batches)]["attention_mask"].sum())
            out.append((row["step_s"], ntok, row["loss"]))
        return out


class BaselineRun:
    """transformers.Trainer + PEFT LoRA r8, the paper's recipe as TrainingArguments (HF defaults elsewhere)."""

    kind = "baseline"

    def __init__(self, label: str, model_dir: str, batches: list[dict], device: torch.device,
                 compute_dtype: torch.dtype, seed: int, dropout: float = 0.1):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=compute_dtype)
        model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=compute_dtype,
                                                     device_map=device.type)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        torch.manual_seed(seed)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=list(prolora.SEVEN_MODULES),
                          bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(model, lora)
        n = len(decoder_layers(self.model))
        self.row = Row(label, self.kind, n, trainable=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                       resident=resident_bytes(self.model))
        self.batches, self.device, self.dtype = batches, device, compute_dtype
        self.compat: list[str] = []  # how TrainingArguments took the recipe on this transformers

    def block(self, steps: int) -> list[tuple[float, int, float]]:
        from torch.utils.data import DataLoader
        from transformers import Trainer, TrainerCallback, TrainingArguments

        batches, device = self.batches, self.device
        stamps: list[float] = []
        losses: list[float] = []

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                sync(device)
                stamps.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                sync(device)
                stamps.append(time.perf_counter())

        class SameBatches(Trainer):
            def get_train_dataloader(self):
                return DataLoader([batches[i % len(batches)] for i in range(steps)], batch_size=None)

            def training_step(self, model, inputs, *rest, **kw):  # older transformers pass no item count
                loss = super().training_step(model, inputs, *rest, **kw)
                losses.append(loss.item())
                return loss

        bf16 = self.device.type == "cuda" and self.dtype == torch.bfloat16
        args, self.compat = training_arguments(
            TrainingArguments, warmup_ratio=0.03,
            output_dir=tempfile.mkdtemp(prefix="bench-hf-"), per_device_train_batch_size=batches[0]["input_ids"].shape[0],
            gradient_accumulation_steps=1, max_steps=steps, learning_rate=LR, optim="paged_adamw_32bit",
            lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=0.3,
            gradient_checkpointing=True, bf16=bf16, use_cpu=self.device.type == "cpu",
            logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, seed=1,
            dataloader_pin_memory=False)
        trainer = SameBatches(model=self.model, args=args, callbacks=[Clock()])
        trainer.train()
        times = [b - a for a, b in zip(stamps, stamps[1:])]
        ntok = [int(batches[i % len(batches)]["attention_mask"].sum()) for i in range(steps)]
        return list(zip(times, ntok, losses))


def training_arguments(cls, warmup_ratio: float, **kwargs) -> tuple[object, list[str]]:
    """``cls(**kwargs)`` (transformers' ``TrainingArguments``) with the warm-up given as a ratio, on any version:
    transformers 5 reads a float ``warmup_steps`` < 1 as a ratio and has no ``warmup_ratio``; 4.x has
    ``warmup_ratio`` and an integer ``warmup_steps``.  A keyword this version lacks is dropped.  Returns the
    arguments and notes saying which path ran."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "float" in str(fields["warmup_steps"].type):
        kwargs["warmup_steps"] = warmup_ratio
        notes = [f"warmup_steps={warmup_ratio} (a float below 1 is a ratio)"]
    else:
        kwargs["warmup_ratio"] = warmup_ratio
        notes = [f"warmup_ratio={warmup_ratio} (warmup_steps is {fields['warmup_steps'].type} here)"]
    dropped = sorted(k for k in kwargs if k not in fields)
    if dropped:
        notes.append(f"dropped (not arguments of this transformers): {dropped}")
    return cls(**{k: v for k, v in kwargs.items() if k in fields}), notes


# -- main -------------------------------------------------------------------------------------------------
def build_model_dir(shape: str, dtype: torch.dtype, device: torch.device, seed: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], **LLAMA2_COMMON)
    path = tempfile.mkdtemp(prefix=f"bench-{shape}-")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    del model
    release(device)
    print(f"base: {shape} Llama, {n / 1e6:.1f}M parameters, random weights saved to {path}")
    return path


def parity(model_dir: str, batches: list[dict], device: torch.device, dtype: torch.dtype, steps: int,
           seed: int) -> dict:
    """Harness LoRA r8 vs HF Trainer + PEFT LoRA r8 from the same initial adapter, dropout 0."""
    base = BaselineRun("parity_baseline", model_dir, batches, device, dtype, seed, dropout=0.0)
    ours = HarnessRun("parity_harness", prolora.LoRAConfig(r=8, dropout=0.0), model_dir, batches, device,
                      variant="0", compute_dtype=dtype, seed=seed, total_steps=steps)
    with torch.no_grad():  # copy PEFT's initial A (B is 0 on both sides)
        peft_modules = dict(base.model.named_modules())
        for name, layer in ours.model.named_modules():
            if isinstance(layer, prolora.methods.lora.LoRALayer):
                layer.lora_A.copy_(peft_modules["base_model.model." + name].lora_A["default"].weight)
    a = [loss for _, _, loss in base.block(steps)]
    b = [loss for _, _, loss in ours.block(steps)]
    diff = max(abs(x - y) for x, y in zip(a, b))
    del base, ours
    release(device)
    return {"steps": steps, "baseline_losses": a, "harness_losses": b, "max_abs_diff": diff}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default: 7b on CUDA, medium on CPU")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 16 on CUDA, 4 on CPU)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 512 on CUDA, 256 on CPU)")
    p.add_argument("--ragged", action="store_true", help="variable lengths in [seq/4, seq], grouped by length")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per block (incl. --warmup)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each block")
    p.add_argument("--rounds", type=int, default=2, help="round-robin rounds over the configurations")
    p.add_argument("--methods", default=",".join(METHODS), help=f"harness methods, from {sorted(METHODS)}")
    p.add_argument("--variants", default="before,all,auto",
                   help="harness variants timed for LoRA r8 and PRoLoRA r8 u1 m7 (the other methods: auto): "
                        "before = every layer recomputed + full logits (this harness before its speed work), "
                        "all = every layer recomputed, auto = the default checkpointing, N = N layers recomputed")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="hold every model at once and alternate blocks (default on CPU; on CUDA one model at a time)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--parity-steps", type=int, default=6, help="0 = skip the loss-parity phase")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path (default results/bench/train-<device>.json)")
    args = p.parse_args(argv)
    args.variants_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants_list if v not in ("before", "all", "auto") and not v.isdigit()]
    if bad:
        p.error(f"--variants: unknown {bad}; use before, all, auto or a number of layers")
    args.labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.labels if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    return args


def resolve_profile(args: argparse.Namespace) -> None:
    """Device, shape, batch, sequence length and dtype: the 7B GPU setting, or the CPU profile without a GPU."""
    args.device = torch.device(pick_device(args.device))
    args.cuda = args.device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.shape = args.shape or ("7b" if args.cuda else "medium")
    args.batch = args.batch or (16 if args.cuda else 4)
    args.seq = args.seq or (512 if args.cuda else 256)
    args.dtype = torch.bfloat16 if args.cuda and torch.cuda.is_bf16_supported() else torch.float32
    args.interleave = not args.cuda if args.interleave is None else args.interleave
    if not args.cuda:
        what = ("a ~106M-parameter Llama with LLaMA2-7B's proportions" if args.shape == "medium"
                else f"the {args.shape} shape")
        print(f"NOTE: no GPU: running the CPU profile ({what}, batch {args.batch} x {args.seq}, fp32 compute). "
              "Ratios from it are not the paper's 7B GPU setting.")
    warnings.filterwarnings("ignore", message=".*(paged|Paged).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="bitsandbytes")


def settings_of(args: argparse.Namespace, batches: list[dict]) -> dict:
    pad = 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
    return {"shape": args.shape, "config": SHAPES[args.shape], "batch": args.batch, "seq": args.seq,
            "ragged": args.ragged, "padding_fraction": pad, "compute_dtype": str(args.dtype).replace("torch.", ""),
            "steps_per_block": args.steps, "warmup_per_block": args.warmup, "rounds": args.rounds,
            "variants": args.variants, "lr": LR, "dropout": 0.1, "optimizer": "paged_adamw_32bit",
            "quantization": "nf4 + double quant", "seed": args.seed}


def tag(label: str, variant: str) -> str:
    return label if variant == "auto" else f"{label}@{variant}"


def configurations(args: argparse.Namespace, model_dir: str, batches: list[dict]) -> list[tuple[str, object]]:
    """``(row label, builder)`` per row (each row gets its own model): the baseline, then each method's variants."""
    makers = []
    if not args.no_baseline:
        makers.append((BASELINE, lambda: BaselineRun(BASELINE, model_dir, batches, args.device, args.dtype, args.seed)))
    total = args.steps * args.rounds
    for label in args.labels:
        for v in (args.variants_list if label in ("lora_r8", "prolora_r8_u1_m7") else ["auto"]):
            if v == "before" and label != "lora_r8":
                continue
            makers.append((tag(label, v), lambda label=label, v=v: HarnessRun(
                tag(label, v), METHODS[label](), model_dir, batches, args.device, v, args.dtype, args.seed, total)))
    return makers


def run_block(run, args: argparse.Namespace, bar) -> None:
    """One block of ``--steps`` steps; its timed steps, tokens and losses go to the run's row."""
    bar.set_postfix_str(run.row.label)
    results = []
    if args.cuda:  # the allocator's statistics cost nothing: measure the timed blocks themselves
        peak = peak_memory(lambda: results.extend(run.block(args.steps)), args.device)
        run.row.peak_step = max(run.row.peak_step, peak)
    else:
        results = run.block(args.steps)
    for t, n, _ in results[args.warmup:]:
        run.row.step_s.append(t)
        run.row.tokens.append(n)
    run.row.losses.extend(loss for _, _, loss in results)
    bar.update(1)


def memory_pass(run, args: argparse.Namespace) -> None:
    if not args.cuda:  # CPU: allocation events under the profiler, in two untimed steps of their own
        run.row.peak_step = peak_memory(lambda: run.block(2), args.device)
    if isinstance(run, HarnessRun):
        run.row.expansion_ms = run.expansion_ms()


def time_rows(makers: list, args: argparse.Namespace) -> dict:
    """Every configuration's row: all models resident and blocks round-robin (CPU: drift and other load hit all
    alike), or one model at a time (a GPU holds one 7B run, and ``auto`` checkpointing sees the whole device)."""
    from tqdm.auto import tqdm

    rows = []
    with tqdm(total=args.rounds * len(makers), desc="bench blocks", unit="block") as bar:
        if args.interleave:
            runs = [make() for _, make in makers]
            for _ in range(args.rounds):
                for run in runs:
                    run_block(run, args, bar)
            for run in runs:
                memory_pass(run, args)
            rows = [run.row for run in runs]
            del runs
        else:
            for _, make in makers:
                run = make()
                for _ in range(args.rounds):
                    run_block(run, args, bar)
                memory_pass(run, args)
                rows.append(run.row)
                del run
                release(args.device)
    release(args.device)
    return {row.label: row.summary() for row in rows}


def add_ratios(rows: dict, interleave: bool) -> None:
    """Each harness row against LoRA r8 run the same way (paired per round where interleaved), every row
    against the baseline."""
    base = rows.get(BASELINE)
    for r in rows.values():
        ref = rows.get(tag("lora_r8", r["variant"]))
        if ref is not None and r["kind"] == "harness":
            r["time_vs_lora_r8"] = r["step_s_median"] / ref["step_s_median"]
            if interleave and len(r["step_s_all"]) == len(ref["step_s_all"]):  # step i of both ran in one round
                r["time_vs_lora_r8_paired"] = statistics.median(
                    a / b for a, b in zip(r["step_s_all"], ref["step_s_all"]))
            r["peak_vs_lora_r8"] = r["peak_mib"] / ref["peak_mib"]
            r["peak_step_vs_lora_r8"] = r["peak_step_mib"] / max(ref["peak_step_mib"], 1e-9)
        if base:
            r["tokens_per_s_vs_baseline"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["peak_vs_baseline"] = r["peak_mib"] / base["peak_mib"]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    resolve_profile(args)
    model_dir = build_model_dir(args.shape, args.dtype, args.device, args.seed)
    batches = make_batches(max(args.steps, args.parity_steps, 1), args.batch, args.seq,
                           SHAPES[args.shape]["vocab_size"], args.seed, args.ragged)
    rows = time_rows(configurations(args, model_dir, batches), args)
    add_ratios(rows, args.interleave)
    result = {"device": describe_device(args.device), "device_type": args.device.type,
              "versions": versions("torch", "transformers", "peft", "bitsandbytes"),
              "settings": settings_of(args, batches), "reference": "lora_r8 run with the same variant", "rows": rows,
              "note": ("CPU profile at a medium shape, not the paper's 7B GPU setting" if not args.cuda else
                       "LLaMA2-7B shape on a GPU")}
    if args.parity_steps and not args.no_baseline:
        print("loss parity: harness LoRA r8 vs HF Trainer + PEFT LoRA r8, same init, dropout 0 …")
        result["parity"] = parity(model_dir, batches, args.device, args.dtype, args.parity_steps, args.seed)
    print_table(result)
    write_report(args.out or REPO / "results" / "bench" / f"train-{'cuda' if args.cuda else 'cpu'}.json", result)
    return result


def print_table(result: dict) -> None:
    s = result["settings"]
    print(f"\n{result['device']} | {s['shape']} | batch {s['batch']} x {s['seq']} | {s['compute_dtype']} | "
          f"median of {s['rounds'] * (s['steps_per_block'] - s['warmup_per_block'])} steps")
    head = f"{'configuration':26s} {'ckpt':>4s} {'params':>11s} {'step s':>8s} {'tok/s':>8s} {'peak MiB':>9s} " \
           f"{'Δpeak MiB':>9s} {'expand ms':>9s} {'t/LoRA':>7s} {'mem/LoRA':>8s} {'tok/s vs HF':>11s}"
    print(head)
    print("-" * len(head))
    for r in result["rows"].values():
        def f(key, fmt=".3f", r=r):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        print(f"{r['label']:26s} {r['checkpointed_layers']:4d} {r['trainable_params']:11,d} {r['step_s_median']:8.3f} "
              f"{r['tokens_per_s']:8.1f} {r['peak_mib']:9.1f} {r['peak_step_mib']:9.1f} {f('adapter_expansion_ms_per_step', '.1f'):>9s} {f('time_vs_lora_r8'):>7s} "
              f"{f('peak_vs_lora_r8'):>8s} {f('tokens_per_s_vs_baseline'):>11s}")
    if "parity" in result:
        par = result["parity"]
        print(f"loss parity over {par['steps']} steps: max |harness - baseline| = {par['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
