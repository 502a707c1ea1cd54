"""What every adapter config has (:class:`AdapterConfig`), the one error type, and building a config by name.

Each method's own config class lives beside its layer, in ``prolora/methods/<method>.py`` (``LoRAConfig``
in ``lora.py``, ``PRoLoRAConfig`` and its presets in ``prolora.py``, ...).  :func:`make_config` finds a
method or a named preset through the method registry (:mod:`prolora.methods`), so a new method needs no
change here.

Every config validates itself in ``__post_init__`` and raises ONE :class:`ConfigError` naming the field, the
bad value and the fix.  Checks that depend on a layer's shape (``m`` wider than a layer, a target module the
model does not have) happen at attach time and also name the layer path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

SEVEN_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """An adapter configuration that cannot work; the message names the field, the value and the fix."""


def bad(cls_name: str, name: str, value: Any, why: str, fix: str) -> ConfigError:
    """``ConfigError("<Class>.<field>=<value> is invalid: <why>; <fix>")``."""
    return ConfigError(f"{cls_name}.{name}={value!r} is invalid: {why}; {fix}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class AdapterConfig:
    """Fields every method has.

    r: rank of ΔW = B A (A: r×h, B: o×r).  alpha: LoRA scaling numerator (ΔW is scaled by alpha/r where
    the method uses it).  dropout: dropout probability on the adapter input.  target_modules: module-name
    suffixes to adapt (default: the seven LLaMA linears).
    """

    method: ClassVar[str] = "adapter"

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(SEVEN_MODULES))

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not is_int(self.r) or self.r < 1:
            raise bad(name, "r", self.r, "the rank must be an integer >= 1", "use e.g. r=8")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise bad(name, "alpha", self.alpha, "alpha must be a positive number", "use e.g. alpha=16")
        self.alpha = float(self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise bad(name, "dropout", self.dropout, "dropout must be in [0, 1)", "use e.g. dropout=0.1")
        self.dropout = float(self.dropout)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        try:
            mods = [str(t) for t in self.target_modules]
        except TypeError:
            raise bad(name, "target_modules", self.target_modules, "expected a list of module names",
                      f"use e.g. target_modules={list(SEVEN_MODULES)}") from None
        if not mods or any(not t for t in mods) or len(set(mods)) != len(mods):
            raise bad(name, "target_modules", mods, "expected a non-empty list of distinct module names",
                      f"use e.g. target_modules={list(SEVEN_MODULES)}")
        self.target_modules = mods

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"method": ..., <fields>}``; :func:`config_from_dict` inverts it."""
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @property
    def name(self) -> str:
        """The name it was built as (a preset's name for a preset, else the method's)."""
        return self.method

    def tag(self) -> str:
        """Directory-safe name from the choices that set the budget: ``lora_r2``; methods add their own."""
        return f"{self.name}_r{self.r}"


def known_names() -> list[str]:
    """Every method and preset name :func:`make_config` accepts."""
    from prolora.methods import METHODS

    return sorted(set(METHODS) | {p for m in METHODS.values() for p in m.presets})


def make_config(name: str, **fields: Any) -> AdapterConfig:
    """Build the config of method or preset ``name`` from ``fields``; ``None`` fields are ignored.

    ``make_config("prolora", r=8, u=1, m=7)``, ``make_config("clora", r=16, m=2)``,
    ``make_config(**cfg.method)`` (Hydra).  A field the method does not have but that is set raises.
    """
    from prolora.methods import lookup

    method, preset = lookup(name)
    cls = method.config_cls
    given = {k: _plain(v) for k, v in fields.items() if v is not None}
    given.pop("method", None)
    allowed = set(cls.field_names())
    extra = sorted(k for k in given if k not in allowed)
    if extra:
        own = [f for f in cls.field_names() if f != "preset"]
        raise ConfigError(f"method {name!r} has no field(s) {extra} (set to {[given[k] for k in extra]}); "
                          f"{cls.__name__} fields are {own}: remove them or leave them null")
    return method.build_config(preset, given)


def config_from_dict(d: Mapping[str, Any]) -> AdapterConfig:
    """Inverse of :meth:`AdapterConfig.to_dict`."""
    from prolora.methods import METHODS

    d = dict(d)
    method = d.pop("method", None)
    if method not in METHODS:
        raise ConfigError(f"adapter config has method={method!r}; known: {sorted(METHODS)}")
    cls = METHODS[method].config_cls
    extra = sorted(set(d) - set(cls.field_names()))
    if extra:
        raise ConfigError(f"adapter config for {method!r} has unknown field(s) {extra}")
    return cls(**d)


def _plain(v: Any) -> Any:
    """OmegaConf ListConfig / tuples → list; leave scalars alone (no omegaconf import in the library)."""
    if isinstance(v, (str, bytes)) or isinstance(v, (int, float, bool)):
        return v
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    try:
        return [_plain(x) for x in v]
    except TypeError:
        return v
