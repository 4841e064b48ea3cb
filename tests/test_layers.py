"""The package's import graph has no cycle and respects the layer order (a static check, no import).

Every module of ``tl_spec/`` is parsed with :mod:`ast`; every import counts, also those inside
functions (they run later, but still tie the two modules together), except those under
``if TYPE_CHECKING:``. ``from tl_spec.x import y`` is an edge to ``tl_spec.x.y`` when that is a
module, else to ``tl_spec.x``; importing ``tl_spec.a.b`` is an edge to that module only, not to
the package ``tl_spec.a`` whose ``__init__`` Python also runs.

Layers, low to high (a module may import its own layer and lower ones; a package's
``__init__`` may import its own submodules whatever their layer): see :data:`LAYERS`. The top
package ``tl_spec`` (the public facade, ``tl_spec/__init__.py``) sits just below ``cli``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT_NAME = "tl_spec"
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",), ("names",), ("options",), ("fileio",), ("display", "colors"), ("prompts", "corpus"),
    ("tokens",), ("metrics",), ("stats",), ("checkpoints",), ("models", "sources", "resume"), ("running",), ("hooks",), ("records",),
    ("experiments",), ("audit",), ("results",), ("viz",), ("zoo",), ("study",), ("demo",),
    ("",),  # the top package itself (tl_spec/__init__.py)
    ("cli",),
)
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _package_dir() -> Path:
    spec = importlib.util.find_spec(ROOT_NAME)  # locates the package without importing it
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def _modules(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package (packages by __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """``(line, dotted target)`` of every import in a module, TYPE_CHECKING blocks excluded."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: list[tuple[int, str, list[str]]] = []  # (line, base, imported names)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((node.lineno, alias.name, []))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = self.module.split(".")
            if not self.is_package:
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        self.found.append((node.lineno, base, [a.name for a in node.names]))


def import_graph(root: Path | None = None) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the package's own modules."""
    root = root or _package_dir()
    modules = _modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges: dict[str, int] = {}
        for line, base, names in visitor.found:
            if base != ROOT_NAME and not base.startswith(ROOT_NAME + "."):
                continue
            targets = [f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names] or [base]
            for target in targets:
                if target not in modules:
                    raise AssertionError(f"{path}:{line} imports {target}, which is not a module")
                if target != name:
                    edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _components(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _shortest_cycle(graph: dict[str, dict[str, int]], comp: set[str], start: str) -> list[str]:
    """A shortest cycle ``[start, ..., start]`` inside ``comp`` (breadth-first back to start)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in comp and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Cycles of the import graph as paths ``[a, b, ..., a]``: for every module on a cycle, a
    shortest cycle through it (the same cycle found from two of its modules is listed once)."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for comp in _components(graph):
        for start in sorted(comp):
            cycle = _shortest_cycle(graph, comp, start)
            ring = cycle[:-1]
            i = ring.index(min(ring))
            key = tuple(ring[i:] + ring[:i])
            if key not in seen:
                seen.add(key)
                out.append([*key, key[0]])
    return sorted(out)


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + \
        f" -> {cycle[-1]}"


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYER_OF[parts[1] if len(parts) > 1 else ""]


def layer_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Edges to a higher layer, except a package ``__init__`` importing its own submodules."""
    out = []
    for a, edges in sorted(graph.items()):
        for b, line in sorted(edges.items()):
            if b.startswith(a + ".") or _layer(b) <= _layer(a):
                continue
            out.append(f"{a} (line {line}) imports {b}: layer {LAYERS[_layer(b)]} is above "
                       f"{LAYERS[_layer(a)]}")
    return out


# ---------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / ROOT_NAME / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / ROOT_NAME


def test_checker_finds_a_cycle_through_function_level_imports_and_prints_it(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "from tl_spec import viz\n",
        "viz/__init__.py": "from tl_spec.viz.report import render\n",
        "viz/report.py": "def render():\n    import tl_spec\n    return tl_spec\n",
        "zoo.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tl_spec.viz\n",
    })
    graph = import_graph(pkg)
    assert graph["tl_spec"] == {"tl_spec.viz": 1}
    assert graph["tl_spec.viz"] == {"tl_spec.viz.report": 1}
    assert graph["tl_spec.viz.report"] == {"tl_spec": 2}  # inside a function: counted
    assert graph["tl_spec.zoo"] == {}  # under TYPE_CHECKING: not counted
    cycles = find_cycles(graph)
    assert cycles == [["tl_spec", "tl_spec.viz", "tl_spec.viz.report", "tl_spec"]]
    assert _describe(graph, cycles[0]) == ("tl_spec (line 1) -> tl_spec.viz (line 1) -> "
                                           "tl_spec.viz.report (line 2) -> tl_spec")


def test_checker_resolves_modules_packages_and_relative_imports(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "experiments/__init__.py": "from .si import run\n",
        "experiments/si.py": "from tl_spec.errors import E\nfrom tl_spec.zoo import load\n",
        "zoo/__init__.py": "def load(): ...\n",
        "zoo/train.py": "from tl_spec.experiments import si\nimport tl_spec.experiments.si\n",
    })
    graph = import_graph(pkg)
    assert graph["tl_spec.experiments"] == {"tl_spec.experiments.si": 1}
    # a name from a package is an edge to the package; a module is an edge to the module only
    assert graph["tl_spec.experiments.si"] == {"tl_spec.errors": 1, "tl_spec.zoo": 2}
    assert graph["tl_spec.zoo.train"] == {"tl_spec.experiments.si": 1}
    assert find_cycles(graph) == []
    assert layer_violations(graph) == [
        "tl_spec.experiments.si (line 2) imports tl_spec.zoo: layer ('zoo',) is above "
        "('experiments',)"]


def test_checker_lists_each_cycle_of_a_tangle_once():
    graph = {"m": {"z": 5}, "z": {"m": 7, "h": 9}, "h": {"m": 3}, "e": {"m": 1}}
    assert find_cycles(graph) == [["h", "m", "z", "h"], ["m", "z", "m"]]
    assert _describe(graph, ["m", "z", "m"]) == "m (line 5) -> z (line 7) -> m"


# ---------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_is_in_a_layer(graph):
    assert len(graph) > 50
    missing = sorted({m for m in graph if (m.split(".") + [""])[1] not in LAYER_OF})
    assert not missing, f"modules outside LAYERS: {missing}"


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(graph, c) for c in cycles)


def test_imports_follow_the_layer_order(graph):
    bad = layer_violations(graph)
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)

