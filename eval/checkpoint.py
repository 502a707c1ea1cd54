"""What to evaluate: a base model, a base model + adapter checkpoint, or a merged model directory.

A training checkpoint (``<run>/final/`` as ``recipes/train.py`` writes it) holds ``adapter_config.json``
+ ``adapter.safetensors`` (the compact adapter, for the hf backend), ``peft/`` (its exact PEFT LoRA
export, for vLLM) and ``run.json`` whose ``config.model`` names the base model it was trained on.
A run directory (holding ``final/``) is accepted too. A directory with a ``config.json`` and no
adapter is a (merged or plain) Hugging Face model.

An adapter checkpoint is verified against the sha256 of its files recorded at training (``checksums.json`` and
``run.json``: :mod:`prolora.integrity`) before anything is loaded: a file that differs stops the evaluation with
one line unless ``allow_modified``; a checkpoint from before the hashes is used with a warning.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass
class ModelSpec:
    model_path: str  # what load_base_model loads: a hub name or a local directory
    tokenizer_path: str
    adapter_dir: str | None = None  # compact adapter (hf backend)
    peft_dir: str | None = None  # PEFT LoRA export (vllm backend)
    kind: str = "base"  # base | adapter | merged
    run_model: dict = field(default_factory=dict)  # config.model of run.json, when there is one
    integrity: dict | None = None  # adapter checkpoints: verified | unverified | modified (prolora.integrity)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def read_run(directory: Path) -> dict:
    run = directory / "run.json"
    if not run.is_file():
        return {}
    try:
        data = json.loads(run.read_text())
    except ValueError:
        raise ValueError(f"{run} is not valid JSON: the checkpoint is damaged; train it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{run} is not a JSON object: the checkpoint is damaged; train it again")
    return data


def verify_checkpoint(ckpt: Path, run: dict, allow_modified: bool) -> dict:
    """The checkpoint's files against what training recorded (one line and no work when they differ)."""
    from prolora import integrity

    result = integrity.verify(ckpt, allow_modified=allow_modified, expected=run.get("checkpoint_sha256"))
    if result.status == "unverified":
        warnings.warn(f"{ckpt} records no sha256 of its files (no {integrity.MANIFEST}: saved outside a training run, "
                      "or by one from before runs recorded them): it is used "
                      "without verifying that its files are the ones training wrote", stacklevel=3)
    elif result.status == "modified":
        warnings.warn(f"{ckpt}: used although modified since training (allow_modified=true): "
                      f"{', '.join(result.modified[:3])}", stacklevel=3)
    return {**result.to_dict(), "allow_modified": allow_modified}


def resolve_checkpoint(checkpoint: str | None, model_path: str | None = None, peft_subdir: str = "peft",
                       allow_modified: bool = False) -> ModelSpec:
    """Decide what to load. ``model_path`` (the ``model`` config) overrides the base named in run.json.  An adapter
    checkpoint's files are verified first (:func:`verify_checkpoint`)."""
    if checkpoint is None:
        if not model_path:
            raise ValueError("nothing to evaluate: give checkpoint=<dir> and/or model=<name> (e.g. model=tiny)")
        return ModelSpec(model_path=model_path, tokenizer_path=model_path)
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise FileNotFoundError(f"checkpoint {ckpt} is not a directory")
    if not (ckpt / "adapter_config.json").is_file() and (ckpt / "final" / "adapter_config.json").is_file():
        ckpt = ckpt / "final"
    run = read_run(ckpt)
    run_model = dict((run.get("config") or {}).get("model") or {})
    if (ckpt / "adapter_config.json").is_file():
        base = model_path or run_model.get("path")
        if not base:
            raise ValueError(f"{ckpt} is an adapter checkpoint but names no base model (no run.json with "
                             "config.model.path): pass model=<name> (e.g. model=llama2_7b)")
        integrity = verify_checkpoint(ckpt, run, allow_modified)
        peft = ckpt / peft_subdir
        return ModelSpec(model_path=base, tokenizer_path=base, adapter_dir=str(ckpt),
                         peft_dir=str(peft) if (peft / "adapter_config.json").is_file() else None,
                         kind="adapter", run_model=run_model, integrity=integrity)
    if (ckpt / "config.json").is_file():
        has_tok = any((ckpt / f).is_file() for f in TOKENIZER_FILES)
        tokenizer = str(ckpt) if has_tok else (model_path or run_model.get("path"))
        if not tokenizer:
            raise ValueError(f"{ckpt} is a model without tokenizer files: pass model=<base> to take its tokenizer")
        return ModelSpec(model_path=str(ckpt), tokenizer_path=tokenizer, kind="merged", run_model=run_model)
    raise FileNotFoundError(f"{ckpt}: neither an adapter checkpoint (adapter_config.json + adapter.safetensors) "
                            "nor a model directory (config.json)")


def merged_model(model_path: str, adapter_dir: str, *, merge_from: str = "nf4", dtype="auto",
                 double_quant: bool = True, device: str = "auto"):
    """The adapter merged into the base it was trained on, as the paper's authors did (open-instruct
    ``merge_lora.py --qlora``): the base is loaded in ``merge_from`` (``nf4`` for QLoRA), the compact adapter
    attached and merged (4-bit weights dequantized first); returns the dense transformers model."""
    import prolora
    from prolora.models import load_base_model

    base = load_base_model(model_path, quantize=merge_from == "nf4", load_in_8bit=merge_from == "8bit",
                           double_quant=double_quant, compute_dtype=dtype, device=device)
    return prolora.merge(prolora.load_adapter(base, adapter_dir))
