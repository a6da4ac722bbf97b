"""No import circle anywhere in the package, and no module importing another's private name.

Read from the source with ``ast`` (nothing is imported): the edges are the module-level imports, including
those under ``try`` / ``if`` at module level, excluding ``if TYPE_CHECKING:`` blocks (annotations only, never
run). A circle among the rest makes the import order matter and is the mark of two modules that are one; a
private name imported from another module is a border that is not one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "airflow_gemini_batch"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements run when the module is imported (not in functions, classes or TYPE_CHECKING)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level(node.body)
            found += _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _module_level(block)
        elif isinstance(node, ast.With):
            found += _module_level(node.body)
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(module: str) -> list[tuple[str, str]]:
    """``(imported module, name)`` pairs of a module's module-level imports inside the package."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    pairs: list[tuple[str, str]] = []
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            pairs += [(alias.name, "") for alias in node.names]
            continue
        source = _resolve(module, node)
        for alias in node.names:
            # ``from package import submodule`` imports the submodule; ``from module import name`` the module.
            target = f"{source}.{alias.name}"
            pairs.append((target, "") if target in MODULES else (source, alias.name))
    return [(target, name) for target, name in pairs if target in MODULES]


GRAPH = {module: sorted({target for target, _ in _imports(module)} - {module}) for module in MODULES}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_the_graph_is_read_from_the_package():
    assert "airflow_gemini_batch.results.parsing" in MODULES
    assert "airflow_gemini_batch.results.responses_file" in GRAPH["airflow_gemini_batch.results.parsing"]


def test_cycle_detection_finds_a_circle():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": [], "c": ["a"]}) == []


def test_no_import_circle_among_module_level_imports():
    assert _cycles(GRAPH) == []


def test_no_module_imports_a_private_name_of_another():
    """Anywhere in a module (functions and TYPE_CHECKING blocks too): a private name is its module's own."""
    private = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _resolve(module, node) in MODULES:
                private += [
                    f"{module} imports {_resolve(module, node)}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert private == []
