"""The SQL engines' template: SqlLedger plus running migrations.

:class:`SqlTarget` runs a migration one of three ways, chosen in one place
(:meth:`SqlTarget.apply`): in one transaction with its ledger row; outside one,
recorded after it ran (under a session lock); or under the dirty flag
(:mod:`orchestrator.targets._dirty`) where DDL commits by itself. Engine modules
fill in hooks only (those of :class:`~orchestrator.targets._sql_ledger.SqlLedger`
and the ones below). A failed statement's file line is worked out in one place,
:class:`~orchestrator.targets._where.ErrorAt`, from what the engine's ``_error_at``
reads off the driver's error.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator import defaults
from orchestrator.errors import MigrationError, OrchestratorError, TargetUnreachable
from orchestrator.locktimeout import LockPolicy, LockRetriesExhausted, LockTimedOut, retrying
from orchestrator.redact import redact
from orchestrator.targets import Applied
from orchestrator.targets._dirty import apply_under_dirty_flag
from orchestrator.targets._sql_ledger import LEDGER_LEVEL, SqlLedger, c_tool_version
from orchestrator.targets._where import ErrorAt, raise_line

if TYPE_CHECKING:
    from orchestrator.sets import Script
    from orchestrator.sqlsplit import Statement

__all__ = ["LEDGER_LEVEL", "DbApiHandle", "SqlTarget", "c_tool_version", "is_transaction_control"]

log = logging.getLogger("migrations")
_T = TypeVar("_T")

_ERROR_MAX = 2000  # characters of a failure message kept in the ledger's error column
_TXN_CONTROL = re.compile(r"^\s*(BEGIN(\s+(TRANSACTION|WORK|DEFERRED|IMMEDIATE|EXCLUSIVE)(\s+TRANSACTION)?)?|START\s+TRANSACTION|COMMIT(\s+(TRANSACTION|WORK))?|END(\s+TRANSACTION)?)\s*$", re.I)
_TXN_WORDS = ("BEGIN", "START", "COMMIT", "END")


def is_transaction_control(sql: str) -> bool:
    """True for BEGIN/COMMIT/END statements that would break the runner's own transaction."""
    # Statements arrive without leading comments: the first word rules out nearly all at once.
    if len(sql) >= 64 or not sql.lstrip()[:6].upper().startswith(_TXN_WORDS):
        return False
    return _TXN_CONTROL.match(_strip_comments(sql)) is not None


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


class DbApiHandle:
    """The ``db`` a Python migration's ``up(db)`` receives on SQL engines."""

    def __init__(self, target: SqlTarget):
        self.dbid = target.dbid
        self.driver = target.driver
        self.connection = target.connection
        self.statements = 0

    def execute(self, sql: str, params: Any = None) -> int:
        """Run one statement; returns the affected row count."""
        self.statements += 1
        with closing(self.connection.cursor()) as cur:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return int(cur.rowcount)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement and return all its rows."""
        with closing(self.connection.cursor()) as cur:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return list(cur.fetchall()) if cur.description else []


class SqlTarget(SqlLedger):
    """Target protocol for DB-API engines: SqlLedger plus running migrations; subclasses fill in the hooks."""

    def _is_duplicate(self, exc: BaseException) -> bool:
        """The ledger's primary key refused a row (used by the dirty flag's claim)."""
        raise NotImplementedError

    def _outside_transaction_lock(self, set_id: str) -> AbstractContextManager[None]:
        """Held while a no-transaction migration runs and is recorded after it (SQLite: a lock file)."""
        return nullcontext()


    # -- hooks: running a migration --------------------------------------------------------

    def _around_migration(self, script: Script, in_transaction: bool) -> AbstractContextManager[None]:
        """Around one whole migration: give it the session it starts from, tidy up after it."""
        return nullcontext()

    def _statements(self, script: Script, in_transaction: bool) -> Iterator[Statement]:
        """The statements of a SQL migration as sent to the server (SQLite sends them exactly as written)."""
        return script.statements(self.dialect)

    def _run_statement(self, script: Script, statement: Statement) -> None:
        """Send one statement of a SQL migration (PostgreSQL also feeds COPY FROM STDIN its rows here)."""
        self._execute(statement.text)

    def _after_statement(self, script: Script, statement: Statement | None, in_transaction: bool) -> None:
        """Called after each statement ran (``statement`` is None after a Python ``up``); may raise MigrationError.

        Used to catch a script or ``up`` that ended the runner's transaction.
        """

    def _error_at(self, exc: BaseException, statement: Statement) -> ErrorAt:
        """The message of a failed statement and where in it the server says the error is."""
        return ErrorAt(self._describe(exc), statement)

    # -- hooks: lock timeouts with bounded retries (orchestrator.locktimeout) ----------------------

    def _is_lock_timeout(self, exc: BaseException) -> bool:
        """The driver error says a lock wait timed out (or a deadlock): the attempt may be run again."""
        return False

    def _set_lock_timeouts(self, policy: LockPolicy, in_transaction: bool) -> None:
        """Give this attempt (in a transaction) or this migration's session (outside one) the policy's timeouts."""

    def _begin_attempt(self, policy: LockPolicy) -> bool:
        """BEGIN one attempt of a migration in a transaction; True when that also gave it the policy's timeouts."""
        self._begin()
        return False

    def _lock_wait_holder(self, exc: BaseException, statement: Statement | None) -> str:
        """What held the lock the statement waited for, best effort (asked after the attempt was undone)."""
        return "waiting for a lock"

    def _end_of_body(self, script: Script) -> None:
        """After a migration ran outside a transaction, before it is marked applied; may raise MigrationError."""

    def _after_failed_body(self, script: Script) -> None:
        """After a migration failed outside a transaction, before its failure is recorded."""
        self._safe_rollback()  # a transaction the script opened ends with it, as with the engine's own client

    @contextmanager
    def _recording_errors(self, script: Script, what: str) -> Iterator[None]:
        """As _ledger_errors, for the ledger writes around a migration: a MigrationError naming it."""
        try:
            yield
        except self._errors as exc:
            self._raise_if_lost(exc)
            raise MigrationError(script.label, redact(f"{what}: {self._describe(exc)}")) from None

    def _statement_failure(self, script: Script, statement: Statement, exc: BaseException) -> MigrationError:
        self._raise_if_lost(exc)
        at = self._error_at(exc, statement)
        return MigrationError(script.label, redact(at.message), statement.number, at.file_line())

    # -- protocol: applying -------------------------------------------------------------------

    def apply(self, script: Script) -> Applied | None:
        checksum, no_transaction = script.inspect()
        up = script.load_up() if script.kind == "py" else None
        in_transaction = self.transactional_ddl and not no_transaction
        with self._around_migration(script, in_transaction):
            if in_transaction:
                return self._apply_in_transaction(script, checksum, up)
            if self.dirty_flag:
                return apply_under_dirty_flag(self, script, checksum, lambda: self._dirty_body(script, up))
            return self._apply_then_record(script, checksum, up)

    def _apply_in_transaction(self, script: Script, checksum: str, up: Any) -> Applied | None:
        """The migration and its ledger row commit together, or neither does.

        Optimistic: the runner read the ledger before this transaction began, so
        another runner may have applied the version since. Then this unit fails on
        the ledger's primary key, or its body meets the changes already made, and all
        of it is rolled back: not an error. The check costs a query only on failure.
        A lock timeout rolls the whole unit back and runs it again (bounded retries).
        """
        policy = self._lock_policy(script)

        def attempt(number: int) -> Applied | None:
            started = time.monotonic()
            with self._recording_errors(script, "recording it failed, the migration was rolled back"):
                timeouts_set = self._begin_attempt(policy)
                try:
                    self._in_transaction_lock(script.set_id)
                    if (policy.timeout or policy.statement_timeout) and not timeouts_set:
                        self._set_lock_timeouts(policy, in_transaction=True)
                    count = self._run_body(script, up, in_transaction=True)
                    duration = self._record_and_commit(script, checksum, started)
                except BaseException as exc:
                    if self._rolled_back_lost_race(script, exc):
                        return None
                    raise
            return Applied(script.version, count, duration)

        return self._with_lock_retries(script, policy, attempt)

    def _lock_policy(self, script: Script) -> LockPolicy:
        """The database entry's lock settings as the file's directives change them."""
        timeout = getattr(self.db, "lock_timeout", None)
        retries = getattr(self.db, "lock_retries", None)
        base = LockPolicy(defaults.LOCK_TIMEOUT if timeout is None else timeout,
                          defaults.LOCK_RETRIES if retries is None else retries,
                          getattr(self.db, "statement_timeout", None) or 0.0)
        return base.with_directives(script.directives)

    def _with_lock_retries(self, script: Script, policy: LockPolicy, attempt: Callable[[int], _T]) -> _T:
        """``attempt(n)`` retried on a lock timeout; after the last one a MigrationError naming the lock's holder."""
        def holder(exc: BaseException) -> str:
            assert isinstance(exc, LockTimedOut)
            return self._lock_wait_holder(exc.error, exc.statement)

        try:
            return retrying(attempt, policy, engine=self.driver, label=f"{self.dbid}: {script.label}",
                            is_lock_timeout=lambda exc: isinstance(exc, LockTimedOut), blocker=holder,
                            on_retry=lambda exc: self._on_lock_retry(script, exc))
        except LockRetriesExhausted as exc:
            statement = exc.__cause__.statement if isinstance(exc.__cause__, LockTimedOut) else None
            raise MigrationError(script.label, str(exc), statement.number if statement else None,
                                 statement.line if statement else None) from None
        except LockTimedOut as exc:  # lock timeouts off, and a NOWAIT (or a deadlock) failed it
            if exc.statement is None:
                raise MigrationError(script.label, f"up() raised {self._describe(exc.error)}") from None
            raise self._statement_failure(script, exc.statement, exc.error) from None

    def _on_lock_retry(self, script: Script, exc: BaseException) -> None:
        # Under the dirty flag the running row says which statement the migration reached.
        if self.dirty_flag and isinstance(exc, LockTimedOut) and exc.statement is not None:
            try:
                self._execute(self._sql(f"UPDATE {self._qualified_table()} SET statement = ? "
                                        "WHERE set_id = ? AND version = ? AND status = 'running'"),
                              (exc.statement.number, script.set_id, script.version))
            except self._errors as update_exc:
                log.debug("%s: noting the statement reached failed: %s", self.dbid, update_exc)

    def _rolled_back_lost_race(self, script: Script, exc: BaseException) -> bool:
        """Roll the failed unit back; True when another runner recorded the version meanwhile (then it is no error)."""
        self._safe_rollback()
        return isinstance(exc, Exception) and not isinstance(exc, TargetUnreachable) and self._recorded_after_failure(script)

    def _record_and_commit(self, script: Script, checksum: str, started: float) -> int:
        """Write the ledger row inside the migration's transaction and commit both; returns the duration in ms."""
        duration = _ms(started)
        self._insert_row(script.set_id, script.version, checksum, duration)
        # The COMMIT also runs the migration's deferred work (constraints, triggers): not cut short.
        with self._bounded(None):
            self._commit()
        return duration

    def _recorded_after_failure(self, script: Script) -> bool:
        try:
            return self._is_recorded(script.set_id, script.version)
        except Exception as exc:  # keep the first failure
            log.debug("%s: ledger check after a failure failed: %s", self.dbid, exc)
            return False

    def _apply_then_record(self, script: Script, checksum: str, up: Any) -> Applied | None:
        """``-- orchestrator: no-transaction`` under a session lock: statements run one by one, the row is written after success."""
        with self._outside_transaction_lock(script.set_id):
            started = time.monotonic()
            with self._recording_errors(script, "checking the ledger failed, nothing was applied"):
                if self._is_recorded(script.set_id, script.version):
                    return None
            count = self._run_body(script, up, in_transaction=False)
            duration = _ms(started)
            with self._recording_errors(script, "it ran, but recording it failed"):
                self._insert_row(script.set_id, script.version, checksum, duration)
        return Applied(script.version, count, duration)

    # -- the dirty flag (orchestrator.targets._dirty) -------------------------------------------

    def _dirty_body(self, script: Script, up: Any) -> int:
        count = self._run_body(script, up, in_transaction=False)
        self._end_of_body(script)
        return count

    def dirty_claim(self, script: Script, checksum: str) -> bool:
        with self._ledger_errors(f"cannot record {script.version} as running in the ledger {self.ledger_label}"):
            if self.transactional_ddl:
                # A per-transaction lock (transaction pooling) guards the claim: check, then insert, in one transaction.
                with self._transaction():
                    self._in_transaction_lock(script.set_id)
                    if self._is_recorded(script.set_id, script.version):
                        return False
                    self._insert_row(script.set_id, script.version, checksum, None, status="running")
                return True
            # The primary key makes a racing runner's insert fail: one statement, no transaction.
            try:
                self._insert_row(script.set_id, script.version, checksum, None, status="running")
            except self._errors as exc:
                if self._is_duplicate(exc):
                    return False
                raise
            return True

    def dirty_applied(self, script: Script, checksum: str, duration_ms: int) -> None:
        with self._ledger_errors(f"{script.version} ran, but marking it applied failed (it stays 'running')"):
            self._mark(script, "applied", duration_ms)

    def dirty_failed(self, script: Script, checksum: str, duration_ms: int, failure: MigrationError) -> None:
        # Keep the first failure: if the failed row cannot be written, the running
        # row stays (it blocks the set as "interrupted") and the original error is raised.
        try:
            self._after_failed_body(script)
            self._mark(script, "failed", duration_ms, failure.statement, redact(failure.message)[:_ERROR_MAX])
        except Exception as exc:
            log.warning("%s: could not record the failure of %s (%s); the ledger shows it as running", self.dbid, script.label, exc)

    def _mark(self, script: Script, status: str, duration_ms: int, statement: int | None = None, error: str | None = None) -> None:
        self._execute(
            self._sql(f"UPDATE {self._qualified_table()} SET status = ?, apply_time = ?, duration_ms = ?, statement = ?, error = ? "
                      "WHERE set_id = ? AND version = ?"),
            (status, int(time.time()), duration_ms, statement, error, script.set_id, script.version),
        )

    # -- running a migration's body -------------------------------------------------------------

    def _run_body(self, script: Script, up: Any, in_transaction: bool) -> int:
        # A migration may legitimately run for hours: only a dead link (keepalives, tcp_user_timeout) ends it.
        with self._bounded(None):
            policy = None
            if not in_transaction:  # each statement commits by itself: a lock timeout retries that statement
                policy = self._lock_policy(script)
                if policy.timeout or policy.statement_timeout:
                    self._set_lock_timeouts(policy, in_transaction=False)
            if up is not None:
                return self._run_python(script, up, in_transaction)
            count = 0
            for statement in self._statements(script, in_transaction):
                if in_transaction and is_transaction_control(statement.text):
                    log.debug("%s: statement %d (line %d): %s skipped, the migration already runs in a transaction",
                              script.label, statement.number, statement.line, statement.text.strip())
                    continue
                if policy is None:
                    self._run_one(script, statement)
                else:
                    self._with_lock_retries(script, policy, functools.partial(self._run_attempt, script, statement))
                self._after_statement(script, statement, in_transaction)
                count += 1
            return count

    def _run_attempt(self, script: Script, statement: Statement, number: int) -> None:
        self._run_one(script, statement)

    def _run_one(self, script: Script, statement: Statement) -> None:
        try:
            self._run_statement(script, statement)
        except self._errors as exc:
            if self._is_lock_timeout(exc):
                raise LockTimedOut(statement, exc) from None
            raise self._statement_failure(script, statement, exc) from None

    def _run_python(self, script: Script, up: Any, in_transaction: bool) -> int:
        handle = DbApiHandle(self)
        try:
            result = up(handle)
        except OrchestratorError:
            raise
        except Exception as exc:
            self._raise_if_lost(exc)  # up() met a dead connection: unreachable, not a failed migration
            if in_transaction and self._is_lock_timeout(exc):
                raise LockTimedOut(None, exc) from None  # the whole transaction is run again
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
            raise MigrationError(script.label, f"up() raised {message}", line=raise_line(exc, script.path)) from None
        self._after_statement(script, None, in_transaction)
        if result is False:
            raise MigrationError(script.label, "up() returned False")
        return handle.statements
