"""The package's import structure: no group of modules imports each other (counting imports inside functions, which
used to hide cycles), the function-level imports of the package's own modules stay under a ceiling that only goes
down, and each module imports alone in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sae_bench"
FUNCTION_LEVEL_CEILING = 6
"""Function-level imports of the package's own modules today; lower it as they move to the top (goal: 25, for the
rehearsal's ordering rule and the command line's start-up only)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def own_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module of the package, whether the import sits inside a function) for each module of the package
    that an import statement of `path` names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            submodules = {resolve(f"{base}.{alias.name}") for alias in node.names} - {resolve(base)}
            targets = submodules if submodules - {None} else {resolve(base)}  # modules, or names of one module
        elif isinstance(node, ast.Import):
            targets = {resolve(alias.name) for alias in node.names}
        else:
            continue
        resolved = targets - {None, module_name(path)}
        found += [(target, node.col_offset > 0) for target in sorted(resolved)]
    return found


def resolve(target: str) -> str | None:
    """The package module an import target names (the longest module prefix), or None outside the package."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def imports() -> dict[str, list[tuple[str, bool]]]:
    return {name: own_imports(path) for name, path in MODULES.items()}


def test_no_import_cycles(imports):
    edges = defaultdict(set, {name: {target for target, _ in found} for name, found in imports.items()})
    assert cycles(edges) == []


def test_function_level_imports_of_own_modules_stay_under_the_ceiling(imports):
    count = sum(inside for found in imports.values() for _, inside in found)
    assert count <= FUNCTION_LEVEL_CEILING, f"{count} function-level imports of the package's own modules"


def test_cycles_finds_a_cycle_and_only_it():
    edges = defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles(edges) == [["a", "b", "c"]]


LAYERS = [
    "foundation",
    "engine",
    "zoo",
    "cases",
    "sources",
    "expectations",
    "results_store",
    "execution",
    "suite",
    "gates",
    "reports",
    "tooling",
    "entry points",
]
"""docs/design.md §3, top to bottom: a module imports only modules of its own layer or of a layer before it."""


def layer(module: str) -> str:
    """The layer of a module of the package (docs/design.md §3)."""
    parts = module.split(".")
    if parts[1:2] in (["cli"], ["commands"]):
        return "entry points"
    if parts[1:3] == ["sources", "zoo"]:
        return "zoo"
    if len(parts) == 1 or MODULES[module].name != "__init__.py" and len(parts) == 2:
        return "foundation"
    return parts[1]


def test_each_layer_imports_only_the_layers_before_it(imports):
    upward = [
        f"{name} ({layer(name)}) imports {target} ({layer(target)})"
        for name, found in imports.items()
        for target, _ in found
        if LAYERS.index(layer(target)) > LAYERS.index(layer(name))
    ]
    assert upward == []


def test_every_module_has_a_layer():
    assert {layer(name) for name in MODULES} <= set(LAYERS)
    assert {layer(name) for name in MODULES} == set(LAYERS)  # no layer left empty: the document and the tree agree


@pytest.mark.full
def test_each_subpackage_imports_alone():
    packages = sorted({name for name in MODULES if (MODULES[name].name == "__init__.py")})
    for name in packages:
        run = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == 0, f"{name}: {run.stderr[-2000:]}"


def test_the_tests_mirror_the_layout():
    """A test folder per subpackage of the library, named after it, and no test folder without one."""
    subpackages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()} - {"commands"}
    folders = {path.name for path in (ROOT / "tests").iterdir() if path.is_dir() and any(path.glob("test_*.py"))}
    assert folders == subpackages  # the command line (`commands/`, `cli`) is tested from the top: tests/test_cli.py
