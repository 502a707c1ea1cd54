"""The layout rules the team builds by, checked from the source: no import circles in the packages, no function
over 80 lines (the sandbox's supervisor aside), no ``sys.path`` edits, no code under ``results/``, and no path of
a developer's machine in the source, docs or scripts (recorded result files keep the paths they ran with)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("prolora", "eval", "recipes")
SOURCE = (*PACKAGES, "scripts", "train.py")


def _py_files(*roots: str) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        path = REPO / root
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (at any depth of the file, relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a package: the deepest project module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = _py_files(*PACKAGES)
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_packages_have_no_import_circle():
    graph = import_graph()
    assert {"prolora.methods.registry", "recipes.run_config", "eval.driver"} <= set(graph)
    assert "prolora.methods.base" in graph["prolora.methods.lora"]  # edges are there to be checked
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_library_knows_nothing_of_hydra_or_the_recipes():
    for path in _py_files("prolora"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from) (hydra|omegaconf|recipes|eval)\b", text, re.M), path


def test_no_function_over_80_lines_outside_the_sandbox():
    long = []
    for path in _py_files(*SOURCE):
        if "sandbox" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert long == []


def test_no_sys_path_edits():
    edits = [f"{p.relative_to(REPO)}" for p in _py_files(*SOURCE) if "sandbox" not in p.parts
             and re.search(r"sys\.path\.(insert|append|extend|remove)|sys\.path\s*=|sys\.path\s*\+=", p.read_text())]
    assert edits == []


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [REPO / line for line in out.stdout.splitlines()]


def test_no_code_under_results():
    assert [str(p.relative_to(REPO)) for p in _tracked() if p.parts[len(REPO.parts)] == "results"
            and p.suffix == ".py"] == []


def test_no_developer_machine_path_in_source_docs_or_scripts():
    texts = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".sh", ".txt"}
    machine = re.compile(r"(?<![\w.])/(work|root|home/\w+|Users/\w+|tmp/\w+scratch)/")
    found = []
    for path in _tracked():
        rel = path.relative_to(REPO)
        recorded = rel.parts[0] == "results" and path.suffix != ".md"
        probe = rel.parts[:3] == ("tests", "fixtures", "hostile")  # attacks search such paths on purpose
        if recorded or probe or not (path.suffix in texts or path.name in ("Makefile", "run")) or not path.is_file():
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if machine.search(line):
                found.append(f"{rel}:{i}: {line.strip()[:100]}")
    assert found == []
