"""Training recipe: config → load model → attach adapter → train → save (compact + PEFT export) → run.json."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recipes import CONFIG_DIR, schema  # noqa: F401  (schema registers the structured configs)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    raise NotImplementedError("training recipe: see issue 5")


if __name__ == "__main__":
    main()
