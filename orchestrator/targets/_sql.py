"""What the SQL engines share: the ledger, statement execution, Python migrations.

:class:`SqlTarget` implements the :class:`~orchestrator.targets.Target` protocol
over a DB-API connection. Engine subclasses override only what differs: how to
connect, the placeholder style, how to recognise a missing table, the catalog
query for the ledger's columns, the lock primitives and how a server error names
its position. The ledger's own schema is versioned: ``LEDGER_LEVEL`` is the
current level, and ``_upgrade_ledger`` walks an older table (level 1 is the C
tool's ``migration(version, apply_time)``) up one numbered step at a time.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from orchestrator import defaults
from orchestrator.errors import LockHeld, MigrationError, OrchestratorError
from orchestrator.targets import Applied, LedgerRow, runner_identity

if TYPE_CHECKING:
    from orchestrator.sets import Script

__all__ = ["SqlTarget", "DbApiHandle", "LEDGER_LEVEL", "is_transaction_control", "c_tool_version"]

log = logging.getLogger("migrations")

LEDGER_LEVEL = 2
"""Level 1: the C tool's (version, apply_time). Level 2: + set_id, checksum, duration_ms, status, statement, error, applied_by; key (set_id, version)."""

LEDGER_COLUMNS = ("set_id", "version", "apply_time", "checksum", "duration_ms", "status", "statement", "error", "applied_by")
_TXN_CONTROL = re.compile(r"^\s*(BEGIN(\s+(TRANSACTION|WORK|DEFERRED|IMMEDIATE|EXCLUSIVE)(\s+TRANSACTION)?)?|START\s+TRANSACTION|COMMIT(\s+(TRANSACTION|WORK))?|END(\s+TRANSACTION)?)\s*$", re.I)


_TXN_WORDS = ("BEGIN", "START", "COMMIT", "END")


def is_transaction_control(sql: str) -> bool:
    """True for BEGIN/COMMIT/END statements that would break the runner's own transaction."""
    # Statements arrive without leading comments: the first word rules out nearly all at once.
    if len(sql) >= 64 or not sql.lstrip()[:6].upper().startswith(_TXN_WORDS):
        return False
    return _TXN_CONTROL.match(_strip_comments(sql)) is not None


_C_TOOL_ROW = re.compile(r"lib(.+)\.so")


def c_tool_version(recorded: str) -> str:
    """The version a C-tool ledger row stands for.

    The C Web Framework's ``migrate`` records the file name of the compiled migration
    it loaded, which CMake names ``lib<name>.so``: that row is version ``<name>``.
    """
    m = _C_TOOL_ROW.fullmatch(recorded)
    return m.group(1) if m else recorded


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)


class DbApiHandle:
    """The ``db`` a Python migration's ``up(db)`` receives on SQL engines."""

    def __init__(self, target: SqlTarget):
        self._target = target
        self.dbid = target.dbid
        self.driver = target.driver
        self.connection = target.connection
        self.statements = 0

    def execute(self, sql: str, params: Any = None) -> int:
        """Run one statement; returns the affected row count."""
        self.statements += 1
        with closing(self.connection.cursor()) as cur:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return cur.rowcount

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement and return all its rows."""
        with closing(self.connection.cursor()) as cur:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return list(cur.fetchall()) if cur.description else []


class SqlTarget:
    """Target protocol for DB-API engines; subclasses fill in the engine-specific hooks."""

    driver = ""
    dialect = ""  # for orchestrator.sqlsplit
    placeholder = "%s"
    transactional_ddl = True

    def __init__(self, db: Any, table: str):
        self.db = db
        self.dbid: str = db.dbid
        self.table = table
        self.connection: Any = None
        self._held: set[str] = set()

    # -- hooks ---------------------------------------------------------------

    def connect(self, readonly: bool = False) -> None:
        raise NotImplementedError

    def _close_connection(self) -> None:
        self.connection.close()

    def _qualified_table(self) -> str:
        return self._quote(self.table)

    def _quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def _is_missing_table(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _is_missing_column(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _after_failed_read(self) -> None:
        """Reset the session after a failed read (PostgreSQL needs a rollback in non-autocommit mode)."""

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

    def _lock_holder(self, set_id: str) -> str:
        return ""

    def holder(self, set_id: str) -> str | None:
        """None: engines whose lock is per transaction cannot tell from outside; subclasses that can, do."""
        return None

    def _error_message(self, exc: BaseException, statement: Any) -> tuple[str, int | None]:
        """(server message, file line) for a failed statement."""
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, statement.line if statement else None

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _statements(self, script: Script, in_transaction: bool) -> Iterator[Any]:
        """The statements of a SQL migration as sent to the server (SQLite sends them exactly as written)."""
        return script.statements(self.dialect)

    def _run_statement(self, script: Script, statement: Any) -> None:
        """Send one statement of a SQL migration (PostgreSQL also feeds COPY FROM STDIN its rows here)."""
        self._execute(statement.text)

    def _after_statement(self, script: Script, statement: Any, in_transaction: bool) -> None:
        """Called after each statement ran (``statement`` is None after a Python ``up``); may raise MigrationError.

        SQLite uses it to catch a script or ``up`` that ended the runner's transaction.
        """

    # -- plumbing ------------------------------------------------------------

    def _execute(self, sql: str, params: Any = None) -> Any:
        cur = self.connection.cursor()
        try:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return cur.fetchall() if cur.description else None
        finally:
            cur.close()

    def _sql(self, template: str) -> str:
        return template.replace("?", self.placeholder)

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
            self._close_connection()
        except Exception:
            pass
        self.connection = None

    # -- ledger --------------------------------------------------------------

    def applied(self, set_id: str) -> dict[str, LedgerRow]:
        t = self._qualified_table()
        cols = ", ".join(LEDGER_COLUMNS)
        try:
            rows = self._execute(self._sql(f"SELECT {cols} FROM {t} WHERE set_id IN (?, '') ORDER BY version"), (set_id,))
        except self._driver_errors() as exc:
            self._after_failed_read()
            if self._is_missing_table(exc):
                return {}
            if not self._is_missing_column(exc):
                raise  # a ledger we cannot read is an error, never "nothing applied"
            # A C-tool ledger not adopted yet: its rows count for every set.
            rows = [("", v, at) + (None,) * 6 for v, at in self._execute(f"SELECT version, apply_time FROM {t}") or []]
        result = {}
        for row in rows or []:
            entry = LedgerRow(
                set_id=row[0], version=c_tool_version(row[1]) if row[0] == "" else row[1], apply_time=int(row[2] or 0), checksum=row[3],
                duration_ms=row[4], status=row[5] or "applied", statement=row[6], error=row[7], applied_by=row[8],
            )
            # A set's own row wins over an adopted one of the same version.
            if entry.version not in result or not entry.legacy:
                result[entry.version] = entry
        return result

    def ensure_ledger(self) -> None:
        columns = self._ledger_columns()
        level = 0 if not columns else 2 if "set_id" in columns else 1
        if level == LEDGER_LEVEL:
            return
        steps = self._create_ledger_sql() if level == 0 else self._upgrade_1_to_2_sql()
        log.info("%s: %s ledger table %s (level %d -> %d)", self.dbid, "creating" if level == 0 else "upgrading", self.table, level, LEDGER_LEVEL)
        self._run_ddl(steps)

    def _run_ddl(self, statements: list[str]) -> None:
        if self.transactional_ddl:
            self._begin()
            try:
                for sql in statements:
                    self._execute(sql)
                self._commit()
            except BaseException:
                self._safe_rollback()
                raise
        else:
            for sql in statements:
                self._execute(sql)

    def _is_recorded(self, set_id: str, version: str) -> bool:
        rows = self._execute(
            self._sql(f"SELECT status FROM {self._qualified_table()} WHERE set_id IN (?, '') AND version IN (?, ?)"),
            (set_id, version, f"lib{version}.so"),
        )
        return bool(rows)

    def _insert_row(self, set_id: str, version: str, checksum: str | None, duration_ms: int | None, status: str = "applied",
                    statement: int | None = None, error: str | None = None) -> None:
        self._execute(
            self._sql(
                f"INSERT INTO {self._qualified_table()} (set_id, version, apply_time, checksum, duration_ms, status, statement, error, applied_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            (set_id, version, int(time.time()), checksum, duration_ms, status, statement, error, runner_identity()),
        )

    def record(self, set_id: str, version: str, checksum: str | None) -> None:
        self._begin()
        try:
            self._in_transaction_lock(set_id)
            if not self._is_recorded(set_id, version):
                self._insert_row(set_id, version, checksum, 0)
            self._commit()
        except BaseException:
            self._safe_rollback()
            raise

    def forget(self, set_id: str, version: str) -> None:
        # Connections run in autocommit mode; the runner's transactions are explicit.
        self._execute(self._sql(f"DELETE FROM {self._qualified_table()} WHERE set_id IN (?, '') AND version IN (?, ?)"),
                      (set_id, version, f"lib{version}.so"))

    # -- locking ---------------------------------------------------------------

    @contextmanager
    def lock(self, set_id: str, wait: float = defaults.LOCK_WAIT) -> Iterator[None]:
        deadline = time.monotonic() + wait
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

    # -- applying --------------------------------------------------------------

    def _safe_rollback(self) -> None:
        # Keep the first failure: a rollback error is logged, never raised over it.
        try:
            self._rollback()
        except Exception as exc:
            log.warning("%s: error ignored in rollback: %s", self.dbid, exc)

    def apply(self, script: Script) -> Applied | None:
        checksum, no_transaction = script.inspect()
        up = script.load_up() if script.kind == "py" else None
        started = time.monotonic()
        if no_transaction or not self.transactional_ddl:
            return self._apply_outside_transaction(script, checksum, up, started)
        self._begin()
        try:
            self._in_transaction_lock(script.set_id)
            count = self._run_body(script, up, in_transaction=True)
            duration = self._record_and_commit(script, checksum, started)
        except BaseException as exc:
            return self._lost_race_or_raise(script, exc)
        return Applied(script.version, count, duration)

    def _record_and_commit(self, script: Script, checksum: str, started: float) -> int:
        """Write the ledger row inside the migration's transaction and commit both; returns the duration in ms."""
        duration = int((time.monotonic() - started) * 1000)
        self._insert_row(script.set_id, script.version, checksum, duration)
        self._commit()
        return duration

    def _lost_race_or_raise(self, script: Script, exc: BaseException) -> None:
        """Roll a failed migration back; None when another runner recorded the version meanwhile, else re-raise.

        Optimistic: the runner read the ledger before this transaction began, so
        another runner may have applied the version since. Then this unit failed on
        the ledger's primary key, or its body met the changes already made, and all of
        it is rolled back: not an error. The check costs a query only on failure, not
        one per migration.
        """
        self._safe_rollback()
        if isinstance(exc, Exception) and self._recorded_after_failure(script):
            return None
        raise exc

    def _recorded_after_failure(self, script: Script) -> bool:
        try:
            return self._is_recorded(script.set_id, script.version)
        except Exception as exc:  # keep the first failure
            log.debug("%s: ledger check after a failure failed: %s", self.dbid, exc)
            return False

    def _apply_outside_transaction(self, script: Script, checksum: str, up: Any, started: float) -> Applied | None:
        """``-- orchestrator: no-transaction``: statements run one by one, the row is written after success."""
        if self._is_recorded(script.set_id, script.version):
            return None
        count = self._run_body(script, up, in_transaction=False)
        duration = int((time.monotonic() - started) * 1000)
        self._insert_row(script.set_id, script.version, checksum, duration)
        return Applied(script.version, count, duration)

    def _run_body(self, script: Script, up: Any, in_transaction: bool) -> int:
        if up is not None:
            return self._run_python(script, up, in_transaction)
        count = 0
        for statement in self._statements(script, in_transaction):
            if in_transaction and is_transaction_control(statement.text):
                log.debug("%s: statement %d (line %d): %s skipped, the migration already runs in a transaction",
                          script.label, statement.number, statement.line, statement.text.strip())
                continue
            try:
                self._run_statement(script, statement)
            except self._driver_errors() as exc:
                message, line = self._error_message(exc, statement)
                raise MigrationError(script.label, message, statement.number, line) from None
            self._after_statement(script, statement, in_transaction)
            count += 1
        return count

    def _run_python(self, script: Script, up: Any, in_transaction: bool = True) -> int:
        handle = DbApiHandle(self)
        try:
            result = up(handle)
        except OrchestratorError:
            raise
        except Exception as exc:
            line = None
            for frame in traceback.extract_tb(exc.__traceback__):
                if frame.filename == str(script.path):
                    line = frame.lineno
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
            raise MigrationError(script.label, f"up() raised {message}", line=line) from None
        self._after_statement(script, None, in_transaction)
        if result is False:
            raise MigrationError(script.label, "up() returned False")
        return handle.statements
