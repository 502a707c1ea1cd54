"""The Hydra schema of the training entry point; YAML under ``configs/`` only picks values.

Each setting is declared once, where it is used: ``optim`` and ``trainer`` ARE the library's
:class:`~prolora.trainer.OptimArgs` and :class:`~prolora.trainer.TrainArgs`; the ``method`` node is generated
from the method registry (the union of every method's config fields, all null = the method's own default),
so a new method module needs no change here.  Importing this module registers the schema in Hydra's
ConfigStore and the resolvers the YAML uses.

Shorthands: ``rank=``, ``unshared=`` and ``sharing=`` (both m and n) are the defaults of ``method.r``,
``method.u``, ``method.m``/``method.n``; an explicit ``method.<field>=`` wins.  A shorthand a method has no
field for is refused (``method=lora unshared=1``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from prolora.trainer import OptimArgs, TrainArgs

SHORTHANDS = {"r": "rank", "u": "unshared", "m": "sharing", "n": "sharing"}  # method field -> top-level key


@dataclass
class ModelConfig:
    name: str = MISSING  # the config's name: tiny | tiny_pretrained | llama2_7b | llama2_13b | llama2_70b | ...
    path: str = MISSING  # hub name or local directory of the weights (the tiny models are shipped directories)
    quantize: bool = True  # 4-bit NF4 (bitsandbytes) as QLoRA; false = full precision
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto = bfloat16 where the hardware has it, else float32
    # 4-bit on a CPU: false = bitsandbytes' portable path on every CPU (the same numbers everywhere); true = its
    # AVX512-BF16 packed path where the CPU has it (faster, bf16 rounding; layers it cannot take stay portable)
    cpu_packed_4bit: bool = False
    gpu_hours_per_1k_steps: float = 0.0  # rough cost, for the reproduce planner only


def method_fields() -> list[str]:
    """Every field of every registered method's config (``preset`` is the method name's business)."""
    from prolora.methods import METHODS

    names: list[str] = []
    for method in METHODS.values():
        for f in method.config_cls.field_names():
            if f != "preset" and f not in names:
                names.append(f)
    return names


def _method_schema() -> type:
    """``MethodConfig``: ``name`` (a method or preset) + every method field, null by default (the method's
    own default applies) or, for the shorthands' fields, the shorthand."""
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=MISSING))]
    for f in method_fields():
        default = f"${{{SHORTHANDS[f]}}}" if f in SHORTHANDS else None
        fields.append((f, Any, field(default=default)))
    return dataclasses.make_dataclass("MethodConfig", fields)


MethodConfig = _method_schema()


@dataclass
class DatasetConfig:
    name: str = MISSING  # superni | flan_v2 | cot | code_alpaca | demo
    train_file: str = MISSING  # the jsonl written by scripts/prepare_data.py (records: dataset, id, messages)
    lr: float = 2e-4  # the paper's learning rate for this dataset
    eval_tasks: list[str] = field(default_factory=list)  # THE dataset -> benchmark map (experiments read it)
    max_seq_len: int = 512
    raw_source: str = ""  # where prepare_data.py reads the published data (hub name or local path)


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
    method: MethodConfig = MISSING  # type: ignore[valid-type]
    dataset: DatasetConfig = MISSING
    optim: OptimArgs = field(default_factory=OptimArgs)
    trainer: TrainArgs = field(default_factory=TrainArgs)
    logger: LoggerConfig = MISSING
    seed: int = 1
    # Shorthands, the defaults of method fields (`python train.py method=prolora rank=8 unshared=1`).
    rank: int | None = None
    unshared: int | None = None
    sharing: int | None = None  # sets both m and n
    experiment_name: str = "adhoc"
    output_dir: str | None = None  # None: the Hydra run directory (named from the choices + the run's hash)
    data_dir: str = "data"  # root of prepared training data (relative paths in dataset configs)
    overwrite: bool = False  # replace a finished run or another run's checkpoints in output_dir (never implicit)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="method", name="method_schema", node=MethodConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


register()


def counting_ref(model: Any) -> str:
    """What the parameter counter reads for a model node: a LLaMA-2 name (its published shapes, no weights
    needed) or the model's path (the directory's config.json)."""
    from prolora.models import LLAMA2_CONFIGS

    return str(model["name"]) if model["name"] in LLAMA2_CONFIGS else str(model["path"])


def adapter_config(method: Any):
    """The library config of a ``method`` node: ``prolora.make_config(**method)``.  An error caused by a
    shorthand says so (``unshared=1 does not apply to method=lora``, ``rank=-3: ...``)."""
    import prolora

    if not OmegaConf.is_config(method):
        return prolora.make_config(**dict(method))
    fields = OmegaConf.to_container(method, resolve=True)
    raw = OmegaConf.to_container(method, resolve=False)
    given = {SHORTHANDS[k]: v for k, v in fields.items()
             if k in SHORTHANDS and v is not None and raw.get(k) == f"${{{SHORTHANDS[k]}}}"}
    try:
        config = prolora.make_config(**fields)
    except prolora.ConfigError as e:
        from prolora.methods import lookup

        cls = lookup(fields["name"])[0].config_cls
        for key, value in given.items():
            own = [f for f, s in SHORTHANDS.items() if s == key]
            if not any(f in cls.field_names() for f in own):
                raise prolora.ConfigError(
                    f"{key}={value} does not apply to method={fields['name']} ({cls.__name__} has no "
                    f"{'/'.join(own)}): drop {key}=, or pick a method that has it") from None
            if any(f"{cls.__name__}.{f}={value!r}" in str(e) for f in own):
                raise prolora.ConfigError(f"{key}={value}: {e}") from None
        raise
    return config


# trainer settings that change no number (only speed, memory, logging, where and whether to resume)
NOT_IDENTITY = {"resume", "progress", "log_every", "save_every", "keep_last", "gradient_checkpointing"}


def run_identity(cfg: Any) -> dict[str, Any]:
    """Everything that decides a training run's numbers: how the base is loaded, the resolved adapter config
    (its defaults included), the dataset, the optimizer, the loop, the seed.  A run directory is named with its
    hash, and resume refuses a checkpoint whose identity differs (key by key)."""
    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)

    model = plain(cfg.model)
    try:
        adapter: Any = adapter_config(cfg.method).to_dict()
    except Exception as e:  # noqa: BLE001  (an invalid method: the recipe reports it; the hash must not fail)
        adapter = {"invalid": f"{type(e).__name__}: {e}"}
    dataset = plain(cfg.dataset)
    return {
        "model": {k: model.get(k) for k in ("name", "path", "quantize", "double_quant", "compute_dtype",
                                            "cpu_packed_4bit")},
        "adapter": adapter,
        "dataset": {k: dataset.get(k) for k in ("name", "train_file", "max_seq_len")},
        "optim": plain(cfg.optim),
        "trainer": {k: v for k, v in plain(cfg.trainer).items() if k not in NOT_IDENTITY},
        "seed": cfg.seed,
    }


def identity_hash(identity: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_hash(*, _root_: Any) -> str:
    """``${run_hash:}``: the short hash of the run's identity (:func:`run_identity`), for its directory name."""
    return identity_hash(run_identity(_root_))


def method_tag(method: Any) -> str:
    """``${method_tag:${method}}``: the directory-safe name of a method node (``prolora_r8_u1_m7_n7``); a node
    the library rejects gets ``<name>_invalid`` (the recipe reports the error itself, in one line)."""
    from prolora import ConfigError

    try:
        return adapter_config(method).tag()
    except (ConfigError, TypeError, ValueError):
        return f"{method['name']}_invalid"


def asset_path(rel: str) -> str:
    """``${asset:demo/train.jsonl}``: a file shipped inside the ``prolora`` package."""
    from prolora.models import ASSETS

    return str(ASSETS / rel)


def first_set(*values: Any) -> Any:
    """``${first_set:${output_dir},outputs/...}``: the first value that is not null (run dir = output_dir
    when the user gives one, so Hydra writes nothing elsewhere)."""
    return next((v for v in values if v is not None), None)


for _name, _fn in (("method_tag", method_tag), ("asset", asset_path), ("first_set", first_set),
                   ("run_hash", run_hash)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
