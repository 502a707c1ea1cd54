"""A small, resumable QLoRA training loop for adapter-only finetuning (the paper's recipe, appendix A.2),
and its settings (:class:`OptimArgs`, :class:`TrainArgs`: the recipes use these dataclasses as the Hydra
schema of ``optim`` and ``trainer``, so each setting and its default are written once, here).

Why not the HF ``Trainer``: its checkpoints hold the full model state (a 7B base for an adapter of a few
MB), and it cannot guarantee that a half-written checkpoint is never resumed from.  What it does that we
need is small: paged AdamW (bitsandbytes), the linear schedule with warmup (``transformers.get_scheduler``),
gradient accumulation, gradient clipping and group-by-length batching.  This loop does exactly that and:

* saves compact adapter checkpoints (only trainable tensors) plus optimizer/scheduler/RNG state every
  ``save_every`` steps, written to a hidden temporary directory and renamed into place, so a checkpoint
  directory either is complete or does not exist; ``resume=True`` picks the newest one that loads (a damaged
  one is skipped with a warning) and refuses one written by another run (``identity``: the settings that
  decide the numbers, compared key by key); leftovers of an interrupted save are removed;
* stops with one message (:class:`TrainingDiverged`) when the loss or the gradient norm is not finite or the
  loss explodes, instead of training on (and saving) a broken adapter;
* is exactly resumable: batches are a pure function of (seed, step) and the RNG state (adapter dropout)
  is restored, so a run killed and resumed ends with the same adapter as an uninterrupted one;
* reports progress through a tqdm bar and a ``log_fn(step, metrics)`` callback (W&B lives in the recipe);
* writes ``metrics.jsonl`` (one line per logged step) next to the checkpoints;
* measures what a method costs: every row has its step's wall time (``step_s``); the first step of a fresh run is
  measured (:meth:`Trainer.measured_step`), so its row also carries ``step_peak_bytes``, ``adapter_bytes`` (the
  adapter's own tensors, trained and frozen), ``memory_method`` and ``profiled: true`` (:class:`TrainResult`'s
  median step time leaves it out).  On CUDA ``step_peak_bytes`` is the allocator's peak during that step above what
  was allocated before it (activations, gradients, the optimizer's moments, which the first step creates).  On a
  CPU, where there is no allocator statistic and the profiler's allocation trace costs minutes per step on a real
  model, it is what the step holds at its peak besides transients: the tensors autograd saves for the backward
  (the activations; frozen weights excluded, each storage once) plus the gradients and the optimizer state the
  step leaves.

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
from typing import Any

import numpy as np
import torch

from prolora import checkpointing, integrity
from prolora.io import write_dir_atomic, write_text_atomic

CHECKPOINT_PREFIX = "step_"
# diverged: the mean loss of the last FINAL_WINDOW steps is above EXPLODED x the first step's AND 2 nats above it
EXPLODED = 4.0
FINAL_WINDOW = 10  # final_loss = mean loss of the last FINAL_WINDOW optimizer steps (one step is noisy)
TRAINER_STATE = "trainer_state.pt"


OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "adamw")


def _positive_int(owner: str, name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name}={value!r}: must be an integer >= {minimum}")


def _number(owner: str, name: str, value, lo: float, hi: float, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ValueError(f"{owner}.{name}={value!r}: must be a number in [{lo:g}, {hi:g}]; {fix}")
    return float(value)


@dataclass
class OptimArgs:
    """The optimizer and schedule (``optim.*``).  Defaults are the paper's: paged AdamW 32-bit, no weight
    decay, max grad norm 0.3, linear schedule with 3% warm-up; ``lr`` comes from the dataset's config."""

    name: str = field(default="paged_adamw_32bit", metadata={"help": "paged_adamw_32bit | paged_adamw_8bit | adamw"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (the recipe: the dataset's lr)"})
    shared_lr: float | None = field(default=None, metadata={
        "help": "own LR for PRoLoRA's shared chunks (the paper's future work); null: off"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float = field(default=0.3, metadata={"help": "gradient clipping norm"})
    scheduler: str = field(default="linear", metadata={"help": "any transformers.get_scheduler name"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of max_steps spent warming up"})

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name={self.name!r}: use one of {list(OPTIMIZERS)} (the paper: paged_adamw_32bit)")
        # an Adam step moves a weight by about lr, so lr >= 1 throws the adapter away (1e12 made every weight 1e12)
        self.lr = _number("optim", "lr", self.lr, 1e-12, 0.999, "use e.g. optim.lr=2e-4")
        if self.shared_lr is not None:
            self.shared_lr = _number("optim", "shared_lr", self.shared_lr, 1e-12, 0.999, "use e.g. 2e-4 or null")
        self.weight_decay = _number("optim", "weight_decay", self.weight_decay, 0.0, 1.0, "use e.g. 0")
        self.max_grad_norm = _number("optim", "max_grad_norm", self.max_grad_norm, 1e-12, float("inf"),
                                     "use e.g. 0.3")
        self.warmup_ratio = _number("optim", "warmup_ratio", self.warmup_ratio, 0.0, 0.999, "use e.g. 0.03")
        if len(list(self.betas)) != 2:
            raise ValueError(f"optim.betas={self.betas!r}: give two numbers, e.g. [0.9, 0.999]")
        self.betas = [_number("optim", "betas", b, 0.0, 0.999999, "use e.g. [0.9, 0.999]") for b in self.betas]


@dataclass
class TrainArgs:
    """The loop (``trainer.*``): the paper runs 10,000 steps of 16 sequences."""

    max_steps: int = field(default=10_000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "effective batch (sequences per optimizer step)"})
    micro_batch_size: int = field(default=16, metadata={
        "help": "sequences per forward; batch_size / micro_batch_size = gradient accumulation"})
    group_by_length: bool = field(default=True, metadata={"help": "batch examples of similar length together"})
    save_every: int = field(default=1000, metadata={
        "help": "compact checkpoint every N optimizer steps (0 = only the final adapter)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept"})
    log_every: int = field(default=10, metadata={"help": "metrics.jsonl / W&B row every N steps"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest complete checkpoint of this run in the output directory"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda[:i]"})
    gradient_checkpointing: Any = field(default="auto", metadata={
        "help": "true = every decoder layer (as the authors), false, a number of layers, or auto = as few as "
                "fit in memory, measured on the longest batch"})
    max_train_samples: int = field(default=0, metadata={"help": "0 = every training example; N = the first N"})
    progress: bool = field(default=True, metadata={"help": "a tqdm bar (also off when PROLORA_NO_PROGRESS is set)"})

    def __post_init__(self) -> None:
        t = "trainer"
        _positive_int(t, "max_steps", self.max_steps)
        _positive_int(t, "micro_batch_size", self.micro_batch_size)
        _positive_int(t, "batch_size", self.batch_size)
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"trainer.batch_size={self.batch_size} must be a positive multiple of "
                f"trainer.micro_batch_size={self.micro_batch_size} (gradient accumulation = their ratio)")
        _positive_int(t, "save_every", self.save_every, 0)
        _positive_int(t, "keep_last", self.keep_last)
        _positive_int(t, "log_every", self.log_every)
        _positive_int(t, "max_train_samples", self.max_train_samples, 0)
        checkpointing.parse(self.gradient_checkpointing, 1 << 30)  # a bad value fails here, before any work

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch_size


class TrainingDiverged(ValueError):
    """The loss or the gradients became non-finite, or the loss exploded; the message says when and what to do."""


def identity_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ between two identities."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


@dataclass
class TrainResult:
    steps: int
    initial_loss: float  # loss of the first optimizer step
    final_loss: float  # mean loss of the last FINAL_WINDOW optimizer steps
    wall_time_s: float
    tokens: int
    tokens_per_s: float
    resumed_from: int | None
    step_s_median: float | None = None  # median wall time of this process's unprofiled steps
    memory: dict | None = None  # step_peak_bytes / adapter_bytes of the first step (a fresh run only)


def adapter_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor the attached adapter adds to the model: each adapter layer's parameters and buffers
    (not its base layer's) and the model-level shared modules' (VeRA's frozen pairs, MoS's pools, ...)."""
    from prolora.inject import SHARED_ATTR, adapter_layers

    tensors: dict[int, torch.Tensor] = {}
    for layer in adapter_layers(model).values():
        for name, t in [*layer.named_parameters(), *layer.named_buffers()]:
            if not name.startswith("base_layer."):
                tensors[id(t)] = t
    shared = getattr(model, SHARED_ATTR, None)
    if shared is not None:
        tensors.update({id(t): t for t in [*shared.parameters(), *shared.buffers()]})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def saved_activation_bytes(model: torch.nn.Module, fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for the backward while ``fn()`` runs (each storage once; the model's
    parameters and buffers, the frozen weights, left out): the activations a training step holds at its peak."""
    frozen = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in frozen:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


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


def make_optimizer(groups: list[dict], optim: OptimArgs) -> torch.optim.Optimizer:
    kwargs = dict(betas=tuple(optim.betas), eps=optim.eps)
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    import bitsandbytes as bnb

    if optim.name == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(groups, **kwargs)
    return bnb.optim.PagedAdamW(groups, **kwargs)


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
                 optim: OptimArgs, output_dir: str | os.PathLike, *,
                 save_fn: Callable[[torch.nn.Module, Path], None], load_fn: Callable[[torch.nn.Module, Path], None],
                 log_fn: Callable[[int, dict], None] | None = None, autocast_dtype: torch.dtype | None = None,
                 loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
                 identity: dict | None = None):
        from prolora.models import resolve_device

        self.model, self.batches, self.args, self.optim = model, batches, args, optim
        self.identity = identity  # what decides the numbers; stored in every checkpoint, compared on resume
        self.loss_fn = loss_fn or causal_lm_loss
        self.autocast_dtype = autocast_dtype  # e.g. bf16 on CUDA, as HF Trainer's --bf16 (the authors' runs)
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.save_fn, self.load_fn, self.log_fn = save_fn, load_fn, log_fn
        self.device = torch.device(resolve_device(args.device))
        groups = split_param_groups(model, optim.lr, optim.shared_lr, optim.weight_decay)
        self.trainable = [p for g in groups for p in g["params"]]  # what the optimizer updates and clipping sees
        self.optimizer = make_optimizer(groups, optim)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(optim.scheduler, self.optimizer,
                                       num_warmup_steps=math.ceil(optim.warmup_ratio * args.max_steps),
                                       num_training_steps=args.max_steps)
        self.step = 0
        self.tokens = 0
        self.initial_loss: float | None = None
        self.last_loss = float("nan")
        self.recent_losses: list[float] = []  # the last FINAL_WINDOW step losses
        self.checkpointing_probe: dict | None = None  # what `auto` measured, when it ran
        self.step_times: list[float] = []  # this process's unprofiled step times
        self.memory: dict | None = None  # the first step's measured peak (a fresh run only)

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``checkpoints/step_<N>/``: the compact adapter and the trainer's state, written atomically."""
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": _rng_state(), "tokens": self.tokens,
                 "initial_loss": self.initial_loss, "last_loss": self.last_loss,
                 "recent_losses": self.recent_losses,
                 "args": asdict(self.args), "optim": asdict(self.optim), "identity": self.identity}

        def write(tmp: Path) -> None:
            self.save_fn(self.model, tmp / "adapter")
            torch.save(state, tmp / TRAINER_STATE)
            integrity.write_manifest(tmp)

        final = write_dir_atomic(self.ckpt_dir / f"{CHECKPOINT_PREFIX}{self.step:07d}", write)
        for old in list_checkpoints(self.ckpt_dir)[:-max(self.args.keep_last, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def maybe_resume(self) -> int | None:
        """With ``args.resume``: restore the newest checkpoint that loads (damaged ones, and ones whose files differ
        from their manifest, are skipped with a warning, newest first); a checkpoint of another run (its identity
        differs: settings or training data) is refused, naming the keys."""
        self._clean_leftovers()
        if not self.args.resume:
            return None
        import warnings

        for ckpt in reversed(list_checkpoints(self.ckpt_dir)):
            try:
                integrity.verify(ckpt)  # a file changed since the save (a torn write, an edit): treated as damaged
            except integrity.ModifiedCheckpoint as e:
                warnings.warn(f"resume: {e}; falling back to the previous checkpoint", stacklevel=2)
                continue
            try:
                state = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=False)
            except Exception as e:  # noqa: BLE001  (a torn or garbled file: try the previous checkpoint)
                warnings.warn(f"resume: {ckpt / TRAINER_STATE} does not load ({type(e).__name__}: {e}); "
                              "falling back to the previous checkpoint", stacklevel=2)
                continue
            saved = state.get("identity")
            if self.identity is not None and saved is not None and saved != self.identity:
                diff = identity_diff(saved, self.identity)
                raise ValueError(f"resume: {ckpt} belongs to another run ({'; '.join(diff[:6])}"
                                 f"{'; …' if len(diff) > 6 else ''}): resume with the settings it was trained "
                                 "with, or train elsewhere (another output_dir) or with overwrite=true")
            try:
                self.load_fn(self.model, ckpt / "adapter")
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
            except (ValueError, KeyError, RuntimeError, OSError) as e:
                warnings.warn(f"resume: {ckpt} does not load ({e}); falling back to the previous checkpoint",
                              stacklevel=2)
                continue
            _set_rng_state(state["rng"])
            self.step, self.tokens = state["step"], state["tokens"]
            self.initial_loss, self.last_loss = state["initial_loss"], state["last_loss"]
            self.recent_losses = list(state["recent_losses"])
            return self.step
        return None

    def _clean_leftovers(self) -> None:
        """What an interrupted atomic save left (``.tmp-*``, ``.old-*``): never resumed from, removed here (the
        recipe holds the run directory's lock, so no other process is writing them)."""
        if self.ckpt_dir.is_dir():
            for d in self.ckpt_dir.iterdir():
                if d.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(d, ignore_errors=True)

    # -- loop ----------------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, scale: float) -> tuple[float, int]:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            loss = self.loss_fn(self.model, batch)
        (loss * scale).backward()
        return loss.item(), int(batch["attention_mask"].sum().item())

    def configure_checkpointing(self) -> int:
        """Apply ``args.gradient_checkpointing`` (``auto``: :meth:`fit_checkpointing`); returns the number of
        decoder layers that recompute their activations."""
        n = len(checkpointing.decoder_layers(self.model))
        setting = checkpointing.parse(self.args.gradient_checkpointing, n)
        if setting == "auto":
            return self.fit_checkpointing()
        return checkpointing.apply(self.model, setting)

    def fit_checkpointing(self, fraction: float = 0.85, budget_bytes: int | None = None) -> int:
        """:func:`prolora.checkpointing.fit` on step 0's first micro-batch (which holds the run's longest
        example), counting the optimizer's two fp32 moments as the rest of a step.  The probes leave no
        gradients and restore the RNG, so the run is the same as with the chosen number set by hand."""
        batch = self.batches(0)[0]
        rng = _rng_state()
        try:
            self.checkpointing_probe = checkpointing.fit(
                self.model, lambda: self._micro_step(batch, 1.0),
                lambda: self.optimizer.zero_grad(set_to_none=True), self.device,
                extra_bytes=2 * 4 * sum(p.numel() for p in self.trainable), budget_bytes=budget_bytes,
                fraction=fraction)
        finally:
            _set_rng_state(rng)
        return self.checkpointing_probe["checkpointed"]

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
            raise TrainingDiverged(f"training diverged: the loss is {losses} at step {self.step + 1}; nothing after "
                                   f"step {self.step} is kept: lower optim.lr (now {self.optim.lr:g})")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.optim.max_grad_norm).item()
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"training diverged: the gradient norm is {grad_norm} at step {self.step + 1}; "
                                   f"lower optim.lr (now {self.optim.lr:g})")
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
        recent = float(np.mean(self.recent_losses))
        if len(self.recent_losses) == FINAL_WINDOW and recent > max(EXPLODED * self.initial_loss,
                                                                   self.initial_loss + 2.0):
            raise TrainingDiverged(f"training diverged: the loss of the last {FINAL_WINDOW} steps ({recent:.3g}) is "
                                   f"over {EXPLODED:g}x the first step's ({self.initial_loss:.3g}) at step "
                                   f"{self.step}: lower optim.lr (now {self.optim.lr:g})")
        return {"step": self.step, "loss": self.last_loss, "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm, "tokens": self.tokens, "step_s": time.perf_counter() - t0}

    def train(self) -> TrainResult:
        """Apply the checkpointing setting, resume if asked, and run to ``max_steps``."""
        args = self.args
        self.configure_checkpointing()
        resumed = self.maybe_resume()
        metrics_path = self.output_dir / "metrics.jsonl"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resumed is None and metrics_path.exists():
            metrics_path.unlink()
        elif resumed is not None and metrics_path.exists():  # drop lines logged after the checkpoint
            lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln)["step"] <= resumed]
            write_text_atomic(metrics_path, "".join(k + "\n" for k in kept))
        self.model.train()
        start_time = time.time()
        start_tokens = self.tokens
        bar = _progress(total=args.max_steps, initial=self.step, enabled=args.progress)
        try:
            while self.step < args.max_steps:
                row = self.measured_step() if self.step == 0 else self.train_step()
                if not row.get("profiled"):
                    self.step_times.append(row["step_s"])
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
                           tokens_per_s=(self.tokens - start_tokens) / max(wall, 1e-9), resumed_from=resumed,
                           step_s_median=float(np.median(self.step_times)) if self.step_times else None,
                           memory=self.memory)

    def measured_step(self) -> dict:
        """:meth:`train_step` with its memory measured (module doc); its row gets ``step_peak_bytes``,
        ``adapter_bytes``, ``memory_method`` and ``profiled: true`` (the numbers are the same as an unmeasured
        step's)."""
        rows: list[dict] = []
        if self.device.type == "cuda":
            peak = checkpointing.peak_memory(lambda: rows.append(self.train_step()), self.device)
            method = "cuda max_memory_allocated"
        else:  # the first micro-batch holds the run's longest example: its saved activations are the step's peak
            saved: list[int] = []
            micro = self._micro_step

            def first_measured(batch: dict, scale: float) -> tuple[float, int]:
                if saved:
                    return micro(batch, scale)
                out: list[tuple[float, int]] = []
                saved.append(saved_activation_bytes(self.model, lambda: out.append(micro(batch, scale))))
                return out[0]

            self._micro_step = first_measured  # type: ignore[method-assign]
            try:
                rows.append(self.train_step())
            finally:
                del self._micro_step
            state = [t for st in self.optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
            peak = saved[0] + sum(4 * p.numel() for p in self.trainable) + sum(t.numel() * t.element_size()
                                                                              for t in state)
            method = "cpu: saved activations + gradients + optimizer state"
        self.memory = {"step_peak_bytes": int(peak), "adapter_bytes": adapter_bytes(self.model),
                       "memory_method": method}
        return {**rows[0], **self.memory, "profiled": True}


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    disable = not enabled or bool(os.environ.get("PROLORA_NO_PROGRESS"))
    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True)
