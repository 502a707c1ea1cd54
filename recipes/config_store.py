"""Hydra registration, done once by each entry point (``register()``): the schemas of :mod:`recipes.schema` in
the ConfigStore, one ``method`` option per registered method and preset (so no method needs a YAML file), and
the resolvers the YAML uses.  The resolvers that name a run's directory read the run's config as
:mod:`recipes.run_config` built it, never build their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from prolora.methods import known_names
from recipes import run_config
from recipes.schema import DatasetConfig, LoggerConfig, MethodConfig, ModelConfig, TrainConfig


def register() -> None:
    """Store the schemas and the method options, and register the resolvers (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="method", name="method_schema", node=MethodConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    for name in known_names():  # `method=<name>`: the registry's methods and presets
        cs.store(group="method", name=name, node=MethodConfig(name=name))
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def run_tag(*, _root_: Any) -> str:
    """``${run_tag:}``: the adapter's directory-safe name (``prolora_r8_u1_m7_n7``); ``<name>_invalid`` for a
    config the library rejects (the recipe then reports the error in one line)."""
    return run_config.build(_root_).tag


def run_hash(*, _root_: Any) -> str:
    """``${run_hash:}``: the short hash of the run's identity, for its directory name."""
    return run_config.build(_root_).identity_hash


def asset_path(rel: str) -> str:
    """``${asset:demo/train.jsonl}``: a file shipped inside the ``prolora`` package."""
    from prolora.models import ASSETS

    return str(ASSETS / rel)


def first_set(*values: Any) -> Any:
    """``${first_set:${output_dir},outputs/...}``: the first value that is not null."""
    return next((v for v in values if v is not None), None)


def eval_home(checkpoint: Any = None) -> str:
    """``${eval_home:${checkpoint}}``: where an evaluation writes by default: ``<run>/eval`` for a checkpoint
    ``<run>/final`` (or a run dir holding ``final/``), so a sweep's directory holds its scores; else
    ``outputs/eval``."""
    if checkpoint:
        path = Path(str(checkpoint))
        if path.name == "final":
            return str(path.parent / "eval")
        if (path / "final").is_dir():
            return str(path / "eval")
    return "outputs/eval"


def train_help(*, _root_: Any) -> str:
    """``${train_help:}``: ``python train.py --help``: the usage, the config groups and every field with its
    help text (Hydra fills in ``$APP_CONFIG_GROUPS``)."""
    from recipes.schema import help_lines

    rows = [(key, default, text) for key, default, text in help_lines(TrainConfig) if text]
    width = max(len(k) for k, _, _ in rows)
    fields = "\n".join(f"  {k.ljust(width)}  {text} (default: {default})" for k, default, text in rows)
    fields = fields.replace("$", "$$")  # Hydra fills the template with string.Template
    return ("python train.py [group=option ...] [key=value ...]   e.g. python train.py method=prolora rank=8 "
            "unshared=1 dataset=superni seed=1\n\nConfig groups (group=option):\n$APP_CONFIG_GROUPS\n"
            f"Fields (key=value; method.* fields are null unless set: each method's own default applies):\n{fields}\n\n"
            "python train.py --cfg job [overrides]  prints the composed config, checked, with these help texts\n")


RESOLVERS = {"run_tag": run_tag, "run_hash": run_hash, "asset": asset_path, "first_set": first_set,
             "eval_home": eval_home, "train_help": train_help}
