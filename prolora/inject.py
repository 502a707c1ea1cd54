"""Find the target linears of a model and swap in the method's adapter layers.

Targets are modules whose dotted name ends with one of ``config.target_modules`` and that have
``in_features``/``out_features`` (``torch.nn.Linear``, bitsandbytes ``Linear4bit``/``Linear8bitLt``, …).
Everything is validated before the model is touched, so a bad config leaves the model as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from prolora.config import AdapterConfig, ConfigError
from prolora.methods import AdapterLayer, get_method
from prolora.methods.base import declared_state

SHARED_ATTR = "prolora_shared"
CONFIG_ATTR = "prolora_config"


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def find_targets(model: nn.Module, target_modules: list[str]) -> list[tuple[str, nn.Module]]:
    """``[(path, module)]`` of the linears ``target_modules`` selects; raises if a target matches nothing."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer) or ".base_layer" in f".{name}":
            continue
        hit = next((t for t in target_modules if _matches(name, t)), None)
        if hit is None:
            continue
        if not (hasattr(module, "in_features") and hasattr(module, "out_features")):
            raise ConfigError(
                f"target_modules entry {hit!r} selects layer {name} ({type(module).__name__}), which is not a "
                "linear layer (no in_features/out_features); name the linear projections instead")
        found.append((name, module))
        seen.add(hit)
    missing = [t for t in target_modules if t not in seen]
    if missing:
        linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                               if hasattr(m, "in_features") and hasattr(m, "out_features")})
        raise ConfigError(
            f"target_modules={list(target_modules)} is invalid: {missing} match no layer of "
            f"{type(model).__name__} (layer paths end with one of {linear_names}); fix target_modules")
    return found


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """``{path of the adapted linear: adapter layer}`` in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def get_config(model: nn.Module) -> AdapterConfig | None:
    return getattr(model, CONFIG_ATTR, None)


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def attach(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze every base parameter and wrap each targeted linear with ``config``'s adapter (in place).

    Model-level shared parameters (VeRA's frozen pairs, Tied LoRA's A/B/u) are created once under
    ``model.prolora_shared[<method>]``; the config is stored as ``model.prolora_config``.
    Works on the meta device (no init there), for counting.  Returns ``model``.
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"attach(model, config): config must be an AdapterConfig, got {type(config).__name__}")
    if get_config(model) is not None or adapter_layers(model):
        raise ConfigError(
            f"this model already has an adapter attached ({getattr(get_config(model), 'method', '?')}); "
            "attach to a fresh base model, or merge(model) first")
    method = get_method(config.method)
    targets = find_targets(model, config.target_modules)
    for path, module in targets:
        method.check_target(config, path, module)
    shared = method.create_shared(model, config, targets)

    for p in model.parameters():
        p.requires_grad_(False)
    if shared is not None:
        if not isinstance(getattr(model, SHARED_ATTR, None), nn.ModuleDict):
            setattr(model, SHARED_ATTR, nn.ModuleDict())
        getattr(model, SHARED_ATTR)[config.method] = shared
    for path, module in targets:
        _set_module(model, path, method.create_layer(module, config, path, shared))
    setattr(model, CONFIG_ATTR, config)
    _check_declarations(model, config.method)
    return model


def detach(model: nn.Module) -> nn.Module:
    """Undo :func:`attach` without merging: put the original linears back, drop shared modules."""
    for path, layer in adapter_layers(model).items():
        _set_module(model, path, layer.base_layer)
    if hasattr(model, SHARED_ATTR):
        delattr(model, SHARED_ATTR)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def adapter_state(model: nn.Module, buffers: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor the attached adapter declares as trained (each layer's and each shared module's
    ``adapter_params``; with ``buffers``, the saved frozen ``adapter_buffers`` too), by its name in the model
    (``<layer path>.lora_A``, ``prolora_shared.<method>.A``): what is trained and counted, and (with buffers) what
    is saved and loaded.  Empty for a model without an adapter."""
    modules: list[tuple[str, nn.Module]] = list(adapter_layers(model).items())
    shared = getattr(model, SHARED_ATTR, None)
    if isinstance(shared, nn.ModuleDict):
        modules += [(f"{SHARED_ATTR}.{method}", module) for method, module in shared.items()]
    state: dict[str, torch.Tensor] = {}
    for prefix, module in modules:
        state.update({f"{prefix}.{name}": t for name, t in declared_state(module).items()})
        if buffers:
            state.update({f"{prefix}.{name}": t for name, t in declared_state(module, buffers=True).items()})
    return state


def count_trainable(model: nn.Module) -> int:
    """Number of elements of the adapter's declared tensors (each shared tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for t in adapter_state(model).values():
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return total


def _check_declarations(model: nn.Module, method_name: str) -> None:
    """What the layers and shared modules declare is exactly what the adapter added and trains: a parameter
    a method forgot to declare would be trained but never saved (and a saved checkpoint would not restore it)."""
    declared = {id(t) for t in adapter_state(model).values()}
    trained = {name for name, p in model.named_parameters() if p.requires_grad and id(p) not in declared}
    if trained:
        raise TypeError(f"method {method_name!r}: parameter(s) {sorted(trained)[:3]} are trained but not declared in "
                        "their layer's adapter_params (they would never be saved): add them to adapter_params")
    frozen = [name for name, t in adapter_state(model).items() if not t.requires_grad]
    if frozen:
        raise TypeError(f"method {method_name!r}: declared adapter_params {frozen[:3]} do not require grad: "
                        "declare only the parameters the adapter trains")
