"""Thin Hydra entry points that turn a config into calls of the ``prolora`` library and ``eval``."""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
