"""SQLite target: the embedded default, no server needed.

One connection in autocommit mode; each migration runs in ``BEGIN IMMEDIATE``,
which takes the database's write lock, so the ledger re-check inside it makes
racing processes apply each migration exactly once. From its first migration
until it lets go of the set, a runner holds an flock on ``<path>.orchestrator-lock``:
another runner holding it longer than ``busy_timeout`` makes the target ``locked``;
any other writer holding the write lock is waited for with the lock timeout and
retries of every engine.
A no-transaction migration has no write lock to lean on, so that flock alone
keeps a second runner out. ``BEGIN``/``COMMIT`` in a script are absorbed into
the runner's transaction; a statement (or Python ``up``) that still ends it, such
as ``ROLLBACK``, fails the migration. Status and plan open the file read-only
and never create it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from orchestrator.errors import LockHeld, MigrationError, TargetUnreachable
from orchestrator.locktimeout import LockTimedOut
from orchestrator.sqlsplit import Statement, split
from orchestrator.targets import Applied, runner_identity
from orchestrator.targets._sql import SqlTarget
from orchestrator.targets._where import ErrorAt, as_written, one_line

if TYPE_CHECKING:
    from orchestrator.sets import Script

__all__ = ["SqliteTarget"]

_STATEMENT_BY_STATEMENT = object()  # _apply_as_one_script's answer: take the general path

log = logging.getLogger("migrations")

_FOREIGN_KEYS = re.compile(r"^\s*PRAGMA\s+(?:main\s*\.\s*)?foreign_keys\s*=\s*['\"]?(\w+)", re.I)
# Statements that end, nest or change the transaction itself; a file holding one runs statement by statement.
_OWN_TRANSACTION = re.compile(r"\s*(?:BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE|PRAGMA\s+(?:main\s*\.\s*)?foreign_keys|ATTACH|DETACH|VACUUM)\b", re.I)
# Connection settings SQLite refuses to change inside a transaction but that leave the file
# untouched: the sqlite3 shell runs them in autocommit, so they run just before the
# migration's transaction and the connection's value is restored after it.
_SESSION_PRAGMA = re.compile(r"\s*PRAGMA\s+(?:main\s*\.\s*)?synchronous\s*[=(]", re.I)
_JOURNAL_MODE_SET = re.compile(r"""\s*PRAGMA\s+(?:main\s*\.\s*)?journal_mode\s*(?:=\s*|\(\s*)['"]?(\w+)""", re.I)
_MENTIONS_SESSION_PRAGMA = re.compile(r"synchronous", re.I)
_ONE_SCRIPT_MAX = 1 << 20  # bytes: bigger files are streamed statement by statement, never joined
_WAIT_AS_LONG_AS_IT_TAKES = 2**31 - 1  # ms of busy_timeout for lock-timeout=off (about 24 days)
_NO_TRANSACTION_HINT = "; make '-- orchestrator: no-transaction' the first line to run this migration outside a transaction"


class SqliteTarget(SqlTarget):
    """SQLite's hooks of the SqlTarget template; see the module's docstring."""

    driver = "sqlite"
    dialect = "sqlite"
    placeholder = "?"

    def __init__(self, db: Any, table: str):
        super().__init__(db, table)
        self._missing = False
        self._lock_fd: int | None = None  # the runner lock file (see _runner_lock); -1: cannot be opened
        self._identity = b""
        self._runner_locked = False  # the flock is held (kept from a set's first migration until _unlock)
        self._first_attempt: LockHeld | None = None  # _apply_directly's attempt met a busy write lock
        self._busy_ms = int(db.busy_timeout)  # the connection's busy timeout now (see _use_busy_timeout)

    def connect(self, readonly: bool = False) -> None:
        path = Path(self.db.path)
        timeout = self.db.busy_timeout / 1000
        self._missing = False
        self._busy_ms = int(self.db.busy_timeout)
        try:
            if readonly:
                if not path.exists():
                    self._missing = True  # nothing applied yet; do not create the file to say so
                    self.connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                    return
                # Opened for reading and writing but never creating, and made query-only: a mode=ro connection
                # cannot use the WAL index of a WAL file and reads it the slow way (1.7 ms a file, against 0.5).
                # The URI is built, not resolved: Path.resolve() costs an lstat per path component.
                uri = f"file:{quote(os.path.abspath(path))}?mode=rw"
                self.connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
                self.connection.execute("PRAGMA query_only = ON")
            else:
                new = not path.exists()
                if not path.parent.is_dir():
                    # A new database's folder is created as the file is (var/ of a fresh checkout).
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                    except (FileExistsError, NotADirectoryError):
                        raise TargetUnreachable(self.dbid, f"cannot create folder {path.parent}: part of that path is a file") from None
                # connect's timeout is SQLite's busy timeout (sqlite3_busy_timeout): no PRAGMA round needed.
                self.connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
                self._set_journal_mode()
                if new:  # said out loud: a typo in the path would otherwise quietly start a new database
                    log.info("%s: created new database %s", self.dbid, path)
        except (sqlite3.Error, OSError, ValueError) as exc:
            if self.connection is not None:
                self.connection.close()
            self.connection = None
            reason = getattr(exc, "strerror", None) or str(exc)
            raise TargetUnreachable(self.dbid, f"cannot open {path}: {reason}") from None

    def _set_journal_mode(self) -> None:
        wanted = self.db.journal_mode.lower()
        if wanted == "off":
            log.warning("%s: journal_mode OFF: SQLite cannot roll back, so a failing migration may leave part of "
                        "its changes without a ledger row; prefer WAL or DELETE", self.dbid)
        # Switching needs the file to itself and SQLite does not apply busy_timeout to it,
        # so poll for up to busy_timeout; another runner may also switch it meanwhile.
        deadline = time.monotonic() + self.db.busy_timeout / 1000
        while True:
            mode = self.connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() == wanted:
                return
            try:
                # The pragma answers with the mode in force; SQLite keeps the old one when it cannot switch.
                mode = self.connection.execute(f"PRAGMA journal_mode = {wanted.upper()}").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    log.warning("%s: journal_mode stays %s for this run: another connection is using %s",
                                self.dbid, mode.upper(), self.db.path)
                    return
                time.sleep(0.02)
        if mode.lower() != wanted:
            log.warning("%s: journal_mode stays %s: SQLite refused %s for %s", self.dbid, mode.upper(), wanted.upper(), self.db.path)

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _is_missing_table(self, exc: BaseException) -> bool:
        return self._missing or "no such table" in str(exc)

    def _is_missing_column(self, exc: BaseException) -> bool:
        return "no such column" in str(exc)

    def _send(self, sql: str, params: Any) -> Any:
        # Connection.execute makes the cursor itself: per statement, two Python calls fewer.
        cur = self.connection.execute(sql, params) if params is not None else self.connection.execute(sql)
        return cur.fetchall() if cur.description else None

    def _ledger_columns(self) -> set[str]:
        return {row[1] for row in self._execute(f"PRAGMA table_info({self._quote(self.table)})") or []}

    def _rollback(self) -> None:
        # A script's own ROLLBACK (or a Python up's commit) may already have ended the transaction.
        if self.connection.in_transaction:
            self._execute("ROLLBACK")

    def _after_statement(self, script: Script, statement: Statement | None, in_transaction: bool) -> None:
        if not in_transaction:
            return
        if not self.connection.in_transaction:
            if statement is None:
                raise MigrationError(script.label, "up() ended the migration's transaction (commit or rollback); "
                                     "its changes may be committed without a ledger row: check the database, then remove the commit")
            if statement.text.lstrip()[:8].upper() == "ROLLBACK":
                what = "ROLLBACK ended the migration's transaction and undid the statements before it"
            else:
                what = "this statement ended the migration's transaction: the statements before it are committed without a ledger row"
            raise MigrationError(script.label, f"{what}; remove it (each migration runs in one transaction) and check the database",
                                 statement.number, statement.line)
        if statement is not None:
            m = _FOREIGN_KEYS.match(statement.text)
            if m:
                wanted = m.group(1).lower() in ("on", "1", "true", "yes")
                current = bool(self.connection.execute("PRAGMA foreign_keys").fetchone()[0])
                if wanted != current:
                    log.warning("%s: statement %d (line %d): PRAGMA foreign_keys has no effect inside a transaction, "
                                "foreign keys stay %s%s", script.label, statement.number, statement.line,
                                "ON" if current else "OFF", _NO_TRANSACTION_HINT)

    @contextmanager
    def _around_migration(self, script: Script, in_transaction: bool) -> Iterator[None]:
        if not in_transaction:  # the write lock of each statement is waited for as the entry says
            self._use_busy_timeout(int(self.db.busy_timeout))
        session = self._session_pragmas(script)
        synchronous = self.connection.execute("PRAGMA synchronous").fetchone()[0] if session is not None else None
        try:
            for statement in session or ():
                try:
                    self._execute(statement.text)
                except sqlite3.Error as exc:
                    raise self._statement_failure(script, statement, exc) from None
            yield
        finally:
            if synchronous is not None:  # the next migration starts from the connection's own setting
                self._restore_synchronous(synchronous)

    def apply(self, script: Script) -> Applied | None:
        done = self._apply_directly(script)
        if done is not _STATEMENT_BY_STATEMENT:
            return done  # type: ignore[no-any-return]
        try:
            return super().apply(script)
        finally:
            self._first_attempt = None  # the direct path's spent attempt belongs to this file only

    def _apply_directly(self, script: Script) -> Any:
        """The second and later plain files of a run: BEGIN and the body in one call, the ledger row, COMMIT.

        What the general path would do for them, without its layers, which cost a
        file more than SQLite's own work does when a thousand files run side by side.
        Taken only with the runner lock held and the file's lock timeout already in
        force; anything unusual, and any error (rolled back first), goes the general
        way, which runs the file again and says what happened.
        """
        if script.kind != "sql" or not self._runner_locked or script.size > _ONE_SCRIPT_MAX:
            return _STATEMENT_BY_STATEMENT
        checksum, no_transaction = script.inspect()
        plan = script.derived("sqlite:one-script", lambda: self._one_script(script))
        if no_transaction or plan is None or plan[2] or self._busy_ms != self._lock_wait_ms(script) or \
                script.derived("sqlite:session-pragmas", lambda: self._session_pragmas(script)) is not None:
            return _STATEMENT_BY_STATEMENT
        started = time.monotonic()
        try:
            self.connection.executescript(plan[0])
            duration = int((time.monotonic() - started) * 1000)
            self.connection.execute(self._insert_sql(), self._insert_params(script.set_id, script.version, checksum, duration))
            self.connection.execute("COMMIT")
        except sqlite3.Error as exc:
            began = self.connection.in_transaction
            self._safe_rollback()
            if not began and _is_busy(exc):  # the general path's first attempt, spent
                self._first_attempt = LockHeld(self.dbid, script.set_id, f"another writer (waited busy_timeout {self._busy_ms} ms)")
            return _STATEMENT_BY_STATEMENT
        except BaseException:
            self._safe_rollback()
            raise
        return Applied(script.version, plan[1], duration)

    def _lock_wait_ms(self, script: Script) -> int:
        policy = self._lock_policy(script)
        return _WAIT_AS_LONG_AS_IT_TAKES if not policy.timeout else math.ceil(policy.timeout * 1000)

    def _apply_in_transaction(self, script: Script, checksum: str, up: Any) -> Applied | None:
        """The migration under the runner lock, each attempt waiting the lock timeout for the write lock.

        Holding the runner lock means no other runner is applying on this file, so a
        write lock that stays taken is another application's writer: the attempt is
        retried with the lock policy's backoff, as on the servers.
        """
        policy = self._lock_policy(script)

        def attempt(number: int) -> Applied | None:
            try:
                if self._first_attempt is not None:  # _apply_directly waited the lock timeout already
                    spent, self._first_attempt = self._first_attempt, None
                    raise spent
                return self._apply_in_transaction_once(script, checksum, up)
            except LockHeld as exc:  # the write lock stayed taken for the whole attempt
                raise LockTimedOut(None, exc) from None

        with self._runner_lock(script.set_id):
            # Left as it is after the migration: the next one mostly wants the same; _unlock restores it.
            self._use_busy_timeout(self._lock_wait_ms(script))
            return self._with_lock_retries(script, policy, attempt)

    def _apply_in_transaction_once(self, script: Script, checksum: str, up: Any) -> Applied | None:
        applied = self._apply_as_one_script(script)
        return super()._apply_in_transaction(script, checksum, up) if applied is _STATEMENT_BY_STATEMENT else applied

    def _use_busy_timeout(self, milliseconds: int) -> None:
        if milliseconds != self._busy_ms:
            self.connection.execute(f"PRAGMA busy_timeout = {milliseconds}")
            self._busy_ms = milliseconds

    def _lock_wait_holder(self, exc: BaseException, statement: Statement | None) -> str:
        return "waiting for the write lock held by another connection"

    def _restore_synchronous(self, value: int) -> None:
        try:
            if not self.connection.in_transaction:
                self.connection.execute(f"PRAGMA synchronous = {int(value)}")
        except sqlite3.Error as exc:
            log.warning("%s: restoring PRAGMA synchronous failed: %s", self.dbid, exc)

    def _session_pragmas(self, script: Script) -> list[Any] | None:
        """``PRAGMA synchronous = ...`` statements to run before the migration's transaction.

        None when the file sets none; [] when it sets them but runs outside a
        transaction, in place (the connection's value is restored after it either way).
        """
        if script.kind != "sql" or not _MENTIONS_SESSION_PRAGMA.search(script.text()):
            return None
        found = [s for s in self._statements(script) if _SESSION_PRAGMA.match(s.text)]
        if not found:
            return None
        return [] if script.no_transaction else found

    def _check_journal_mode(self, script: Script, statement: Any, wanted: str) -> None:
        # Inside a transaction SQLite refuses a switch to or from WAL, or ignores it
        # silently, where the shell would switch: a change is refused here up front.
        current = self.connection.execute("PRAGMA journal_mode").fetchone()[0]
        if wanted.lower() != current.lower():
            raise MigrationError(script.label, f"PRAGMA journal_mode = {wanted.upper()} cannot take effect inside the "
                                 f"migration's transaction (the database stays {current.upper()}){_NO_TRANSACTION_HINT}",
                                 statement.number, statement.line)

    def _statements(self, script: Script, in_transaction: bool = False, check: bool = True) -> Iterator[Statement]:
        """The statements as written, each up to its ';' (trailing blanks and comments included).

        SQLite stores a CREATE INDEX (and others) in sqlite_master up to the ';', so
        sending the text exactly as the sqlite3 shell does keeps a '.dump' round trip
        faithful. Inside the migration's transaction, session pragmas are left out:
        :meth:`apply` ran them before it began.
        """
        text = script.text()
        pos = 0
        # A big file is split from this copy of its text rather than read a second time.
        statements = script.statements(self.dialect) if script.size <= _ONE_SCRIPT_MAX else split(text, self.dialect)
        for statement in statements:
            written = as_written(text, statement, pos)
            if written is None:
                yield statement
                continue
            pos = written[1]
            if in_transaction and _SESSION_PRAGMA.match(statement.text):
                continue
            if check and in_transaction and (m := _JOURNAL_MODE_SET.match(statement.text)):
                self._check_journal_mode(script, statement, m.group(1))
            yield replace(statement, text=written[0]) if written[0] != statement.text else statement

    def _apply_as_one_script(self, script: Script) -> Any:
        """Run a plain SQL migration's BEGIN and body in one call into SQLite.

        Python's sqlite3 gives up the GIL once for the whole script instead of once per
        statement, which is what lets many targets' migrations run side by side in one
        process. A file that manages its own transaction, runs outside one, or is large
        takes the statement-by-statement path; so does a failure, which is rolled back
        and run again that way to name the failing statement and line.
        """
        if script.kind != "sql" or script.no_transaction or script.size > _ONE_SCRIPT_MAX:
            return _STATEMENT_BY_STATEMENT
        plan = script.derived("sqlite:one-script", lambda: self._one_script(script))
        if plan is None:
            return _STATEMENT_BY_STATEMENT
        body, count, journal_modes = plan
        for statement, wanted in journal_modes:  # depends on the connection's mode: checked every time
            self._check_journal_mode(script, statement, wanted)
        started = time.monotonic()
        try:
            self.connection.executescript(body)
        except sqlite3.Error as exc:
            began = self.connection.in_transaction
            self._safe_rollback()
            if not began and _is_busy(exc):
                raise LockHeld(self.dbid, script.set_id, f"another writer (waited busy_timeout {self._busy_ms} ms)") from None
            if self._recorded_after_failure(script):
                return None  # another runner applied it after this one read the ledger
            return _STATEMENT_BY_STATEMENT
        with self._recording_errors(script, "recording it failed, the migration was rolled back"):
            try:
                if not self.connection.in_transaction:
                    raise MigrationError(script.label, "the migration's transaction ended early; check the database")
                duration = self._record_and_commit(script, script.checksum, started)
            except BaseException as exc:
                if self._rolled_back_lost_race(script, exc):
                    return None
                raise
        return Applied(script.version, count, duration)

    def _one_script(self, script: Script) -> tuple[str, int, list[tuple[Statement, str]]] | None:
        """(BEGIN and the body as one script, its statement count, its journal_mode switches); None: the statement path.

        What the file's text alone decides, so every target running the file shares it.
        """
        statements = list(self._statements(script, in_transaction=True, check=False))
        if not statements or any(_OWN_TRANSACTION.match(s.text) for s in statements):
            return None
        journal_modes = [(s, m.group(1)) for s in script.statements(self.dialect) if (m := _JOURNAL_MODE_SET.match(s.text))]
        # Each statement is sent as written up to its ";" (sqlite_master keeps that text);
        # only the last one may end in a line comment, and no ";" follows it.
        return "BEGIN IMMEDIATE;\n" + ";\n".join(s.text for s in statements), len(statements), journal_modes

    def _outside_transaction_lock(self, set_id: str) -> AbstractContextManager[None]:
        return self._runner_lock(set_id)

    @contextmanager
    def _runner_lock(self, set_id: str) -> Iterator[None]:
        """Held while this runner applies migrations: an flock on ``<path>.orchestrator-lock``.

        Another runner holding it is applying on this file: it is waited for
        busy_timeout and then reported ``locked``, naming it. A no-transaction
        migration has no write lock to lean on, so this lock alone keeps a second
        runner from running it too. Taken by a set's first migration, it is kept
        while the runner holds the set (``lock()``) and let go with it, so a run of
        many migrations takes it once. flock, not fcntl locks: closing any
        descriptor of a file drops a process's fcntl locks on it, and the kernel
        drops a flock when its holder dies. The file is never deleted: unlinking a
        lock file races with the next runner opening it.
        """
        fd = self._lock_file()
        if fd is None or self._runner_locked:
            yield
            return
        import fcntl

        deadline = time.monotonic() + self.db.busy_timeout / 1000
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    raise LockHeld(self.dbid, set_id, holder or "another runner") from None
                time.sleep(0.02)
        self._runner_locked = True
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._identity, 0)
            yield
        finally:
            if set_id not in self._held:  # outside lock(): nothing lets go of it later
                self._release_runner_lock()

    def _release_runner_lock(self) -> None:
        if self._runner_locked and self._lock_fd is not None and self._lock_fd >= 0:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._runner_locked = False

    def _unlock(self, set_id: str) -> None:
        self._release_runner_lock()
        if self.connection is not None:
            self._use_busy_timeout(int(self.db.busy_timeout))

    def _lock_file(self) -> int | None:
        """The lock file's descriptor, opened once per connection; None for ``:memory:`` or a folder that refuses it."""
        if self._lock_fd is None and self.db.path != ":memory:":
            try:
                self._lock_fd = os.open(f"{self.db.path}.orchestrator-lock", os.O_RDWR | os.O_CREAT, 0o644)
                self._identity = runner_identity().encode()
            except OSError as exc:  # only the busy write lock tells runners and other writers apart then
                log.warning("%s: cannot open the lock file beside %s (%s): runners are told apart from other "
                            "writers by the write lock alone", self.dbid, self.db.path, exc.strerror or exc)
                self._lock_fd = -1
        return None if self._lock_fd is None or self._lock_fd < 0 else self._lock_fd

    def close(self) -> None:
        if self._lock_fd is not None and self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock, if held
        self._lock_fd = None
        self._runner_locked = False
        super().close()

    def _begin(self) -> None:
        # IMMEDIATE takes the write lock now, so the ledger check that follows cannot go stale.
        try:
            self._execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise LockHeld(self.dbid, self._set_id or "*", f"another writer (waited busy_timeout {self._busy_ms} ms)") from None
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

    def _error_at(self, exc: BaseException, statement: Statement) -> ErrorAt:
        message = one_line(exc)
        if "within a transaction" in message or "inside a transaction" in message:  # VACUUM, PRAGMA journal_mode = WAL, ...
            message += _NO_TRANSACTION_HINT
        elif "locked" in message and statement.text.lstrip()[:6].upper() == "PRAGMA":
            message += _NO_TRANSACTION_HINT  # PRAGMA wal_checkpoint inside the migration's own write transaction
        return ErrorAt(message, statement)


def _is_busy(exc: BaseException) -> bool:
    """SQLite's answer when the write lock stayed taken for the whole busy timeout."""
    return "locked" in str(exc) or "busy" in str(exc)
