"""What every adapter config has (:class:`AdapterConfig`) and the one error type (:class:`ConfigError`).

A leaf module: it imports nothing of the library.  Each method's own config class lives beside its layer in
``prolora/methods/<method>.py``; building a config by name is the registry's (:mod:`prolora.methods.registry`).
Every config validates itself in ``__post_init__`` and raises ONE :class:`ConfigError` that names the field, the
bad value and the fix, and carries the field as data (``error.field``, ``error.value``, ``error.config``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

SEVEN_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """An adapter configuration that cannot work.  The message names the field, the value and the fix;
    ``field``/``value``/``config`` (the config class name) say the same as data, where one field is at fault."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None, config: str | None = None):
        super().__init__(message)
        self.field = field
        self.value = value
        self.config = config


def invalid(config: str, field: str, value: Any, why: str, fix: str) -> ConfigError:
    """``ConfigError("<Config>.<field>=<value> is invalid: <why>; <fix>")`` carrying the field and the value."""
    return ConfigError(f"{config}.{field}={value!r} is invalid: {why}; {fix}", field=field, value=value, config=config)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class AdapterConfig:
    """Fields every method has.

    r: rank of ΔW = B A (A: r×h, B: o×r).  alpha: LoRA scaling numerator (ΔW is scaled by alpha/r where
    the method uses it).  dropout: dropout probability on the adapter input.  target_modules: module-name
    suffixes to adapt (default: the seven LLaMA linears).
    """

    method: ClassVar[str] = "adapter"

    r: int = field(default=8, metadata={"help": "rank of the update ΔW = B A"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator: ΔW is scaled by alpha/r"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability on the adapter's input"})
    target_modules: list[str] = field(default_factory=lambda: list(SEVEN_MODULES),
                                      metadata={"help": "suffixes of the linear layers to adapt"})

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not is_int(self.r) or self.r < 1:
            raise invalid(name, "r", self.r, "the rank must be an integer >= 1", "use e.g. r=8")
        if not is_number(self.alpha) or self.alpha <= 0:
            raise invalid(name, "alpha", self.alpha, "alpha must be a positive number", "use e.g. alpha=16")
        self.alpha = float(self.alpha)
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise invalid(name, "dropout", self.dropout, "dropout must be in [0, 1)", "use e.g. dropout=0.1")
        self.dropout = float(self.dropout)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        try:
            mods = [str(t) for t in self.target_modules]
        except TypeError:
            raise invalid(name, "target_modules", self.target_modules, "expected a list of module names",
                          f"use e.g. target_modules={list(SEVEN_MODULES)}") from None
        if not mods or any(not t for t in mods) or len(set(mods)) != len(mods):
            raise invalid(name, "target_modules", mods, "expected a non-empty list of distinct module names",
                          f"use e.g. target_modules={list(SEVEN_MODULES)}")
        self.target_modules = mods

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"method": ..., <fields>}``; :func:`prolora.config_from_dict` inverts it."""
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """``{field: its help text}`` from the fields' ``metadata["help"]`` (empty where a field has none)."""
        return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(cls)}

    @property
    def name(self) -> str:
        """The name it was built as (a preset's name for a preset, else the method's)."""
        return self.method

    def tag(self) -> str:
        """Directory-safe name from the choices that set the budget: ``lora_r2``; methods add their own."""
        return f"{self.name}_r{self.r}"
