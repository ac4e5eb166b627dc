"""The SQL engines' ledger, locks and driver-error translation: the lower half of the template.

:class:`SqlLedger` implements the ledger side of the Target protocol once, over
a DB-API connection (``applied``, ``ensure_ledger``, ``record``, ``forget``,
``lock``, ``holder``, ``close``); :class:`orchestrator.targets._sql.SqlTarget`
adds running migrations. Engines fill in hooks only; each hook's docstring says
what it must do. Driver errors are translated in one place:
:meth:`SqlLedger._raise_if_lost` turns a lost connection into TargetUnreachable
(the engine's ``_lost_reason`` says whether an error means one), and
:meth:`SqlLedger._ledger_errors` turns any other error of the runner's own
bookkeeping into one line. The ledger's own schema is versioned: ``LEDGER_LEVEL``
is the current level; level 1 is the C tool's ``migration(version, apply_time)``,
adopted by ``_upgrade_1_to_2_sql``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cached_property
from typing import Any

from orchestrator import defaults
from orchestrator.errors import LockHeld, OrchestratorError, TargetUnreachable
from orchestrator.redact import redact
from orchestrator.targets import LedgerRow, runner_identity
from orchestrator.targets._where import one_line

__all__ = ["LEDGER_COLUMNS", "LEDGER_LEVEL", "SqlLedger", "c_tool_version"]

log = logging.getLogger("migrations")

LEDGER_LEVEL = 2
"""Level 1: the C tool's (version, apply_time). Level 2: + set_id, checksum, duration_ms, status, statement, error, applied_by; key (set_id, version)."""

LEDGER_COLUMNS = ("version", "apply_time", "set_id", "checksum", "duration_ms", "status", "statement", "error", "applied_by")
"""The ledger's columns as ``applied`` reads them: in LedgerRow's order, so a row becomes one as it comes."""
_C_TOOL_ROW = re.compile(r"lib(.+)\.so")


def c_tool_version(recorded: str) -> str:
    """The version a C-tool ledger row stands for.

    The C Web Framework's ``migrate`` records the file name of the compiled migration
    it loaded, which CMake names ``lib<name>.so``: that row is version ``<name>``.
    """
    m = _C_TOOL_ROW.fullmatch(recorded)
    return m.group(1) if m else recorded


class SqlLedger:
    """The ledger half of the Target protocol for DB-API engines; subclasses fill in the hooks."""

    driver = ""
    dialect = ""  # for orchestrator.sqlsplit
    placeholder = "%s"
    transactional_ddl = True
    """False: DDL commits by itself (MySQL), so every migration runs under the dirty flag."""

    def __init__(self, db: Any, table: str):
        self.db = db
        self.dbid: str = db.dbid
        self.table = table
        self.connection: Any = None
        self.dirty_flag = not self.transactional_ddl
        """Outside a transaction, claim the version with a 'running' row first (else: record it after it ran)."""
        self.ledger_label = f"table {table}"
        """How messages name the ledger (``cannot read the ledger <label>``)."""
        self.table_label = table
        """The ledger table's name as users write it (``schema.table``)."""
        self._held: set[str] = set()
        self._waits: dict[str, float] = {}  # lock budget per set, for engines that lock again per transaction
        self._set_id = ""  # the set of the latest lock() call, for errors raised outside it

    # -- hooks: the connection ----------------------------------------------------

    def connect(self, readonly: bool = False) -> None:
        """Open ``self.connection`` (autocommit); raise TargetUnreachable naming the cause, never the password."""
        raise NotImplementedError

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        """The driver's base error classes (imported lazily)."""
        raise NotImplementedError

    def _send(self, sql: str, params: Any) -> Any:
        """Run one statement (or chunk) of the runner's own or a migration's; its rows, or None."""
        cur = self.connection.cursor()
        try:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return cur.fetchall() if cur.description else None
        finally:
            cur.close()

    def _lost_reason(self, exc: BaseException) -> str | None:
        """Why ``exc`` means the session is gone (or a runner's query stalled), or None for an error of the statement."""
        return None

    def _bounded(self, seconds: float | None) -> AbstractContextManager[None]:
        """Bound the block's queries client-side by ``seconds`` instead of connection_timeout (None: unbounded)."""
        return nullcontext()

    def _describe(self, exc: BaseException) -> str:
        """The driver error's message on one line, as users read it."""
        return one_line(exc)

    # -- hooks: the ledger ------------------------------------------------------------

    def _qualified_table(self) -> str:
        return self._quote(self.table)

    def _quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def _is_missing_table(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _is_missing_column(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _ledger_columns(self) -> set[str]:
        """Column names of the ledger table; empty when it does not exist."""
        raise NotImplementedError

    def _create_ledger_sql(self) -> list[str]:
        t = self._qualified_table()
        return [
            f"CREATE TABLE {t} (set_id VARCHAR(100) NOT NULL DEFAULT '', version VARCHAR(180) NOT NULL, "
            "apply_time BIGINT NOT NULL, checksum CHAR(64), duration_ms BIGINT, status VARCHAR(16) NOT NULL DEFAULT 'applied', "
            "statement INTEGER, error TEXT, applied_by VARCHAR(255), PRIMARY KEY (set_id, version))"
        ]

    def _upgrade_1_to_2_sql(self) -> list[str]:
        """Adopt a C-tool ledger: add the columns, re-key on (set_id, version); rows are kept."""
        raise NotImplementedError

    def _ledger_exclusive(self) -> AbstractContextManager[None]:
        """Around creating or upgrading the ledger: keep runners of other sets from doing it at the same time."""
        return self._transaction() if self.transactional_ddl else nullcontext()

    def _ledger_error(self, what: str, exc: BaseException) -> OrchestratorError:
        """The one-line error for a driver error while ``what`` (the engine may map some to LockHeld)."""
        return OrchestratorError(redact(f"{self.dbid}: {what}: {self._describe(exc)}"))

    # -- hooks: transactions and locks ---------------------------------------------------

    def _begin(self) -> None:
        self._execute("BEGIN")

    def _commit(self) -> None:
        self._execute("COMMIT")

    def _rollback(self) -> None:
        self._execute("ROLLBACK")

    def _in_transaction_lock(self, set_id: str) -> None:
        """Engines that lock per transaction (PgBouncer transaction pooling) take the lock here."""

    def _try_lock(self, set_id: str) -> bool:
        return True

    def _unlock(self, set_id: str) -> None:
        pass

    def _holder(self, set_id: str) -> str | None:
        """Who holds the (target, set) lock, None when free; engines whose lock is per transaction cannot tell."""
        return None

    # -- the one translation of driver errors --------------------------------------------

    @cached_property
    def _errors(self) -> tuple[type[BaseException], ...]:
        return self._driver_errors()

    def _raise_if_lost(self, exc: BaseException) -> None:
        reason = self._lost_reason(exc)
        if reason is not None:
            raise TargetUnreachable(self.dbid, redact(reason)) from None

    def _execute(self, sql: str, params: Any = None) -> Any:
        try:
            return self._send(sql, params)
        except self._errors as exc:
            self._raise_if_lost(exc)
            raise

    @contextmanager
    def _ledger_errors(self, what: str) -> Iterator[None]:
        """A driver error in the block: TargetUnreachable for a lost connection, else one line saying ``what`` failed."""
        try:
            yield
        except self._errors as exc:
            self._raise_if_lost(exc)
            raise self._ledger_error(what, exc) from None

    def _sql(self, template: str) -> str:
        return template.replace("?", self.placeholder)

    # -- protocol: connection -------------------------------------------------------------

    def close(self) -> None:
        if self.connection is None:
            return
        for set_id in list(self._held):
            try:
                self._unlock(set_id)
            except Exception:  # closing drops session locks anyway
                pass
        self._held.clear()
        try:
            self.connection.close()
        except Exception:
            pass
        self.connection = None

    # -- protocol: ledger -------------------------------------------------------------------

    def applied(self, set_id: str) -> dict[str, LedgerRow]:
        with self._ledger_errors(f"cannot read the ledger {self.ledger_label}"):
            rows = self._ledger_rows(set_id)
        result: dict[str, LedgerRow] = {}
        make = LedgerRow._make
        for row in rows:
            version, apply_time, set_id = row[0], row[1], row[2]
            # A set's own row wins over an adopted one of the same version.
            if set_id and type(apply_time) is int and row[5]:
                result[version] = make(row)  # the common row: taken as the query gave it
                continue
            if set_id == "":
                version = c_tool_version(version)
            if version not in result or set_id != "":
                result[version] = LedgerRow(version, int(apply_time or 0), set_id, row[3], row[4], row[5] or "applied", *row[6:])
        return result

    def _ledger_rows(self, set_id: str) -> list[Any]:
        t = self._qualified_table()
        try:
            return self._execute(self._sql(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM {t} WHERE set_id IN (?, '') ORDER BY version"),
                                 (set_id,)) or []
        except self._errors as exc:
            if self._is_missing_table(exc):
                return []
            if not self._is_missing_column(exc):
                raise  # a ledger we cannot read is an error, never "nothing applied"
        try:
            # A C-tool ledger not adopted yet: its rows count for every set.
            return [(v, at, "") + (None,) * 6 for v, at in self._execute(f"SELECT version, apply_time FROM {t}") or []]
        except self._errors as exc:
            if self._is_missing_column(exc):
                raise self._not_a_ledger() from None
            raise

    def _not_a_ledger(self) -> OrchestratorError:
        return OrchestratorError(f"{self.dbid}: table {self.table_label} exists but is not a migration ledger "
                                 "(no version and apply_time columns); set migrations.table to another name")

    def _level(self, columns: set[str]) -> int:
        if not columns:
            return 0
        if "version" not in columns:
            raise self._not_a_ledger()  # never ALTER a table of the application's
        return 2 if "set_id" in columns else 1

    def ensure_ledger(self) -> None:
        with self._ledger_errors(f"cannot create or upgrade the ledger {self.ledger_label}"):
            # Usually the ledger is current: one catalog read, no lock, no privilege needed.
            if self._level(self._ledger_columns()) == LEDGER_LEVEL:
                return
            with self._ledger_exclusive():
                level = self._level(self._ledger_columns())  # again: another runner may have done it meanwhile
                if level < LEDGER_LEVEL:
                    log.info("%s: %s ledger table %s (level %d -> %d)", self.dbid, "creating" if level == 0 else "upgrading",
                             self.table_label, level, LEDGER_LEVEL)
                    for sql in self._create_ledger_sql() if level == 0 else self._upgrade_1_to_2_sql():
                        self._execute(sql)

    def _is_recorded(self, set_id: str, version: str) -> bool:
        rows = self._execute(
            self._sql(f"SELECT status FROM {self._qualified_table()} WHERE set_id IN (?, '') AND version IN (?, ?)"),
            (set_id, version, f"lib{version}.so"),
        )
        return bool(rows)

    def _insert_sql(self) -> str:
        """The ledger's INSERT, with the row from :meth:`_insert_params`."""
        return self._sql(f"INSERT INTO {self._qualified_table()} (set_id, version, apply_time, checksum, duration_ms, status, "
                         "applied_by) VALUES (?, ?, ?, ?, ?, ?, ?)")

    @staticmethod
    def _insert_params(set_id: str, version: str, checksum: str | None, duration_ms: int | None,
                       status: str = "applied") -> tuple[Any, ...]:
        return (set_id, version, int(time.time()), checksum, duration_ms, status, runner_identity())

    def _insert_row(self, set_id: str, version: str, checksum: str | None, duration_ms: int | None, status: str = "applied") -> None:
        self._execute(self._insert_sql(), self._insert_params(set_id, version, checksum, duration_ms, status))

    def record(self, set_id: str, version: str, checksum: str | None) -> None:
        with self._ledger_errors(f"cannot record {version} in the ledger {self.ledger_label}"), self._transaction():
            self._in_transaction_lock(set_id)
            if not self._is_recorded(set_id, version):
                self._insert_row(set_id, version, checksum, 0)

    def forget(self, set_id: str, version: str) -> None:
        # Connections run in autocommit mode; the runner's transactions are explicit.
        with self._ledger_errors(f"cannot delete {version} from the ledger {self.ledger_label}"):
            self._execute(self._sql(f"DELETE FROM {self._qualified_table()} WHERE set_id IN (?, '') AND version IN (?, ?)"),
                          (set_id, version, f"lib{version}.so"))

    def accept_checksum(self, set_id: str, version: str, checksum: str, note: str) -> bool:
        # Only the checksum and who accepted it change: the apply time, status and duration stay as applied.
        with self._ledger_errors(f"cannot update {version} in the ledger {self.ledger_label}"), self._transaction():
            self._in_transaction_lock(set_id)
            if not self._is_recorded(set_id, version):
                return False
            self._execute(self._sql(f"UPDATE {self._qualified_table()} SET checksum = ?, applied_by = ? "
                                    "WHERE set_id = ? AND version = ? AND status = 'applied'"),
                          (checksum, note[:255], set_id, version))
            return True

    # -- protocol: locking ------------------------------------------------------------------

    @contextmanager
    def lock(self, set_id: str, wait: float = defaults.LOCK_WAIT) -> Iterator[None]:
        self._waits[set_id] = wait
        self._set_id = set_id
        deadline = time.monotonic() + wait
        with self._ledger_errors("cannot take the lock"):
            while not self._try_lock(set_id):
                if time.monotonic() >= deadline:
                    raise LockHeld(self.dbid, set_id, self._lock_holder(set_id))
                time.sleep(defaults.LOCK_POLL)
        self._held.add(set_id)
        try:
            yield
        finally:
            self._held.discard(set_id)
            try:
                self._unlock(set_id)
            except Exception as exc:  # the session ends soon and drops the lock with it
                log.debug("%s: unlocking %s failed: %s", self.dbid, set_id, exc)

    def holder(self, set_id: str) -> str | None:
        with self._ledger_errors(f"cannot read locks for {self.ledger_label}"):
            return self._holder(set_id)

    def _lock_holder(self, set_id: str) -> str:
        try:
            return self.holder(set_id) or ""
        except Exception:  # naming the holder is a courtesy; the lock is held either way
            return ""

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._begin()
        try:
            yield
            self._commit()
        except BaseException:
            self._safe_rollback()
            raise

    def _safe_rollback(self) -> None:
        # Keep the first failure: a rollback error is logged, never raised over it.
        try:
            self._rollback()
        except Exception as exc:
            if isinstance(exc, TargetUnreachable) or self._lost_reason(exc) is not None:
                log.debug("%s: no rollback, the session is gone: %s", self.dbid, exc)
            else:
                log.warning("%s: error ignored in rollback: %s", self.dbid, exc)
