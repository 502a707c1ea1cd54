"""Structured configs (the schema) for the Hydra entry points; YAML under ``configs/`` only picks values.

Everything Hydra-specific lives in ``recipes/``: the ``prolora`` library never imports Hydra.  Importing
this module registers the schema in Hydra's ConfigStore and the ``pick`` resolver used by the
``rank=``/``unshared=``/``sharing=`` shorthands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

SEVEN_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _pick(name: str, value: Any, default: Any, minimum: int = 0) -> Any:
    """``${pick:rank,${rank},8}``: the shorthand's value if set, else the method's default; checked."""
    chosen = default if value is None else value
    if chosen is None:
        return None
    if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < minimum:
        raise ValueError(
            f"{name}={value!r} is invalid: {name} must be an integer >= {minimum} "
            f"(e.g. {name}={max(minimum, 1)})")
    return chosen


if not OmegaConf.has_resolver("pick"):
    OmegaConf.register_new_resolver("pick", _pick)


@dataclass
class ModelConfig:
    name: str = MISSING  # tiny | llama2_7b | llama2_13b | llama2_70b
    path: str = MISSING  # hub name or local directory of the weights; "tiny" builds the embedded model
    quantize: bool = True  # 4-bit NF4 (bitsandbytes) as QLoRA; false = full precision
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto = bfloat16 where the hardware has it, else float32
    # 4-bit on a CPU: false = bitsandbytes' portable path on every CPU (the same numbers everywhere); true = its
    # AVX512-BF16 packed path where the CPU has it (faster, bf16 rounding; layers it cannot take stay portable)
    cpu_packed_4bit: bool = False
    layers: int = 0  # informational: number of decoder layers
    gpu_hours_per_1k_steps: float = 0.0  # rough cost used by the reproduce planner


@dataclass
class MethodConfig:
    """One flat schema for every method; ``prolora.make_config(**method)`` builds the library config."""

    name: str = MISSING  # lora | vera | tied_lora | clora | rolora | prolora | prolora_nr | prolora_ni | ...
    r: int = 8
    u: int | None = None  # PRoLoRA family: unshared ranks
    m: int | None = None  # sharing rate of A
    n: int | None = None  # sharing rate of B
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(SEVEN_MODULES))
    rotate: bool | None = None
    rectified_init: bool | None = None
    share_dim: str | None = None  # hidden | rank (Table 4)
    rotate_dim: str | None = None  # rank | hidden (Table 4)
    stride_from: str | None = None  # PRoLoRA roll stride from the shared rank r-u (authors) or r (paper)
    d_init: float | None = None  # VeRA lambda_d init
    projection_seed: int | None = None  # VeRA frozen pair seed


@dataclass
class DatasetConfig:
    name: str = MISSING  # superni | flan_v2 | cot | code_alpaca | demo
    train_file: str = MISSING  # the jsonl written by scripts/prepare_data.py (records: dataset, id, messages)
    lr: float = 2e-4  # the paper's learning rate for this dataset
    eval_tasks: list[str] = field(default_factory=list)  # benchmarks this dataset feeds
    max_seq_len: int = 512
    raw_source: str = ""  # where prepare_data.py reads the published data (hub name or local path)


@dataclass
class OptimConfig:
    name: str = "paged_adamw_32bit"  # paged_adamw_32bit | paged_adamw_8bit | adamw
    lr: float = "${dataset.lr}"  # type: ignore[assignment]
    shared_lr: float | None = None  # separate LR for shared PRoLoRA chunks (paper's future work); off
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float = 0.3
    scheduler: str = "linear"
    warmup_ratio: float = 0.03


@dataclass
class TrainerConfig:
    max_steps: int = 10_000
    batch_size: int = 16  # effective batch (sequences per optimizer step)
    micro_batch_size: int = 16  # per forward; batch_size / micro_batch_size = gradient accumulation
    group_by_length: bool = True
    save_every: int = 1000  # compact adapter checkpoint every N optimizer steps (0 = only at the end)
    keep_last: int = 2  # checkpoints kept besides the final one
    log_every: int = 10
    resume: bool = False  # pick the last complete checkpoint in output_dir
    device: str = "auto"  # auto | cpu | cuda
    # true = every decoder layer (as the authors ran: 16 x 512 on a 40 GB GPU needs it), false, a number of
    # layers, or auto = as few layers as fit in memory (measured on the first, longest batch)
    gradient_checkpointing: Any = "auto"
    max_train_samples: int = 0  # 0 = all


@dataclass
class WandbConfig:
    mode: str | None = None  # None: offline unless WANDB_MODE says otherwise; online | offline | disabled
    project: str = "prolora"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    dataset: DatasetConfig = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = MISSING
    seed: int = 1
    # Shorthands resolved into the method config (`python train.py method=prolora rank=8 unshared=1`).
    rank: int | None = None
    unshared: int | None = None
    sharing: int | None = None  # sets both m and n
    experiment_name: str = "adhoc"
    output_dir: str | None = None  # None: the Hydra run directory (named from the choices)
    data_dir: str = "data"  # root of prepared training data (relative paths in dataset configs)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="method", name="method_schema", node=MethodConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


register()


def method_tag(method: Any) -> str:
    """Directory-safe name of a method config from its choices: ``prolora_r8_u1_m7_n7``, ``lora_r2``."""
    parts = [str(method["name"]), f"r{method['r']}"]
    for key in ("u", "m", "n"):
        if method.get(key) is not None:
            parts.append(f"{key}{method[key]}")
    return "_".join(parts)


def asset_path(rel: str) -> str:
    """``${asset:demo/train.jsonl}``: a file shipped inside the ``prolora`` package."""
    from prolora.models import ASSETS

    return str(ASSETS / rel)


def first_set(*values: Any) -> Any:
    """``${first_set:${output_dir},outputs/...}``: the first value that is not null (run dir = output_dir
    when the user gives one, so Hydra writes nothing elsewhere)."""
    return next((v for v in values if v is not None), None)


for _name, _fn in (("method_tag", method_tag), ("asset", asset_path), ("first_set", first_set)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
