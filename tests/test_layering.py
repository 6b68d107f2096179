"""The layering of ``llmkit/``: no import cycle, and the arrows point down (DESIGN.md, "Layering").

Every import statement of every module is read from the source (those inside functions and
``if TYPE_CHECKING:`` blocks too: a deferred import is still a dependency), so a cycle cannot hide
behind a function-level import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "llmkit"

# (importer package, imported package): edges that must not exist. A "package" is the first
# component under llmkit/ (llmkit.model.heads -> model; llmkit.config -> config).
FORBIDDEN = [
    ("model", "trainer"), ("model", "config"), ("model", "data"), ("model", "recipes"),
    ("trainer", "recipes"), ("trainer", "objective"), ("trainer", "config"),
    ("data", "model"),
    ("metric", "trainer"),
    ("checkpoint", "finetune"), ("checkpoint", "recipes"),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The llmkit module an imported dotted name refers to (the longest existing prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            if name.startswith("llmkit"):
                target = _resolve(name)
                if target and target != module:
                    found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _edge_path(a: str, b: str) -> str:
    return " -> ".join((a, b))


def test_the_import_graph_is_read_from_the_source():
    # the reader sees function-level imports and relative ones: a sanity check on known edges
    assert "llmkit.trainer.distributed" in GRAPH["llmkit.trainer.trainer"]
    assert "llmkit.model.heads" in GRAPH["llmkit.model.registry"]
    assert len(MODULES) > 50


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("importer, imported", FORBIDDEN)
def test_the_arrows_point_down(importer, imported):
    bad = [_edge_path(m, t) for m, targets in GRAPH.items() if _package(m) == importer
           for t in sorted(targets) if _package(t) == imported]
    assert not bad, f"{importer} must not import {imported}: " + ", ".join(bad)


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT.parent)): n for p in MODULES.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"
