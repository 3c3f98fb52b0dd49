"""The layering of the project: pipelines/ -> transforms/ -> classifiers/, nothing imports upward
and the project's modules import no circle.

Read from the source with `ast`: every `import` statement counts, at module level or inside a
function (a lazy import is still a dependency). Imports by name at run time (the stage registry
in transforms/core/stage.py, the command table in pipelines/cli.py) are plugins, not edges.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("classifiers", "transforms", "pipelines")
# A layer may import only itself and the layers after it.
LAYERS = ("pipelines", "transforms", "classifiers")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        # `import a.b.c` runs a.b.c; a name that is not a module belongs to its parent module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up `level - 1` more
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                add(f"{module}.{alias.name}")  # `from a import b`: the submodule a.b, else a
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        layer = LAYERS.index(module.split(".")[0])
        for target in sorted(targets):
            if LAYERS.index(target.split(".")[0]) < layer:
                bad.append(f"{module} imports {target}")
    return bad


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "transforms.core.config" in graph["pipelines.job"]  # module level
    assert "pipelines.job" in graph["pipelines.mixture"]        # inside `apply`
    assert "classifiers.kenlm_model" in graph["pipelines.quality"]  # `from classifiers import x`


def test_no_layer_imports_a_layer_above_it():
    assert upward_imports(import_graph()) == []


def test_project_modules_import_no_circle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_are_for():
    graph = {"classifiers.a": {"transforms.b"}, "transforms.b": {"pipelines.c"},
             "pipelines.c": {"pipelines.d"}, "pipelines.d": {"pipelines.c"}}
    assert upward_imports(graph) == ["classifiers.a imports transforms.b",
                                     "transforms.b imports pipelines.c"]
    assert cycles(graph) == [["pipelines.c", "pipelines.d"]]
