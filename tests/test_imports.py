"""The import graph of climb_hpc has no cycles, and the stages do not reach back into the controller.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import`` statement, at
module level and inside functions (a function-level import is still an edge; it only runs later),
relative imports resolved, ``from pkg import name`` counted as an import of ``pkg.name`` when that is a
module. Importing ``climb_hpc.a.b`` runs ``climb_hpc/a/__init__.py`` first, so it is an edge to
``climb_hpc.a`` too. Imports under ``if TYPE_CHECKING:`` never run and are left out. Stages that are
looked up by name (``climb_hpc.stage.REGISTRY``, ``importlib``) are not edges: they are the plug-in
point, checked by the layering test below instead.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import climb_hpc

PACKAGE_DIR = Path(climb_hpc.__file__).parent


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # file:line, for the message


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every module of the package under ``root`` (``root`` is the package folder)."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _executed_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them but the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def _with_packages(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: importing a module imports every package above it first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_edges(root: Path, package: str) -> list[Edge]:
    mods = module_files(root, package)
    edges = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _executed_imports(tree):
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            else:
                if node.level:  # relative: from the module's own package, one level up per extra dot
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from pkg import name` runs pkg itself
                named = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in mods else origin for a in node.names]
            for name in dict.fromkeys(named):
                if name != package and not name.startswith(package + "."):
                    continue
                for target in _with_packages(name):
                    # The packages above a named module are imported first. Those above the importer (or the
                    # importer itself) are already imported when it runs: no new edge. A module named
                    # outright is always one (`import pkg.s` inside pkg.s is a self-loop).
                    if target in mods and (target == name or not (mod + ".").startswith(target + ".")):
                        edges.append(Edge(mod, target, where))
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with a cycle (more than one module, or a module importing itself)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph is a few hundred modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def cycle_path(component: list[str], edges: list[Edge]) -> list[Edge]:
    """A shortest cycle through the component's first module, edge by edge (breadth first, inside the component)."""
    inside = set(component)
    out: dict[str, list[Edge]] = {}
    for e in edges:
        if e.source in inside and e.target in inside:
            out.setdefault(e.source, []).append(e)
    start = component[0]
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in sorted(out.get(v, []), key=lambda e: (e.target, e.where)):
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if e.target not in came:
                    came[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")  # a component always has one


def describe(components: list[list[str]], edges: list[Edge]) -> str:
    lines = []
    for comp in components:
        path = cycle_path(comp, edges)
        lines.append(f"cycle among {len(comp)} module(s): {', '.join(comp)}")
        lines.append("  " + " -> ".join([path[0].source] + [e.target for e in path]))
        lines += [f"    {e.source} -> {e.target}  ({e.where})" for e in path]
    return "\n".join(lines)


def reachable(start: str, edges: list[Edge]) -> dict[str, list[Edge]]:
    """Every module ``start`` imports, directly or not, with the chain of imports that gets there."""
    out: dict[str, list[Edge]] = {}
    for e in edges:
        out.setdefault(e.source, []).append(e)
    chains: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in sorted(out.get(v, []), key=lambda e: (e.target, e.where)):
                if e.target not in chains:
                    chains[e.target] = chains[v] + [e]
                    nxt.append(e.target)
        frontier = nxt
    return chains


# ---------------------------------------------------------------- the package


def test_climb_hpc_has_no_import_cycles():
    edges = import_edges(PACKAGE_DIR, "climb_hpc")
    assert len({e.source for e in edges}) > 50, "the walk found too few modules: is the package where it was?"
    found = cycles(edges)
    assert not found, "import cycles between climb_hpc modules:\n" + describe(found, edges)


def test_stages_do_not_import_the_controller():
    """A stage module (what ``get_stage`` loads by name) never reaches the controller, even lazily: a driver
    stage gets what it needs from its arguments (``drive(cfg, rd, run_stage)``)."""
    from climb_hpc.stage import GROUPS, REGISTRY

    edges = import_edges(PACKAGE_DIR, "climb_hpc")
    controller = {"climb_hpc.pipeline", "climb_hpc.cli", "climb_hpc.api", "climb_hpc.task"}
    bad = []
    for target in sorted({*REGISTRY.values(), *GROUPS.values()}):
        module = target.split(":")[0]
        for reached, chain in sorted(reachable(module, edges).items()):
            if reached in controller:
                bad.append(" -> ".join([module] + [f"{e.target} ({e.where})" for e in chain]))
    assert not bad, "stage modules that import the controller:\n" + "\n".join(bad)


def test_minitron_takes_its_training_helpers_from_the_shared_module():
    edges = import_edges(PACKAGE_DIR, "climb_hpc")
    wrong = [e for e in edges if e.source.startswith("climb_hpc.minitron") and e.target == "climb_hpc.proxy.train"]
    assert not wrong, "minitron imports the proxies' trainer: " + ", ".join(e.where for e in wrong)
    users = {e.source.split(".")[1] for e in edges if e.target == "climb_hpc.training"}
    assert {"proxy", "minitron"} <= users


# ---------------------------------------------------------------- the checker itself, on a made-up package


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_checker_sees_function_level_relative_and_submodule_imports(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg.sub import b\n",            # function level; `b` is a submodule
        "sub/__init__.py": "",
        "sub/b.py": "from ..c import thing\n",                      # relative, two levels
        "c.py": "import pkg.a\nthing = 1\n",
        "d.py": "from . import c\n",                                 # reaches the cycle, is not in it
    })
    edges = import_edges(root, "pkg")
    found = cycles(edges)
    assert found == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    text = describe(found, edges)
    assert "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a" in text
    assert "pkg/sub/b.py:1" in text and "pkg/a.py:2" in text


def test_checker_counts_package_init_edges_and_self_imports(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "x/__init__.py": "from pkg.x.impl import run\n",            # a package that imports its own submodule: fine
        "x/impl.py": "def run():\n    import pkg.y.z\n",
        "y/__init__.py": "from pkg.x import run\n",                  # importing pkg.y.z runs this first
        "y/z.py": "",
        "s.py": "def again():\n    import pkg.s\n",              # a self-loop
    })
    edges = import_edges(root, "pkg")
    assert cycles(edges) == [["pkg.s"], ["pkg.x", "pkg.x.impl", "pkg.y"]]


def test_checker_skips_type_checking_imports(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": textwrap.dedent("""\
            import typing
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.a import A
            if typing.TYPE_CHECKING:
                import pkg.a
            else:
                import pkg.c
            """),
        "c.py": "",
    })
    edges = import_edges(root, "pkg")
    assert cycles(edges) == []
    assert {(e.source, e.target) for e in edges} == {("pkg.a", "pkg.b"), ("pkg.b", "pkg.c")}
