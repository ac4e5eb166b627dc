"""The package's shape, read from its source with ``ast``: no import cycles, no private
names used across modules, no module over 500 lines.

What counts as an import:
- module level: every import that runs when the module is imported (top level, class
  bodies, ``try``/``if`` blocks), except under ``if TYPE_CHECKING:``;
- deferred: an import inside a function. It runs later, so it cannot break import
  order, but it still makes the two modules depend on each other: a circle closed by
  a deferred import is reported too (by its own test), since data must flow one way.
  Deferring is fine for import cost (``sets`` loads ``sqlsplit`` only when splitting);
- ``if TYPE_CHECKING:`` imports never run and only name types: they are ignored.

Importing ``orchestrator.a.b`` also runs ``orchestrator/a/__init__.py``; that implicit
edge is not counted, so a package may re-export its submodules.

Private: a name starting with one underscore (not a dunder) belongs to its module; a
module starting with one belongs to its package (``orchestrator.targets._sql`` may be
imported by ``orchestrator.targets.*`` only).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import orchestrator

PACKAGE = "orchestrator"
ROOT = Path(orchestrator.__file__).resolve().parent
MAX_LINES = 500


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    lines: int
    # (imported module, line, deferred?)
    imports: list[tuple[str, int, bool]] = field(default_factory=list)
    # (line, what) for private names of other modules
    private_uses: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(ROOT.parent))


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Reader:
    """Collects one module's imports and its uses of other modules' private names."""

    def __init__(self, module: Module, known: set[str]) -> None:
        self.module = module
        self.known = known
        self.aliases: dict[str, str] = {}  # local name -> package module it is bound to

    def read(self) -> None:
        self._walk(self.module.tree, deferred=False)
        attributes = [n for n in ast.walk(self.module.tree) if isinstance(n, ast.Attribute)]
        inner = {id(n.value) for n in attributes}  # a.b of a.b.c: read once, as a.b.c
        for node in attributes:
            if id(node) not in inner:
                self._check_attribute(node)

    def _walk(self, node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for inner in child.orelse:  # the else branch runs
                    self._walk_one(inner, deferred)
                continue
            self._walk_one(child, deferred)

    def _walk_one(self, node: ast.AST, deferred: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self._import(alias.name, node.lineno, deferred)
                if alias.name.startswith(PACKAGE + ".") or alias.name == PACKAGE:
                    self.aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
        elif isinstance(node, ast.ImportFrom):
            self._import_from(node, deferred)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            self._walk(node, deferred=True)
        else:
            self._walk(node, deferred)

    def _base(self, node: ast.ImportFrom) -> str | None:
        if node.level == 0:
            return node.module
        package = self.module.name if self.module.is_package else self.module.name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{node.module}" if node.module else package

    def _import_from(self, node: ast.ImportFrom, deferred: bool) -> None:
        base = self._base(node)
        if base is None or not (base == PACKAGE or base.startswith(PACKAGE + ".")):
            return
        for alias in node.names:
            target = f"{base}.{alias.name}"
            if target in self.known:  # a submodule: "from orchestrator import fleet"
                self._import(target, node.lineno, deferred)
                self.aliases[alias.asname or alias.name] = target
            else:
                self._import(base, node.lineno, deferred)
                if _is_private(alias.name) and base != self.module.name:
                    self._private(node.lineno, f"from {base} import {alias.name}")

    def _import(self, name: str, line: int, deferred: bool) -> None:
        if name not in self.known:
            return
        self.module.imports.append((name, line, deferred))
        # a private module is its package's own
        parts = name.split(".")
        for i, part in enumerate(parts):
            if _is_private(part):
                if not self._inside(".".join(parts[:i])):
                    self._private(line, f"import of private module {name}")
                break

    def _check_attribute(self, node: ast.Attribute) -> None:
        # Rebuild a dotted chain like fleet._load or orchestrator.targets._sql.X
        chain: list[str] = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in self.aliases:
            return
        chain.reverse()
        module = self.aliases[value.id]
        for attr in chain:
            submodule = f"{module}.{attr}"
            if submodule in self.known:
                if _is_private(attr) and not self._inside(module):
                    self._private(node.lineno, f"private module {submodule} used as {value.id}.{'.'.join(chain)}")
                module = submodule
                continue
            if _is_private(attr) and module != self.module.name:
                self._private(node.lineno, f"{module}.{attr} used as {value.id}.{'.'.join(chain)}")
            break

    def _inside(self, package: str) -> bool:
        return self.module.name == package or self.module.name.startswith(package + ".")

    def _private(self, line: int, what: str) -> None:
        if (line, what) not in self.module.private_uses:
            self.module.private_uses.append((line, what))


def _modules() -> dict[str, Module]:
    paths = sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)
    modules: dict[str, Module] = {}
    for path in paths:
        name, is_package = _module_name(path)
        text = path.read_text(encoding="utf-8")
        modules[name] = Module(name, path, is_package, ast.parse(text, str(path)), len(text.splitlines()))
    known = set(modules)
    for module in modules.values():
        _Reader(module, known).read()
    return modules


MODULES = _modules()


def _cycles(with_deferred: bool) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module in MODULES.values():
        for target, _line, deferred in module.imports:
            if with_deferred or not deferred:
                graph[module.name].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def _describe(component: list[str], with_deferred: bool) -> str:
    members = set(component)
    edges = []
    for name in component:
        module = MODULES[name]
        for target, line, deferred in module.imports:
            if target in members and (with_deferred or not deferred):
                edges.append(f"    {module.rel}:{line} imports {target}" + (" (inside a function)" if deferred else ""))
    return "  cycle among " + ", ".join(component) + ":\n" + "\n".join(sorted(set(edges)))


def test_the_walk_sees_the_package() -> None:
    # guards the other tests against passing because they read nothing
    assert {"orchestrator.config", "orchestrator.sets", "orchestrator.sqlsplit"} <= set(MODULES)
    assert any(target == "orchestrator.errors" for target, _, _ in MODULES["orchestrator.config"].imports)


def test_no_import_cycles_at_module_level() -> None:
    cycles = _cycles(with_deferred=False)
    if cycles:
        pytest.fail("import cycles among module-level imports:\n" + "\n".join(
            _describe(c, with_deferred=False) for c in cycles), pytrace=False)


def test_no_import_cycles_through_function_level_imports() -> None:
    cycles = _cycles(with_deferred=True)
    if cycles:
        pytest.fail("import cycles, counting imports inside functions:\n" + "\n".join(
            _describe(c, with_deferred=True) for c in cycles), pytrace=False)


def test_no_private_names_across_modules() -> None:
    uses = [f"  {m.rel}:{line}: {what}" for m in MODULES.values() for line, what in m.private_uses]
    if uses:
        pytest.fail("private names used outside their module:\n" + "\n".join(sorted(uses)), pytrace=False)


def test_no_module_over_500_lines() -> None:
    big = [f"  {m.rel}: {m.lines} lines" for m in MODULES.values() if m.lines > MAX_LINES]
    if big:
        pytest.fail(f"modules over {MAX_LINES} lines:\n" + "\n".join(sorted(big)), pytrace=False)
