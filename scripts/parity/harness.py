"""The harness side: one ``python -m recipes.evaluate`` run per variant, on the project's own SmolLM2 conversion.

Writes ``<work>/harness/<variant>/`` (``eval.json``, ``predictions/<task>.jsonl``: the recipe's own output) and
returns the command as recorded (placeholders for this machine's paths).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts.parity.runs import Variant

PLUMBING = "checkpoint={model} data_dir={data} output_dir={out} logger=none"


def command(variant: Variant, model: str, data: str, out: str) -> list[str]:
    return ["-m", "recipes.evaluate", *PLUMBING.format(model=model, data=data, out=out).split(), *variant.overrides]


def run_variant(name: str, variant: Variant, work: Path, data: Path) -> str:
    from prolora import gguf

    out = work / "harness" / name
    print(f"harness {name}: python -m recipes.evaluate ... {' '.join(variant.overrides[-2:])}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROLORA_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, *command(variant, str(gguf.smollm2_dir()), str(data.resolve()), str(out))],
                   check=True, env=env)
    return " ".join(["OMP_NUM_THREADS=1 python",
                     *command(variant, "<prolora.gguf.smollm2_dir()>", "<parity data dir>", "<dir>")])
