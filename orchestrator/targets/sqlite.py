"""SQLite target: the embedded default, no server needed.

One connection in autocommit mode; each migration runs in ``BEGIN IMMEDIATE``,
which takes the database's write lock, so the ledger re-check inside it makes
racing processes apply each migration exactly once. A writer that holds the
lock longer than ``busy_timeout`` makes the target ``locked``. Status and plan
open the file read-only and never create it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from orchestrator.errors import LockHeld, TargetUnreachable
from orchestrator.targets._sql import SqlTarget

__all__ = ["SqliteTarget"]


class SqliteTarget(SqlTarget):
    driver = "sqlite"
    dialect = "sqlite"
    placeholder = "?"

    def __init__(self, db: Any, table: str):
        super().__init__(db, table)
        self._set_id = ""
        self._missing = False

    def connect(self, readonly: bool = False) -> None:
        path = Path(self.db.path)
        timeout = self.db.busy_timeout / 1000
        try:
            if readonly:
                if not path.exists():
                    self._missing = True  # nothing applied yet; do not create the file to say so
                    self.connection = sqlite3.connect(":memory:", isolation_level=None)
                    return
                self.connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
                self.connection.execute(f"PRAGMA busy_timeout = {int(self.db.busy_timeout)}")
                mode = self.connection.execute("PRAGMA journal_mode").fetchone()[0]
                if mode.lower() != self.db.journal_mode.lower():
                    self.connection.execute(f"PRAGMA journal_mode = {self.db.journal_mode}")
        except (sqlite3.Error, OSError) as exc:
            self.connection = None
            raise TargetUnreachable(self.dbid, f"cannot open {path}: {exc}") from None

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _is_missing_table(self, exc: BaseException) -> bool:
        return self._missing or "no such table" in str(exc)

    def _is_missing_column(self, exc: BaseException) -> bool:
        return "no such column" in str(exc)

    def applied(self, set_id: str):
        if self._missing:
            return {}
        return super().applied(set_id)

    def _ledger_columns(self) -> set[str]:
        return {row[1] for row in self._execute(f"PRAGMA table_info({self._quote(self.table)})") or []}

    def _begin(self) -> None:
        # IMMEDIATE takes the write lock now, so the ledger check that follows cannot go stale.
        try:
            self._execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise LockHeld(self.dbid, self._set_id or "*", f"another writer (waited busy_timeout {self.db.busy_timeout} ms)") from None
            raise

    def lock(self, set_id: str, wait: float = 0):  # type: ignore[override]
        # The file's write lock, taken per migration by BEGIN IMMEDIATE, is the lock.
        self._set_id = set_id
        return super().lock(set_id, wait)

    def ensure_ledger(self) -> None:
        # Check and create inside one write transaction: a racing process either
        # sees the finished table or waits for it.
        self._begin()
        try:
            columns = self._ledger_columns()
            if not columns:
                for sql in self._create_ledger_sql():
                    self._execute(sql)
            elif "set_id" not in columns:
                for sql in self._upgrade_1_to_2_sql():
                    self._execute(sql)
            self._commit()
        except BaseException:
            self._safe_rollback()
            raise

    def _upgrade_1_to_2_sql(self) -> list[str]:
        # SQLite cannot change a primary key in place: rebuild and copy, in one transaction.
        t, old = self._quote(self.table), self._quote(self.table + "_level1")
        return [
            f"ALTER TABLE {t} RENAME TO {old}",
            *self._create_ledger_sql(),
            f"INSERT INTO {t} (set_id, version, apply_time) SELECT '', version, COALESCE(apply_time, 0) FROM {old}",
            f"DROP TABLE {old}",
        ]

    def _error_message(self, exc: BaseException, statement: Any) -> tuple[str, int | None]:
        return str(exc).strip() or type(exc).__name__, statement.line if statement else None
