"""The paper's experiments (Tables 2-4, Figure 2) and the demo as resumable grids.

* :mod:`recipes.paper.grid`: experiment config → rows, variants, cells, paths and the commands of a cell;
* :mod:`recipes.paper.runner`: locks, one subprocess per step, a result file per cell, resume;
* :mod:`recipes.paper.plan`: ``--plan`` (states, parameter counts beside the paper's, GPU hours) and the
  paper's reference numbers;
* :mod:`recipes.paper.tables`: the columns, and tables / CSV / figures rendered from the result files only.

The entry point is ``recipes/reproduce.py`` (``make reproduce-table2``); ``scripts/render_tables.py``
re-renders a table from its cell files.
"""
