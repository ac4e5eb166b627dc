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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.errors import (
    ConfigError,
    LockHeld,
    MigrationError,
    OrchestratorError,
    TargetUnreachable,
)
from orchestrator.redact import redact
from orchestrator.targets import Applied, LedgerRow
from orchestrator.targets._sql import SqlTarget

if TYPE_CHECKING:
    from orchestrator.sets import Script

__all__ = ["MysqlTarget", "lock_name"]

log = logging.getLogger("migrations")

_LOCK_NAME_MAX = 64  # MySQL refuses longer GET_LOCK names
_ERROR_MAX = 2000  # characters of a server message kept in the ledger's error column
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
# Session variables that change by themselves (or only read as 0) are not restored;
# the current database's character set follows USE; autocommit and timestamp are
# handled on their own.
_SESSION_SKIP = frozenset({
    "autocommit", "timestamp", "last_insert_id", "identity", "rand_seed1", "rand_seed2", "gtid_seq_no",
    "last_gtid", "wsrep_gtid_seq_no", "character_set_database", "collation_database",
})
# Servers without information_schema.SYSTEM_VARIABLES (MySQL): the variables scripts and dumps set.
_SESSION_COMMON = (
    "auto_increment_increment", "auto_increment_offset", "big_tables", "block_encryption_mode",
    "character_set_client", "character_set_connection", "character_set_results", "check_constraint_checks",
    "collation_connection", "completion_type", "default_storage_engine", "default_tmp_storage_engine",
    "default_week_format", "div_precision_increment", "explicit_defaults_for_timestamp", "foreign_key_checks",
    "group_concat_max_len", "information_schema_stats_expiry", "innodb_lock_wait_timeout", "innodb_strict_mode",
    "insert_id", "interactive_timeout", "lc_time_names", "lock_wait_timeout", "max_execution_time",
    "max_heap_table_size", "max_join_size", "max_sort_length", "max_statement_time", "net_read_timeout",
    "net_write_timeout", "optimizer_switch", "profiling", "sort_buffer_size", "sql_auto_is_null",
    "sql_big_selects", "sql_log_bin", "sql_mode", "sql_notes", "sql_quote_show_create",
    "sql_require_primary_key", "sql_safe_updates", "sql_select_limit", "sql_warnings", "time_zone",
    "tmp_table_size", "transaction_isolation", "transaction_read_only", "tx_isolation", "tx_read_only",
    "unique_checks", "wait_timeout",
)
# User variables that hold a value (one set to NULL reads as never set).
_USER_VARIABLES = (
    "SELECT VARIABLE_NAME, VARIABLE_VALUE, VARIABLE_TYPE FROM information_schema.USER_VARIABLES "
    "WHERE VARIABLE_VALUE IS NOT NULL",
    "SELECT VARIABLE_NAME, VARIABLE_VALUE, NULL FROM performance_schema.user_variables_by_thread "
    "WHERE THREAD_ID = PS_CURRENT_THREAD_ID() AND VARIABLE_VALUE IS NOT NULL",
)
_SESSION_CHECK = "orchestrator_session_check"  # a prepared statement: parsing ~200 @@names costs 1 ms, running it 0.2
_ER_UNKNOWN_PREPARED = 1243


@dataclass
class _Session:
    """The session as it was at connect, and a one-row query that tells whether it still is."""

    names: tuple[str, ...]
    values: tuple[Any, ...]
    check: str  # the PREPARE text
    expected: tuple[Any, ...]
    user_query: str | None
    user_vars: dict[str, tuple[Any, str | None]]


def _user_value(value: Any, kind: str | None) -> Any:
    # information_schema gives the text; the type comes back for numbers.
    if value is not None and kind in ("INT", "DECIMAL", "DOUBLE"):
        return {"INT": int, "DECIMAL": Decimal, "DOUBLE": float}[kind](value)
    return value


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
    args = getattr(exc, "args", ())
    text = str(args[1]) if len(args) > 1 else str(exc)
    text = " ".join(text.split())  # one line, whatever the server sent
    return text or type(exc).__name__


class MysqlTarget(SqlTarget):
    """Target protocol for MySQL and MariaDB; the dirty-flag ledger replaces transactions."""

    driver = "mysql"
    dialect = "mysql"
    placeholder = "%s"
    transactional_ddl = False
    _results_before_error = 0
    _session: _Session | None = None  # read before the first migration of a connection
    _session_dirty = False  # a migration ran since the session was last restored

    # -- connection ------------------------------------------------------------

    def connect(self, readonly: bool = False) -> None:
        import pymysql  # lazily: the CLI must start without loading drivers

        db = self.db
        self._session, self._session_dirty = None, False
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
                client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
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

    def _execute(self, sql: str, params: Any = None) -> Any:
        """Run *sql* and every statement after it in the same chunk; the first result's rows (None for none).

        With multi-statements on, each statement of a chunk answers with its own
        result, and an error in the third surfaces only when the first two have been
        read: all are read here, and how many succeeded is kept for the error report.
        """
        done = 0
        cur = self.connection.cursor()
        try:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            rows = cur.fetchall() if cur.description else None
            done = 1
            while cur.nextset():
                done += 1
            return rows
        except self._driver_errors() as exc:
            self._results_before_error = done
            if self._is_connection_lost(exc):
                if "timed out" in _server_text(exc):
                    raise TargetUnreachable(self.dbid, f"no answer within {self.db.timeout} s (connection_timeout) to "
                                                       "the runner's own query; the server or the link to it stalled") from None
                raise TargetUnreachable(self.dbid, f"lost the connection: {_server_text(exc)}") from None
            raise
        finally:
            cur.close()

    @contextmanager
    def _bounded(self, seconds: float | None) -> Iterator[None]:
        """Another socket timeout than connection_timeout for the block's queries (None: unbounded)."""
        conn = self.connection
        # PyMySQL has no public setter; it applies these before each read and write.
        conn._read_timeout = conn._write_timeout = seconds
        try:
            yield
        finally:
            conn._read_timeout = conn._write_timeout = self.db.timeout

    def _run_body(self, script: Script, up: Any, in_transaction: bool) -> int:
        # A migration may legitimately run for hours: only a dead link (keepalives, tcp_user_timeout) ends it.
        with self._bounded(None):
            return super()._run_body(script, up, in_transaction)

    def _is_connection_lost(self, exc: BaseException) -> bool:
        import pymysql

        return _errno(exc) in _CONNECTION_LOST or (isinstance(exc, pymysql.err.InterfaceError) and _errno(exc) == 0)

    @contextmanager
    def _ledger_errors(self, what: str) -> Iterator[None]:
        """A server error while handling the ledger or a lock becomes one line (missing privileges, mostly)."""
        try:
            yield
        except self._driver_errors() as exc:
            raise OrchestratorError(redact(f"{self.dbid}: {what}: error {_errno(exc)}: {_server_text(exc)}")) from None

    # -- ledger ----------------------------------------------------------------

    def _quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def _qualified_table(self) -> str:
        return f"{self._quote(self.db.dbname)}.{self._quote(self.table)}"

    def _is_missing_table(self, exc: BaseException) -> bool:
        return _errno(exc) == _ER_NO_SUCH_TABLE

    def _is_missing_column(self, exc: BaseException) -> bool:
        return _errno(exc) == _ER_BAD_FIELD

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

    def applied(self, set_id: str) -> dict[str, LedgerRow]:
        with self._ledger_errors(f"cannot read the ledger table {self.table}"):
            try:
                return super().applied(set_id)
            except self._driver_errors() as exc:
                if self._is_missing_column(exc):  # not even the C tool's (version, apply_time)
                    raise self._not_a_ledger() from None
                raise

    def _not_a_ledger(self) -> OrchestratorError:
        return OrchestratorError(
            f"{self.dbid}: table {self.db.dbname}.{self.table} exists but is not a migration ledger "
            "(no version and apply_time columns); set migrations.table to another name"
        )

    def record(self, set_id: str, version: str, checksum: str | None) -> None:
        with self._ledger_errors(f"cannot record {version} in the ledger table {self.table}"):
            super().record(set_id, version, checksum)

    def forget(self, set_id: str, version: str) -> None:
        with self._ledger_errors(f"cannot delete {version} from the ledger table {self.table}"):
            super().forget(set_id, version)

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

    def ensure_ledger(self) -> None:
        with self._ledger_errors(f"cannot create or upgrade the ledger table {self.table}"):
            self._ensure_ledger()

    def _ensure_ledger(self) -> None:
        # Usually the ledger is current: one catalog read, no lock.
        columns = self._ledger_columns()
        if "set_id" in columns:
            return
        if columns and "version" not in columns:
            raise self._not_a_ledger()  # never ALTER a table of the application's
        # Runners of different sets hold different set locks; this ledger-wide lock
        # keeps their CREATE or upgrade ALTER from colliding. Check again under it.
        name = lock_name(self.db.dbname, self.table, "")
        with self._bounded(self.db.timeout + defaults.LOCK_WAIT):  # the server waits for the lock on purpose
            got = self._execute("SELECT GET_LOCK(%s, %s)", (name, defaults.LOCK_WAIT))
        if not got or got[0][0] != 1:
            raise LockHeld(self.dbid, "(ledger)", self._holder_of(name) or "")
        try:
            with self._bounded(self.db.timeout + defaults.LOCK_WAIT):  # DDL may wait for the table's metadata lock
                super().ensure_ledger()
        finally:
            try:
                self._execute("SELECT RELEASE_LOCK(%s)", (name,))
            except Exception as exc:  # closing the session releases it anyway
                log.debug("%s: releasing the ledger lock failed: %s", self.dbid, exc)

    # -- locking ---------------------------------------------------------------

    def _lock_name(self, set_id: str) -> str:
        return lock_name(self.db.dbname, self.table, set_id)

    def _try_lock(self, set_id: str) -> bool:
        # Non-blocking: SqlTarget.lock polls, so a held lock is reported, never waited on forever.
        with self._ledger_errors("cannot take the lock"):
            rows = self._execute("SELECT GET_LOCK(%s, 0)", (self._lock_name(set_id),))
        return bool(rows) and rows[0][0] == 1

    def _unlock(self, set_id: str) -> None:
        self._execute("SELECT RELEASE_LOCK(%s)", (self._lock_name(set_id),))

    def _lock_holder(self, set_id: str) -> str:
        try:
            return self.holder(set_id) or ""
        except Exception:  # naming the holder is a courtesy; the lock is held either way
            return ""

    def _holder_of(self, name: str) -> str | None:
        rows = self._execute("SELECT IS_USED_LOCK(%s)", (name,))
        conn_id = rows[0][0] if rows else None
        if conn_id is None:
            return None
        # Without the PROCESS privilege other users' sessions are invisible: the id alone then.
        info = self._execute("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = %s", (conn_id,))
        return f"connection {conn_id}" + (f" from {info[0][0]}" if info and info[0][0] else "")

    def holder(self, set_id: str) -> str | None:
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
        except self._driver_errors():
            rows = None  # no ledger yet
        if rows:
            who += f" ({rows[0][1]}, applying {rows[0][0]})" if rows[0][1] else f" (applying {rows[0][0]})"
        return who

    # -- applying --------------------------------------------------------------

    def _error_message(self, exc: BaseException, statement: Any) -> tuple[str, int | None]:
        text = _server_text(exc)
        code = _errno(exc)
        message = f"error {code}: {text}" if code else text
        part = self._failed_part(statement) if statement else None
        if part is not None:
            message += f" (in its statement {part.number}, of the block from line {statement.line})"
            statement = part
        line = statement.line if statement else None
        m = _AT_LINE.search(text)
        if m and line is not None and code == _ER_PARSE:
            # The server counts lines from the failing statement's start; report the file's line.
            line += int(m.group(1)) - 1
        return message, line

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

    # -- session state ---------------------------------------------------------

    def _capture_session(self) -> _Session:
        """The session's variables now: before the first migration they are still those of connect."""
        try:
            rows = self._execute(
                "SELECT LOWER(VARIABLE_NAME) FROM information_schema.SYSTEM_VARIABLES "
                "WHERE VARIABLE_SCOPE IN ('SESSION', 'SESSION ONLY') AND READ_ONLY = 'NO'"
            )
            names = {row[0] for row in rows or ()}
        except self._driver_errors():  # MySQL has no such table: the variables scripts commonly set
            names = set(_SESSION_COMMON) & {row[0].lower() for row in self._execute("SHOW SESSION VARIABLES") or ()}
        # Character sets before collations (setting one resets the other).
        ordered = tuple(sorted(names - _SESSION_SKIP, key=lambda n: (
            not n.startswith("character_set_"), not n.startswith("collation_"), n)))
        values = tuple(self._execute("SELECT " + ", ".join(f"@@SESSION.{self._quote(n)}" for n in ordered))[0])
        user_query, user_vars = None, {}
        for candidate in _USER_VARIABLES:
            try:
                user_vars = {name: (value, kind) for name, value, kind in self._execute(candidate) or ()}
            except self._driver_errors():
                continue
            user_query = candidate
            break
        else:
            log.debug("%s: user variables cannot be listed on this server; they are not reset between migrations", self.dbid)
        # One row: a digest of every variable, whether SET timestamp froze the clock, how many user variables hold a value.
        quoted = ", ".join(f"QUOTE(@@SESSION.{self._quote(n)})" for n in ordered)
        check = f"SELECT MD5(CONCAT_WS(',', {quoted})), NOW() = SYSDATE()"
        if user_query:
            check += f", (SELECT COUNT(*) FROM ({user_query}) AS u)"
        self._execute(f"PREPARE {_SESSION_CHECK} FROM %s", (check,))
        digest = self._execute(f"EXECUTE {_SESSION_CHECK}")[0][0]
        expected = (digest, 1, len(user_vars)) if user_query else (digest, 1)
        return _Session(ordered, values, check, expected, user_query, user_vars)

    def _restore_session(self) -> None:
        """Set back whatever session variable or user variable the last migration changed (one query when none)."""
        session = self._session
        if session is None:
            return
        try:
            state = tuple(self._execute(f"EXECUTE {_SESSION_CHECK}")[0])
        except self._driver_errors() as exc:
            if _errno(exc) != _ER_UNKNOWN_PREPARED:
                raise
            self._execute(f"PREPARE {_SESSION_CHECK} FROM %s", (session.check,))  # the migration deallocated it
            state = tuple(self._execute(f"EXECUTE {_SESSION_CHECK}")[0])
        if state != session.expected or session.user_vars:
            assignments: list[str] = []
            params: list[Any] = []
            if not state[1]:
                assignments.append("timestamp = DEFAULT")
            if state[0] != session.expected[0]:
                now = self._execute("SELECT " + ", ".join(f"@@SESSION.{self._quote(n)}" for n in session.names))[0]
                for name, then, value in zip(session.names, session.values, now):
                    if value != then:
                        assignments.append(f"SESSION {self._quote(name)} = %s")
                        params.append(then)
            if session.user_query is not None and (state[2] != len(session.user_vars) or session.user_vars):
                current = {name: value for name, value, _ in self._execute(session.user_query) or ()}
                for name in current.keys() - session.user_vars.keys():
                    assignments.append(f"@{self._quote(name)} = NULL")
                for name, (then, kind) in session.user_vars.items():
                    if current.get(name) != then:
                        assignments.append(f"@{self._quote(name)} = %s")
                        params.append(_user_value(then, kind))
            if assignments:
                log.debug("%s: restoring the session: %s", self.dbid, ", ".join(assignments))
                self._execute("SET " + ", ".join(assignments), tuple(params))
        self._session_dirty = False

    # -- applying (continued) -----------------------------------------------------

    def apply(self, script: Script) -> Applied | None:
        """Run one migration under the dirty flag; None when another runner recorded it first."""
        import pymysql

        checksum, _ = script.inspect()
        up = script.load_up() if script.kind == "py" else None
        started = time.monotonic()
        # Every migration starts from the session of connect: without COM_RESET_CONNECTION,
        # which would also release the runner's GET_LOCK.
        with self._ledger_errors("cannot read or restore the session variables"):
            if self._session is None:
                self._session = self._capture_session()
            elif self._session_dirty:
                self._restore_session()  # the previous migration ended before it could
        # Claim the version first: the primary key makes a racing runner's insert fail.
        with self._ledger_errors(f"cannot record {script.version} as running in the ledger table {self.table}"):
            try:
                self._insert_row(script.set_id, script.version, checksum, None, status="running")
            except pymysql.err.IntegrityError as exc:
                if _errno(exc) == _ER_DUP_ENTRY:
                    return None
                raise
        self._session_dirty = True
        try:
            count = self._run_body(script, up, in_transaction=False)
            self._end_of_migration(script)
        except MigrationError as exc:
            self._record_failure(script, exc, started)
            raise
        duration = int((time.monotonic() - started) * 1000)
        with self._ledger_errors(f"{script.version} ran, but marking it applied failed (it stays 'running')"):
            self._execute(
                f"UPDATE {self._qualified_table()} SET status = 'applied', apply_time = %s, duration_ms = %s, "
                "statement = NULL, error = NULL WHERE set_id = %s AND version = %s",
                (int(time.time()), duration, script.set_id, script.version),
            )
        return Applied(script.version, count, duration)

    def _end_of_migration(self, script: Script) -> None:
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
        if script.kind == "py" or _MAYBE_USE.search(script.text()):
            conn.select_db(self.db.dbname)
        try:
            self._restore_session()
        except self._driver_errors() as exc:
            raise MigrationError(script.label, f"ran, but setting back the session variables it changed failed: "
                                               f"error {_errno(exc)}: {_server_text(exc)}") from None

    def _record_failure(self, script: Script, exc: MigrationError, started: float) -> None:
        # Keep the first failure: if the failed row cannot be written, the running
        # row stays (it blocks the set as "interrupted") and the original error is raised.
        try:
            self._execute("ROLLBACK")  # a transaction the script opened ends with it, as with the mariadb client
            if not self.connection.get_autocommit():
                self.connection.autocommit(True)
            try:
                self._restore_session()  # also before the ledger write: SET NAMES latin1 would garble the message
            except self._driver_errors() as other:  # the next migration's start tries again
                log.warning("%s: could not set back the session variables after %s failed: %s", self.dbid, script.label, other)
            self._execute(
                f"UPDATE {self._qualified_table()} SET status = 'failed', statement = %s, error = %s, duration_ms = %s "
                "WHERE set_id = %s AND version = %s",
                (exc.statement, redact(exc.message)[:_ERROR_MAX], int((time.monotonic() - started) * 1000),
                 script.set_id, script.version),
            )
        except Exception as other:
            log.warning("%s: could not record the failure of %s (%s); the ledger shows it as running", self.dbid, script.label, other)
