"""Trainable-parameter count of an adapter config on a meta-device model (no weights: seconds for 70B).

    python -m scripts.count_params model=llama2_7b method=prolora rank=8 unshared=1 sharing=7
    python -m scripts.count_params model=llama2_70b method=lora rank=8
    python -m scripts.count_params model=llama2_13b method=tied_lora rank=280

Prints a table per adapted module type (instances, count per layer, total) and, as its LAST line, one
JSON object: model, method (the resolved method config), trainable_params, lora_equivalent_rank (the
count in units of LoRA rank 1 on all seven linears, the paper's budget unit).
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from recipes import CONFIG_DIR, config_store, one_line_errors, run_config

config_store.register()

# A count is a read-only query: no Hydra run directory, no log files.
_QUIET = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    import prolora
    from prolora.counting import count_by_module_type, lora_equivalent_rank, meta_model, module_instances

    method = OmegaConf.to_container(cfg.method, resolve=True)
    config = run_config.build(cfg).check().adapter
    ref = run_config.counting_ref(cfg.model)
    model = meta_model(ref)
    prolora.attach(model, config)
    total = prolora.count_trainable(model)
    by_type = count_by_module_type(model)
    instances = module_instances(model)

    print(f"model={cfg.model.name}  method={method['name']}  config={config}")
    print(f"{'module':<12}{'layers':>8}{'per layer':>14}{'total':>16}")
    for mtype, count in by_type.items():
        k = instances.get(mtype, 1)
        print(f"{mtype:<12}{k:>8}{count // k:>14,}{count:>16,}")
    print(f"{'TOTAL':<12}{'':>8}{'':>14}{total:>16,}")
    equiv = lora_equivalent_rank(ref, total)
    print(json.dumps({"model": cfg.model.name, "method": config.to_dict(), "trainable_params": total,
                      "lora_equivalent_rank": round(equiv, 4), "by_module_type": by_type}))


if __name__ == "__main__":
    given = {a.split("=", 1)[0].lstrip("+~") for a in sys.argv[1:]}
    sys.argv += [o for o in _QUIET if o.split("=", 1)[0] not in given]
    main()
