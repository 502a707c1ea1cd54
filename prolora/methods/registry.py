"""The method registry: every method and preset by name, and building an adapter config from a name and fields.

``prolora.methods`` imports every module of the package, each registering its method with ``@register``; so
``make_config``/``config_from_dict`` know every method once ``prolora.methods`` is imported (which importing
this module does, as its parent package).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prolora.config import AdapterConfig, ConfigError
from prolora.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register(method: type[Method]) -> type[Method]:
    """Class decorator: make ``method`` known by its ``name`` (and its presets by theirs)."""
    if method.config_cls.method != method.name:
        raise TypeError(f"{method.__name__}: config method {method.config_cls.method!r} != {method.name!r}")
    if not (method.layer_cls.adapter_params or method.layer_cls.adapter_buffers):
        raise TypeError(f"{method.layer_cls.__name__} declares nothing it saves: declare the names of the parameters "
                        "the layer trains (e.g. adapter_params = ('lora_A', 'lora_B')) or, for a layer whose trained "
                        "tensors are all model-level shared ones, the buffers it saves (adapter_buffers)")
    taken = {p: m.name for m in METHODS.values() if m.name != method.name for p in (m.name, *m.presets)}
    clash = sorted(n for n in (method.name, *method.presets) if n in taken)
    if clash:
        raise TypeError(f"{method.__name__}: name(s) {clash} already registered by {[taken[n] for n in clash]}")
    METHODS[method.name] = method
    return method


def known_names() -> list[str]:
    """Every method and preset name :func:`make_config` accepts."""
    return sorted(set(METHODS) | {p for m in METHODS.values() for p in m.presets})


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown adapter method {name!r}; registered: {sorted(METHODS)}") from None


def lookup(name: str) -> tuple[type[Method], str | None]:
    """``(method, preset)`` for a method name (preset None) or a preset name."""
    if name in METHODS:
        return METHODS[name], None
    for method in METHODS.values():
        if name in method.presets:
            return method, name
    raise ConfigError(f"unknown adapter method {name!r}; known: {known_names()}", field="method", value=name)


def make_config(name: str, **fields: Any) -> AdapterConfig:
    """Build the config of method or preset ``name`` from ``fields``; ``None`` fields are ignored.

    ``make_config("prolora", r=8, u=1, m=7)``, ``make_config("clora", r=16, m=2)``.  A field the method does
    not have but that is set raises (``error.field`` names it).
    """
    method, preset = lookup(name)
    cls = method.config_cls
    given = {k: _plain(v) for k, v in fields.items() if v is not None}
    given.pop("method", None)
    extra = sorted(k for k in given if k not in cls.field_names())
    if extra:
        own = [f for f in cls.field_names() if f != "preset"]
        raise ConfigError(f"method {name!r} has no field(s) {extra} (set to {[given[k] for k in extra]}); "
                          f"{cls.__name__} fields are {own}: remove them or leave them null",
                          field=extra[0], value=given[extra[0]], config=cls.__name__)
    return method.build_config(preset, given)


def config_from_dict(d: Mapping[str, Any]) -> AdapterConfig:
    """Inverse of :meth:`AdapterConfig.to_dict`."""
    d = dict(d)
    method = d.pop("method", None)
    if method not in METHODS:
        raise ConfigError(f"adapter config has method={method!r}; known: {sorted(METHODS)}",
                          field="method", value=method)
    cls = METHODS[method].config_cls
    extra = sorted(set(d) - set(cls.field_names()))
    if extra:
        raise ConfigError(f"adapter config for {method!r} has unknown field(s) {extra}", field=extra[0],
                          config=cls.__name__)
    return cls(**d)


def _plain(v: Any) -> Any:
    """OmegaConf ListConfig / tuples → list; leave scalars alone (no omegaconf import in the library)."""
    if isinstance(v, (str, bytes, int, float, bool)):
        return v
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    try:
        return [_plain(x) for x in v]
    except TypeError:
        return v
