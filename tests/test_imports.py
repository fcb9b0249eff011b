"""kdtui's internal import graph: no circle, and no arrow from the engine up to the UI.

Every import counts, wherever it is written: at the top, inside a function, or under
`if TYPE_CHECKING:`. An import moved into a function still makes two modules depend on each
other; it only hides the circle from Python, not from the next reader."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kdtui"
LOWER = ("kdtui.engine", "kdtui.methods", "kdtui.recipes")  # the engine...
UI = ("kdtui.dashboard", "kdtui.terminal")  # ...never imports these

# Circles tolerated while an issue breaks them; a module joining one fails. Empty since issue 22
# moved the weights checks that compact and sparse folders need out of kdtui.models
# (kdtui.weights), which loads those folders.
KNOWN_CIRCLES: list[set[str]] = []


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each kdtui module -> the kdtui modules it imports (a package counts as its __init__)."""
    files = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.module, node.level)
                found.add(base)
                # `from kdtui.dashboard import fmt` imports the module kdtui.dashboard.fmt.
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def _absolute(current: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    package = current.split(".") if is_package else current.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or not (the strongly connected
    components of more than one module), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_sees_imports_inside_functions_and_relative_ones() -> None:
    graph = import_graph()
    assert "kdtui.events" in graph["kdtui.runlog"]  # at the top
    assert "kdtui.checkpoint" in graph["kdtui.rundir"]  # inside a method
    assert _absolute("kdtui.dashboard.widgets.run_screen", False, "state", 2) == (
        "kdtui.dashboard.state"
    )
    assert _absolute("kdtui.dashboard", True, None, 1) == "kdtui.dashboard"


def test_circles_finds_them() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(map(sorted, circles(graph))) == [["a", "b", "c"], ["d", "e"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    found = [group for group in circles(import_graph()) if group not in KNOWN_CIRCLES]
    assert not found, "import circles: " + "; ".join(" <-> ".join(sorted(g)) for g in found)


def test_the_known_circles_are_still_there() -> None:
    """Whoever breaks a known circle removes it from KNOWN_CIRCLES, so it cannot come back."""
    gone = [group for group in KNOWN_CIRCLES if group not in circles(import_graph())]
    assert not gone, f"no longer a circle, remove from KNOWN_CIRCLES: {gone}"


def test_the_engine_never_imports_the_ui() -> None:
    graph = import_graph()
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _within(module, LOWER)
        for target in targets
        if _within(target, UI)
    )
    assert not wrong, wrong
