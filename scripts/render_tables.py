"""Render a paper artefact from its cell result files, next to the paper's numbers.

    python scripts/render_tables.py --experiment table2 [--results-dir results] [--out-dir DIR] [--wandb]

A thin command line over :mod:`recipes.paper.render` (its docstring says what is rendered and how).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.paper.render import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
