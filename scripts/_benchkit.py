"""What the benchmark scripts share: the CPU profile's model shape, the device (chosen, synchronised, emptied),
how the device and the package versions are described in a result file, and how that file is written."""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the published benchmark files beside the checkout, where present

# LLaMA2-7B's proportions (head dim 128, intermediate = 2.6875 x hidden, MHA, vocab 32000) at ~106M
# parameters: the shape every benchmark runs when no GPU is lent.
MEDIUM_SHAPE = dict(hidden_size=768, intermediate_size=2064, num_hidden_layers=8, num_attention_heads=6,
                    num_key_value_heads=6, vocab_size=32000)


def pick_device(name: str) -> str:
    """``auto`` is ``cuda`` where CUDA is available, else ``cpu``; any other name is kept."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall times measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def release(device: str | torch.device) -> None:
    """Free what dropped references held (and CUDA's cached blocks)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def describe_device(device: str | torch.device) -> str:
    """``NVIDIA H100 … (CUDA 12.4)`` or ``<CPU model>, N torch threads, M CPUs``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"


def versions(*packages: str) -> dict:
    """Python's and each package's installed version (None where it is not installed)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def write_report(path: str | os.PathLike, report: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return out
