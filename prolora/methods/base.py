"""The one interface every adapter method implements (PEFT-tuners style).

A method is one module in ``prolora/methods/``: its config class (an :class:`~prolora.config.AdapterConfig`
subclass with its own fields and checks), its layer class (an :class:`AdapterLayer`), and a :class:`Method`
subclass registered with ``@register`` (:mod:`prolora.methods.registry`) that names both, may create
model-level shared modules once (``create_shared``, a :class:`SharedModule`) and may name presets.

Every adapter layer exposes its update as two expanded fp32 factors and a scalar::

    ΔW = scaling · B_full @ A_full,      A_full: (r × h),  B_full: (o × r)

and DECLARES the tensors it owns (PEFT's ``adapter_layer_names`` habit): ``adapter_params`` (trained, saved,
counted) and ``adapter_buffers`` (saved with the adapter but not trained or counted, e.g. factors computed from
the base weight that a trained tensor is only valid with).  Saving, loading, counting and export read these
declarations, and ``attach`` checks that ``adapter_params`` is exactly what the adapter trains.

The hooks a method may override, each with a default from ``factors()``:

* ``delta_output(x, base_out)``: the adapter's term of the layer's output (fp32, scaled).  The default is
  ``expanded_output`` (builds A_full, B_full); a method's compact form computes the same from its own tensors
  (``expanded_output`` stays, as the reference the tests and ``scripts/bench_serve.py`` compare against);
* ``compact_tensors()`` + ``compact_output(x, base_out, tensors)`` (optional, :mod:`prolora.methods._rows`): the
  compact form as a function of named tensors that may carry a leading row dim, so :mod:`prolora.serving` runs
  rows of different adapters in one batch; a layer without them is served one adapter at a time;
* ``merged_weight(dense)``: the weight with the adapter folded in (default ``dense + delta_weight()``);
* ``extra_peft_tensors()`` and ``Method.peft_config_fields(config)``: what a PEFT export needs beyond the
  rank-r LoRA factors (e.g. DoRA's magnitude vector and ``use_dora``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prolora.config import AdapterConfig, ConfigError


def kaiming_bound(fan_in: int) -> float:
    """The bound of ``nn.init.kaiming_uniform_(w, a=√5)`` (PEFT's LoRA A init): g·√(3/fan_in) = 1/√fan_in."""
    gain = nn.init.calculate_gain("leaky_relu", 5**0.5)
    return gain * (3.0 / fan_in) ** 0.5


def weight_device(module: nn.Module) -> torch.device:
    w = getattr(module, "weight", None)
    if w is not None:
        return w.device
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def declared_state(module: nn.Module, buffers: bool = False) -> dict[str, torch.Tensor]:
    """``{local name: tensor}`` of what ``module.adapter_params`` (with ``buffers``: ``adapter_buffers``)
    declares: a tensor gives one entry, a ``ParameterDict``/``BufferDict``-like mapping one per key
    (``B.q_proj``), a name set to None (an empty part) none."""
    out: dict[str, torch.Tensor] = {}
    for name in type(module).adapter_buffers if buffers else type(module).adapter_params:
        value = getattr(module, name, None)
        if value is None:
            continue
        if isinstance(value, (nn.ParameterDict, dict)):
            out.update({f"{name}.{key}": p for key, p in value.items()})
        elif isinstance(value, torch.Tensor):
            out[name] = value
        else:
            raise TypeError(f"{type(module).__name__} declares {name!r}, which is a {type(value).__name__}: "
                            "declare tensors (parameters, buffers) or ParameterDicts only")
    return out


class SharedModule(nn.Module):
    """Model-level tensors a method shares between layers (``model.prolora_shared[<method>]``), created once by
    ``Method.create_shared``.  ``adapter_params``: the trained tensors it saves; ``adapter_buffers``: frozen ones it
    saves (frozen tensors regenerated from a seed, as VeRA's, need not be saved)."""

    adapter_params: ClassVar[tuple[str, ...]] = ()
    adapter_buffers: ClassVar[tuple[str, ...]] = ()


class AdapterLayer(nn.Module):
    """Wraps a frozen linear (``nn.Linear`` or bitsandbytes ``Linear4bit``) as ``.base_layer``.

    ``adapter_params``: the names of the parameters this layer owns, trains and saves (a part a config leaves
    empty is set to None).  Adapter parameters are fp32 whatever the base dtype; the forward casts the
    (dropped-out) adapter input to fp32 and the adapter output back to the base output dtype::

        y = base_layer(x) + scaling · (dropout(x) A_fullᵀ) B_fullᵀ
    """

    adapter_params: ClassVar[tuple[str, ...]] = ()
    adapter_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, path: str, shared: nn.Module | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        self.path = path
        self.module_type = path.rsplit(".", 1)[-1]
        self.r = config.r
        self.scaling = 1.0
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        # Model-level shared parameters live on the model (``prolora_shared``); keep a plain reference
        # here so they are neither registered nor counted twice.
        object.__setattr__(self, "shared", shared)
        self._device = weight_device(base_layer)

    def _param(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(*shape, dtype=torch.float32, device=self._device))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_full (r × h), B_full (o × r)), fp32, differentiable."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B_full A_full (o × h), fp32."""
        a, b = self.factors()
        return self.scaling * (b @ a)

    def delta_output(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """The adapter's term of the output, fp32: scaling · (dropout(x) A_fullᵀ) B_fullᵀ (``base_out``, the base
        layer's output, is for methods whose term depends on it)."""
        return self.expanded_output(x)

    def expanded_output(self, x: torch.Tensor) -> torch.Tensor:
        """scaling · (dropout(x) A_fullᵀ) B_fullᵀ through the expanded factors: the reference every compact
        ``delta_output`` equals."""
        a, b = self.factors()
        out = F.linear(F.linear(self.dropout(x.to(a.dtype)), a), b)
        return out * self.scaling if self.scaling != 1.0 else out

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        return result + self.delta_output(x, result).to(result.dtype)

    def merged_weight(self, dense: torch.Tensor) -> torch.Tensor:
        """The base weight (fp32, o × h) with the adapter folded in: ``dense + ΔW``."""
        return dense + self.delta_weight().to(dense.device)

    def extra_peft_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors a PEFT export of this layer needs beyond ``lora_A``/``lora_B`` (key: the name after the layer's
        path in PEFT's state dict, e.g. ``lora_magnitude_vector``)."""
        return {}

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, r={self.r}, scaling={self.scaling:g}"


class Method:
    """A registered adapter method: its config class, its layer class, its presets, model-level shared state."""

    name: ClassVar[str]
    config_cls: ClassVar[type[AdapterConfig]]
    layer_cls: ClassVar[type[AdapterLayer]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # preset name -> the fields it fixes
    preset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # preset name -> defaults of its free fields

    @classmethod
    def build_config(cls, preset: str | None, fields: dict[str, Any]) -> AdapterConfig:
        """The config from user ``fields`` (already checked to be fields of ``config_cls``); a preset's fixed
        fields are filled in and may not be contradicted."""
        if preset is not None:
            for key, value in cls.preset_defaults.get(preset, {}).items():
                fields.setdefault(key, value)
            for key, want in cls.presets[preset].items():
                got = fields.setdefault(key, want)
                if got != want:
                    config = cls.config_cls.__name__
                    raise ConfigError(f"{config}.{key}={got!r} is invalid: preset {preset!r} fixes {key}={want!r}; "
                                      f"drop {key} or pick another preset (known: {sorted(cls.presets)})",
                                      field=key, value=got, config=config)
        return cls.config_cls(**fields)

    @classmethod
    def check_target(cls, config: AdapterConfig, path: str, module: nn.Module) -> None:
        """Raise a :class:`~prolora.config.ConfigError` naming the field and ``path`` if ``module`` cannot
        take this adapter (called for every target before anything is modified)."""

    @classmethod
    def create_shared(cls, model: nn.Module, config: AdapterConfig,
                      targets: list[tuple[str, nn.Module]]) -> SharedModule | None:
        """Model-level parameters/buffers shared by several layers (created once), or None."""
        return None

    @classmethod
    def peft_config_fields(cls, config: AdapterConfig) -> dict[str, Any]:
        """``peft.LoraConfig`` fields an export of this method sets beyond the rank-r LoRA ones (DoRA:
        ``{"use_dora": True}``)."""
        return {}

    @classmethod
    def create_layer(cls, base_layer: nn.Module, config: AdapterConfig, path: str,
                     shared: nn.Module | None) -> AdapterLayer:
        return cls.layer_cls(base_layer, config, path, shared)
