"""Exact trainable-parameter counts on the meta device (no weights: seconds even for 70B), per module
type, the paper's own formula, and the sharing-rate solver for a budget.

The counts come from attaching the real adapter layers to a meta-device model, so they cannot drift from
what training uses.  A model given by name or directory is counted at depth 1, 2 and 3 and extrapolated to
its real depth (every method's count is affine in depth: per-layer adapters plus model-level shared ones),
which is checked by the depth-3 count and equals counting the whole model (tested); a config that is valid only
with more layers (MoS's shard pools grow with depth) is counted on the whole model.
LLaMA2-7B: LoRA r8 = 19,988,480; PRoLoRA r8 u1 m=n=7 = 4,999,520 (⌈h/m⌉ chunks; the paper's h/m formula,
:func:`paper_count`, gives 4,997,120 = LoRA r2).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from prolora.config import SEVEN_MODULES, AdapterConfig, ConfigError
from prolora.inject import SHARED_ATTR, adapter_layers, attach, count_trainable, find_targets
from prolora.methods.base import declared_state
from prolora.methods.prolora import PRoLoRAConfig, trainable_per_module


def model_config(name_or_path: str):
    """The transformers config of ``llama2_7b``/``llama2_13b``/``llama2_70b``, of a local model directory, or of
    a GGUF file (converted once, cached: :mod:`prolora.gguf`)."""
    from prolora.models import LLAMA2_CONFIGS, llama2_config, resolve_model_path

    if name_or_path in LLAMA2_CONFIGS:
        return llama2_config(name_or_path)
    name_or_path = resolve_model_path(name_or_path)
    if (Path(name_or_path) / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name_or_path)
    raise ValueError(f"unknown model {name_or_path!r}: give one of {sorted(LLAMA2_CONFIGS)}, a local model "
                     "directory (with config.json), or a model")


def _meta_from_config(config) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def meta_model(model: str | nn.Module) -> nn.Module:
    """A fresh meta-device skeleton of a model name, a model directory, or a model's shapes (a transformers
    model is rebuilt from its config; other modules are deep-copied onto meta)."""
    if isinstance(model, str):
        return _meta_from_config(model_config(model))
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(type(model), "_from_config"):
        with torch.device("meta"):
            return type(model)._from_config(cfg)
    return copy.deepcopy(model).to("meta")


def count_for(model: str | nn.Module, config: AdapterConfig) -> int:
    """Trainable parameters ``config`` adds to the model (a name, a directory or a model; meta device)."""
    if not isinstance(model, str):
        return count_trainable(attach(meta_model(model), config))
    base = model_config(model)
    depth = int(getattr(base, "num_hidden_layers", 0) or 0)
    if depth <= 3:
        return count_trainable(attach(_meta_from_config(base), config))
    counts = []
    for d in (1, 2, 3):
        c = copy.deepcopy(base)
        c.num_hidden_layers = d
        try:
            counts.append(count_trainable(attach(_meta_from_config(c), config)))
        except ConfigError:  # valid only with more layers (MoS draws from pools sized by depth): count it whole
            return count_trainable(attach(_meta_from_config(base), config))
    per_layer = counts[1] - counts[0]
    if counts[2] - counts[1] != per_layer:  # layers that differ: count the whole model
        return count_trainable(attach(_meta_from_config(base), config))
    return counts[0] + (depth - 1) * per_layer


def paper_count(model: str | nn.Module, config: AdapterConfig) -> Fraction | int:
    """The count as the paper writes its formula: chunks of h/m and o/n (a fraction) where PRoLoRA's real
    chunks are ⌈h/m⌉ and ⌈o/n⌉ wide; the exact count (:func:`count_for`) for every other config."""
    if not isinstance(config, PRoLoRAConfig) or config.share_dim != "hidden":
        return count_for(model, config)
    shapes = [(h, o) for _, h, o in target_shapes(model, config.target_modules)]
    s = config.r - config.u
    return sum(config.u * (h + o) + Fraction(h, config.m) * s + Fraction(o, config.n) * s for h, o in shapes)


def count_by_module_type(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of an attached model per adapted module type (``q_proj`` …), plus
    ``shared`` for the model-level shared modules (Tied LoRA's A/B/u; VeRA's are frozen)."""
    out: OrderedDict[str, int] = OrderedDict()
    for layer in adapter_layers(model).values():
        n = sum(t.numel() for t in declared_state(layer).values())
        out[layer.module_type] = out.get(layer.module_type, 0) + n
    shared = getattr(model, SHARED_ATTR, None)
    if shared is not None:
        out["shared"] = sum(t.numel() for module in shared.values() for t in declared_state(module).values())
    return dict(out)


def module_instances(model: nn.Module) -> dict[str, int]:
    """How many adapted layers of each module type an attached model has."""
    out: OrderedDict[str, int] = OrderedDict()
    for layer in adapter_layers(model).values():
        out[layer.module_type] = out.get(layer.module_type, 0) + 1
    return dict(out)


def target_shapes(model_name_or_model: str | nn.Module,
                  target_modules: list[str] | tuple[str, ...] = SEVEN_MODULES) -> list[tuple[str, int, int]]:
    """``[(path, h, o)]`` of the target linears."""
    model = meta_model(model_name_or_model) if isinstance(model_name_or_model, str) else model_name_or_model
    layers = adapter_layers(model)
    if layers:  # an attached model: its adapted linears' shapes
        return [(p, m.in_features, m.out_features) for p, m in layers.items() if m.module_type in target_modules]
    return [(p, int(m.in_features), int(m.out_features)) for p, m in find_targets(model, list(target_modules))]


@dataclass(frozen=True)
class SharingSolution:
    """m (= n) for a budget.  ``count``: the real trainable count at that m (⌈h/m⌉ chunks, what attach
    gives); ``paper_count``: the paper's u(h+o) + (h+o)(r−u)/m formula (may be fractional);
    ``exact``: the chosen counting meets ``target_count`` exactly (else it is the nearest count under it)."""

    m: int
    count: int
    target_count: int
    exact: bool
    counting: str
    paper_count: float

    @property
    def n(self) -> int:
        return self.m

    @property
    def status(self) -> str:
        return "exact" if self.exact else "under"


def solve_sharing(model: str | nn.Module, r: int, u: int, target: int | dict[str, int] | None = None, *,
                  lora_rank: int | None = None, counting: str = "paper",
                  target_modules: list[str] | tuple[str, ...] = SEVEN_MODULES) -> SharingSolution:
    """The sharing rate m = n that spends a budget with PRoLoRA(r, u) (share along hidden).

    ``target``: a parameter count (int), ``{"params": N}`` or ``{"lora_rank": k}`` (the count of LoRA
    rank k on the same modules); ``lora_rank=k`` is a shorthand.  ``counting="paper"`` uses the paper's
    h/m (so r8 u1 → m7 meets LoRA r2 exactly, u + (r−u)/m = k); ``counting="ceil"`` uses the real
    ⌈h/m⌉ chunks (r8 u1 m7 is then 2,400 over LoRA r2 on 7B, so the answer is m8, under).  Returns the
    smallest m whose count meets the target exactly, else the one with the largest count under it.
    """
    if counting not in ("paper", "ceil"):
        raise ValueError(f"counting={counting!r}: use 'paper' (h/m) or 'ceil' (⌈h/m⌉)")
    if isinstance(target, dict):
        unknown = set(target) - {"params", "lora_rank"}
        if unknown or len(target) != 1:
            raise ValueError(f"target={target!r}: give exactly one of {{'params': N}} or {{'lora_rank': k}}")
        lora_rank = target.get("lora_rank", lora_rank)
        target = target.get("params")
    if (target is None) == (lora_rank is None):
        raise ValueError("solve_sharing: give a target parameter count or a LoRA rank (lora_rank=k), not both")
    shapes = [(h, o) for _, h, o in target_shapes(model, target_modules)]
    sum_ho = sum(h + o for h, o in shapes)
    target_count = int(target) if target is not None else int(lora_rank) * sum_ho
    max_m = min(min(h, o) for h, o in shapes)

    def paper(m: int) -> Fraction:
        return u * sum_ho + Fraction((r - u) * sum_ho, m)

    def ceil(m: int) -> int:
        cfg = PRoLoRAConfig(r=r, u=u, m=m, n=m, target_modules=list(target_modules))
        return sum(trainable_per_module(cfg, h, o) for h, o in shapes)

    # Both countings are non-increasing in m, so the first m at or under the target is the answer.
    best: tuple[int, Fraction | int] | None = None
    exact = False
    for m in range(1, max_m + 1 if r > u else 2):
        c = paper(m) if counting == "paper" else ceil(m)
        if c <= target_count:
            best, exact = (m, c), c == target_count
            break
    if best is None:
        raise ValueError(f"no m <= {max_m} brings PRoLoRA(r={r}, u={u}) to <= {target_count:,} parameters "
                         f"(the u unshared ranks alone cost {u * sum_ho:,}): lower u or r")
    m = best[0]
    return SharingSolution(m=m, count=ceil(m), target_count=target_count, exact=exact, counting=counting,
                           paper_count=float(paper(m)))


def lora_equivalent_rank(model: str | nn.Module, count: int,
                         target_modules: list[str] | tuple[str, ...] = SEVEN_MODULES) -> float:
    """``count`` in units of one LoRA rank on ``target_modules`` (the paper's budgets use all seven)."""
    per_rank = sum(h + o for _, h, o in target_shapes(model, target_modules))
    return count / per_rank


# ----------------------------------------------------------------------------------------- any method's budget

DECREASING_KNOBS = ("m",)  # a larger sharing rate costs fewer parameters; every other knob costs more


@dataclass(frozen=True)
class BudgetSolution:
    """The configuration of one method closest to a budget without exceeding it.

    ``fields``: what to pass to :func:`prolora.make_config` (the fixed ones and the solved knob); ``count``: its
    exact trainable count; ``cap``: the knob's upper limit when it bound the answer (the budget was not reached)."""

    method: str
    knob: str
    value: int
    fields: dict
    count: int
    target_count: int
    cap: int | None = None

    @property
    def status(self) -> str:
        """exact (the count is the budget), capped (the knob's limit stopped it under), or under."""
        if self.count == self.target_count:
            return "exact"
        return "capped" if self.cap is not None else "under"

    @property
    def fraction(self) -> float:
        return self.count / self.target_count


def budget_count(model: str | nn.Module, target: int | dict, target_modules=SEVEN_MODULES) -> int:
    """A budget in parameters: ``N``, ``{"params": N}`` or ``{"lora_rank": k}`` (LoRA rank k's count on
    ``target_modules``, the seven linears by default: the paper's budgets)."""
    from prolora.methods.lora import LoRAConfig

    if isinstance(target, dict):
        if len(target) != 1 or not set(target) <= {"params", "lora_rank"}:
            raise ValueError(f"target={target!r}: give exactly one of {{'params': N}} or {{'lora_rank': k}}")
        if "lora_rank" in target:
            return count_for(model, LoRAConfig(r=int(target["lora_rank"]), target_modules=list(target_modules)))
        target = target["params"]
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ValueError(f"target={target!r}: a budget is a positive parameter count")
    return int(target)


def budget_knob(name: str) -> str:
    """The field :func:`solve_budget` turns for a method or preset: the method class's ``budget_knob`` (MoS:
    ``pool_rank``, VB-LoRA: ``num_vectors``), the sharing rate m (= n) for the PRoLoRA family, else the rank r."""
    from prolora.methods import lookup

    method, _ = lookup(name)
    if issubclass(method.config_cls, PRoLoRAConfig):
        return "m"
    return str(getattr(method, "budget_knob", "r"))


def knob_cap(model: str | nn.Module, name: str, knob: str, fields: dict) -> int | None:
    """The largest sensible knob value: a rank r or a sharing rate m cannot usefully exceed the smallest min(h, o)
    of the adapted layers (rank(ΔW) ≤ min(h, o); a chunk needs a column); the bank size and the pool rank have
    no cap."""
    if knob not in ("r", "m"):
        return None
    from prolora.methods import make_config

    targets = fields.get("target_modules") or make_config(name).target_modules
    return min(min(h, o) for _, h, o in target_shapes(model, targets))


def solve_budget(model: str | nn.Module, name: str, target: int | dict, *, knob: str | None = None,
                 **fields) -> BudgetSolution:
    """The configuration of method ``name`` with ``fields`` fixed whose trainable count is closest to ``target``
    (:func:`budget_count`) without exceeding it, turning one knob (:func:`budget_knob`; the PRoLoRA family's m sets
    n too unless n is given).  Counts are :func:`count_for`'s; the count is monotone in the knob, so a binary search
    over [1, cap] (doubling where there is no cap) finds it.  A knob value the method refuses (its config or its
    layers raise :class:`~prolora.config.ConfigError`) is skipped over; when no valid value fits, the error says
    why."""
    from prolora.methods import make_config

    knob = knob or budget_knob(name)
    target_count = budget_count(model, target)
    cap = knob_cap(model, name, knob, fields)
    decreasing = knob in DECREASING_KNOBS
    tied_n = knob == "m" and "n" not in fields

    def config_at(value: int):
        return make_config(name, **{**fields, knob: value, **({"n": value} if tied_n else {})})

    def fits(value: int) -> bool:  # monotone in value; a refused value counts as fitting (checked at the end)
        try:
            return count_for(model, config_at(value)) <= target_count
        except ConfigError:
            return True

    value = _search(fits, decreasing, cap)
    try:
        config = config_at(value)
        count = count_for(model, config)
    except ConfigError as e:
        raise ConfigError(f"no {name} configuration with {knob} <= {cap or 'any'} fits {target_count:,} parameters: "
                          f"{e}", field=knob, value=value) from None
    if count > target_count:
        raise ValueError(f"{name} with {fields} costs {count:,} parameters at {knob}={value}, more than the budget "
                         f"{target_count:,}: lower the fixed fields (e.g. r) or raise the budget")
    solved = {**fields, knob: value, **({"n": value} if tied_n else {})}
    return BudgetSolution(method=name, knob=knob, value=value, fields=solved, count=count,
                          target_count=target_count, cap=cap if not decreasing and value == cap and
                          count < target_count else None)


def _search(fits, decreasing: bool, cap: int | None) -> int:
    """The largest value with ``fits`` (increasing cost), or the smallest (decreasing cost), in [1, cap]."""
    if decreasing:  # fits: False … False True … True; the first True, or the cap
        lo, hi = 1, cap or 1
        while cap is None and not fits(hi):
            hi *= 2
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
        return lo
    if not fits(1):  # fits: True … True False … False; the last True
        return 1  # the caller reports what the smallest value costs
    lo, hi = 1, cap
    if hi is None:
        hi = 2
        while fits(hi):
            lo, hi = hi, hi * 2
        hi -= 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo
