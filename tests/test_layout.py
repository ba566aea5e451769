"""The package's shape: imports run one way, never in a circle, and each layer keeps to its room."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zoo"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """zoo modules that `path` imports anywhere (functions included), except for type checking."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for alias in child.names:
                    submodule = f"{child.module}.{alias.name}"
                    found.add(submodule if submodule in MODULES else child.module)
            elif isinstance(child, ast.ImportFrom) and child.level:
                raise AssertionError(f"{path}: relative import; zoo uses absolute imports")
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {name for name in found if name in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _parents(name: str) -> set[str]:
    """A package's __init__ re-exports from its own modules; importing a module runs its parents first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles() -> None:
    graph = {name: {target for target in targets if target not in _parents(name) and name not in _parents(target)}
             for name, targets in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# (layer, layers it must never import): the container knows no catalogue or server, codecs no CLI, ...
RULES = [
    ("zoo.container", ("zoo.hub", "zoo.cli", "zoo.api", "zoo.evaluate", "zoo.refs")),
    ("zoo.kernels", ("zoo.container", "zoo.codecs", "zoo.hub", "zoo.cli", "zoo.api", "zoo.evaluate", "zoo.optimize")),
    ("zoo.codecs", ("zoo.container", "zoo.hub", "zoo.cli", "zoo.api", "zoo.evaluate")),
    ("zoo.sources", ("zoo.container", "zoo.codecs", "zoo.hub", "zoo.cli", "zoo.api", "zoo.evaluate")),
    ("zoo.optimize", ("zoo.container", "zoo.hub", "zoo.cli", "zoo.api", "zoo.evaluate")),
    ("zoo.hub", ("zoo.cli",)),
    ("zoo.evaluate", ("zoo.cli",)),
]


@pytest.mark.parametrize(("layer", "forbidden"), RULES, ids=[layer for layer, _ in RULES])
def test_layers_import_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    crossings = sorted(f"{name} -> {target}" for name, targets in GRAPH.items() if name.startswith(layer)
                       for target in targets if target.startswith(forbidden))
    assert crossings == []


def test_typer_lives_in_the_cli_only() -> None:
    users = sorted(name for name, path in MODULES.items() if not name.startswith("zoo.cli")
                   and any(isinstance(node, (ast.Import, ast.ImportFrom)) and "typer" in ast.unparse(node)
                           for node in ast.walk(ast.parse(path.read_text()))))
    assert users == []
