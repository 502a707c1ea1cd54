"""The paper's experiments (Tables 2-4, Figure 2) and the demo as resumable grids.

Layers, each importing only those before it:

* :mod:`~recipes.paper.facts`: the table columns, value formatting, cell files indexed as the tables read them;
* :mod:`~recipes.paper.grid`: experiment config → rows, variants, cells, paths, the commands of a cell;
* :mod:`~recipes.paper.state` (a cell's state from its files) and :mod:`~recipes.paper.plan` (``--plan``,
  parameter counts beside the paper's, GPU hours, the paper's reference numbers);
* :mod:`~recipes.paper.runner`: locks, one subprocess per step, a result file per cell, resume;
* :mod:`~recipes.paper.tables`, :mod:`~recipes.paper.figures`, :mod:`~recipes.paper.significance` (Δ and
  intervals between cells): one table, its plots, its comparisons;
* :mod:`~recipes.paper.render`: a whole experiment rendered from its cell files, and its CLI.

The entry point is ``python -m recipes.reproduce`` (``make reproduce-table2``); ``python -m scripts.render_tables``
re-renders a table from its cell files.
"""
