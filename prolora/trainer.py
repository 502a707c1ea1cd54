"""A small, resumable QLoRA training loop for adapter-only finetuning (the paper's recipe, SPEC §4).

Why not the HF ``Trainer``: its checkpoints hold the full model state (a 7B base for an adapter of a few
MB), and it cannot guarantee that a half-written checkpoint is never resumed from.  What it does that we
need is small: paged AdamW (bitsandbytes), the linear schedule with warmup (``transformers.get_scheduler``),
gradient accumulation, gradient clipping and group-by-length batching.  This loop does exactly that and:

* saves compact adapter checkpoints (only trainable tensors) plus optimizer/scheduler/RNG state every
  ``save_every`` steps, written to a hidden temporary directory and renamed into place, so a checkpoint
  directory either is complete or does not exist; ``resume=True`` picks the newest one;
* is exactly resumable: batches are a pure function of (seed, step) and the RNG state (adapter dropout)
  is restored, so a run killed and resumed ends with the same adapter as an uninterrupted one;
* reports progress through a tqdm bar and a ``log_fn(step, metrics)`` callback (W&B lives in the recipe);
* writes ``metrics.jsonl`` (one line per logged step) next to the checkpoints.

Only the adapter's parameters are optimized; ``shared_lr`` puts the shared PRoLoRA chunks in their own
optimizer group with their own learning rate (the paper's suggested future work, off by default).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_PREFIX = "step_"
FINAL_WINDOW = 10  # final_loss = mean loss of the last FINAL_WINDOW optimizer steps (one step is noisy)
TRAINER_STATE = "trainer_state.pt"


@dataclass
class TrainArgs:
    max_steps: int = 10_000
    batch_size: int = 16
    micro_batch_size: int = 16
    lr: float = 2e-4
    shared_lr: float | None = None
    optimizer: str = "paged_adamw_32bit"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3
    scheduler: str = "linear"
    warmup_ratio: float = 0.03
    group_by_length: bool = True
    save_every: int = 1000
    keep_last: int = 2
    log_every: int = 10
    seed: int = 1
    resume: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"trainer.max_steps={self.max_steps}: must be >= 1")
        if self.micro_batch_size < 1 or self.batch_size < 1 or self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"trainer.batch_size={self.batch_size} must be a positive multiple of "
                f"trainer.micro_batch_size={self.micro_batch_size} (gradient accumulation = their ratio)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"optim.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr}: must be > 0")

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch_size


@dataclass
class TrainResult:
    steps: int
    initial_loss: float  # loss of the first optimizer step
    final_loss: float  # mean loss of the last FINAL_WINDOW optimizer steps
    wall_time_s: float
    tokens: int
    tokens_per_s: float
    resumed_from: int | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def split_param_groups(model: torch.nn.Module, lr: float, shared_lr: float | None,
                       weight_decay: float) -> list[dict]:
    """Trainable parameters as optimizer groups; with ``shared_lr`` the shared chunks get their own group.

    A parameter counts as *shared* when the adapter layer owning it lists it in ``shared_parameter_names()``
    (PRoLoRA's A_0/B_0 chunks); everything else trainable is *unshared*.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: attach an adapter (prolora.attach) before training")
    if shared_lr is None:
        return [{"params": [p for _, p in params], "lr": lr, "weight_decay": weight_decay, "name": "adapter"}]
    shared_ids = set()
    for module in model.modules():
        names = getattr(module, "shared_parameter_names", None)
        if callable(names):
            for pname in names():
                shared_ids.add(id(getattr(module, pname)))
    shared = [p for _, p in params if id(p) in shared_ids]
    unshared = [p for _, p in params if id(p) not in shared_ids]
    if not shared:
        raise ValueError("optim.shared_lr is set but the adapter has no shared parameters "
                         "(only the PRoLoRA family has them); unset optim.shared_lr")
    groups = [{"params": shared, "lr": shared_lr, "weight_decay": weight_decay, "name": "shared"}]
    if unshared:
        groups.append({"params": unshared, "lr": lr, "weight_decay": weight_decay, "name": "unshared"})
    return groups


def make_optimizer(groups: list[dict], args: TrainArgs) -> torch.optim.Optimizer:
    name = args.optimizer
    kwargs = dict(betas=tuple(args.betas), eps=args.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    import bitsandbytes as bnb

    if name == "paged_adamw_32bit":
        return bnb.optim.PagedAdamW(groups, **kwargs)
    if name == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(groups, **kwargs)
    raise ValueError(f"optim.name={name!r}: use paged_adamw_32bit (the paper's), paged_adamw_8bit or adamw")


def causal_lm_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (``labels != -100``) of a causal LM.

    The same number as ``model(**batch, labels=...)`` or full logits + ``cross_entropy(ignore_index=-100)``,
    but the output head runs only on the positions that have a label: instruction data masks the prompt,
    so most positions need no logits, and the (tokens × vocab) fp32 logits of a whole batch (1 GB for LLaMA-2
    at 16 × 512) are never materialised.  Models with a logit transform between the decoder and the loss
    (soft-capping, logit scale) take the plain full-logits path."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    target = labels[:, 1:]
    keep = target != -100
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    plain = (getattr(config, "final_logit_softcapping", None) is None
             and getattr(config, "logit_scale", None) is None)
    if decoder is None or head is None or not plain:
        return full_logits_loss(model, batch)
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    logits = head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def layers_to_checkpoint(n_layers: int, peak_all: int, per_layer: int, budget: int) -> int:
    """The fewest checkpointed layers k (of ``n_layers``) with ``peak_all + (n_layers − k)·per_layer ≤ budget``;
    all of them when even that does not fit."""
    keep = max(budget - peak_all, 0) // max(per_layer, 1)
    return int(max(0, n_layers - keep))


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> int:
    """Bytes of tensor memory ``fn()`` needs at its peak above what was allocated when it started.

    CUDA: the caching allocator's statistics.  CPU: the allocation events of ``torch.profiler`` (with
    ``profile_memory``) summed in order, so the number is exact and deterministic, unlike a resident set that
    depends on what malloc kept from earlier work (the profiler slows ``fn`` down; use it only for probes)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    live = peak = 0
    for e in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0))):
        if e["args"].get("Device Type", 0) == 0:
            live += int(e["args"]["Bytes"])
            peak = max(peak, live)
    return peak


def memory_budget(device: torch.device | str, fraction: float) -> int:
    """Bytes a training step may add to what is allocated now: ``fraction`` of the GPU's memory minus what
    this process holds on it; on a CPU ``fraction`` of the memory the OS reports available."""
    device = torch.device(device)
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total * fraction) - torch.cuda.memory_allocated(device)
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * fraction)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") * fraction)


def full_logits_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The textbook form of :func:`causal_lm_loss`: every position's logits, cast to fp32, shifted, cross-entropy
    with ``ignore_index=-100`` (what this trainer did before; kept as the reference and for benchmarks)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=-100)


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Half-written ones live under a hidden ``.tmp-`` name."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for d in ckpt_dir.iterdir():
        if d.is_dir() and d.name.startswith(CHECKPOINT_PREFIX) and (d / TRAINER_STATE).is_file():
            try:
                found.append((int(d.name[len(CHECKPOINT_PREFIX):]), d))
            except ValueError:
                continue
    return [d for _, d in sorted(found)]


class Trainer:
    """Adapter-only training loop. ``batches(step)`` must return the micro-batches of optimizer step
    ``step`` (a pure function of the step, so resuming replays the same data)."""

    def __init__(self, model: torch.nn.Module, batches: Callable[[int], list[dict]], args: TrainArgs,
                 output_dir: str | os.PathLike, *, save_fn: Callable[[torch.nn.Module, Path], None],
                 load_fn: Callable[[torch.nn.Module, Path], None],
                 log_fn: Callable[[int, dict], None] | None = None, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None,
                 loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None):
        self.model, self.batches, self.args = model, batches, args
        self.loss_fn = loss_fn or causal_lm_loss
        self.autocast_dtype = autocast_dtype  # e.g. bf16 on CUDA, as HF Trainer's --bf16 (the authors' runs)
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.save_fn, self.load_fn, self.log_fn = save_fn, load_fn, log_fn
        self.device = torch.device(device)
        groups = split_param_groups(model, args.lr, args.shared_lr, args.weight_decay)
        self.trainable = [p for g in groups for p in g["params"]]  # what the optimizer updates and clipping sees
        self.optimizer = make_optimizer(groups, args)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(args.scheduler, self.optimizer,
                                       num_warmup_steps=math.ceil(args.warmup_ratio * args.max_steps),
                                       num_training_steps=args.max_steps)
        self.step = 0
        self.tokens = 0
        self.initial_loss: float | None = None
        self.last_loss = float("nan")
        self.recent_losses: list[float] = []  # the last FINAL_WINDOW step losses

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        final = self.ckpt_dir / f"{CHECKPOINT_PREFIX}{self.step:07d}"
        tmp = self.ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save_fn(self.model, tmp / "adapter")
        torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": _rng_state(), "tokens": self.tokens,
                    "initial_loss": self.initial_loss, "last_loss": self.last_loss,
                    "recent_losses": self.recent_losses,
                    "args": asdict(self.args)}, tmp / TRAINER_STATE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(self.ckpt_dir)[:-max(self.args.keep_last, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def maybe_resume(self) -> int | None:
        if not self.args.resume:
            return None
        ckpts = list_checkpoints(self.ckpt_dir)
        if not ckpts:
            return None
        last = ckpts[-1]
        self.load_fn(self.model, last / "adapter")
        state = torch.load(last / TRAINER_STATE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.initial_loss, self.last_loss = state["initial_loss"], state["last_loss"]
        self.recent_losses = list(state["recent_losses"])
        return self.step

    # -- loop ----------------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, scale: float) -> tuple[float, int]:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            loss = self.loss_fn(self.model, batch)
        (loss * scale).backward()
        return loss.item(), int(batch["attention_mask"].sum().item())

    def fit_checkpointing(self, fraction: float = 0.85, budget_bytes: int | None = None) -> int:
        """Checkpoint as few decoder layers as fit: recomputing a layer's forward in the backward pass costs
        about a third of its step time, keeping its activations costs memory.  Two probes (forward + backward of
        step 0's first micro-batch, which holds the run's longest example; :func:`peak_memory`) with every
        layer and with all but one layer checkpointed give the memory a step adds at its peak, P_all, and the
        memory d one un-checkpointed layer adds; the first ``k`` layers are checkpointed where ``k`` is the
        smallest number with P_all + (L − k)·d + optimizer states ≤ the budget: ``budget_bytes`` if given,
        else :func:`memory_budget` (``fraction`` of the GPU minus what is allocated, or of the CPU's free memory).
        The probes leave no gradients and restore the RNG, so the run is the same as with ``k`` set by hand.
        Sets and returns ``k``."""
        from prolora.models import decoder_layers, set_checkpointing

        n = len(decoder_layers(self.model))
        if n == 0:
            return 0
        budget = budget_bytes if budget_bytes is not None else memory_budget(self.device, fraction)
        batch = self.batches(0)[0]
        rng = _rng_state()
        peaks = []
        try:
            self.model.train()
            for k in (n, n - 1):
                set_checkpointing(self.model, k)
                peaks.append(peak_memory(lambda: self._micro_step(batch, 1.0), self.device))
                self.optimizer.zero_grad(set_to_none=True)
        finally:
            _set_rng_state(rng)
        per_layer = max(peaks[1] - peaks[0], 1)
        optimizer_states = 2 * 4 * sum(p.numel() for p in self.trainable)  # AdamW's two fp32 moments
        k = layers_to_checkpoint(n, peaks[0] + optimizer_states, per_layer, budget)
        set_checkpointing(self.model, k)
        self.checkpointing_probe = {"layers": n, "checkpointed": k, "peak_all_bytes": peaks[0],
                                    "per_layer_bytes": per_layer, "budget_bytes": budget}
        return k

    def train_step(self) -> dict:
        """One optimizer step (its micro-batches, clipping, optimizer and scheduler); returns its metrics row
        (``step_s`` is its wall time, synchronised on CUDA). :meth:`train` is a loop over this."""
        t0 = time.perf_counter()
        micro = self.batches(self.step)
        losses, ntok = [], 0
        for batch in micro:
            loss, n = self._micro_step(batch, 1.0 / len(micro))
            losses.append(loss)
            ntok += n
        if not all(math.isfinite(x) for x in losses):
            raise FloatingPointError(f"non-finite loss {losses} at step {self.step}: lower optim.lr")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.args.max_grad_norm).item()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.step += 1
        self.tokens += ntok
        self.last_loss = float(np.mean(losses))
        self.recent_losses = (self.recent_losses + [self.last_loss])[-FINAL_WINDOW:]
        if self.initial_loss is None:
            self.initial_loss = self.last_loss
        return {"step": self.step, "loss": self.last_loss, "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm, "tokens": self.tokens, "step_s": time.perf_counter() - t0}

    def train(self) -> TrainResult:
        args = self.args
        resumed = self.maybe_resume()
        metrics_path = self.output_dir / "metrics.jsonl"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resumed is None and metrics_path.exists():
            metrics_path.unlink()
        elif resumed is not None and metrics_path.exists():  # drop lines logged after the checkpoint
            lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln)["step"] <= resumed]
            metrics_path.write_text("".join(k + "\n" for k in kept))
        self.model.train()
        start_time = time.time()
        start_tokens = self.tokens
        bar = _progress(total=args.max_steps, initial=self.step, enabled=args.progress)
        try:
            while self.step < args.max_steps:
                row = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{self.last_loss:.4f}")
                if self.step == 1 or self.step % args.log_every == 0 or self.step == args.max_steps:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    if self.log_fn:
                        self.log_fn(self.step, row)
                if args.save_every and self.step % args.save_every == 0 and self.step < args.max_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        wall = time.time() - start_time
        self.model.eval()
        return TrainResult(steps=self.step, initial_loss=float(self.initial_loss), final_loss=float(np.mean(self.recent_losses)),
                           wall_time_s=wall, tokens=self.tokens,
                           tokens_per_s=(self.tokens - start_tokens) / max(wall, 1e-9), resumed_from=resumed)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
