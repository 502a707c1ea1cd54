"""Many adapters on one base model, each row of a batch naming its own (vLLM's and Punica's semantics, PEFT's
``adapter_names=``); a row may name none (the base model).

    served = MultiAdapter(model)                       # wraps the adaptable linears of `model` in place
    served.load("alice", "runs/.../final")             # a compact checkpoint (prolora.save_adapter's format)
    served.load("bob", "runs/.../final")
    served.use(["alice", "bob", None])                  # rows of the next forward: alice, bob, the base model
    logits = model(input_ids).logits                    # (3, T, V)

What it guarantees:

* **each row is its adapter alone**: a row's output is what that row gives run alone with its adapter (tests on
  the tiny model, fp32 and 4-bit, against ``prolora.load_adapter``'s attached model);
* **compact residency**: adapters of one config form a group whose trained tensors (what
  ``prolora.save_adapter`` writes of them, fp32) are stacked along a slot dim, so an adapter costs its trained
  tensors' bytes; what every adapter of a group shares (the method's layers, their index buffers, VeRA's frozen
  pair regenerated from its seed, and frozen tensors saved with each adapter, LoRA-XS's SVD factors, where they
  are equal to the bit) is held once per group (:meth:`MultiAdapter.memory`).  An adapter whose saved frozen
  tensors differ from every group's (factors computed on another machine) gets a group of its own;
* **one pass per group**: a layer runs each group in the batch once, with its adapters' tensors gathered per row
  (the :mod:`prolora.methods._rows` protocol of the compact forms); rows of different methods and ranks are
  different groups of the same batch.  The gathering (and packing) happens in :meth:`MultiAdapter.use`, once
  per set of rows, and recent sets are kept (``plan_cache_bytes``; a decoding batch and its rows' prefills
  alternate), never per forward.  A method without a compact form (no ``CompactForm``) is served too, one
  adapter at a time through its own ``delta_output``, each adapter in its own attached copy of the layers;
* **checked loading**: every checkpoint goes through ``prolora.load_adapter`` (format, finite weights, keys and
  shapes against this base model); tensors given in memory (:meth:`MultiAdapter.add`) get the same key, shape and
  finiteness checks.

Inference only: the served forward runs the compact form (``compact_output``) without dropout.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from prolora.config import AdapterConfig, ConfigError
from prolora.inject import adapter_layers, adapter_state, attach, find_targets, get_config
from prolora.methods._rows import CompactForm

SERVING_ATTR = "prolora_serving"


class ServedLinear(nn.Module):
    """A base linear whose output gets, row by row, the term of the adapter each row names (the plan of
    :meth:`MultiAdapter.use`)."""

    def __init__(self, base_layer: nn.Module, path: str, server: MultiAdapter):
        super().__init__()
        self.base_layer = base_layer
        self.path = path
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        object.__setattr__(self, "server", server)  # not a submodule
        # set by MultiAdapter.use(): the batch's row count and this layer's [(term(x, base_out), row index)]
        object.__setattr__(self, "rows", None)
        object.__setattr__(self, "active", ())

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.rows != x.shape[0]:
            self.server.terms(self.path, x.shape[0])  # raises, naming the fix
        for term, index in self.active:
            xs, bs = (x, out) if index is None else (x.index_select(0, index), out.index_select(0, index))
            delta = term(xs if xs.dtype == torch.float32 else xs.to(torch.float32), bs)
            delta = delta if delta.dtype == out.dtype else delta.to(out.dtype)
            if index is not None:
                out = out.index_add(0, index, delta)
            elif torch.is_grad_enabled():
                out = out + delta
            else:  # inference: the base output is this layer's own fresh tensor
                out.add_(delta)
        return out

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, path={self.path}"


def _shell(leaves: dict[str, nn.Module]) -> nn.Module:
    """A bare module tree holding ``leaves`` at their dotted paths (the base linears, shared with the model), so
    ``attach`` builds a method's layers on them with the checkpoint's key names."""
    root = nn.Module()
    for path, leaf in leaves.items():
        *parents, last = path.split(".")
        node = root
        for name in parents:
            if name not in node._modules:
                node.add_module(name, nn.Module())
            node = node._modules[name]
        node.add_module(last, leaf)
    return root


def _config_key(config: AdapterConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


class _Group:
    """The adapters of one config.  ``layers``: the method's layers attached to a shell of the base linears (the
    math, its constants and index buffers, once); ``bank``: one row per slot holding an adapter's trained tensors
    side by side (``layout``: key -> offset, shape), so the rows of a batch gather their adapters in one step;
    ``frozen``: the saved buffers (not trained: LoRA-XS's SVD factors) every adapter of the group has bit for bit,
    held once (None until the first adapter).  A method without a compact form keeps one attached shell per
    adapter instead (``instances``)."""

    def __init__(self, config: AdapterConfig, leaves: dict[str, nn.Module]):
        self.config = config
        self.shell = attach(_shell(leaves), config).eval()
        self.layers = adapter_layers(self.shell)
        self.compact = all(isinstance(layer, CompactForm) for layer in self.layers.values())
        state = adapter_state(self.shell, buffers=True)
        self.shapes = {key: tuple(t.shape) for key, t in state.items()}  # what a checkpoint holds
        trained = set(adapter_state(self.shell, buffers=False)) if self.compact else set(state)
        self.frozen_keys = [key for key in state if key not in trained]
        self.frozen: dict[str, torch.Tensor] | None = None
        banked = {key: t for key, t in state.items() if key in trained}
        if self.compact and len({t.dtype for t in banked.values()}) > 1:  # one bank row per adapter
            raise ConfigError(f"MultiAdapter: {config.method} trains tensors of several dtypes; serve it with a "
                              "method whose trained tensors share one dtype")
        self.layout: dict[str, tuple[int, tuple[int, ...]]] = {}
        numel = 0
        for key, t in banked.items():
            self.layout[key] = (numel, tuple(t.shape))
            numel += t.numel()
        self.slot_bytes = sum(t.numel() * t.element_size() for t in banked.values())
        ids = {id(t): k for k, t in state.items()}
        # per layer: role -> the key of a saved tensor (banked or frozen), or the (group-wide) tensor itself
        self.roles = {path: {role: ids.get(id(t), t) for role, t in layer.compact_tensors().items()}
                      for path, layer in self.layers.items()} if self.compact else {}
        first = next(iter(banked.values()))
        self.bank = first.detach().new_empty((0, numel)) if self.compact else None
        self.slots: dict[str, int] = {}
        self.free: list[int] = []
        self.instances: dict[str, tuple[nn.Module, dict[str, nn.Module]]] = {}  # name -> (its shell, its layers)
        self._scratch(False)

    # -- residency
    def _scratch(self, on: bool) -> None:
        """The template's own copies of the saved tensors exist only while a checkpoint is read through it."""
        for key, t in adapter_state(self.shell, buffers=True).items():
            t.data = t.data.new_empty(self.shapes[key] if on else (0,))

    @property
    def capacity(self) -> int:
        return 0 if self.bank is None else self.bank.shape[0]

    def takes(self, state: dict[str, torch.Tensor]) -> bool:
        """Whether an adapter with these saved tensors can join: its frozen ones equal the group's to the bit
        (or the group has none yet)."""
        return self.frozen is None or all(torch.equal(self.frozen[k], state[k]) for k in self.frozen_keys)

    def put(self, name: str, state: dict[str, torch.Tensor]) -> None:
        if self.frozen is None and self.frozen_keys:
            self.frozen = {key: state[key].detach().clone() for key in self.frozen_keys}
        slot = self.free.pop() if self.free else len(self.slots)
        if self.bank is not None:
            if slot >= self.capacity:
                grown = self.bank.new_zeros((max(1, 2 * self.capacity), self.bank.shape[1]))
                grown[: self.capacity] = self.bank
                self.bank = grown
            with torch.no_grad():
                for key, (offset, shape) in self.layout.items():
                    n = math.prod(shape)
                    self.bank[slot, offset:offset + n].copy_(state[key].reshape(-1))
        self.slots[name] = slot

    def drop(self, name: str) -> None:
        self.free.append(self.slots.pop(name))
        self.instances.pop(name, None)
        if not self.slots:
            self.frozen = None  # the next adapter sets them anew

    # -- rows
    def rows_tensors(self, slots: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Per layer, the tensors ``compact_output`` reads for rows whose adapters sit in ``slots``: the rows'
        adapters gathered once (views into one (rows × numel) copy), the group-wide ones as they are."""
        if not self.compact:
            return {}
        gathered = self.bank.index_select(0, slots)
        views = {key: gathered[:, offset:offset + math.prod(shape)].view(len(slots), *shape)
                 for key, (offset, shape) in self.layout.items()}
        views.update(self.frozen or {})  # the same for every row: not stacked
        return {path: self.layers[path].pack({role: views[src] if isinstance(src, str) else src
                                              for role, src in roles.items()})
                for path, roles in self.roles.items()}

    def terms(self, slots: torch.Tensor) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """Per layer, ``term(x, base_out)``: the term of this group's rows (fp32 ``x``) whose adapters sit in
        ``slots``, their tensors gathered and packed once here, not per forward."""
        if not self.compact:
            return {path: functools.partial(self._delta_one_by_one, path, slots=slots) for path in self.layers}
        return {path: _Term(self.layers[path].compact_output, tensors)
                for path, tensors in self.rows_tensors(slots).items()}

    def constants(self) -> list[torch.Tensor]:
        """The tensors every adapter of the group shares: the layers' own buffers (index buffers, mixing
        matrices) and the shared modules' unsaved ones (VeRA's frozen pair), once each."""
        saved = {id(t) for t in adapter_state(self.shell, buffers=True).values()}
        found: dict[int, torch.Tensor] = {}
        for layer in self.layers.values():
            for name, t in layer.named_buffers():
                if not name.startswith("base_layer."):
                    found[id(t)] = t
        shared = getattr(self.shell, "prolora_shared", None)
        for t in shared.buffers() if shared is not None else ():
            found[id(t)] = t
        return [t for key, t in found.items() if key not in saved] + list((self.frozen or {}).values())

    def _delta_one_by_one(self, path, x, base_out, slots):
        """The term of adapters without a compact form: each adapter's own layer on its rows."""
        names = {slot: name for name, slot in self.slots.items()}
        out = None
        for slot in slots.unique().tolist():
            rows = (slots == slot).nonzero().flatten()
            layer = self.instances[names[slot]][1][path]
            delta = layer.delta_output(x.index_select(0, rows), base_out.index_select(0, rows))
            out = delta.new_zeros((x.shape[0], *delta.shape[1:])) if out is None else out
            out = out.index_add(0, rows, delta)
        return out


class _Term:
    """``compact_output`` with the rows' tensors bound: ``term(x, base_out)``."""

    __slots__ = ("output", "tensors")

    def __init__(self, output, tensors: dict[str, torch.Tensor]):
        self.output, self.tensors = output, tensors

    def __call__(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        return self.output(x, base_out, self.tensors)


@dataclass
class Memory:
    """What the served adapters hold, in bytes: ``per_adapter`` (each name: its trained tensors; served one by one:
    its saved tensors), ``adapters`` (the compact ones' sum), ``allocated`` (the banks with their free slots),
    ``shared`` (per group, not per adapter: index buffers and frozen tensors of the methods' layers, LoRA-XS's
    SVD factors), ``one_by_one`` (adapters served without a compact form: their attached layers' tensors)."""

    per_adapter: dict[str, int]
    adapters: int
    allocated: int
    shared: int
    one_by_one: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class MultiAdapter:
    """N adapters on one base model (the module docstring has the guarantees)."""

    def __init__(self, model: nn.Module, plan_cache_bytes: int = 256 * 2**20):
        if get_config(model) is not None or adapter_layers(model):
            raise ConfigError("MultiAdapter: this model has an adapter attached (prolora.attach/load_adapter); serve a "
                              "fresh base model (or prolora.merge it first)")
        if getattr(model, SERVING_ATTR, None) is not None:
            raise ConfigError("MultiAdapter: this model is served already: use MultiAdapter.of(model)")
        self.model = model
        self.groups: dict[str, _Group] = {}
        self.owner: dict[str, _Group] = {}  # adapter name -> its group
        # the rows of the next forwards: their count and, per layer, [(term(x, base_out), row index or None)]
        self.plan: tuple[int, dict[str, list[tuple[Callable, torch.Tensor | None]]]] | None = None
        self.plan_names: list[str | None] | None = None
        # recent plans by their rows' names (a decoding batch and its rows' prefills alternate), bounded in bytes
        self.plans: OrderedDict[tuple, tuple[int, dict]] = OrderedDict()
        self.plan_sizes: dict[tuple, int] = {}
        self.plan_cache_bytes = plan_cache_bytes
        self.served_layers: list[ServedLinear] = []
        object.__setattr__(model, SERVING_ATTR, self)

    @staticmethod
    def of(model: nn.Module) -> MultiAdapter | None:
        return getattr(model, SERVING_ATTR, None)

    @property
    def names(self) -> list[str]:
        return list(self.owner)

    # ------------------------------------------------------------------ adapters
    def _group(self, config: AdapterConfig) -> _Group:
        """The first group of ``config`` (its template reads checkpoints of that config)."""
        key = _config_key(config)
        if key not in self.groups:
            self.groups[key] = _Group(config, self._leaves(config))
        return self.groups[key]

    def _group_taking(self, config: AdapterConfig, state: dict[str, torch.Tensor]) -> _Group:
        """The group of ``config`` whose frozen saved tensors are this adapter's (a new one if none is)."""
        key = _config_key(config)
        family = [g for k, g in self.groups.items() if k == key or k.startswith(key + "#")]
        for group in family:
            if group.takes(state):
                return group
        group = _Group(config, self._leaves(config))
        self.groups[f"{key}#{len(family)}"] = group
        return group

    def _leaves(self, config: AdapterConfig) -> dict[str, nn.Module]:
        """The base linears ``config`` targets, each wrapped in the model by a :class:`ServedLinear` (once)."""
        from prolora.inject import _set_module

        leaves = {}
        for path, module in find_targets(self.model, config.target_modules):
            if not isinstance(module, ServedLinear):
                module = ServedLinear(module, path, self)
                _set_module(self.model, path, module)
                self.served_layers.append(module)
            leaves[path] = module.base_layer
        return leaves

    def _free_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter name {name!r}: use a non-empty string")
        if name in self.owner:
            raise ValueError(f"adapter {name!r} is loaded already: remove({name!r}) first or pick another name")

    def load(self, name: str, directory: str | os.PathLike) -> None:
        """Load a compact checkpoint (``prolora.save_adapter``'s directory) as adapter ``name``, through
        ``prolora.load_adapter`` and its checks."""
        from prolora.export import load_adapter, read_adapter_config

        self._free_name(name)
        template = self._group(read_adapter_config(directory))
        if not template.compact:
            return self._load_instance(name, template, directory)
        template._scratch(True)
        try:
            load_adapter(template.shell, directory)
            state = adapter_state(template.shell, buffers=True)
            group = self._group_taking(template.config, state)
            group.put(name, state)
        finally:
            template._scratch(False)
        self.owner[name] = group
        self._forget_plans()

    def _load_instance(self, name: str, group: _Group, directory) -> None:
        from prolora.export import load_adapter

        shell = load_adapter(_shell({p: layer.base_layer for p, layer in group.layers.items()}), directory).eval()
        group.put(name, {})
        group.instances[name] = (shell, adapter_layers(shell))
        self.owner[name] = group
        self._forget_plans()

    def add(self, name: str, config: AdapterConfig, state: dict[str, torch.Tensor]) -> None:
        """Add adapter ``name`` from tensors in memory, keyed as ``prolora.adapter_state(model, buffers=True)`` of
        a model attached with ``config`` names them (what ``save_adapter`` writes)."""
        self._free_name(name)
        group = self._group(config)
        if not group.compact:
            raise ConfigError(f"MultiAdapter.add: method {config.method!r} has no compact form; load its checkpoint "
                              "with MultiAdapter.load instead")
        missing, extra = sorted(set(group.shapes) - set(state)), sorted(set(state) - set(group.shapes))
        if missing or extra:
            raise ConfigError(f"MultiAdapter.add({name!r}): the tensors do not fit {config.method} on this model: "
                              f"missing {missing[:3]}, unexpected {extra[:3]}")
        for key, t in state.items():
            if tuple(t.shape) != group.shapes[key] or not torch.isfinite(t).all():
                raise ConfigError(f"MultiAdapter.add({name!r}): {key} has shape {tuple(t.shape)} (expected "
                                  f"{group.shapes[key]}) or non-finite values")
        group = self._group_taking(config, state)
        group.put(name, state)
        self.owner[name] = group
        self._forget_plans()

    def state_shapes(self, config: AdapterConfig) -> dict[str, tuple[int, ...]]:
        """The keys and shapes of the tensors :meth:`add` takes for ``config`` on this model."""
        return dict(self._group(config).shapes)

    def remove(self, name: str) -> None:
        """Unload adapter ``name`` (its slot is reused by the next adapter of its group)."""
        if name not in self.owner:
            raise KeyError(f"no adapter {name!r} is loaded (loaded: {self.names})")
        self.owner.pop(name).drop(name)
        self.plan = self.plan_names = None
        self._forget_plans()
        self._bind()

    # ------------------------------------------------------------------ rows
    def use(self, names: Sequence[str | None]) -> None:
        """The adapters of the rows of the next forwards (None: the base model), until the next call."""
        unknown = sorted({n for n in names if n is not None and n not in self.owner})
        if unknown:
            raise KeyError(f"rows name adapter(s) {unknown} that are not loaded (loaded: {self.names})")
        names = list(names)
        if self.plan is not None and self.plan_names == names:
            return  # the same rows: their gathered tensors still hold
        key = tuple(names)
        if key in self.plans:
            self.plans.move_to_end(key)
            self.plan = self.plans[key]
        else:
            self.plan = self._build_plan(names)
            self._keep_plan(key, self.plan)
        self.plan_names = names
        self._bind()

    def _build_plan(self, names: list[str | None]) -> tuple[int, dict]:
        """Per layer, the (term, row index) pairs of the groups the rows name, their tensors gathered and packed."""
        device = self._device()
        plan: dict[str, list[tuple[Callable, torch.Tensor | None]]] = {}
        for group in {id(self.owner[n]): self.owner[n] for n in names if n is not None}.values():
            rows = [i for i, n in enumerate(names) if n is not None and self.owner[n] is group]
            slots = torch.tensor([group.slots[names[i]] for i in rows], device=device)
            index = None if len(rows) == len(names) else torch.tensor(rows, device=device)
            for path, term in group.terms(slots).items():
                plan.setdefault(path, []).append((term, index))
        return len(names), plan

    def _keep_plan(self, key: tuple, plan: tuple[int, dict]) -> None:
        size = sum(t.numel() * t.element_size() for terms in plan[1].values() for term, _ in terms
                   for t in getattr(term, "tensors", {}).values() if isinstance(t, torch.Tensor))
        if size > self.plan_cache_bytes:
            return
        self.plans[key], self.plan_sizes[key] = plan, size
        while sum(self.plan_sizes.values()) > self.plan_cache_bytes:
            self.plan_sizes.pop(self.plans.popitem(last=False)[0])

    def _forget_plans(self) -> None:
        """Adapters changed: every kept plan is stale, the next use() builds its own."""
        self.plans.clear()
        self.plan_sizes = {}
        self.plan_names = None

    def _bind(self) -> None:
        """Hand each served linear its part of the plan (read at every forward without a lookup)."""
        rows, plan = self.plan if self.plan is not None else (None, {})
        for module in self.served_layers:
            object.__setattr__(module, "rows", rows)
            object.__setattr__(module, "active", plan.get(module.path, ()))

    @contextmanager
    def rows(self, names: Sequence[str | None]):
        """``with served.rows(names): model(...)``: :meth:`use` for the block, the previous rows after it."""
        before = self.plan, self.plan_names
        self.use(names)
        try:
            yield self
        finally:
            self.plan, self.plan_names = before
            self._bind()

    def terms(self, path: str, batch: int) -> list[tuple[Callable, torch.Tensor | None]]:
        """The adapter terms layer ``path`` adds to a forward of ``batch`` rows (checked against :meth:`use`)."""
        if self.plan is None:
            raise RuntimeError("MultiAdapter: no rows set: call use(names) (one adapter name or None per row) "
                               "before running the model")
        if self.plan[0] != batch:
            raise ValueError(f"MultiAdapter: use() named {self.plan[0]} rows but the forward has {batch}: call "
                             "use(names) with one name per row of this batch")
        return self.plan[1].get(path, ())

    def _device(self) -> torch.device:
        for group in self.groups.values():
            for layer in group.layers.values():
                return layer._device
        return torch.device("cpu")

    # ------------------------------------------------------------------ memory
    def memory(self) -> Memory:
        """Bytes held per adapter and in total (the :class:`Memory` fields)."""
        per_adapter = {name: group.slot_bytes for name, group in self.owner.items()}
        allocated = sum(g.bank.numel() * g.bank.element_size() for g in self.groups.values() if g.bank is not None)
        shared = sum(t.numel() * t.element_size() for g in self.groups.values() for t in g.constants())
        one_by_one = sum(t.numel() * t.element_size() for g in self.groups.values() for shell, _ in g.instances.values()
                         for t in adapter_state(shell, buffers=True).values())
        compact = sum(size for name, size in per_adapter.items() if self.owner[name].compact)
        return Memory(per_adapter, compact, allocated, shared, one_by_one)
