"""A training run's settings, built and checked ONCE per process from the composed Hydra config.

:func:`build` turns the config into a :class:`RunConfig` (the library's adapter config, ``TrainArgs``,
``OptimArgs``, the run's identity and its hash, the directory tag) and keeps it: the resolvers that name the
run directory (``${run_tag:}``, ``${run_hash:}``), the recipe's ``plan()`` and ``run.json`` all read that one
object.  A config the library rejects still gets a RunConfig (``error`` set, tag ``<name>_invalid``), so Hydra
can name a directory and the recipe then reports the error in one line (:meth:`RunConfig.check`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

import prolora
from prolora.models import LLAMA2_CONFIGS
from prolora.trainer import OptimArgs, TrainArgs
from recipes.schema import SHORTHANDS

# trainer settings that change no number (only speed, memory, logging, where and whether to resume)
NOT_IDENTITY = {"resume", "progress", "log_every", "save_every", "keep_last", "gradient_checkpointing"}
MODEL_IDENTITY = ("name", "path", "quantize", "double_quant", "compute_dtype", "cpu_packed_4bit")
DATASET_IDENTITY = ("name", "train_file", "max_seq_len")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run is, from its config; ``error`` is the first setting the library rejected."""

    adapter: prolora.AdapterConfig | None
    trainer: TrainArgs | None
    optim: OptimArgs | None
    identity: dict[str, Any]  # everything that decides the run's numbers (the data's hash is added at training)
    identity_hash: str
    tag: str  # the adapter's directory-safe name
    error: Exception | None = None

    def check(self) -> RunConfig:
        """Raise the (one-line) error of an invalid config; return self otherwise."""
        if self.error is not None:
            raise self.error
        return self


_BUILT: dict[str, RunConfig] = {}


def build(cfg: DictConfig) -> RunConfig:
    """The RunConfig of ``cfg`` (the job config, or Hydra's root config with its ``hydra`` node): built the first
    time this process sees these settings, then the same object."""
    settings = _plain_job(cfg)
    key = json.dumps(settings, sort_keys=True, default=str)
    if key not in _BUILT:
        _BUILT[key] = _construct(cfg, settings)
    return _BUILT[key]


def _plain_job(cfg: DictConfig) -> dict[str, Any]:
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def _construct(cfg: DictConfig, settings: dict[str, Any]) -> RunConfig:
    error: Exception | None = None
    adapter = trainer = optim = None
    try:
        adapter = adapter_config(cfg.method)
        trainer = OmegaConf.to_object(cfg.trainer)
        optim = OmegaConf.to_object(cfg.optim)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError; the recipe reports it in one line
        error = e
    identity = run_identity(settings, adapter, error)
    tag = adapter.tag() if adapter is not None else f"{settings['method']['name']}_invalid"
    return RunConfig(adapter=adapter, trainer=trainer, optim=optim, identity=identity,
                     identity_hash=identity_hash(identity), tag=tag, error=error)


def adapter_config(method: Any) -> prolora.AdapterConfig:
    """The library config of a ``method`` node: ``prolora.make_config(**method)``.  An error caused by a
    shorthand says so (``unshared=1 does not apply to method=lora``, ``rank=-3: ...``)."""
    if not OmegaConf.is_config(method):
        return prolora.make_config(**dict(method))
    fields = OmegaConf.to_container(method, resolve=True)
    raw = OmegaConf.to_container(method, resolve=False)
    from_shorthand = {k: SHORTHANDS[k] for k, v in fields.items()
                      if k in SHORTHANDS and v is not None and raw.get(k) == f"${{{SHORTHANDS[k]}}}"}
    try:
        return prolora.make_config(**fields)
    except prolora.ConfigError as e:
        shorthand = from_shorthand.get(e.field)
        if shorthand is None:
            raise
        cls = prolora.methods.lookup(fields["name"])[0].config_cls
        if e.field not in cls.field_names():  # the method has no such field: name every shorthand that misses
            missing: dict[str, list[str]] = {}
            for key, short in from_shorthand.items():
                if key not in cls.field_names():
                    missing.setdefault(short, []).append(key)
            said = "; ".join(f"{short}={fields[keys[0]]} does not apply to method={fields['name']} ({cls.__name__} "
                             f"has no {'/'.join(keys)})" for short, keys in missing.items())
            raise prolora.ConfigError(f"{said}: drop {', '.join(f'{s}=' for s in missing)} or pick a method that "
                                      "has it", field=e.field) from None
        raise prolora.ConfigError(f"{shorthand}={e.value}: {e}", field=e.field, value=e.value,
                                  config=e.config) from None


def run_identity(settings: dict[str, Any], adapter: prolora.AdapterConfig | None,
                 error: Exception | None = None) -> dict[str, Any]:
    """Everything that decides a training run's numbers: how the base is loaded, the resolved adapter config
    (its defaults included), the dataset, the optimizer, the loop, the seed.  A run directory is named with its
    hash, and resume refuses a checkpoint whose identity differs (key by key)."""
    model, dataset = settings.get("model") or {}, settings.get("dataset") or {}
    return {
        "model": {k: model.get(k) for k in MODEL_IDENTITY},
        "adapter": adapter.to_dict() if adapter is not None else {"invalid": f"{type(error).__name__}: {error}"},
        "dataset": {k: dataset.get(k) for k in DATASET_IDENTITY},
        "optim": settings.get("optim"),
        "trainer": {k: v for k, v in (settings.get("trainer") or {}).items() if k not in NOT_IDENTITY},
        "seed": settings.get("seed"),
    }


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def counting_ref(model: Any) -> str:
    """What the parameter counter reads for a model node: a LLaMA-2 name (its published shapes, no weights
    needed) or the model's path (the directory's config.json)."""
    return str(model["name"]) if model["name"] in LLAMA2_CONFIGS else str(model["path"])
