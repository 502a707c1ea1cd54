"""Activation recomputation ("gradient checkpointing") of decoder layers: the setting, applying it, and
``auto``, which recomputes as few layers as fit in memory.

``trainer.gradient_checkpointing`` is ``true``/``all`` (every layer, as the authors ran: 16 × 512 on a 40 GB
GPU needs it), ``false``/``0`` (none), an integer ``k`` (the first ``k`` layers) or ``auto``.  Recomputing a
layer's forward in the backward pass costs about a third of its step time; keeping its activations costs
memory.  The math is unchanged either way, only memory is traded for time.

``auto`` (:func:`fit`) measures instead of guessing: two probes (forward + backward of one micro-batch) with
every layer and with all but one layer recomputed give the memory a step adds at its peak, P_all, and the
memory d one kept layer adds; the first ``k`` layers are recomputed where ``k`` is the smallest number with
P_all + (L − k)·d + ``extra_bytes`` ≤ the budget (``fraction`` of the GPU minus what is allocated, or of
the CPU's available memory).  The :class:`~prolora.trainer.Trainer` runs it on its first, longest batch.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def decoder_layers(model) -> list:
    """The model's decoder layers (the modules transformers can checkpoint), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def parse(value, n_layers: int) -> int | str:
    """``trainer.gradient_checkpointing`` → the number of decoder layers to recompute, or ``"auto"``."""
    if isinstance(value, bool):
        return n_layers if value else 0
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"trainer.gradient_checkpointing={value}: use true, false, auto or 0..{n_layers}")
        return min(value, n_layers)
    text = str(value).strip().lower()
    if text in ("true", "all", "yes", "on"):
        return n_layers
    if text in ("false", "none", "no", "off"):
        return 0
    if text == "auto":
        return "auto"
    if text.isdigit():
        return parse(int(text), n_layers)
    raise ValueError(f"trainer.gradient_checkpointing={value!r}: use true (all layers), false, auto "
                     f"(as few as fit in memory) or a number of layers 0..{n_layers}")


def _is_enabled(model) -> bool:
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5 names it anew
        if hasattr(type(model), attr):
            return bool(getattr(model, attr))
    return False


def apply(model, n_layers: int) -> int:
    """Recompute the activations of the first ``n_layers`` decoder layers in the backward pass (non-reentrant
    ``torch.utils.checkpoint``); the others keep theirs.  Returns the number of recomputed layers."""
    layers = decoder_layers(model)
    n = max(0, min(int(n_layers), len(layers)))
    if n == 0:
        if _is_enabled(model):
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()
        for layer in layers:
            layer.gradient_checkpointing = False
        return 0
    if not _is_enabled(model):
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n
    return n


def recomputed(model) -> int:
    """How many decoder layers recompute their activations now."""
    return sum(bool(getattr(m, "gradient_checkpointing", False)) for m in decoder_layers(model))


def layers_to_checkpoint(n_layers: int, peak_all: int, per_layer: int, budget: int) -> int:
    """The fewest recomputed layers k (of ``n_layers``) with ``peak_all + (n_layers − k)·per_layer ≤ budget``;
    all of them when even that does not fit."""
    keep = max(budget - peak_all, 0) // max(per_layer, 1)
    return int(max(0, n_layers - keep))


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> int:
    """Bytes of tensor memory ``fn()`` needs at its peak above what was allocated when it started.

    CUDA: the caching allocator's statistics.  CPU: the allocation events of ``torch.profiler`` (with
    ``profile_memory``) summed in order, so the number is exact and deterministic, unlike a resident set that
    depends on what malloc kept from earlier work (the profiler slows ``fn`` down; use it only for probes).
    Only blocks ``fn`` allocated count: freeing a block from before (the profiler reports the size of one
    allocated under an earlier profile, e.g. an earlier probe's garbage) does not lower the peak, and the
    cyclic garbage collector is run before ``fn`` and held off during it, so when it happens to run (which
    depends on everything the process did before) cannot move the number either."""
    device = torch.device(device)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
            fn()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - start
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        if enabled:
            gc.enable()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"),
                    key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    return _peak_of_own_blocks(e["args"] for e in memory)


def _peak_of_own_blocks(events) -> int:
    """The peak of the bytes held by blocks allocated among ``events`` (the profiler's ``[memory]`` args, with
    ``Bytes`` > 0 for an allocation and < 0 for a free, at ``Addr``) in time order; a free of a block not
    allocated among them is ignored."""
    own: dict[int, int] = {}
    live = peak = 0
    for e in events:
        if e.get("Device Type", 0) != 0:
            continue
        size, addr = int(e["Bytes"]), e.get("Addr")
        if size > 0:
            own[addr] = own.get(addr, 0) + size
            live += size
        elif addr in own:
            freed = min(-size, own[addr])
            own[addr] -= freed
            if own[addr] == 0:
                del own[addr]
            live -= freed
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


def fit(model, run_step: Callable[[], object], clear: Callable[[], object], device: torch.device | str, *,
        extra_bytes: int = 0, budget_bytes: int | None = None, fraction: float = 0.85) -> dict:
    """Recompute as few layers as fit (module docstring).  ``run_step()`` runs the probe's forward + backward,
    ``clear()`` drops the gradients it left; ``extra_bytes`` is what the rest of a step adds (the optimizer's
    states).  Applies the choice and returns ``{"layers", "checkpointed", "peak_all_bytes", "per_layer_bytes",
    "budget_bytes"}``."""
    n = len(decoder_layers(model))
    if n == 0:
        return {"layers": 0, "checkpointed": 0}
    budget = budget_bytes if budget_bytes is not None else memory_budget(device, fraction)
    peaks = []
    model.train()
    for k in (n, n - 1):
        apply(model, k)
        peaks.append(peak_memory(run_step, device))
        clear()
    per_layer = max(peaks[1] - peaks[0], 1)
    k = apply(model, layers_to_checkpoint(n, peaks[0] + extra_bytes, per_layer, budget))
    return {"layers": n, "checkpointed": k, "peak_all_bytes": peaks[0], "per_layer_bytes": per_layer,
            "budget_bytes": budget}
