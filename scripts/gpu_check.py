"""The prepared GPU check (``make gpu-check``): one call of at most 8 minutes on a bare CUDA machine runs, at
LLaMA2-7B shapes with random weights, what no 2-core CPU can:

1. **weights**: a random LLaMA2-7B (bf16) saved to a temporary directory (``scripts.bench_train``);
2. **train**: QLoRA steps (NF4 + double quantisation, paged AdamW 32-bit, bf16, 16 × 512) of the harness's
   PRoLoRA r8 u1 m7 and LoRA r8 and of HF Trainer + PEFT LoRA r8 on the same batches: step time, tokens/s, peak
   memory and the ratios, by ``scripts.bench_train``'s own functions;
3. **parity**: harness LoRA r8 vs HF Trainer + PEFT LoRA r8 from the same initial adapter (dropout 0): losses;
4. **merge**: the trained PRoLoRA adapter, saved and loaded onto a fresh NF4 base (fp32 compute), greedy tokens
   through ``eval.backends.hf.HFBackend``; then ``prolora.merge`` into the dequantized base: its logits on those
   tokens against the unmerged model's (the merge error) and against the base without adapter (the adapter's
   effect, so the check can tell a merge that drops the adapter); then the merged model in fp16 generates
   through the backend, its greedy tokens checked against the unmerged model's.

Before any work it checks that its packages import (bitsandbytes is missing on the lent machines: ``make
gpu-wheels`` brings it as a wheel); it never imports hydra, omegaconf, wandb, datasets or evaluate (tested).
Each phase prints its elapsed time; a phase that its estimate (from the phases before it) says would overrun
``--budget-s`` is skipped, and a training row stops between rounds when the budget is spent; a phase that
raises is recorded and the next one runs.  The report (``results/bench/gpu-check-<GPU name>.json``) says what
was skipped and what failed, and is rewritten after every phase, so a killed run keeps what it finished.
``--dry-run`` (or ``--device cpu``) runs the same code at a tiny shape on the CPU (bitsandbytes' CPU NF4 path)
in under a minute: the test suite runs it.

    python -m scripts.gpu_check                 # a CUDA machine: the 7B check
    python -m scripts.gpu_check --dry-run       # the same path, tiny shapes, CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = ".gpu-wheels"
# import name -> distribution: what the check imports (torch, transformers, peft come with the lent machines)
NEEDED = {"torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
          "bitsandbytes": "bitsandbytes", "safetensors": "safetensors", "tokenizers": "tokenizers",
          "numpy": "numpy", "tqdm": "tqdm"}
NEVER = ("hydra", "omegaconf", "wandb", "datasets", "evaluate")  # not on the lent machines; never imported here
TRAIN_ORDER = ("prolora_r8_u1_m7", "lora_r8", "hf_peft_lora_r8")  # the first one's adapter is merged
PROFILES = {
    # one H100/H200: the paper's shape and batch; ~7 min (estimate; the budget guards it)
    "cuda": dict(shape="7b", batch=16, seq=512, steps=3, warmup=1, rounds=2, parity_steps=4, prompts=4,
                 prompt_len=32, new_tokens=32, budget_s=450.0, parity_tol=0.05),
    # the CPU dry run: the same path at bench_train's tiny shape, fp32, under a minute on 2 cores
    "dry": dict(shape="tiny", batch=2, seq=64, steps=2, warmup=1, rounds=1, parity_steps=3, prompts=2,
                prompt_len=12, new_tokens=8, budget_s=600.0, parity_tol=1e-4),
}
MERGE_TOL = 0.1  # merge error must be below this fraction of the adapter's effect on the logits (both fp32)
FP16_AGREEMENT = 0.9  # the merged fp16 model's argmax must match the unmerged model's at this fraction of positions


# -- before any work: the packages ------------------------------------------------------------------------
def locked_versions() -> dict[str, str]:
    """``requirements.lock``'s pins, by normalised distribution name."""
    lock = REPO / "requirements.lock"
    pins = {}
    for line in lock.read_text().splitlines() if lock.is_file() else []:
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def missing_message(missing: list[str]) -> str:
    """One line: what is missing and how to bring it as wheels (``make gpu-wheels``)."""
    pins = locked_versions()
    extra = [f"{d}=={pins[d]}" if d in pins else d for d in missing if d != "bitsandbytes"]
    make = "make gpu-wheels" + (f' EXTRA="{" ".join(extra)}"' if extra else "")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (f"gpu_check: {', '.join(missing)} not installed here: on a machine with the package registries run "
            f"`{make} PYVER={py}` (wheels into {WHEELS}/), bring {WHEELS}/ here (the device tool: "
            f"carry=[\"{WHEELS}\"]) and run `python3 -m pip install --no-deps {WHEELS}/*.whl`, then the check again")


def fail(message: str) -> None:
    """A bad setting or a missing package: one line on stderr, exit status 2, before any work."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def require_packages() -> None:
    """One line (:func:`fail`) naming every missing package and the commands that bring it."""
    missing = [dist for mod, dist in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if "torch" in missing:  # the wrong interpreter, not something to carry (torch is a GB)
        fail(f"gpu_check: {sys.executable} has no torch: run the check with the Python that has torch "
             "(make gpu-check GPU_PYTHON=<that python>; on a lent GPU machine: python3)")
    if missing:
        fail(missing_message(missing))


# -- settings -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto: cuda where available, else the dry run; cpu: the dry run")
    p.add_argument("--dry-run", action="store_true", help="the CPU dry run: the same path at a tiny shape")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds the phases may take (default: 450 on CUDA, 600 dry); a phase that would "
                        "overrun is skipped")
    p.add_argument("--commit", default=None,
                   help="the harness commit to record where the tree has no .git (e.g. a copy on a lent machine)")
    p.add_argument("--out", default=None, help="JSON path, or a directory for the default name "
                                                "(default results/bench/gpu-check-<GPU name>.json)")
    for key in ("steps", "warmup", "rounds", "parity_steps", "batch", "seq", "new_tokens"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help="override the profile's value")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The profile (cuda or dry) with overrides, and the device; CUDA asked for but absent is one line."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        fail(f"gpu_check: --device cuda but torch {torch.__version__} sees no CUDA device here; "
             "run it on a GPU machine, or --dry-run for the CPU dry run")
    cuda = not args.dry_run and args.device != "cpu" and torch.cuda.is_available()
    profile = dict(PROFILES["cuda" if cuda else "dry"])
    for key in ("steps", "warmup", "rounds", "parity_steps", "batch", "seq", "new_tokens"):
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    if profile["steps"] <= profile["warmup"]:
        fail(f"gpu_check: --steps {profile['steps']} leaves no timed step after --warmup {profile['warmup']}; "
             "use --steps > --warmup")
    args.profile, args.cuda = profile, cuda
    args.budget_s = args.budget_s if args.budget_s is not None else profile["budget_s"]
    return args


def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """``scripts.bench_train``'s settings for this profile: its parser and its profile resolution."""
    from scripts import bench_train

    pr = args.profile
    argv = ["--device", "cuda" if args.cuda else "cpu", "--shape", pr["shape"], "--batch", str(pr["batch"]),
            "--seq", str(pr["seq"]), "--steps", str(pr["steps"]), "--warmup", str(pr["warmup"]),
            "--rounds", str(pr["rounds"]), "--methods", "lora_r8,prolora_r8_u1_m7", "--variants", "auto",
            "--parity-steps", str(pr["parity_steps"]), "--no-interleave"]
    b = bench_train.parse_args(argv)
    bench_train.resolve_profile(b)
    return b


# -- the budget ---------------------------------------------------------------------------------------------
class Budget:
    """Seconds since the check started, each phase's time, and what was skipped or cut short."""

    def __init__(self, limit_s: float):
        self.t0, self.limit = time.perf_counter(), limit_s
        self.phases: dict[str, float] = {}
        self.skipped: list[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.limit - self.elapsed()

    def admits(self, phase: str, estimate_s: float) -> bool:
        """Whether ``phase`` (estimated to take ``estimate_s``) fits; if not, it is recorded as skipped."""
        if estimate_s <= self.left():
            return True
        self.skip(phase, f"estimated {estimate_s:.0f} s, {max(self.left(), 0):.0f} s of the budget left")
        return False

    def skip(self, phase: str, why: str) -> None:
        self.skipped.append({"phase": phase, "why": why})
        say(self, f"{phase}: skipped ({why})")

    def done(self, phase: str, started: float) -> None:
        self.phases[phase] = round(time.perf_counter() - started, 2)
        say(self, f"{phase}: done in {self.phases[phase]:.1f} s")


def say(budget: Budget, text: str) -> None:
    print(f"[gpu-check {budget.elapsed():6.1f} s] {text}", flush=True)


# -- the phases ---------------------------------------------------------------------------------------------
class _NoBar:  # bench_train.run_block reports to a progress bar; the check prints per phase instead
    def set_postfix_str(self, _):
        pass

    def update(self, _):
        pass


def estimates(check: dict) -> tuple[float, float]:
    """(seconds to set up one model, seconds per training step), from what ran so far: the first setup is
    guessed as long as building the weights (both move every weight once), the first step as free."""
    setups = [r["setup_s"] for r in check["rows"].values()] or [check["timings_s"].get("weights", 0.0)]
    steps = [max(r["step_s_all"]) for r in check["rows"].values() if r["step_s_all"]] or [0.0]
    return max(setups), max(steps)


def attempt(check: dict, budget: Budget, phase: str, fn) -> None:
    """Run one phase; an exception is recorded (``errors``: phase, error, the traceback's end) and the check
    goes on with the next phase: on a first run on new versions, one failure must not hide the rest."""
    import traceback

    try:
        fn()
    except Exception as e:  # noqa: BLE001  (recorded as data; the verdict ``ok`` turns false)
        check["errors"].append({"phase": phase, "error": f"{type(e).__name__}: {e}",
                                "traceback": traceback.format_exc(limit=-6).splitlines()[-12:]})
        say(budget, f"{phase}: FAILED ({type(e).__name__}: {e})")
    from scripts._benchkit import release

    release(check["device_type"])


def train_rows(check: dict, budget: Budget, b: argparse.Namespace, model_dir: str, batches: list[dict],
               adapter_dir: Path) -> None:
    """The timed rows (``bench_train.configurations``), one model at a time, in ``TRAIN_ORDER``; the first
    row's trained adapter is saved to ``adapter_dir`` for the merge phase."""
    from scripts import bench_train

    makers = dict(bench_train.configurations(b, model_dir, batches))
    for label in TRAIN_ORDER:
        setup, step = estimates(check)
        if budget.admits(f"train:{label}", setup + b.steps * b.rounds * step * 1.5):
            attempt(check, budget, f"train:{label}",
                    lambda label=label: train_row(check, budget, b, label, makers[label], adapter_dir))
    bench_train.add_ratios(check["rows"], interleave=False)


def train_row(check: dict, budget: Budget, b: argparse.Namespace, label: str, make, adapter_dir: Path) -> None:
    """One row: build it, ``bench_train.run_block`` per round (stopping between rounds when the budget is
    spent), ``bench_train.memory_pass``; its summary, setup time and compat notes go into the report."""
    import prolora
    from scripts import bench_train

    started = time.perf_counter()
    run = make()
    setup_s = time.perf_counter() - started
    done = 0
    for _ in range(b.rounds):
        if done and budget.left() <= 0:
            budget.skip(f"train:{label} rounds {done + 1}..{b.rounds}", "the budget is spent")
            break
        bench_train.run_block(run, b, _NoBar())
        done += 1
    bench_train.memory_pass(run, b)
    if label == TRAIN_ORDER[0]:
        prolora.save_adapter(run.model, adapter_dir)
    check["rows"][label] = {**run.row.summary(), "setup_s": round(setup_s, 2), "rounds_run": done}
    if isinstance(run, bench_train.BaselineRun):
        check["compat"]["training_arguments"] = run.compat
    else:
        check["compat"]["checkpointing_api"] = checkpointing_api(run.model)
    budget.done(f"train:{label}", started)


def checkpointing_api(model) -> str:
    """Which transformers call ``prolora.checkpointing.apply`` uses on this version."""
    return "activation_checkpointing_enable" if hasattr(model, "activation_checkpointing_enable") \
        else "gradient_checkpointing_enable"


def parity_phase(check: dict, budget: Budget, b: argparse.Namespace, model_dir: str, batches: list[dict],
                 tol: float) -> None:
    from scripts import bench_train

    setup, step = estimates(check)
    if not budget.admits("parity", 2 * setup + 2 * b.parity_steps * step * 1.5):
        return
    started = time.perf_counter()
    result = bench_train.parity(model_dir, batches, b.device, b.dtype, b.parity_steps, b.seed)
    result["tolerance"] = tol
    result["ok"] = bool(result["max_abs_diff"] <= tol and result["harness_losses"][-1] != result["harness_losses"][0])
    check["parity"] = result
    budget.done("parity", started)


def write_tokenizer(model_dir: str, vocab_size: int) -> None:
    """A word-level tokenizer over the whole vocabulary (``t<id>``; ids 0-2 are LLaMA's <unk>, <s>, </s>, BOS
    added as LLaMA's), saved beside the random weights: text and ids map one to one, so the backend's text
    output is the token sequence."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="</s>").save_pretrained(model_dir)


def ids_of(text: str) -> list[int]:
    return [int(t[1:]) for t in text.split()]


def teacher_forced(model, prompts: list[list[int]], completions: list[list[int]]):
    """Each completion's next-token logits (fp32, CPU) given its prompt and its own earlier tokens."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            ids = torch.tensor([p + c], device=device)
            logits = model(input_ids=ids).logits[0, len(p) - 1:len(p) + len(c) - 1]
            out.append(logits.float().cpu())
    return out


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()) if any(x.numel() for x in a) else 0.0


def merge_phase(check: dict, budget: Budget, b: argparse.Namespace, model_dir: str, adapter_dir: Path,
                profile: dict) -> None:
    """Unmerged (NF4 + adapter, fp32 compute) greedy tokens and logits → base logits (adapter detached) →
    merged fp32 logits → merged fp16 greedy tokens and logits, all through the real loading and backend code."""
    import numpy as np
    import torch

    import prolora
    from eval.backends.hf import HFBackend
    from prolora.models import load_base_model, load_tokenizer
    from scripts._benchkit import release

    setup, _ = estimates(check)
    if not adapter_dir.is_dir():
        budget.skip("merge", f"no trained adapter ({TRAIN_ORDER[0]} did not run)")
        return
    if not budget.admits("merge", 2 * setup):
        return
    started, times = time.perf_counter(), {}
    vocab = b.shape_config["vocab_size"]
    write_tokenizer(model_dir, vocab)
    rng = np.random.default_rng(b.seed)
    prompt_ids = [rng.integers(3, vocab, profile["prompt_len"]).tolist() for _ in range(profile["prompts"])]
    prompts = [" ".join(f"t{i}" for i in ids) for ids in prompt_ids]

    t = time.perf_counter()
    model = load_base_model(model_dir, quantize=True, compute_dtype=torch.float32, device=b.device.type)
    model = prolora.load_adapter(model, adapter_dir)
    backend = HFBackend(model, load_tokenizer(model_dir), batch_size=len(prompts))
    times["load_s"] = time.perf_counter() - t
    full = [[1] + ids for ids in prompt_ids]  # with BOS, as the backend encodes them
    ref, ref_s = timed_generate(backend, prompts, profile["new_tokens"], b.device)
    ref_logits = teacher_forced(model, full, ref)
    base_logits = teacher_forced(prolora.detach(model), full, ref)
    model = prolora.load_adapter(model, adapter_dir)
    t = time.perf_counter()
    model = prolora.merge(model)
    times["merge_s"] = time.perf_counter() - t
    merged_logits = teacher_forced(model, full, ref)
    model = model.half()
    backend = HFBackend(model, backend.tokenizer, batch_size=len(prompts))
    fp16, fp16_s = timed_generate(backend, prompts, profile["new_tokens"], b.device)
    fp16_logits = teacher_forced(model, full, ref)
    check["compat"]["kv_cache_argument"] = backend._cache_kwarg
    del model, backend
    release(b.device)
    check["merge"] = merge_report(ref, fp16, ref_logits, base_logits, merged_logits, fp16_logits,
                                  {**{k: round(v, 3) for k, v in times.items()}, "unmerged_generate_s": ref_s,
                                   "fp16_generate_s": fp16_s})
    budget.done("merge", started)


def timed_generate(backend, prompts: list[str], new_tokens: int, device) -> tuple[list[list[int]], float]:
    from scripts._benchkit import sync

    sync(device)
    t = time.perf_counter()
    texts = backend.generate(prompts, max_new_tokens=new_tokens, temperature=0.0)
    sync(device)
    return [ids_of(row[0]) for row in texts], round(time.perf_counter() - t, 3)


def merge_report(ref, fp16, ref_logits, base_logits, merged_logits, fp16_logits, times: dict) -> dict:
    """The merge's numbers and verdicts: merge error vs the adapter's effect (fp32), fp16 tokens vs unmerged."""
    merge_err, effect = max_diff(merged_logits, ref_logits), max_diff(base_logits, ref_logits)
    positions = sum(len(r) for r in ref)
    agree = sum(int((f.argmax(-1) == r.argmax(-1)).sum()) for f, r in zip(fp16_logits, ref_logits))
    prefix = [next((i for i, (x, y) in enumerate(zip(a, c)) if x != y), min(len(a), len(c))) for a, c in zip(ref, fp16)]
    fp16_agreement = agree / positions if positions else 0.0
    return {
        "unmerged_tokens": ref, "fp16_tokens": fp16, "greedy_tokens_equal": ref == fp16,
        "fp16_common_prefix": prefix, "generated_tokens": positions,
        "merge_error_max_abs_logit": merge_err, "adapter_effect_max_abs_logit": effect,
        "merge_ok": bool(effect > 0 and merge_err < MERGE_TOL * effect),
        "fp16_max_abs_logit_diff": max_diff(fp16_logits, ref_logits),
        "fp16_teacher_forced_argmax_agreement": fp16_agreement,
        "fp16_ok": bool(positions and fp16_agreement >= FP16_AGREEMENT),
        "criteria": f"merge error < {MERGE_TOL} x adapter effect (fp32 logits on the unmerged model's tokens); "
                    f"fp16 argmax = unmerged argmax at >= {FP16_AGREEMENT:.0%} of those positions",
        "timings_s": times,
    }


# -- the report ---------------------------------------------------------------------------------------------
def bnb_library() -> str:
    """Which native bitsandbytes library loaded (a mock one: no build of it for this CUDA)."""
    try:
        from bitsandbytes import cextension

        lib = cextension.lib
        name = getattr(getattr(lib, "_lib", None), "_name", None) or ""
        return f"{cextension.BNB_BACKEND}: {type(lib).__name__} {Path(name).name}".strip()
    except (ImportError, AttributeError) as e:  # another bitsandbytes layout: say so, the check goes on
        return f"unknown ({type(e).__name__}: {e})"


def new_report(args: argparse.Namespace, b: argparse.Namespace, budget: Budget) -> dict:
    from scripts._benchkit import describe_device, versions

    compat = {"bitsandbytes_library": bnb_library()}
    return {"check": "gpu-check", "complete": False, "ok": None, "dry_run": not args.cuda,
            "device": describe_device(b.device), "device_type": b.device.type, "commit": commit(args),
            "versions": versions("torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers",
                                 "safetensors", "numpy"),
            "budget_s": budget.limit, "profile": args.profile, "settings": None, "timings_s": budget.phases,
            "skipped": budget.skipped, "errors": [], "rows": {}, "compat": compat}


def commit(args: argparse.Namespace) -> str | None:
    if args.commit:
        return args.commit
    from recipes import git_commit  # stdlib only (the recipes package's __init__, not Hydra)

    return git_commit()


def finish(check: dict, cuda: bool) -> None:
    """The overall verdict (every check that ran passed) and the device's peak memory."""
    import torch

    verdicts = [check[k]["ok"] for k in ("parity",) if k in check]
    verdicts += [check["merge"][k] for k in ("merge_ok", "fp16_ok") if "merge" in check]
    check["ok"] = bool(verdicts) and all(verdicts) and not check["errors"]
    check["complete"] = not check["skipped"]
    if cuda:
        check["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        check["cuda_total_mib"] = torch.cuda.mem_get_info()[1] / 2**20


def out_path(args: argparse.Namespace, device: str) -> Path:
    """``--out`` (a file, or a directory to write the default name into), else
    ``results/bench/gpu-check-<GPU name>.json`` (``gpu-check-cpu-dry-run.json`` for a dry run)."""
    name = re.sub(r"[^a-z0-9]+", "-", device.split(" (")[0].lower()).strip("-") if args.cuda else "cpu-dry-run"
    default = f"gpu-check-{name or 'cuda'}.json"
    if args.out:
        return Path(args.out) / default if Path(args.out).is_dir() else Path(args.out)
    return REPO / "results" / "bench" / default


def save(check: dict, path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(check, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    require_packages()
    resolve(args)
    budget = Budget(args.budget_s)
    from scripts import bench_train

    b = bench_args(args)
    b.shape_config = bench_train.SHAPES[b.shape]
    check = new_report(args, b, budget)
    path = out_path(args, check["device"])
    say(budget, f"{check['device']} | {b.shape} | batch {b.batch} x {b.seq} | budget {budget.limit:.0f} s -> {path}")
    started = time.perf_counter()
    model_dir = bench_train.build_model_dir(b.shape, b.dtype, b.device, b.seed)
    batches = bench_train.make_batches(max(b.steps, b.parity_steps, 1), b.batch, b.seq,
                                       b.shape_config["vocab_size"], b.seed, b.ragged)
    check["settings"] = bench_train.settings_of(b, batches)
    budget.done("weights", started)
    save(check, path)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:  # the adapter; the weights' directory after
        adapter_dir = Path(tmp) / "adapter"
        train_rows(check, budget, b, model_dir, batches, adapter_dir)  # each row is attempted on its own
        save(check, path)
        for name, phase in (("parity", lambda: parity_phase(check, budget, b, model_dir, batches,
                                                             args.profile["parity_tol"])),
                            ("merge", lambda: merge_phase(check, budget, b, model_dir, adapter_dir, args.profile))):
            attempt(check, budget, name, phase)
            save(check, path)
        shutil.move(model_dir, tmp)  # removed with it (13 GB at 7B)
    finish(check, args.cuda)
    save(check, path)
    say(budget, f"ok={check['ok']} complete={check['complete']} skipped={len(check['skipped'])} "
                f"errors={len(check['errors'])}; wrote {path}")
    return check


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
