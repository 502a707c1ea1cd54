"""Adapter methods behind one interface (:mod:`prolora.methods.base`), registered by name
(:mod:`prolora.methods.registry`).

Every module of this package but ``base``, ``registry`` and private ``_*`` ones is a method and is imported
here, registering itself with ``@register``: adding ``prolora/methods/<name>.py`` is all a new method needs.
"""

import importlib
import pkgutil

from prolora.methods.base import AdapterLayer, Method, SharedModule
from prolora.methods.registry import (
    METHODS,
    config_from_dict,
    get_method,
    known_names,
    lookup,
    make_config,
    register,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "AdapterLayer", "Method", "SharedModule", "config_from_dict", "get_method", "known_names",
           "lookup", "make_config", "register"]
