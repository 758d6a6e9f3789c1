"""The package's shape: no import circle, small files, thin entry points."""

import ast
import os

from entry_point import ROOT

PACKAGES = ("benchmarks", "models")
ENTRY_POINTS = ("invariance", "stride_ablation", "dataset_bias", "throughput", "compare")
MAX_LINES = 520  # a product file (about 500)
MAX_ENTRY_POINT_LINES = 210  # an entry point (about 200)


def _modules() -> dict[str, str]:
    """Dotted module name -> path, for every .py file of the packages."""
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[dotted.removesuffix(".__init__")] = path
    return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The project modules `path` imports (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                found.add(dotted if dotted in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules}


def test_no_import_circle():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m) :] + [m]))
        if m in done:
            return
        path.append(m)
        for dep in sorted(graph[m]):
            visit(dep)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_files_are_small_and_entry_points_thin():
    entry_points = {f"benchmarks.{name}" for name in ENTRY_POINTS}
    long = {}
    for dotted, path in _modules().items():
        lines = sum(1 for _ in open(path))
        if lines > (MAX_ENTRY_POINT_LINES if dotted in entry_points else MAX_LINES):
            long[dotted] = lines
    assert not long, long
