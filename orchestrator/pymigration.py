"""Python migrations (``def up(db)``): loading one, and telling an untouched template.

A migration's code is user code: whatever it raises while loading or running,
sys.exit() and KeyboardInterrupt included, becomes a MigrationError naming the file
and the line, so it fails that migration and never ends the CLI or the daemon.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import MigrationError

__all__ = ["does_nothing", "load_up"]

# What user code in a migration may raise: any Exception, and also sys.exit() and
# KeyboardInterrupt, which would otherwise end the whole CLI or daemon with a clean exit.
_ESCAPES_UP = (Exception, SystemExit, KeyboardInterrupt)


def load_up(label: str, path: Path, source: str, module_name: str) -> Callable[[Any], Any]:
    """Compile the migration *source* (from *path*) and return its ``up(db)``.

    Compiled from source rather than imported so that nothing (no ``__pycache__``)
    is written into the set folder and nothing lingers in ``sys.modules``.
    """
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise MigrationError(label, f"syntax error: {exc.msg}", line=exc.lineno) from None
    namespace: dict[str, Any] = {"__name__": module_name, "__file__": str(path)}
    try:
        exec(code, namespace)
    except _ESCAPES_UP as exc:  # a migration's import-time code is user code; sys.exit() there fails it too
        line = _raise_line(exc, path)
        detail = " ".join(str(exc).split())
        raise MigrationError(label, f"loading failed: {type(exc).__name__}" + (f": {detail}" if detail else ""), line=line) from None
    up = namespace.get("up")
    if not callable(up):
        raise MigrationError(label, "defines no up(db) function")
    return _guarded(up, label, path)


def does_nothing(source: str, path: Path) -> bool:
    """True when the last ``up`` defined in *source* holds only ``pass``, ``...`` or a docstring.

    A file that does not parse is not judged here: loading it reports the error with its line.
    """
    try:
        tree = ast.parse(source, str(path))
    except SyntaxError:
        return False
    ups = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "up"]
    return bool(ups) and all(_no_op(statement) for statement in ups[-1].body)


def _raise_line(exc: BaseException, path: Path) -> int | None:
    """The line of ``path`` where ``exc`` was raised (deepest frame in that file)."""
    import traceback

    return next((f.lineno for f in reversed(traceback.extract_tb(exc.__traceback__)) if f.filename == str(path)), None)


def _guarded(up: Callable[[Any], Any], label: str, path: Path) -> Callable[[Any], Any]:
    """``up`` with SystemExit and KeyboardInterrupt turned into a failed migration (MigrationError).

    The targets catch Exception around ``up``; these two are BaseExceptions and would
    skip the rollback (or the failed row) and stop the process with exit 0.
    """

    def up_guarded(db: Any) -> Any:
        try:
            return up(db)
        except (SystemExit, KeyboardInterrupt) as exc:
            detail = " ".join(str(exc).split()) if isinstance(exc, KeyboardInterrupt) or exc.code is not None else ""
            raise MigrationError(label, f"up() raised {type(exc).__name__}" + (f": {detail}" if detail else "")
                                 + " (a migration cannot end the process; it failed)",
                                 line=_raise_line(exc, path)) from None

    return up_guarded


def _no_op(node: ast.stmt) -> bool:
    """``pass``, ``...`` or a string (a docstring): a statement that does nothing."""
    return isinstance(node, ast.Pass) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                                          and (node.value.value is Ellipsis or isinstance(node.value.value, str)))
