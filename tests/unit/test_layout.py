"""The code's shape: imports run one way (command line → services → kernel), no module imports itself
back through others, and no file or function grows past the sizes a reader can hold.

Read from the source with ``ast`` (imports inside functions and under ``TYPE_CHECKING`` count too): the
layers are a rule of the code, not of what happens to be imported at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = {
    "squall.core": ROOT / "core" / "squall" / "core",
    "squall.gateway": ROOT / "services" / "gateway" / "squall" / "gateway",
    "squall.processor": ROOT / "services" / "processor" / "squall" / "processor",
    "squall.scheduler": ROOT / "services" / "scheduler" / "squall" / "scheduler",
    "squall.cli": ROOT / "services" / "cli" / "squall" / "cli",
}
# What each package may import of Squall, beyond itself: the kernel nothing, a service the kernel, the
# command line everything.
ALLOWED = {
    "squall.core": set(),
    "squall.gateway": {"squall.core"},
    "squall.processor": {"squall.core"},
    "squall.scheduler": {"squall.core"},
    "squall.cli": {"squall.core", "squall.gateway", "squall.processor", "squall.scheduler"},
}
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
# Functions that are one literal table (the OpenAPI document, an argument parser's options): long because
# the table is, and read as a table.
DECLARATIVE_TABLES = {
    ("services/gateway/squall/gateway/openapi.py", "openapi_spec"),
    ("services/gateway/squall/gateway/openapi.py", "_admin_paths"),
    ("services/gateway/squall/gateway/openapi_schemas.py", "component_schemas"),
    ("services/gateway/squall/gateway/openapi_schemas.py", "_admin_schemas"),
}
PYTHON_SOURCES = ("core", "services", "tests", "bench", "deploy", "tasks.py")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The Squall modules ``module`` imports (a package's module when a name of it is imported)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: a relative import (the project imports by absolute name)"
            base = node.module or ""
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imported(module, path, set(known)) for module, path in known.items()}


def package_of(module: str) -> str:
    return next(p for p in PACKAGE_ROOTS if module == p or module.startswith(p + "."))


def test_every_package_is_found() -> None:
    found = {package_of(m) for m in modules()}
    assert found == set(PACKAGE_ROOTS)
    assert {"squall.core.store.intake", "squall.gateway.intake", "squall.cli.main"} <= set(modules())


def test_imports_run_one_way() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if package_of(target) != package_of(module) and package_of(target) not in ALLOWED[package_of(module)]
    )
    assert wrong == []


def cycles(edges: dict[str, set[str]]) -> Iterator[list[str]]:
    """Each strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                yield from visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                yield sorted(group)

    for node in sorted(edges):
        if node not in index:
            yield from visit(node)


def test_no_import_cycles() -> None:
    assert list(cycles(graph())) == []


def test_a_cycle_is_found() -> None:
    """The check above can fail."""
    assert list(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]


def python_files() -> list[Path]:
    files: list[Path] = []
    for name in PYTHON_SOURCES:
        path = ROOT / name
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    relative = path.relative_to(ROOT).as_posix()
    assert len(text.splitlines()) <= MAX_FILE_LINES, relative
    if "/migrations/versions/" in relative:  # a migration's upgrade is its DDL, written out
        return
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and (relative, node.name) not in DECLARATIVE_TABLES
    ]
    assert long == []
