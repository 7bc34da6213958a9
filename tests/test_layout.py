"""The package's layout shows its architecture: modules depend on each other in one direction only, and nothing
in the library depends on the command line."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minillava"


def imports_of(path: Path) -> set[str]:
    """The minillava modules a file imports, at the top or inside a function (``from .x import y``,
    ``from minillava.x import y``, ``import minillava.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("minillava."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("minillava."))
    return found - {path.stem}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {p.stem for p in package.glob("*.py")}
    return {p.stem: imports_of(p) & modules for p in package.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_two_modules_import_each_other():
    graph = import_graph()
    assert {"toy", "ablate", "trainer", "convert", "cli"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_can_fail(tmp_path):
    """A package where a imports b (inside a function) and b imports a is caught."""
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n")
    (tmp_path / "b.py").write_text("from .a import f\n")
    (tmp_path / "c.py").write_text("import minillava.a\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])


def test_nothing_but_the_command_line_imports_it():
    assert [m for m, deps in import_graph().items() if "cli" in deps] == []
    loaded = subprocess.run([sys.executable, "-c", "import sys, minillava.ablate, minillava.toy; "
                             "print(sorted(m for m in sys.modules if m.startswith('minillava')))"],
                            capture_output=True, text=True, check=True).stdout
    assert "minillava.cli" not in loaded and "minillava.toy" in loaded
