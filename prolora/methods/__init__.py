"""Adapter methods behind one interface (:class:`~prolora.methods.base.Method`), registered by name.

Every module of this package (but ``base`` and private ``_*`` ones) is imported here, and each registers its
method with ``@register``: adding ``prolora/methods/<name>.py`` is all the library needs for a new method.
"""

import importlib
import pkgutil

from prolora.methods.base import METHODS, AdapterLayer, Method, get_method, lookup, register

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "AdapterLayer", "Method", "get_method", "lookup", "register"]
