"""The package's layering: imports only point down the stages, and no module imports itself back.

    .venv/bin/python -m pytest tests/test_layers.py -v      (reads the source with ast, < 1 s)

Function-level imports count as much as top-level ones: a lazy import that climbs a layer is
the same dependency, only hidden.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "workflow" / "kdbench"
# Lowest first; a module may import its own layer or any layer below it.
LAYERS = [
    ("foundations", {"kdbench", "kdbench.io", "kdbench.memory", "kdbench.provenance", "kdbench.devices"}),
    ("schema", {"kdbench.schema"}),
    ("data", {"kdbench.data"}),
    ("models", {"kdbench.models"}),
    ("losses", {"kdbench.losses"}),
    ("evaluate", {"kdbench.evaluate"}),
    ("cache", {"kdbench.cache"}),
    ("train", {"kdbench.train"}),
    ("analysis", {"kdbench.analysis"}),
    ("tools", {"kdbench.tools"}),
    ("entry points", {"kdbench.bench", "kdbench.cli", "kdbench.snake"}),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The rank of a module: the layer holding the longest prefix of its dotted name."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best[0]


def imports(module: str) -> set[str]:
    """Every kdbench module `module` imports, anywhere in its body (names resolved to modules)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module else []
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("kdbench") and name != module:
                out.add(name)
    return out


GRAPH = {m: imports(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    up = sorted(t for t in GRAPH[module] if layer(t) > layer(module))
    assert not up, f"{module} ({LAYERS[layer(module)][0]}) imports a higher layer: " + ", ".join(
        f"{t} ({LAYERS[layer(t)][0]})" for t in up)


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]):
        state[m] = 1
        for t in sorted(GRAPH[m]):
            if t.startswith(m + ".") or m.startswith(t + "."):  # a package and its own modules
                continue
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_function_level_imports_are_seen_and_unknown_modules_refused():
    cli = ast.parse(MODULES["kdbench.cli"].read_text())
    lazy = {n.module for f in ast.walk(cli) if isinstance(f, ast.FunctionDef)
            for n in ast.walk(f) if isinstance(n, ast.ImportFrom)}
    assert "kdbench.tools.audit" in lazy and "kdbench.tools.audit" in GRAPH["kdbench.cli"]
    with pytest.raises(AssertionError, match="in no layer"):
        layer("elsewhere.module")


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py"))
def test_every_subpackage_says_what_it_holds(package):
    assert ast.get_docstring(ast.parse(MODULES[package].read_text())), f"{package}/__init__.py has no docstring"
