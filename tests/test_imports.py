"""The package's import structure: no module imports itself back through others.

Every module's import statements are read with ``ast`` (at module level and inside functions,
absolute and relative; ``if TYPE_CHECKING:`` blocks, which never run, are left out), the graph
of lttoolbox's modules is built from them, and a cycle in it fails the test with its modules
named. An import hidden inside a function still closes a cycle: it only delays it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lttoolbox"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """The import statements of ``tree``, anywhere in it, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, is_package: bool, tree: ast.AST, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the module ``name`` imports.

    ``from X import y`` imports X and, where ``X.y`` is a module, X.y too. Importing ``a.b.c``
    also runs ``a/__init__`` and ``a/b/__init__``: those edges count as well.
    """
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate != name:
                    found.add(candidate)
    return found


def module_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = imported_modules(name, path.name == "__init__.py", tree, modules)
        # A package's __init__ runs before any of its modules; a module does not depend on its
        # own package's __init__ for a cycle (Python handles the partially initialised parent).
        graph[name] = {m for m in found if not name.startswith(m + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted, with
    one cycle through each of them spelled out."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, c) for c in components]


def _one_cycle(graph, component: list[str]) -> list[str]:
    """A shortest cycle through the first module of ``component`` (breadth first)."""
    inside = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & inside):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle in {component}")


def test_the_finder_sees_a_cycle_through_a_function_level_relative_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from . import a\n")
    (pkg / "d.py").write_text("import pkg.c\n")
    graph = module_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}  # pkg itself is its ancestor: initialised first
    assert graph["pkg.c"] == set()          # the TYPE_CHECKING import never runs
    assert graph["pkg.d"] == {"pkg.c"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


def test_lttoolbox_has_no_import_cycle():
    cycles = find_cycles(module_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _benchmark_modules() -> set[str]:
    """The names a test would import benchmarks/ by: its scripts and packages."""
    folder = ROOT / "benchmarks"
    return ({p.stem for p in folder.glob("*.py")}
            | {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()})


def benchmark_uses(path: Path, benchmarks: set[str]) -> list[str]:
    """Where the test module ``path`` imports a benchmark script or puts benchmarks/ on its path."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and ast.unparse(node.func.value) == "sys.path"):
            names = [] if "benchmarks" not in ast.unparse(node) else ["sys.path += benchmarks/"]
            found += [f"{path.name}:{node.lineno}: {n}" for n in names]
            continue
        else:
            continue
        found += [f"{path.name}:{node.lineno}: import {n}" for n in names
                  if n.split(".")[0] in benchmarks or n.startswith("benchmarks")]
    return found


def test_the_check_sees_a_benchmark_import(tmp_path):
    test = tmp_path / "test_x.py"
    test.write_text("import sys\nsys.path.insert(0, str(ROOT / 'benchmarks'))\n"
                    "def f():\n    from lb.suite import load_suite\n    import throughput\n"
                    "import lttoolbox.leaderboard\n")
    assert benchmark_uses(test, {"lb", "throughput"}) == [
        "test_x.py:2: sys.path += benchmarks/", "test_x.py:4: import lb.suite",
        "test_x.py:5: import throughput"]


def test_no_test_imports_from_benchmarks():
    """What a test needs of a benchmark lives in the package, or the script runs as a process."""
    benchmarks = _benchmark_modules()
    assert {"leaderboard", "fault_sweep", "throughput"} <= benchmarks
    found = [use for path in sorted((ROOT / "tests").glob("*.py"))
             for use in benchmark_uses(path, benchmarks)]
    assert not found, found
