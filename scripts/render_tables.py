"""Render a paper artefact from its cell result files, next to the paper's numbers.

    python -m scripts.render_tables --experiment table2 [--results-dir results] [--out-dir DIR] [--wandb]

A thin command line over :mod:`recipes.paper.render` (its docstring says what is rendered and how).
"""

import sys

from recipes.paper.render import main

if __name__ == "__main__":
    sys.exit(main())
