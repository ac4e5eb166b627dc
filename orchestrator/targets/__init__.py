"""Targets: where migrations run. One module per engine behind one small protocol.

To add an engine, touch each of these places (the contract suite fails until all are done):

1. ``orchestrator/targets/<driver>.py``: a class implementing :class:`Target`.
   A SQL engine subclasses :class:`orchestrator.targets._sql.SqlTarget`, which
   already implements all nine protocol methods; it fills in hooks only. Required:
   ``connect``, ``_driver_errors``, ``_is_missing_table``, ``_is_missing_column``,
   ``_ledger_columns``, ``_upgrade_1_to_2_sql`` (and ``_is_duplicate`` when
   ``transactional_ddl`` is False). Usually also: ``_lost_reason`` (a lost
   connection becomes TargetUnreachable here, never in the fleet), ``_describe``
   and ``_error_at`` (the message, and where in the statement the error is: the
   file line is worked out in :mod:`~orchestrator.targets._where`), the lock
   primitives ``_try_lock``/``_unlock``/``_holder``, and ``_around_migration`` for
   per-migration session state. Each hook's docstring (in ``_sql_ledger`` and
   ``_sql``) says what it must do. Another engine implements the protocol itself:
   raise TargetUnreachable for a lost connection, run what cannot commit with its
   ledger entry through :func:`orchestrator.targets._dirty.apply_under_dirty_flag`,
   and give a Python migration's failure the line of ``_where.raise_line``.
2. ``_REGISTRY`` below: the driver name used in dbids -> ``module:Class``.
3. ``orchestrator/config.py``: its entry model (a ``_Server`` or ``_Strict`` subclass
   with ``driver``) and the name in ``DRIVERS``; ``orchestrator/defaults.py``: its
   ``CONNECT_TIMEOUT``; ``orchestrator/inventory/sources.py``: the model in its
   driver map.
4. ``orchestrator/sets.py``: the file names a per-engine migration folder holds for
   it and which kinds (sql, py, redis) run on it; a new SQL dialect also needs a
   scanner in ``orchestrator/sqlsplit`` (``_DIALECTS``) and the class's ``dialect``.
5. ``orchestrator/lint/``: the engine's rules, if its files have pitfalls to flag.
6. ``pyproject.toml``: its driver package (imported lazily, inside ``connect``).
7. Tests: a fixture in ``tests/conftest.py`` (``ENGINES``, ``engine_entry``), an
   :class:`Engine` adapter in ``tests/contract/conftest.py`` so that
   ``tests/contract`` runs for it, and its quirks in ``tests/targets/test_<driver>.py``.
8. ``README.md`` (config entry, ledger, locking), ``deploy/compose.yaml`` (a server
   for the tests) and ``bench/fleet.py`` (``ENGINES``).

Guidelines: a target never touches the filesystem for migrations (it receives a
:class:`~orchestrator.sets.Script`), takes its settings only from its config
entry, and never puts a DSN or password into an error.
"""

from __future__ import annotations

import importlib
import os
import socket
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from orchestrator.config import DatabaseConfig
    from orchestrator.sets import Script

__all__ = ["Applied", "LedgerRow", "Target", "open_target", "runner_identity"]

_REGISTRY = {
    "sqlite": "orchestrator.targets.sqlite:SqliteTarget",
    "postgresql": "orchestrator.targets.postgresql:PostgresqlTarget",
    "mysql": "orchestrator.targets.mysql:MysqlTarget",
    "redis": "orchestrator.targets.redis:RedisTarget",
}


class LedgerRow(NamedTuple):
    """One recorded migration as the target's ledger holds it.

    ``status`` is ``applied``, or on engines without transactional DDL ``running``
    (started, outcome unknown) or ``failed``. Rows adopted from a C-tool ledger
    have ``set_id == ""`` and no checksum. A named tuple: a status pass builds one
    per applied migration of every target, and a tuple is built in a third of a
    frozen dataclass's time.
    """

    version: str
    apply_time: int
    set_id: str = ""
    checksum: str | None = None
    duration_ms: int | None = None
    status: str = "applied"
    statement: int | None = None
    error: str | None = None
    applied_by: str | None = None

    @property
    def legacy(self) -> bool:
        return self.set_id == ""


@dataclass(frozen=True)
class Applied:
    """What one successful ``apply`` did."""

    version: str
    statements: int
    duration_ms: int


class Target(Protocol):
    """A database that migrations are applied to and that records them itself.

    The runner calls, in this order: ``connect``; ``applied`` (read-only: it never
    creates the ledger, so status and plan change nothing); then, only when work is
    pending, ``lock`` around ``ensure_ledger``, ``applied`` again and one ``apply``
    per migration; finally ``close``. Instances are used by one thread at a time.
    """

    driver: str
    dbid: str

    def connect(self, readonly: bool = False) -> None:
        """Open the one connection used for the whole run. Raises TargetUnreachable.

        ``readonly`` promises that only ``applied`` follows (SQLite then opens the
        file read-only and does not create it).
        """

    def close(self) -> None:
        """Release the lock if held and close the connection; never raises."""

    def applied(self, set_id: str) -> dict[str, LedgerRow]:
        """Ledger rows of ``set_id`` plus adopted C-tool rows, by version; {} when there is no ledger yet."""

    def lock(self, set_id: str, wait: float) -> AbstractContextManager[None]:
        """Hold the (target, set) lock for the block; raise LockHeld after polling for ``wait`` seconds."""

    def holder(self, set_id: str) -> str | None:
        """Who holds the (target, set) lock right now (``host pid N``, or "" if unknown), None when free; read-only."""

    def ensure_ledger(self) -> None:
        """Create the ledger, or upgrade an older one (a C-tool table) through numbered steps."""

    def apply(self, script: Script) -> Applied | None:
        """Run one migration and record it as one unit.

        Returns None when the ledger already holds the version (another runner won
        the race; the unit then fails on the ledger's key and is rolled back, or is
        checked inside it). Raises MigrationError on failure, after
        rolling back (transactional engines) or recording a failed row (others).
        """

    def record(self, set_id: str, version: str, checksum: str | None) -> None:
        """Mark a version applied without running it (baseline, ``resolve --mark-applied``)."""

    def forget(self, set_id: str, version: str) -> None:
        """Delete a version's row (``resolve --forget`` and ``--retry``)."""

    def accept_checksum(self, set_id: str, version: str, checksum: str, note: str) -> bool:
        """Set an applied row's checksum and its ``applied_by`` to ``note`` (``repair``); False when no such applied row."""


_classes: dict[str, Any] = {}  # driver -> its target class, once loaded (the import system is not asked per target)


def open_target(db: DatabaseConfig, table: str) -> Target:
    """A new, unconnected target for a config entry; engine modules load on first use."""
    cls = _classes.get(db.driver)
    if cls is None:
        module_name, _, class_name = _REGISTRY[db.driver].partition(":")
        cls = _classes[db.driver] = getattr(importlib.import_module(module_name), class_name)
    target: Target = cls(db, table)
    return target


_identity: tuple[int, str] = (0, "")


def runner_identity() -> str:
    """``host pid N``: who applied a row or holds a lock, for people reading status."""
    global _identity
    pid = os.getpid()
    if _identity[0] != pid:  # computed once per process (again after a fork), not per ledger row
        _identity = (pid, f"{socket.gethostname()} pid {pid}")
    return _identity[1]
