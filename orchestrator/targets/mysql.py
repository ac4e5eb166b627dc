"""MySQL / MariaDB target over PyMySQL.

One connection per run, in autocommit mode, without TLS unless the config asks
for it (PyMySQL otherwise builds a TLS context on every connect). MySQL commits
DDL implicitly, so a migration cannot run in one transaction with its ledger
row; this target uses golang-migrate's dirty flag instead: a ``running`` row is
written before the first statement, and marked ``applied`` after the last one or
``failed`` (with the statement number and the server's message) at the first
error. A failed or running row blocks the set until ``orchestrator resolve``.
The (target, set) lock is ``GET_LOCK(name, 0)`` polled; creating or upgrading
the ledger takes a second, ledger-wide named lock so that runners of different
sets cannot collide. The ledger table is always qualified with the database
name, so a script's ``USE other_db`` cannot send ledger writes elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.errors import ConfigError, LockHeld, MigrationError, TargetUnreachable
from orchestrator.locktimeout import LockPolicy, mysql_blocker, mysql_is_lock_timeout, mysql_session_values
from orchestrator.redact import redact
from orchestrator.targets._mysql_session import SESSION_TRACK, Session, SessionWatch, capture_session
from orchestrator.targets._sql import SqlTarget
from orchestrator.targets._where import ErrorAt

if TYPE_CHECKING:
    from orchestrator.sets import Script
    from orchestrator.sqlsplit import Statement

__all__ = ["MysqlTarget", "lock_name"]

log = logging.getLogger("migrations")

_LOCK_NAME_MAX = 64  # MySQL refuses longer GET_LOCK names
_SERVER_STATUS_IN_TRANS = 1
_ER_DUP_ENTRY = 1062
_ER_NO_SUCH_TABLE = 1146
_ER_BAD_FIELD = 1054
_ER_PARSE = 1064
# Client-side codes for a connection that is gone (CR_SERVER_GONE_ERROR, CR_SERVER_LOST, ...)
# and the server's "connection was killed".
_CONNECTION_LOST = {2006, 2013, 2055, 1927}
_CONNECT_HINTS = {
    1044: "grant the user access to this database",
    1045: "check user and password in the config",
    1049: "create the database or fix dbname in the config",
    2003: "is the server running and listening there?",
    2013: "the server did not answer within connection_timeout",
    2026: "the server does not offer TLS; set tls to false or enable TLS on the server",
}
_AT_LINE = re.compile(r" at line (\d+)\s*$")
_CALL = re.compile(r"(?:call|execute)(?![0-9A-Za-z_$])", re.IGNORECASE)
_MAYBE_USE = re.compile(r"(?:^|;)\s*use\s", re.IGNORECASE | re.MULTILINE)
def lock_name(dbname: str, table: str, scope: str) -> str:
    """The GET_LOCK name for one scope (a set id, or ``""`` for the whole ledger) of one ledger.

    Named locks are server-wide, so the database and ledger table are part of the
    name; names longer than MySQL's 64-character limit are hashed.
    """
    name = f"orchestrator:{dbname}.{table}" + (f":{scope}" if scope else "")
    if len(name) > _LOCK_NAME_MAX:
        prefix = "orchestrator:"
        name = prefix + hashlib.sha256(name.encode("utf-8")).hexdigest()[: _LOCK_NAME_MAX - len(prefix)]
    return name


def _drop_dead_links(sock: socket.socket, keepalive: int, tcp_user_timeout: int) -> None:
    """Kernel settings that drop a dead link after about ``keepalive`` s idle, ``tcp_user_timeout`` s unacknowledged."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if keepalive else 0)
    if keepalive and hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's keepalive timing applies
        idle = max(1, keepalive // 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, (keepalive - idle) // 3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    if tcp_user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, tcp_user_timeout * 1000)


def _errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _server_text(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    text = str(args[1]) if len(args) > 1 else str(exc)
    text = " ".join(text.split())  # one line, whatever the server sent
    return text or type(exc).__name__


class MysqlTarget(SqlTarget):
    """MySQL's hooks of the SqlTarget template: the dirty flag replaces transactions."""

    driver = "mysql"
    dialect = "mysql"
    placeholder = "%s"
    transactional_ddl = False
    _results_before_error = 0
    _session: Session | None = None  # read before the first migration of a connection
    _session_dirty = False  # a migration ran since the session was last restored
    _lock_settings: dict[str, str | None] | None = None  # the lock timeouts pinned into the session (None: not yet)

    def __init__(self, db: Any, table: str):
        super().__init__(db, table)
        self.table_label = f"{db.dbname}.{table}"

    # -- connection ------------------------------------------------------------

    def connect(self, readonly: bool = False) -> None:
        import pymysql  # lazily: the CLI must start without loading drivers

        db = self.db
        self._session, self._session_dirty, self._lock_settings = None, False, None
        self._watch = SessionWatch()
        if pymysql.charset.charset_by_name(db.charset) is None:
            raise ConfigError(f"{self.dbid}: charset {db.charset!r} is not a MySQL character set (e.g. utf8mb4)")
        if db.tls:
            # Encrypted and refused without TLS, as --ssl-mode=REQUIRED; the
            # certificate is not verified (a bare flag names no CA to verify against).
            tls: dict[str, Any] = {"ssl": {"ca": None}}
        else:
            tls = {"ssl_disabled": True}
        try:
            self.connection = pymysql.connect(
                host=db.ip,
                port=db.port,
                user=db.user or None,
                # Encoded here: PyMySQL would encode a str password as latin-1.
                password=db.password.get_secret_value().encode("utf-8"),
                database=db.dbname,
                charset=db.charset,
                connect_timeout=db.timeout,
                # Bounds the handshake and the runner's own queries: a server that accepts and never
                # answers must not hang a worker. A migration's statements run unbounded (_run_body).
                read_timeout=db.timeout,
                write_timeout=db.timeout,
                autocommit=True,
                local_infile=False,
                # As the mariadb client: a DELIMITER chunk holding several statements is sent whole.
                client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS | SESSION_TRACK,
                program_name="orchestrator",
                **tls,
            )
            _drop_dead_links(self.connection._sock, db.keepalive, db.tcp_user_timeout)
        except pymysql.err.MySQLError as exc:
            self.connection = None
            code = _errno(exc)
            hint = _CONNECT_HINTS.get(code or 0, "")
            where = f"{db.ip}:{db.port}/{db.dbname}"
            cause = f"{where}: error {code}: {_server_text(exc)}" + (f"; {hint}" if hint else "")
            raise TargetUnreachable(self.dbid, redact(cause)) from None
        except OSError as exc:  # e.g. TLS handshake failures surface as ssl.SSLError
            self.connection = None
            raise TargetUnreachable(self.dbid, redact(f"{db.ip}:{db.port}/{db.dbname}: {exc}")) from None

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        import pymysql

        return (pymysql.err.MySQLError,)

    def _send(self, sql: str, params: Any) -> Any:
        """Run *sql* and every statement after it in the same chunk; the first result's rows (None for none).

        With multi-statements on, each statement of a chunk answers with its own
        result, and an error in the third surfaces only when the first two have been
        read: all are read here, and how many succeeded is kept for the error report.
        """
        done = 0
        cur = self.connection.cursor()
        try:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            self._watch.see(self.connection, cur.description is not None)
            rows = cur.fetchall() if cur.description else None
            done = 1
            while cur.nextset():
                self._watch.see(self.connection, cur.description is not None)
                done += 1
            return rows
        except BaseException:
            self._results_before_error = done
            raise
        finally:
            cur.close()

    def _lost_reason(self, exc: BaseException) -> str | None:
        import pymysql

        code = _errno(exc) if isinstance(exc, pymysql.err.MySQLError) else None
        lost = code in _CONNECTION_LOST or (isinstance(exc, pymysql.err.InterfaceError) and code == 0)
        if not lost and (self.connection is None or self.connection.open):
            return None
        text = _server_text(exc)
        if "timed out" in text:
            return (f"no answer within {self.db.timeout} s (connection_timeout) to the runner's own query; "
                    "the server or the link to it stalled")
        return f"lost the connection: {text}"

    @contextmanager
    def _bounded(self, seconds: float | None) -> Iterator[None]:
        """Another socket timeout than connection_timeout for the block's queries (None: unbounded)."""
        conn = self.connection
        # PyMySQL has no public setter; it applies these before each read and write.
        before = conn._read_timeout
        conn._read_timeout = conn._write_timeout = seconds
        try:
            yield
        finally:
            conn._read_timeout = conn._write_timeout = before

    def _describe(self, exc: BaseException) -> str:
        code = _errno(exc)
        return f"error {code}: {_server_text(exc)}" if code else _server_text(exc)

    # -- ledger ----------------------------------------------------------------

    def _quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def _qualified_table(self) -> str:
        # Always qualified: a script's USE other_db cannot send ledger writes elsewhere.
        return f"{self._quote(self.db.dbname)}.{self._quote(self.table)}"

    def _is_missing_table(self, exc: BaseException) -> bool:
        return _errno(exc) == _ER_NO_SUCH_TABLE

    def _is_missing_column(self, exc: BaseException) -> bool:
        return _errno(exc) == _ER_BAD_FIELD

    def _is_duplicate(self, exc: BaseException) -> bool:
        return _errno(exc) == _ER_DUP_ENTRY

    def _ledger_info(self) -> dict[str, tuple[str, int | None, bool, str]]:
        """Column name -> (data type, character length, nullable, key) of the ledger table; {} when absent."""
        rows = self._execute(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, IS_NULLABLE, COLUMN_KEY "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (self.db.dbname, self.table),
        )
        return {name.lower(): (dtype.lower(), length, nullable == "YES", key) for name, dtype, length, nullable, key in rows or []}

    def _ledger_columns(self) -> set[str]:
        return set(self._ledger_info())

    def _create_ledger_sql(self) -> list[str]:
        # utf8mb4_bin: versions compare byte by byte as the set orders them. The key
        # is 4 * (100 + 180) = 1120 bytes: within InnoDB's 3072-byte key limit, and
        # each column within the 767-byte limit of the old COMPACT row format.
        create = (
            f"CREATE TABLE IF NOT EXISTS {self._qualified_table()} ("
            "set_id VARCHAR(100) NOT NULL DEFAULT '', "
            f"version VARCHAR({defaults.VERSION_MAX_LENGTH}) NOT NULL, "
            "apply_time BIGINT NOT NULL, "
            "checksum CHAR(64) NULL, "
            "duration_ms BIGINT NULL, "
            "status VARCHAR(16) NOT NULL DEFAULT 'applied', "
            "statement INT NULL, "
            "error TEXT NULL, "
            "applied_by VARCHAR(255) NULL, "
            "PRIMARY KEY (set_id, version)"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )
        return [create]

    def _upgrade_1_to_2_sql(self) -> list[str]:
        """Adopt a C-tool ``migration(version, apply_time)``: one ALTER, rows kept.

        The C tool may keep inserting (version, apply_time) alone, so every new
        column is nullable or has a default.
        """
        info = self._ledger_info()
        t = self._qualified_table()
        length = max(defaults.VERSION_MAX_LENGTH, info.get("version", ("", 0, False, ""))[1] or 0)
        has_primary = any(key == "PRI" for _, _, _, key in info.values())
        steps = []
        if "apply_time" in info:
            if info["apply_time"][2]:
                steps.append(f"UPDATE {t} SET apply_time = 0 WHERE apply_time IS NULL")
            apply_time = "MODIFY apply_time BIGINT NOT NULL DEFAULT 0"
        else:
            apply_time = "ADD COLUMN apply_time BIGINT NOT NULL DEFAULT 0 AFTER version"
        alter = [
            "ADD COLUMN set_id VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '' FIRST",
            f"MODIFY version VARCHAR({length}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
            apply_time,
            "ADD COLUMN checksum CHAR(64) NULL",
            "ADD COLUMN duration_ms BIGINT NULL",
            "ADD COLUMN status VARCHAR(16) NOT NULL DEFAULT 'applied'",
            "ADD COLUMN statement INT NULL",
            "ADD COLUMN error TEXT NULL",
            "ADD COLUMN applied_by VARCHAR(255) NULL",
        ]
        if has_primary:
            alter.append("DROP PRIMARY KEY")
        alter.append("ADD PRIMARY KEY (set_id, version)")
        steps.append(f"ALTER TABLE {t} " + ", ".join(alter))
        return steps

    @contextmanager
    def _ledger_exclusive(self) -> Iterator[None]:
        # Runners of different sets hold different set locks; this ledger-wide lock
        # keeps their CREATE or upgrade ALTER from colliding (the template checks again under it).
        name = lock_name(self.db.dbname, self.table, "")
        with self._bounded(self.db.timeout + defaults.LOCK_WAIT):  # the server waits for the lock on purpose
            got = self._execute("SELECT GET_LOCK(%s, %s)", (name, defaults.LOCK_WAIT))
        if not got or got[0][0] != 1:
            raise LockHeld(self.dbid, "(ledger)", self._holder_of(name) or "")
        try:
            with self._bounded(self.db.timeout + defaults.LOCK_WAIT):  # DDL may wait for the table's metadata lock
                yield
        finally:
            try:
                self._execute("SELECT RELEASE_LOCK(%s)", (name,))
            except Exception as exc:  # closing the session releases it anyway
                log.debug("%s: releasing the ledger lock failed: %s", self.dbid, exc)

    # -- locking ---------------------------------------------------------------

    def _lock_name(self, set_id: str) -> str:
        return lock_name(self.db.dbname, self.table, set_id)

    def _try_lock(self, set_id: str) -> bool:
        # Non-blocking: the template polls, so a held lock is reported, never waited on forever.
        rows = self._execute("SELECT GET_LOCK(%s, 0)", (self._lock_name(set_id),))
        return bool(rows) and rows[0][0] == 1

    def _unlock(self, set_id: str) -> None:
        self._execute("SELECT RELEASE_LOCK(%s)", (self._lock_name(set_id),))

    def _holder_of(self, name: str) -> str | None:
        rows = self._execute("SELECT IS_USED_LOCK(%s)", (name,))
        conn_id = rows[0][0] if rows else None
        if conn_id is None:
            return None
        # Without the PROCESS privilege other users' sessions are invisible: the id alone then.
        info = self._execute("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = %s", (conn_id,))
        return f"connection {conn_id}" + (f" from {info[0][0]}" if info and info[0][0] else "")

    def _holder(self, set_id: str) -> str | None:
        """``connection N from host:port`` (plus the migration it runs, when inside one), None when free."""
        who = self._holder_of(self._lock_name(set_id))
        if who is None:
            return None
        try:
            rows = self._execute(
                f"SELECT version, applied_by FROM {self._qualified_table()} WHERE set_id = %s AND status = 'running' "
                "ORDER BY apply_time DESC LIMIT 1",
                (set_id,),
            )
        except self._errors:
            rows = None  # no ledger yet
        if rows:
            who += f" ({rows[0][1]}, applying {rows[0][0]})" if rows[0][1] else f" (applying {rows[0][0]})"
        return who

    # -- a migration's session -------------------------------------------------------

    @contextmanager
    def _around_migration(self, script: Script, in_transaction: bool) -> Iterator[None]:
        # Every migration starts from the session of connect: without COM_RESET_CONNECTION,
        # which would also release the runner's GET_LOCK.
        with self._ledger_errors("cannot read or restore the session variables"):
            if self._session is None:
                self._watch.start(self.connection, self._errors)  # before the capture: part of the session of connect
                self._session = capture_session(self._execute, self._errors, self.dbid)
            elif self._session_dirty:
                self._restore_session()  # the previous migration ended before it could
        with self._ledger_errors("cannot set the lock timeouts"):
            self._pin_lock_timeouts(self._lock_policy(script))
        self._session_dirty = True
        self._watch.begin()
        try:
            yield
        finally:
            self._watch.end()

    def _restore_session(self) -> None:
        if self._session is not None:
            self._session.restore(self._execute, self._errors, self.dbid)
        self._session_dirty = False

    def _end_of_body(self, script: Script) -> None:
        """Leave the session as the next migration expects it: no open transaction, autocommit, our database, the variables of connect."""
        conn = self.connection
        if conn.server_status & _SERVER_STATUS_IN_TRANS:
            # The mariadb client would disconnect and the server roll it back: the same here, and say so.
            self._execute("ROLLBACK")
            if not conn.get_autocommit():
                conn.autocommit(True)
            raise MigrationError(script.label, "left a transaction open (no COMMIT at the end); its uncommitted changes were rolled back")
        if not conn.get_autocommit():
            conn.autocommit(True)
        if self._watch.unchanged(script):  # no statement changed the session: nothing to check or set back
            self._session_dirty = False
            return
        if script.kind == "py" or _MAYBE_USE.search(script.text()):
            conn.select_db(self.db.dbname)
        try:
            self._restore_session()
        except self._errors as exc:
            self._raise_if_lost(exc)
            raise MigrationError(script.label, f"ran, but setting back the session variables it changed failed: "
                                               f"{self._describe(exc)}") from None

    def _after_failed_body(self, script: Script) -> None:
        super()._after_failed_body(script)  # a transaction the script opened ends with it, as with the mariadb client
        if not self.connection.get_autocommit():
            self.connection.autocommit(True)
        try:
            self._restore_session()  # also before the ledger write: SET NAMES latin1 would garble the message
        except self._errors as other:  # the next migration's start tries again
            log.warning("%s: could not set back the session variables after %s failed: %s", self.dbid, script.label, other)

    # -- lock timeouts (orchestrator.locktimeout) and online ALTER ----------------------------

    def _is_lock_timeout(self, exc: BaseException) -> bool:
        return mysql_is_lock_timeout(exc)

    def _set_lock_timeouts(self, policy: LockPolicy, in_transaction: bool) -> None:
        pass  # set before the migration by _pin_lock_timeouts

    def _pin_lock_timeouts(self, policy: LockPolicy) -> None:
        """Give the session this migration's lock timeouts: sent only when they differ from the last migration's.

        They are part of the session every migration starts from (``Session.pin``): one
        that changes them gets them set back with its other session variables.
        """
        mariadb = "mariadb" in self.connection.get_server_info().lower()
        wanted: dict[str, str | None] = dict(mysql_session_values(policy, mariadb))
        if wanted == self._lock_settings or self._session is None:
            return
        # Those the last migration had and this one has not go back to their value at connect.
        changes = {**dict.fromkeys(self._lock_settings or {}), **wanted}
        self._session.pin(self._execute, self._errors, changes)
        self._lock_settings = wanted

    def _lock_wait_holder(self, exc: BaseException, statement: Statement | None) -> str:
        return mysql_blocker(self._execute)

    def _run_statement(self, script: Script, statement: Statement) -> None:
        if getattr(self.db, "online_alter", False):
            from orchestrator.lint.mysql import online_alter

            self._execute(online_alter(statement.text))  # refused by the server rather than copying the table
        else:
            self._execute(statement.text)

    # -- where a statement failed ----------------------------------------------------

    def _error_at(self, exc: BaseException, statement: Statement) -> ErrorAt:
        code = _errno(exc)
        message = self._describe(exc)
        part = self._failed_part(statement)
        if part is not None:
            message += f" (in its statement {part.number}, of the block from line {statement.line})"
        m = _AT_LINE.search(_server_text(exc))
        # On a parse error the server counts lines from the failing statement's start.
        return ErrorAt(message, part or statement, line=int(m.group(1)) if m and code == _ER_PARSE else 1)

    def _failed_part(self, statement: Any) -> Any:
        """The statement inside a multi-statement chunk that failed, or None (single statement, or unknown)."""
        from orchestrator.sqlsplit import mysql_parts

        if ";" not in statement.text:
            return None
        parts = mysql_parts(statement)
        failed = self._results_before_error  # one result per statement that ran
        if len(parts) < 2 or failed >= len(parts):
            return None
        # CALL (or EXECUTE of one) answers with a result per SELECT in the procedure:
        # after one, results no longer count statements.
        if any(_CALL.match(part.text) for part in parts[:failed]):
            return None
        return parts[failed]
