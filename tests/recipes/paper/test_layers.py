"""recipes.paper's layers (its package docstring): a module imports only modules of lower layers, wherever the
import statement stands (one inside a function counts).  Circles anywhere in the packages:
tests/test_architecture.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# facts <- grid <- state <- plan <- runner; plan <- tables <- significance <- render; grid <- figures <- render
LAYERS = {"facts": 0, "grid": 1, "state": 2, "plan": 3, "runner": 4, "tables": 4, "figures": 4, "pool": 5,
          "significance": 5, "render": 6}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in (ROOT / "recipes").rglob("*.py")}
    return {name: _imports(path, set(paths)) - {name, "recipes", "recipes.paper"} for name, path in paths.items()}


def test_every_module_imports_only_lower_layers():
    graph = _graph()
    paper = {name.rsplit(".", 1)[1]: deps for name, deps in graph.items() if name.startswith("recipes.paper.")}
    assert set(paper) == set(LAYERS), "a new module of recipes/paper gets its place in LAYERS"

    def allowed(module: str, dep: str) -> bool:
        if dep.startswith("recipes.paper."):
            return LAYERS[dep.rsplit(".", 1)[1]] < LAYERS[module]
        return dep in ("recipes.schema", "recipes.config_store", "recipes.run_config")  # below every recipe

    assert [f"{module} imports {dep}" for module, deps in paper.items() for dep in sorted(deps)
            if not allowed(module, dep)] == []
