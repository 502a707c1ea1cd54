"""The Hydra schema of training: structured configs only (YAML under ``configs/`` picks values).

Each setting is declared once, where it is used: ``optim`` and ``trainer`` ARE the library's
:class:`~prolora.trainer.OptimArgs` and :class:`~prolora.trainer.TrainArgs`; the ``method`` node is generated
from the method registry (:func:`method_schema`).  Every field carries ``metadata["help"]``, which
``python train.py --help`` and ``--cfg job`` show.  Registering these in Hydra is :mod:`recipes.config_store`'s
job, building a run from them :mod:`recipes.run_config`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from prolora.methods import METHODS
from prolora.trainer import OptimArgs, TrainArgs

# method field -> the top-level shorthand that is its default (`python train.py method=prolora rank=8 unshared=1`)
SHORTHANDS = {"r": "rank", "u": "unshared", "m": "sharing", "n": "sharing"}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ModelConfig:
    name: str = field(default=MISSING, metadata=_help("the config's name: tiny | llama2_7b | smollm2_135m | ..."))
    path: str = field(default=MISSING, metadata=_help("hub name, local directory or .gguf file of the weights"))
    quantize: bool = field(default=True, metadata=_help("4-bit NF4 (bitsandbytes) as QLoRA; false = full precision"))
    double_quant: bool = field(default=True, metadata=_help("QLoRA's double quantisation of the 4-bit scales"))
    compute_dtype: str = field(default="auto", metadata=_help(
        "auto = bfloat16 where the hardware has it, else float32"))
    cpu_packed_4bit: bool = field(default=False, metadata=_help(
        "4-bit on a CPU: false = bitsandbytes' portable path (the same numbers on every CPU); true = its "
        "AVX512-BF16 packed path where the CPU has it"))
    gpu_hours_per_1k_steps: float = field(default=0.0, metadata=_help("rough cost, for the reproduce planner only"))


@dataclass
class DatasetConfig:
    name: str = field(default=MISSING, metadata=_help("superni | flan_v2 | cot | code_alpaca | demo | ..."))
    train_file: str = field(default=MISSING, metadata=_help(
        "the jsonl written by python -m scripts.prepare_data (relative: under data_dir)"))
    lr: float = field(default=2e-4, metadata=_help("the paper's learning rate for this dataset"))
    eval_tasks: list[str] = field(default_factory=list, metadata=_help(
        "the benchmarks this dataset feeds (THE dataset -> benchmark map)"))
    max_seq_len: int = field(default=512, metadata=_help("tokens per training example (longer ones are cut)"))
    raw_source: str = field(default="", metadata=_help("where scripts.prepare_data reads the published data"))


@dataclass
class WandbConfig:
    mode: str | None = field(default=None, metadata=_help(
        "null: offline unless WANDB_MODE says otherwise | online | offline | disabled"))
    project: str = field(default="prolora", metadata=_help("W&B project"))
    entity: str | None = field(default=None, metadata=_help("W&B entity"))
    group: str | None = field(default=None, metadata=_help("W&B group (null: experiment_name)"))
    tags: list[str] = field(default_factory=list, metadata=_help("W&B tags"))


@dataclass
class LoggerConfig:
    name: str = field(default="wandb", metadata=_help("wandb | none"))
    wandb: WandbConfig = field(default_factory=WandbConfig)


def method_fields() -> dict[str, str]:
    """Every field of every registered method's config with its help text (``preset`` is the name's business)."""
    fields: dict[str, str] = {}
    for method in METHODS.values():
        for name, text in method.config_cls.field_help().items():
            if name != "preset" and not fields.get(name):
                fields[name] = text
    return fields


@functools.cache
def method_schema() -> type:
    """``MethodConfig``: ``name`` (a method or preset) + every method field, null by default (the method's own
    default applies) or, for the shorthands' fields, the shorthand (``method.r: ${rank}``)."""
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=MISSING, metadata=_help(
        "the method or preset (lora, vera, tied_lora, prolora, clora, rolora, ...)")))]
    for name, text in method_fields().items():
        default = f"${{{SHORTHANDS[name]}}}" if name in SHORTHANDS else None
        fields.append((name, Any, field(default=default, metadata=_help(text))))
    return dataclasses.make_dataclass("MethodConfig", fields)


MethodConfig = method_schema()


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    method: MethodConfig = MISSING  # type: ignore[valid-type]
    dataset: DatasetConfig = MISSING
    optim: OptimArgs = field(default_factory=OptimArgs)
    trainer: TrainArgs = field(default_factory=TrainArgs)
    logger: LoggerConfig = MISSING
    seed: int = field(default=1, metadata=_help("seeds the adapter init, dropout and batch order"))
    rank: int | None = field(default=None, metadata=_help("shorthand: the default of method.r"))
    unshared: int | None = field(default=None, metadata=_help("shorthand: the default of method.u"))
    sharing: int | None = field(default=None, metadata=_help("shorthand: the default of method.m and method.n"))
    experiment_name: str = field(default="adhoc", metadata=_help("names the output tree and the W&B group"))
    output_dir: str | None = field(default=None, metadata=_help(
        "null: the Hydra run directory (named from the choices + the run's hash)"))
    data_dir: str = field(default="data", metadata=_help("root of prepared training data"))
    overwrite: bool = field(default=False, metadata=_help(
        "replace a finished run or another run's checkpoints in output_dir (never implicit)"))


def help_lines(node: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """``[(dotted key, default, help)]`` of a schema dataclass, nested dataclasses flattened."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(node)
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        kind = hints.get(f.name)
        if dataclasses.is_dataclass(kind):
            rows += help_lines(kind, key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((key, default, str(f.metadata.get("help", ""))))
    return rows
