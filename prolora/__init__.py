"""PRoLoRA adapter library: configs, attach, counting, compact save/load, PEFT LoRA export, merge.

    import prolora
    cfg = prolora.make_config("prolora", r=8, u=1, m=7)      # or PRoLoRAConfig(r=8, u=1, m=7)
    model = prolora.attach(base_model, cfg)                   # freezes the base, wraps the 7 linears
    prolora.count_trainable(model)                            # 4,999,520 on LLaMA2-7B
    prolora.save_adapter(model, "ckpt"); prolora.load_adapter(fresh_base, "ckpt")
    prolora.export_lora(model, "peft_dir")                    # a standard rank-r PEFT LoRA (vLLM-ready)
    prolora.merge(model)                                      # plain transformers model

Modules: ``methods/`` (one module per method: its config, its layer, its math), ``inject`` (attach),
``export`` (save/load/export/merge), ``counting`` (exact counts, the budget solver of every method), ``models`` (loading),
``bnb_cpu`` (the 4-bit CPU path), ``checkpointing`` (activation recomputation), ``trainer`` (the loop and its
settings), ``data/`` (records, chat format, batches), ``io`` (atomic writes).  The library never imports
Hydra; the recipes build configs with ``make_config(**cfg.method)``.
"""

from prolora.config import SEVEN_MODULES, AdapterConfig, ConfigError
from prolora.counting import (
    BudgetSolution,
    SharingSolution,
    budget_count,
    count_by_module_type,
    count_for,
    lora_equivalent_rank,
    paper_count,
    solve_budget,
    solve_sharing,
)
from prolora.export import export_lora, load_adapter, merge, save_adapter
from prolora.inject import adapter_layers, adapter_state, attach, count_trainable, detach, find_targets
from prolora.methods import METHODS, AdapterLayer, Method, config_from_dict, known_names, make_config
from prolora.methods.lora import LoRAConfig
from prolora.methods.prolora import PRESETS, PRoLoRAConfig
from prolora.methods.tied_lora import TiedLoRAConfig
from prolora.methods.vera import VeRAConfig

__all__ = [
    "METHODS", "PRESETS", "SEVEN_MODULES", "AdapterConfig", "AdapterLayer", "BudgetSolution", "ConfigError",
    "LoRAConfig",
    "Method", "PRoLoRAConfig", "SharingSolution", "TiedLoRAConfig", "VeRAConfig", "adapter_layers",
    "adapter_state", "attach", "budget_count",
    "config_from_dict", "count_by_module_type", "count_for", "count_trainable", "detach", "export_lora",
    "find_targets", "known_names", "load_adapter", "lora_equivalent_rank", "make_config", "merge",
    "paper_count", "save_adapter", "solve_budget", "solve_sharing",
]
