"""Adapter configurations: one dataclass per method, the PRoLoRA presets, and ``make_config``.

Every config validates itself in ``__post_init__`` and raises ONE :class:`ConfigError` naming the
field, the bad value and the fix.  Checks that depend on a layer's shape (``m`` wider than a layer,
a target module the model does not have) happen at attach time and also name the layer path.

The Hydra recipes call ``make_config(**cfg.method)`` with the flat schema of
``recipes.schema.MethodConfig`` (name, r, u, m, n, alpha, dropout, target_modules, rotate,
rectified_init, share_dim, rotate_dim, stride_from, d_init, projection_seed); fields that are
``None`` are ignored, so one schema serves every method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

SEVEN_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QKV_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")


class ConfigError(ValueError):
    """An adapter configuration that cannot work; the message names the field, the value and the fix."""


def _bad(cls_name: str, name: str, value: Any, why: str, fix: str) -> ConfigError:
    return ConfigError(f"{cls_name}.{name}={value!r} is invalid: {why}; {fix}")


def _is_int(v: Any) -> bool:
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
        if not _is_int(self.r) or self.r < 1:
            raise _bad(name, "r", self.r, "the rank must be an integer >= 1", "use e.g. r=8")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise _bad(name, "alpha", self.alpha, "alpha must be a positive number", "use e.g. alpha=16")
        self.alpha = float(self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise _bad(name, "dropout", self.dropout, "dropout must be in [0, 1)", "use e.g. dropout=0.1")
        self.dropout = float(self.dropout)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        try:
            mods = [str(t) for t in self.target_modules]
        except TypeError:
            raise _bad(name, "target_modules", self.target_modules, "expected a list of module names",
                       f"use e.g. target_modules={list(SEVEN_MODULES)}") from None
        if not mods or any(not t for t in mods) or len(set(mods)) != len(mods):
            raise _bad(name, "target_modules", mods, "expected a non-empty list of distinct module names",
                       f"use e.g. target_modules={list(SEVEN_MODULES)}")
        self.target_modules = mods

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"method": ..., <fields>}``; :func:`config_from_dict` inverts it."""
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class LoRAConfig(AdapterConfig):
    """LoRA (Hu et al. 2021): ΔW = (alpha/r) B A, A Kaiming-uniform (PEFT's a=√5), B = 0."""

    method: ClassVar[str] = "lora"


@dataclass
class VeRAConfig(AdapterConfig):
    """VeRA (Kopiczko et al. 2023): ΔW = diag(λ_b) B diag(λ_d) A with frozen random A, B.

    One frozen (A, B) pair per module type (``q_proj``, …), shared by all layers and regenerated from
    ``projection_seed`` (never saved).  Trainable: λ_d (r, init ``d_init``) and λ_b (o, init 0) per module.
    No alpha/r scaling (``alpha`` is accepted for a uniform schema and ignored).
    """

    method: ClassVar[str] = "vera"

    r: int = 256
    d_init: float = 0.1
    projection_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.d_init, bool) or not isinstance(self.d_init, (int, float)):
            raise _bad("VeRAConfig", "d_init", self.d_init, "d_init must be a number", "use e.g. d_init=0.1")
        self.d_init = float(self.d_init)
        if not _is_int(self.projection_seed) or self.projection_seed < 0:
            raise _bad("VeRAConfig", "projection_seed", self.projection_seed,
                       "the seed must be a non-negative integer", "use e.g. projection_seed=0")


@dataclass
class TiedLoRAConfig(AdapterConfig):
    """Tied LoRA (Renduchintala et al. 2023) on q/k/v: see :mod:`prolora.methods.tied_lora`."""

    method: ClassVar[str] = "tied_lora"

    r: int = 256
    target_modules: list[str] = field(default_factory=lambda: list(QKV_MODULES))

    def __post_init__(self) -> None:
        super().__post_init__()
        extra = [t for t in self.target_modules if t not in QKV_MODULES]
        if extra:
            raise _bad("TiedLoRAConfig", "target_modules", self.target_modules,
                       f"Tied LoRA ties one A across q/k/v, so it only adapts {list(QKV_MODULES)} (got {extra})",
                       f"use target_modules={list(QKV_MODULES)}")


SHARE_DIMS = ("hidden", "rank")
ROTATE_DIMS = ("rank", "hidden")
STRIDE_FROM = ("shared", "full")


@dataclass
class PRoLoRAConfig(AdapterConfig):
    """PRoLoRA and its family (CLoRA, RoLoRA, ablations, Table 4 variants); see :mod:`prolora.methods.prolora`.

    u: unshared ranks (u = r is plain LoRA).  m, n: sharing rates of A and B (n=None → m).
    rotate: roll the copies.  rectified_init: A_0 uses the full fan-in h (else the chunk's).
    share_dim: "hidden" (paper) or "rank" (Table 4).  rotate_dim: "rank" (paper) or "hidden".
    stride_from: "shared" (authors' code, stride from r−u) or "full" (paper's formula, stride from r).
    preset: the named variant this config was built as (checked against the fields it fixes).
    """

    method: ClassVar[str] = "prolora"

    r: int = 8
    u: int = 1
    m: int = 7
    n: int | None = None
    rotate: bool = True
    rectified_init: bool = True
    share_dim: str = "hidden"
    rotate_dim: str = "rank"
    stride_from: str = "shared"
    preset: str = "prolora"

    def __post_init__(self) -> None:
        super().__post_init__()
        c = "PRoLoRAConfig"
        if self.n is None:
            self.n = self.m
        if not _is_int(self.u) or self.u < 0:
            raise _bad(c, "u", self.u, "the number of unshared ranks must be an integer >= 0", "use e.g. u=1")
        if self.u > self.r:
            raise _bad(c, "u", self.u, f"u (unshared ranks) cannot exceed r={self.r}",
                       f"use u <= {self.r} (u = r is plain LoRA) or raise r")
        for key in ("m", "n"):
            v = getattr(self, key)
            if not _is_int(v) or v < 1:
                raise _bad(c, key, v, "the sharing rate must be an integer >= 1 (1 = no sharing)",
                           f"use e.g. {key}=7")
        if not isinstance(self.rotate, bool):
            raise _bad(c, "rotate", self.rotate, "expected true or false", "use rotate=true")
        if not isinstance(self.rectified_init, bool):
            raise _bad(c, "rectified_init", self.rectified_init, "expected true or false",
                       "use rectified_init=true")
        if self.share_dim not in SHARE_DIMS:
            raise _bad(c, "share_dim", self.share_dim, f"unknown sharing dimension (known: {list(SHARE_DIMS)})",
                       "use share_dim='hidden' (the paper) or 'rank' (Table 4)")
        if self.rotate_dim not in ROTATE_DIMS:
            raise _bad(c, "rotate_dim", self.rotate_dim, f"unknown rotation dimension (known: {list(ROTATE_DIMS)})",
                       "use rotate_dim='rank' (the paper) or 'hidden' (Table 4)")
        if self.stride_from not in STRIDE_FROM:
            raise _bad(c, "stride_from", self.stride_from, f"unknown stride rule (known: {list(STRIDE_FROM)})",
                       "use stride_from='shared' (authors' code) or 'full' (paper formula)")
        if self.stride_from == "full" and self.rotate_dim != "rank":
            raise _bad(c, "stride_from", self.stride_from,
                       "the paper's stride max(floor(r/m),1) is defined for rotation along the rank dim only",
                       "use stride_from='shared' with rotate_dim='hidden'")
        shared = self.r - self.u
        if self.share_dim == "rank" and shared > 0:
            for key in ("m", "n"):
                v = getattr(self, key)
                if v > shared:
                    raise _bad(c, key, v, f"share_dim='rank' splits the r-u={shared} shared ranks into {key} "
                               "chunks, so it cannot exceed r-u", f"use {key} <= {shared}")
        if self.preset not in PRESETS:
            raise _bad(c, "preset", self.preset, f"unknown preset (known: {sorted(PRESETS)})",
                       "use make_config(<preset>, ...)")
        for key, want in PRESETS[self.preset].items():
            got = getattr(self, key)
            if got != want:
                raise _bad(c, key, got, f"preset {self.preset!r} fixes {key}={want!r}",
                           f"drop {key} or pick another preset (known: {sorted(PRESETS)})")

    @property
    def shared_rank(self) -> int:
        return self.r - self.u


# Fields each named PRoLoRA-family preset fixes; everything else is free (r, u, m, n, ...).
PRESETS: dict[str, dict[str, Any]] = {
    "prolora": {},
    "clora": {"u": 0, "rotate": False, "share_dim": "hidden", "rotate_dim": "rank"},
    "rolora": {"u": 0, "rotate": True, "share_dim": "hidden", "rotate_dim": "rank"},
    "prolora_nr": {"rotate": False, "share_dim": "hidden", "rotate_dim": "rank"},
    "prolora_ni": {"rectified_init": False, "share_dim": "hidden", "rotate_dim": "rank"},
    "share_hidden_rotate_hidden": {"share_dim": "hidden", "rotate_dim": "hidden", "rotate": True},
    "share_rank_rotate_rank": {"share_dim": "rank", "rotate_dim": "rank", "rotate": True},
    "share_rank_rotate_hidden": {"share_dim": "rank", "rotate_dim": "hidden", "rotate": True},
}

CONFIG_CLASSES: dict[str, type[AdapterConfig]] = {
    "lora": LoRAConfig, "vera": VeRAConfig, "tied_lora": TiedLoRAConfig, "prolora": PRoLoRAConfig,
}


def known_names() -> list[str]:
    return sorted(set(CONFIG_CLASSES) | set(PRESETS))


def make_config(name: str, **fields: Any) -> AdapterConfig:
    """Build the config of method or preset ``name`` from ``fields``; ``None`` fields are ignored.

    ``make_config("prolora", r=8, u=1, m=7)``, ``make_config("clora", r=16, m=2)``,
    ``make_config(**cfg.method)`` (Hydra).  A field the method does not have but that is set raises.
    """
    if name not in CONFIG_CLASSES and name not in PRESETS:
        raise ConfigError(f"unknown adapter method {name!r}; known: {known_names()}")
    cls = CONFIG_CLASSES.get(name, PRoLoRAConfig)
    given = {k: _plain(v) for k, v in fields.items() if v is not None}
    given.pop("method", None)
    allowed = set(cls.field_names())
    extra = sorted(k for k in given if k not in allowed)
    if extra:
        own = [f for f in cls.field_names() if f != "preset"]
        raise ConfigError(f"method {name!r} has no field(s) {extra} (set to {[given[k] for k in extra]}); "
                          f"{cls.__name__} fields are {own}: remove them or leave them null")
    if cls is PRoLoRAConfig:
        preset = given.pop("preset", name)
        if name in PRESETS and preset != name:
            raise ConfigError(f"make_config({name!r}, preset={preset!r}): the preset is the name; drop preset")
        for key, want in PRESETS[preset].items():
            got = given.setdefault(key, want)
            if got != want:
                raise ConfigError(f"PRoLoRAConfig.{key}={got!r} is invalid: preset {preset!r} fixes "
                                  f"{key}={want!r}; drop {key} or pick another preset (known: {sorted(PRESETS)})")
        given["preset"] = preset
    return cls(**given)


def config_from_dict(d: Mapping[str, Any]) -> AdapterConfig:
    """Inverse of :meth:`AdapterConfig.to_dict`."""
    d = dict(d)
    method = d.pop("method", None)
    if method not in CONFIG_CLASSES:
        raise ConfigError(f"adapter config has method={method!r}; known: {sorted(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[method]
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
