"""The house rules of the package, checked on its source: the library rooms (`model`, `memory`,
`tracking`, `data`, `eval`, `train`, `runtime`) never import the application layer (`app`, `cli`,
`commands`, `pipelines`, `bench`, `serve`), and no two rooms import each other, directly or in a cycle.
A room is a top-level subpackage or module of `surgsam2`; imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "surgsam2"
APPLICATION_ROOMS = {"app", "cli", "commands", "pipelines", "bench", "serve", "export"}
LIBRARY_ROOMS = {"model", "memory", "tracking", "data", "eval", "train", "runtime"}


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of the surgsam2 modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["surgsam2", *path.relative_to(PACKAGE).parent.parts]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return [name for name in names if name.startswith("surgsam2.")]


def room_graph() -> dict[str, set[str]]:
    """Room -> the other rooms it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        room = _room(path)
        if room == "__init__":
            continue
        for module in _imported_modules(path):
            target = module.split(".")[1]
            if (PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").is_file():
                if target not in (room, "__init__"):
                    graph.setdefault(room, set()).add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if state.get(other) == 1:
                return stack[stack.index(other):] + [other]
            if not state.get(other):
                found = visit(other, stack)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node, [])
            if found:
                return found
    return None


def test_every_room_is_classified() -> None:
    rooms = {_room(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    unknown = rooms - APPLICATION_ROOMS - LIBRARY_ROOMS
    assert not unknown, f"rooms neither library nor application: {sorted(unknown)}"


def test_library_never_imports_the_application_layer() -> None:
    graph = room_graph()
    bad = sorted((room, target) for room in LIBRARY_ROOMS for target in graph.get(room, ()) if target in APPLICATION_ROOMS)
    assert not bad, f"library rooms importing the application layer: {bad}"


def test_no_import_cycle_between_rooms() -> None:
    cycle = find_cycle(room_graph())
    assert cycle is None, f"import cycle between rooms: {' -> '.join(cycle)}"


@pytest.mark.parametrize(
    "graph, cycle",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"b"}, "b": {"c"}, "c": set()}, False)],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycle: bool) -> None:
    assert (find_cycle(graph) is not None) == cycle
