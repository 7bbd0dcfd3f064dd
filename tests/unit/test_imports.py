"""The project's import graph: no circle among its modules, and every project import at the top of its module.

A circle hidden by an import inside a function still ties two modules together (neither can be read, tested or
moved alone), so the graph below holds every import statement, wherever it stands. Imports of the project belong at
the top of the module, where a reader sees what a module depends on; only third-party libraries that are heavy or
an optional extra (trl, vllm, peft, wandb, gradio, ...) may be imported late.
"""

from __future__ import annotations

import ast
from pathlib import Path

import instructgpt

PACKAGE = Path(instructgpt.__file__).parent
ROOT = "instructgpt"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if not node.level:
        return node.module or ""
    anchor = package.split(".")
    anchor = anchor[: len(anchor) - node.level + 1]
    return ".".join(anchor + ([node.module] if node.module else []))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def project_imports(path: Path, tree: ast.Module, modules: dict[str, Path]) -> list[tuple[ast.stmt, str]]:
    """Each import statement of ``path`` (parsed as ``tree``) with the project module it loads (``from a import b``
    is ``a.b`` when ``b`` is a module, else ``a``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names if alias.name.split(".")[0] == ROOT]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, path)
            if base.split(".")[0] != ROOT:
                continue
            for alias in node.names:
                found.append((node, f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {
        name: {
            target for _, target in project_imports(path, parse(path), modules) if target in modules and target != name
        }
        for name, path in modules.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm): each is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def top_level_statements(tree: ast.Module) -> set[int]:
    """Ids of the statements that run when the module is imported: its body, and the bodies of top-level
    ``if``/``try`` blocks (``if TYPE_CHECKING:``, an optional import's ``try``)."""
    ids, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        ids.add(id(node))
        if isinstance(node, ast.If):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return ids


def test_the_cycle_finder_finds_a_circle_and_only_a_circle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "instructgpt.infra.errors" in graph and graph["instructgpt.infra.errors"] == set()
    assert any(targets for targets in graph.values()), "the walker found no project import at all"


def test_no_import_circle_among_the_project_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles (each line is one circle):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_project_imports_stand_at_the_top_of_their_module():
    modules = all_modules()
    late = []
    for path in modules.values():
        tree = parse(path)
        top = top_level_statements(tree)
        late += [
            f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}"
            for node, target in project_imports(path, tree, modules)
            if id(node) not in top
        ]
    assert not late, "project imports inside functions (move them to the top of the module):\n" + "\n".join(late)
