"""PRoLoRA adapter library: configs, attach, counting, compact save/load, PEFT LoRA export, merge.

    import prolora
    cfg = prolora.make_config("prolora", r=8, u=1, m=7)      # or PRoLoRAConfig(r=8, u=1, m=7)
    model = prolora.attach(base_model, cfg)                   # freezes the base, wraps the 7 linears
    prolora.count_trainable(model)                            # 4,999,520 on LLaMA2-7B
    prolora.save_adapter(model, "ckpt"); prolora.load_adapter(fresh_base, "ckpt")
    prolora.export_lora(model, "peft_dir")                    # a standard rank-r PEFT LoRA (vLLM-ready)
    prolora.merge(model)                                      # plain transformers model

The library never imports Hydra; the recipes pass ``**cfg.method`` to :func:`make_config`.
"""

from prolora.config import (
    PRESETS,
    SEVEN_MODULES,
    AdapterConfig,
    ConfigError,
    LoRAConfig,
    PRoLoRAConfig,
    TiedLoRAConfig,
    VeRAConfig,
    config_from_dict,
    make_config,
)
from prolora.counting import (
    SharingSolution,
    count_by_module_type,
    count_for,
    lora_equivalent_rank,
    solve_sharing,
)
from prolora.export import export_lora, load_adapter, merge, save_adapter
from prolora.inject import adapter_layers, attach, count_trainable, detach, find_targets
from prolora.methods import METHODS, AdapterLayer, Method

__all__ = [
    "METHODS", "PRESETS", "SEVEN_MODULES", "AdapterConfig", "AdapterLayer", "ConfigError", "LoRAConfig",
    "Method", "PRoLoRAConfig", "SharingSolution", "TiedLoRAConfig", "VeRAConfig", "adapter_layers", "attach",
    "config_from_dict", "count_by_module_type", "count_for", "count_trainable", "detach", "export_lora",
    "find_targets", "load_adapter", "lora_equivalent_rank", "make_config", "merge", "save_adapter",
    "solve_sharing",
]
