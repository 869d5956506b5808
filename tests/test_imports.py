"""The packages' imports form a DAG in the direction of the data flow: optimizers <- bench <- analysis.

Every import counts, also one inside a function: a cycle hidden in a function is still a cycle. The graph
is read from the source (ast), so it needs no import to succeed and sees every branch."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("optimizers", "bench", "analysis")  # each may import only those before it
OPTIMIZERS_MAY_IMPORT = {"torch"}  # besides the standard library: the methods depend on torch alone


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a `from package import module` counts as the module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]) if node.level \
                else node.module or ""
            base = base.rstrip(".")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                found.add(target)
    return found


def third_party(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return {r for r in roots if r not in sys.stdlib_module_names and r != "__future__" and r not in PACKAGES}


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_is_read() -> None:
    assert "bench.config" in GRAPH["bench.run"] and "optimizers" in GRAPH["bench.run"]


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_points_up_the_data_flow(package: str) -> None:
    later = PACKAGES[PACKAGES.index(package) + 1:]
    upward = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() if m.split(".")[0] == package
                    for t in targets if t.split(".")[0] in later)
    assert not upward, "; ".join(upward)


def test_optimizers_import_only_torch() -> None:
    extra = {str(p.relative_to(REPO)): third_party(p) - OPTIMIZERS_MAY_IMPORT
             for name, p in modules().items() if name.split(".")[0] == "optimizers"}
    assert not {k: v for k, v in extra.items() if v}


MAX_LINES = 450  # a module a newcomer reads in one sitting


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_is_small_and_says_what_it_owns(name: str) -> None:
    path = modules()[name]
    source = path.read_text()
    assert ast.get_docstring(ast.parse(source)), f"{path.relative_to(REPO)} has no opening docstring"
    assert len(source.splitlines()) <= MAX_LINES, f"{path.relative_to(REPO)}: {len(source.splitlines())} lines"


def test_the_readme_layout_names_every_module_and_subpackage() -> None:
    """Each package's own modules by file name, and each subpackage by folder (its __init__ lists the rest)."""
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    wanted = set()
    for path in modules().values():
        parts = path.relative_to(REPO).parts
        if len(parts) == 2 and path.stem not in ("__init__", "__main__"):
            wanted.add(path.name)
        elif len(parts) == 3:
            wanted.add(f"{parts[1]}/")
    missing = sorted(w for w in wanted if not re.search(rf"(?<![\w/]){re.escape(w)}", layout))
    assert not missing, f"README's Layout section does not mention: {', '.join(missing)}"
