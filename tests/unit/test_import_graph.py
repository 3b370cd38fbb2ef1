"""The package's import graph: no cycles anywhere in `src/parley`, and no arrow that runs back
up the layers (server -> transports -> runtime -> core -> protocol/audio; engines beside core).

Arrows are read from the source with `ast`, not by importing it.  Every import statement
counts, wherever it is: at module level, under `if TYPE_CHECKING:`, and inside functions (a
function-level import is a cycle put off until call time, not a cycle removed).  `from pkg
import name` is an arrow to `pkg.name` when that is a module, else to `pkg`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "parley"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The modules of the package one `from ... import ...` statement in `module` names."""
    if node.level:
        is_package = MODULES[module].name == "__init__.py"
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    if len(found) < len(node.names) and target in MODULES:
        found.append(target)
    return found


def imports_of(module: str) -> set[str]:
    """Every module of the package that `module` imports (itself excluded)."""
    tree = ast.parse(MODULES[module].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            out |= set(_resolve(module, node))
    out.discard(module)
    return {m for m in out if m != PACKAGE and m.startswith(PACKAGE + ".")}


GRAPH = {m: imports_of(m) for m in MODULES}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_arrows() -> None:
    # a known arrow of each kind, so a walk that finds nothing cannot pass the tests below
    assert "parley.core.session" in GRAPH["parley.runtime.runner"]
    assert "parley.protocol.errors" in GRAPH["parley.core.session"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles in src/parley:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# layer -> the layers it must never import
FORBIDDEN = {
    "core": {"engines", "runtime", "transports", "server"},
    "protocol": {"engines", "runtime", "transports", "server", "core"},
    "audio": {"engines", "runtime", "transports", "server", "core", "protocol"},
    "engines": {"runtime", "transports", "server"},
    "transports": {"server"},
    "runtime": {"transports", "server"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _layer(m) == layer
                    for t in targets if _layer(t) in FORBIDDEN[layer])
    assert not upward, f"{layer} imports a layer above it:\n" + "\n".join(upward)
