"""Adapter methods behind one interface (:class:`~prolora.methods.base.Method`), registered by name."""

from prolora.methods import lora, prolora, tied_lora, vera  # noqa: F401  (registers the methods)
from prolora.methods.base import METHODS, AdapterLayer, Method, get_method, register

__all__ = ["METHODS", "AdapterLayer", "Method", "get_method", "register"]
