"""Import hygiene: every module imports on its own, the module-level imports have no cycle, library
modules raise exceptions instead of exiting, and no file points outside the repository."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The package and its sub-packages; folders train/, export/, ... are smr.train, smr.export, ...
PACKAGES = [
    "smr",
    "smr.core",
    "smr.data",
    "smr.synth",
    "smr.train",
    "smr.export",
    "smr.serving",
    "smr.serving.triton_models",
    "smr.clients",
]

# Triton's python backend provides this module; the model files that import it at the top run only
# inside an exported model repository (tests/export loads them with a stand-in), so (a) leaves them out.
TRITON_ONLY = "triton_python_backend_utils"


def _module_files() -> dict[str, Path]:
    """Every module of the package: its dotted name -> its source file."""
    files: dict[str, Path] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        files[name] = Path(package.__file__)
        for info in pkgutil.iter_modules(package.__path__, name + "."):
            if not info.ispkg:
                spec = importlib.util.find_spec(info.name)
                files[info.name] = Path(spec.origin)
    return files


MODULES = _module_files()


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: in the module body and in
    its top-level ``if``/``try``/``with`` blocks, not in functions or classes, nor under
    ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return found


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imported_modules(name: str, tree: ast.Module) -> set[str]:
    """The package's modules that ``name`` imports at the top level."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _top_level_imports(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        targets.add(module)
        targets.update(f"{module}.{alias.name}" for alias in node.names)  # from pkg import submodule
    edges = set()
    for target in targets:
        # importing a.b.c runs a/__init__ and a/b/__init__ first, except those already running
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in MODULES and candidate != name and not name.startswith(candidate + "."):
                edges.add(candidate)
    return edges


def _import_graph() -> dict[str, set[str]]:
    return {name: _imported_modules(name, ast.parse(path.read_text())) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per strongly connected
    component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_a_cycle_in(graph, set(c)) for c in components]


def _a_cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle in the component {sorted(component)}")


def test_the_cycle_finder_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]


def test_the_walk_finds_every_sub_package_and_module():
    assert {"smr.cli", "smr.train.engine", "smr.export.tensors", "smr.clients.client"} <= set(MODULES)
    assert "smr.serving.triton_models.postprocess" in MODULES
    assert len(MODULES) > 80


def test_every_module_imports_on_its_own(tmp_path):
    """Each module is imported after every ``smr`` module is dropped from ``sys.modules``, in one
    fresh interpreter (third-party packages stay loaded, to keep this fast), so a module that only
    imports when another was imported first, or a cycle that breaks at import time, fails here."""
    names = [
        name
        for name, path in MODULES.items()
        if not name.endswith(".__main__")  # `python -m` runs them: importing one starts the program
        and not any(
            isinstance(node, ast.Import) and any(a.name == TRITON_ONLY for a in node.names)
            for node in _top_level_imports(ast.parse(path.read_text()))
        )
    ]
    assert len(names) > 60
    script = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "smr" or m.startswith("smr.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(names)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout: the installed package is imported, not its folders
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "modules that do not import on their own:\n" + "\n".join(
        f"{name}:\n{trace}" for name, trace in failures.items()
    )


def test_module_level_imports_have_no_cycle():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in cycles)


# ----------------------------------------------------------------------------------------------
# grep-style checks over the repository's files


def _tracked(*suffixes: str) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    return [REPO_ROOT / p for p in listed if p.endswith(suffixes) and (REPO_ROOT / p).is_file()]


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and re.fullmatch(r"__name__ == ['\"]__main__['\"]", ast.unparse(node.test)) is not None
    )


# the command-line layer, which turns the library's exceptions into exit statuses
EXIT_ALLOWED = {"smr/__main__.py", "smr/demo.py"}


def _exits(tree: ast.Module) -> list[int]:
    """Lines that raise SystemExit or call sys.exit/exit/quit, outside ``if __name__ == "__main__":``
    (``os._exit`` in a forked child before exec is no exit of the caller's interpreter)."""
    lines = []

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node):
            return
        if isinstance(node, ast.Name) and node.id in ("SystemExit", "exit", "quit"):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.exit":
            lines.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return lines


def test_library_modules_raise_exceptions_instead_of_exiting():
    """Only the CLI modules (``cli.py``, ``smr/__main__.py``, the demo) end the process; library code
    raises exceptions that they turn into ``smr <cmd>: error: ...`` and an exit status."""
    offenders = []
    for path in MODULES.values():
        rel = path.resolve().relative_to(REPO_ROOT).as_posix()
        if path.name == "cli.py" or rel in EXIT_ALLOWED:
            continue
        offenders += [f"{rel}:{line}" for line in _exits(ast.parse(path.read_text()))]
    assert not offenders, "SystemExit / sys.exit outside the CLI modules: " + ", ".join(offenders)


# The tests that use the real development data set find it beside the checkout (or through
# $SMR_SHARED_DATA); this file and the deploy test name the patterns to check that they are absent.
OUTSIDE_ALLOWED = {
    "tests/conftest.py",
    "tests/export/export_helpers.py",
    "tests/serving/serving_helpers.py",
    "tests/deploy/test_manifests.py",
    "tests/test_imports.py",
}
OUTSIDE = re.compile(r"\.\./shared|shared/data|DESIGN\.md|/work/")


def test_no_file_points_outside_the_repository():
    suffixes = (".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".sh", "Makefile", ".ci/run")
    found = []
    for path in _tracked(*suffixes):
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel in OUTSIDE_ALLOWED:
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize("text", ["see DESIGN.md", "python x.py ../shared/data/pbc-dev", "/work/shared"])
def test_the_outside_pattern_matches(text):
    assert OUTSIDE.search(text)
