"""PostgreSQL target (psycopg 3): one autocommit connection, explicit transactions.

Each migration and its ledger row commit together in one explicit transaction;
``-- orchestrator: no-transaction`` files run statement by statement on the bare
connection and are recorded after they succeed. The ledger lives in the
configured ``schema`` (created on first write), which is also first on the
``search_path`` so unqualified objects land there. One runner per (target, set):
a session ``pg_try_advisory_lock`` polled until the wait runs out, keyed by a
stable hash of (schema, ledger table, set). Behind PgBouncer in transaction
pooling (``pooling: "transaction"``) session state is unsafe, so the lock is a
``pg_try_advisory_xact_lock`` taken inside each migration's transaction and the
search_path is ``SET LOCAL`` per transaction. Each migration starts from the
same session state (see ``_session_sql``). Scripts run as ``psql -f`` runs them:
pg_dump's ``\\restrict`` lines are skipped, ``COPY ... FROM STDIN`` gets the rows
that follow it, other psql meta-commands are refused. Reading the ledger (status,
plan) never writes: no DDL, no lock, no session change.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.errors import LockHeld, MigrationError, OrchestratorError, TargetUnreachable
from orchestrator.redact import redact
from orchestrator.sqlsplit import line_of
from orchestrator.targets import Applied, LedgerRow, runner_identity
from orchestrator.targets._deadline import Deadline
from orchestrator.targets._sql import LEDGER_LEVEL, SqlTarget

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from orchestrator.sets import Script

__all__ = ["PostgresqlTarget"]

log = logging.getLogger("migrations")

_MISSING_TABLE = "42P01"
_MISSING_COLUMN = "42703"
_LOCK_NOT_AVAILABLE = "55P03"
_PLPGSQL_LINE = re.compile(r"PL/pgSQL function inline_code_block line (\d+)")
_DO_BODY = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][0-9A-Za-z_\x80-\U0010ffff]*)?\$")
_SERVER_PREFIX = re.compile(r'^(?:connection failed:\s*)?(?:connection to server (?:at|on) "[^"]*"(?: \([^)]*\))?,? (?:port \d+ )?failed:\s*)?')
_SEVERITY = re.compile(r"^(?:FATAL|ERROR|PANIC):\s+")
_DETAIL_MAX = 160
_COPY_LINE = re.compile(r"^COPY [^,\n]*, line (\d+)")
_COPY_CHUNK = 1 << 20  # characters of COPY rows per write: the rows are sent without a second whole copy
_META_NAME = re.compile(r"\\([^\s\\]*)")
# What to do instead, for the psql meta-commands migration files tend to hold.
_META_HINTS = {
    "c": "each target connects to the database its config names; give each database its own target",
    "connect": "each target connects to the database its config names; give each database its own target",
    "copy": "write COPY ... FROM STDIN with the rows after it, as pg_dump does",
    "i": "put the included file's statements in this file or in a migration of its own",
    "include": "put the included file's statements in this file or in a migration of its own",
    "ir": "put the included file's statements in this file or in a migration of its own",
    "include_relative": "put the included file's statements in this file or in a migration of its own",
    "set": "psql variables are not expanded here; write the values into the SQL",
    "gexec": "run the generated statements with EXECUTE in a DO block",
}


def _dead_link_params(keepalive: int, tcp_user_timeout: int) -> dict[str, Any]:
    """libpq settings that drop a dead link after about ``keepalive`` s idle, ``tcp_user_timeout`` s unacknowledged."""
    params: dict[str, Any] = {"keepalives": 1 if keepalive else 0}
    if keepalive:
        idle = max(1, keepalive // 2)
        params.update(keepalives_idle=idle, keepalives_interval=max(1, (keepalive - idle) // 3), keepalives_count=3)
    if tcp_user_timeout:
        params["tcp_user_timeout"] = tcp_user_timeout * 1000  # libpq takes milliseconds
    return params


def _stalled(timeout: int) -> str:
    return (f"no answer within {timeout} s (connection_timeout) to the runner's own query; "
            "the server or the link to it stalled")


def _one_line(text: str | None, limit: int | None = None) -> str:
    text = " ".join((text or "").split())
    if limit and len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def server_message(exc: BaseException) -> str:
    """The server's primary message plus a short detail and hint, on one line."""
    diag = getattr(exc, "diag", None)
    primary = _one_line(getattr(diag, "message_primary", None)) if diag is not None else ""
    if not primary:
        lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
        return _one_line(lines[0] if lines else type(exc).__name__)
    for label, value in (("detail", diag.message_detail), ("hint", diag.message_hint)):
        if value:
            primary += f" ({label}: {_one_line(value, _DETAIL_MAX)})"
    return primary


def _meta_command_error(script: Script, statement: Any) -> MigrationError:
    """One line naming a psql meta-command, its file and line; its arguments are never echoed (they may hold a password)."""
    m = _META_NAME.match(statement.text)
    name = m.group(1) if m else ""
    hint = _META_HINTS.get(name, "remove it, or write what it does in SQL")
    return MigrationError(script.label, f"psql meta-command \\{name} cannot run here: migrations are sent to the "
                          f"server as SQL, not run by psql ({hint}); nothing of this migration was applied",
                          statement.number, statement.line)


class PostgresqlTarget(SqlTarget):
    driver = "postgresql"
    dialect = "postgresql"
    placeholder = "%s"

    def __init__(self, db: Any, table: str):
        super().__init__(db, table)
        self.schema: str = db.schema_
        self._transaction_pooling = db.pooling == "transaction"
        self._table_sql = ""
        self._search_path = ""
        self._session_ready = False
        self._waits: dict[str, float] = {}
        self._cursor: Any = None
        # The runner's own queries (ledger, lock, BEGIN) get connection_timeout; a migration's statements run unbounded.
        self._bound: float | None = db.timeout
        self._deadline = Deadline()
        self._migration_commit = False

    # -- connection ------------------------------------------------------------

    def connect(self, readonly: bool = False) -> None:
        import psycopg
        from psycopg import sql

        params: dict[str, Any] = {
            "host": self.db.ip, "port": self.db.port, "dbname": self.db.dbname, "user": self.db.user or None,
            "password": self.db.password.get_secret_value() or None, "connect_timeout": self.db.timeout,
            # Lock holders show up in pg_stat_activity under this name (63 bytes at most).
            "application_name": f"orchestrator {runner_identity()}"[:63], "autocommit": True,
        }
        if self.db.sslmode:
            params["sslmode"] = self.db.sslmode
        params.update(_dead_link_params(self.db.keepalive, self.db.tcp_user_timeout))
        if self._transaction_pooling:
            params["prepare_threshold"] = None  # server-side prepared statements do not survive a transaction pooler
        try:
            self.connection = psycopg.connect(**params)
        except psycopg.Error as exc:
            self.connection = None
            raise TargetUnreachable(self.dbid, self._connect_cause(exc)) from None
        self._cursor = None
        self._deadline = Deadline()  # a new session has no expired call
        self.connection.add_notice_handler(self._on_notice)
        self._table_sql = sql.Identifier(self.schema, self.table).as_string(self.connection)
        schemas = [self.schema] if self.schema == "public" else [self.schema, "public"]
        self._search_path = sql.SQL(", ").join(map(sql.Identifier, schemas)).as_string(self.connection)
        self._session_ready = False

    def _connect_cause(self, exc: BaseException) -> str:
        lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
        reason = _SEVERITY.sub("", _SERVER_PREFIX.sub("", lines[0] if lines else type(exc).__name__))
        low = reason.lower()
        if "connection refused" in low:
            reason = "connection refused; is the server running there and accepting TCP/IP connections?"
        elif "timeout expired" in low:
            reason = f"no answer within {self.db.timeout} s; check ip, port and firewalls"
        elif "authentication failed" in low or "password is required" in low or "no password supplied" in low:
            reason += "; check user and password in the config"
        elif re.search(r'database ".*" does not exist', reason):
            reason += "; create it or fix dbname in the config"
        elif re.search(r'role ".*" does not exist', reason):
            reason += "; fix user in the config"
        return redact(f"{self.db.ip}:{self.db.port}/{self.db.dbname}: {_one_line(reason)}")

    def _on_notice(self, diag: Any) -> None:
        log.debug("%s: %s: %s", self.dbid, diag.severity, diag.message_primary)

    def _session_sql(self) -> str:
        """Statements that give the session the state every migration starts from.

        A migration may change its session (pg_dump's ``set_config('search_path', '',
        false)``, ``SET ROLE``, ``SET check_function_bodies``, temporary tables); psql
        would start the next file in a new session. The runner keeps one session for
        the run, and its advisory locks, so it undoes those instead: settings back to
        their values at connect, then the connection's own settings again.
        """
        return (f"SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DISCARD TEMP; "
                f"SET search_path TO {self._search_path}")

    def _ensure_session(self) -> None:
        """Give the session the state a migration starts from, unless it has it already."""
        if self._session_ready or self._transaction_pooling:
            return  # with a transaction pooler it is reset in each transaction instead
        self._execute(self._session_sql())
        self._session_ready = True

    def _begin(self) -> None:
        if self._transaction_pooling:
            # One round trip. The server connection may come with another client's session settings;
            # a session-level SET here would leak to the others, so the search_path is SET LOCAL.
            self._execute(f"BEGIN; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; SET LOCAL search_path TO {self._search_path}")
        elif not self._session_ready:
            self._execute(self._session_sql() + "; BEGIN")  # one round trip
            self._session_ready = True
        else:
            self._execute("BEGIN")

    def _execute(self, sql: str, params: Any = None) -> Any:
        import psycopg

        cur = self._cursor
        if cur is None or cur.closed:
            # One cursor for the session: a script of 100k statements pays for one, not 100k.
            cur = self._cursor = self.connection.cursor()
        try:
            # Statements without parameters go over the simple query protocol, as psql sends them;
            # they are not counted for server-side preparation (a big script would churn that cache).
            if self._bound is None:
                cur.execute(sql, params, prepare=False if params is None else None)
                return cur.fetchall() if cur.description else None
            with self._deadline.bound(self._bound, self.connection.fileno()):
                cur.execute(sql, params, prepare=False if params is None else None)
                return cur.fetchall() if cur.description else None
        except psycopg.OperationalError as exc:
            if self._deadline.expired:
                raise TargetUnreachable(self.dbid, _stalled(self.db.timeout)) from None
            if self.connection is not None and (self.connection.broken or self.connection.closed):
                raise TargetUnreachable(self.dbid, f"connection lost: {redact(server_message(exc))}") from None
            raise

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    @contextmanager
    def _bounded(self, seconds: float | None) -> Iterator[None]:
        """Another client-side bound than connection_timeout for the block's queries (None: unbounded)."""
        self._bound = seconds
        try:
            yield
        finally:
            self._bound = self.db.timeout

    def _run_body(self, script: Script, up: Any, in_transaction: bool) -> int:
        # A migration may legitimately run for hours: only a dead link (keepalives, tcp_user_timeout) ends it.
        with self._bounded(None):
            return super()._run_body(script, up, in_transaction)

    def _record_and_commit(self, script: Script, checksum: str, started: float) -> int:
        # The ledger row is the runner's own write; the COMMIT also runs the migration's deferred work
        # (deferred constraints and triggers), so it is not cut either.
        self._migration_commit = True
        try:
            return super()._record_and_commit(script, checksum, started)
        finally:
            self._migration_commit = False

    def _commit(self) -> None:
        if self._transaction_pooling:
            # What a migration SET for the session would stay on the pooled server connection after COMMIT.
            self._execute("SET SESSION AUTHORIZATION DEFAULT; RESET ALL")
        if not self._migration_commit:
            return super()._commit()
        with self._bounded(None):
            super()._commit()

    def _rollback(self) -> None:
        if self.connection is not None and (self.connection.broken or self.connection.closed):
            return  # nothing to roll back here: the server rolls back when the session ends
        super()._rollback()

    def _fail(self, what: str, exc: BaseException) -> OrchestratorError:
        """A driver error outside a migration's own statements, as one line naming the target and the ledger."""
        if getattr(exc, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            return LockHeld(self.dbid, "*", "another runner changing the ledger table")
        return OrchestratorError(f"{self.dbid}: {what} {self.schema}.{self.table}: {redact(server_message(exc))}")

    # -- ledger ----------------------------------------------------------------

    def _qualified_table(self) -> str:
        return self._table_sql

    def _is_missing_table(self, exc: BaseException) -> bool:
        # A missing schema also reports 42P01 for a qualified name.
        return getattr(exc, "sqlstate", None) == _MISSING_TABLE

    def _is_missing_column(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _MISSING_COLUMN

    def applied(self, set_id: str) -> dict[str, LedgerRow]:
        # Autocommit: a failed read (no ledger yet) leaves no aborted transaction behind.
        try:
            return super().applied(set_id)
        except self._driver_errors() as exc:
            if self._is_missing_column(exc):
                self._level(self._ledger_columns())  # says so when the table is not a ledger at all
            raise self._fail("cannot read the ledger", exc) from None

    def _ledger_columns(self) -> set[str]:
        rows = self._execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (self._table_sql,),
        )
        return {r[0] for r in rows or []}

    def ensure_ledger(self) -> None:
        self._ensure_session()
        try:
            # Check the catalog first: a ledger already at the current level needs no lock and no privilege.
            if self._level(self._ledger_columns()) == LEDGER_LEVEL:
                return
            self._begin()
            try:
                # Another set's runner may be creating the same table right now: take turns, bounded.
                wait = max(self._waits.values(), default=defaults.LOCK_WAIT)
                self._execute(f"SET LOCAL lock_timeout = {max(int(wait * 1000), 1)}")
                with self._bounded(self.db.timeout + wait):  # the server waits up to lock_timeout on purpose
                    self._execute("SELECT pg_advisory_xact_lock(%s)", (self._key("\x00ledger"),))
                if not self._execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)):
                    from psycopg import sql

                    self._execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)).as_string(self.connection))
                level = self._level(self._ledger_columns())
                if level < LEDGER_LEVEL:
                    log.info("%s: %s ledger table %s.%s (level %d -> %d)", self.dbid, "creating" if level == 0 else "upgrading",
                             self.schema, self.table, level, LEDGER_LEVEL)
                    with self._bounded(self.db.timeout + wait):  # each may wait up to lock_timeout for the table
                        for statement in self._create_ledger_sql() if level == 0 else self._upgrade_1_to_2_sql():
                            self._execute(statement)
                self._commit()
            except BaseException:
                self._safe_rollback()
                raise
        except self._driver_errors() as exc:
            raise self._fail("cannot create or upgrade the ledger", exc) from None

    def _level(self, columns: set[str]) -> int:
        if not columns:
            return 0
        if "version" not in columns:
            raise OrchestratorError(
                f"{self.dbid}: table {self.schema}.{self.table} exists but is not a migration ledger (no version column); "
                "set migrations.table to another name"
            )
        return 2 if "set_id" in columns else 1

    def _upgrade_1_to_2_sql(self) -> list[str]:
        """Level 1 (the C tool's ``version`` key, ``apply_time``) to 2: add columns, re-key on (set_id, version).

        Existing rows keep their values and become ``set_id = ''`` rows that count
        for every set; the C tool can keep inserting (version, apply_time) rows.
        """
        t = self._table_sql
        steps = [
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS set_id VARCHAR(100) NOT NULL DEFAULT '', "
            "ADD COLUMN IF NOT EXISTS checksum CHAR(64), ADD COLUMN IF NOT EXISTS duration_ms BIGINT, "
            "ADD COLUMN IF NOT EXISTS status VARCHAR(16) NOT NULL DEFAULT 'applied', ADD COLUMN IF NOT EXISTS statement INTEGER, "
            "ADD COLUMN IF NOT EXISTS error TEXT, ADD COLUMN IF NOT EXISTS applied_by VARCHAR(255), "
            "ALTER COLUMN apply_time TYPE BIGINT"
        ]
        # The C tool let the server name its key; find that name rather than guess "migration_pkey".
        for (name,) in self._execute("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'",
                                     (self._table_sql,)) or []:
            steps.append(f"ALTER TABLE {t} DROP CONSTRAINT {self._quote(name)}")
        steps.append(f"ALTER TABLE {t} ADD PRIMARY KEY (set_id, version)")
        return steps

    def record(self, set_id: str, version: str, checksum: str | None) -> None:
        self._ensure_session()
        try:
            super().record(set_id, version, checksum)
        except self._driver_errors() as exc:
            raise self._fail("cannot write the ledger", exc) from None

    def forget(self, set_id: str, version: str) -> None:
        try:
            super().forget(set_id, version)
        except self._driver_errors() as exc:
            raise self._fail("cannot write the ledger", exc) from None

    # -- locking -----------------------------------------------------------------

    def _key(self, set_id: str) -> int:
        """Stable signed 64-bit advisory lock key for (schema, ledger table, set); same in every process and host."""
        digest = hashlib.sha256(f"orchestrator\x00{self.schema}\x00{self.table}\x00{set_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def lock(self, set_id: str, wait: float = defaults.LOCK_WAIT) -> AbstractContextManager[None]:
        self._waits[set_id] = wait  # transaction pooling polls per migration with the same budget
        return super().lock(set_id, wait)

    def _try_lock(self, set_id: str) -> bool:
        if self._transaction_pooling:
            return True  # a session lock would stay on a pooled server connection; see _in_transaction_lock
        # Never pg_advisory_lock: a blocked call cannot be bounded or reported.
        return bool(self._execute("SELECT pg_try_advisory_lock(%s)", (self._key(set_id),))[0][0])

    def _unlock(self, set_id: str) -> None:
        if not self._transaction_pooling:
            self._execute("SELECT pg_advisory_unlock(%s)", (self._key(set_id),))

    def _in_transaction_lock(self, set_id: str) -> None:
        if not self._transaction_pooling:
            return
        key = self._key(set_id)
        deadline = time.monotonic() + self._waits.get(set_id, defaults.LOCK_WAIT)
        # Released by COMMIT/ROLLBACK; the caller re-checks the ledger in this same transaction.
        while not self._execute("SELECT pg_try_advisory_xact_lock(%s)", (key,))[0][0]:
            if time.monotonic() >= deadline:
                raise LockHeld(self.dbid, set_id, self._lock_holder(set_id))
            time.sleep(defaults.LOCK_POLL)

    def _lock_holder(self, set_id: str) -> str:
        try:
            return self.holder(set_id) or ""
        except OrchestratorError:
            return ""

    def holder(self, set_id: str) -> str | None:
        """``<application_name> (backend pid N, from ADDR) since HH:MM:SSZ`` of the session holding the lock; None when free."""
        key = self._key(set_id)
        since = "a.xact_start" if self._transaction_pooling else "a.backend_start"
        try:
            rows = self._execute(
                "SELECT a.application_name, host(a.client_addr), l.pid, "
                f"to_char({since} AT TIME ZONE 'UTC', 'HH24:MI:SS\"Z\"') "
                "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid LIMIT 1",
                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
            )
        except self._driver_errors() as exc:
            raise self._fail("cannot read locks for", exc) from None
        if not rows:
            return None
        app, addr, pid, since_text = rows[0]
        where = f"backend pid {pid}" + (f", from {addr}" if addr else "")
        text = f"{app} ({where})" if app else where
        return text + (f" since {since_text}" if since_text else "")

    # -- applying ----------------------------------------------------------------

    def apply(self, script: Script) -> Applied | None:
        if script.kind == "sql" and script.no_transaction:
            # Statements that ran outside a transaction stay: refuse a psql meta-command before the first one runs.
            # In a transaction, meeting one rolls back the whole migration instead.
            for statement in script.statements(self.dialect):
                if statement.text.startswith("\\"):
                    raise _meta_command_error(script, statement)
            self._ensure_session()  # in a transaction, BEGIN resets the session in the same round trip
        try:
            return super().apply(script)
        except self._driver_errors() as exc:
            # The migration's own statements report through _error_message; this is the ledger's bookkeeping.
            raise MigrationError(script.label, f"recording in {self.schema}.{self.table} failed: {redact(server_message(exc))}") from None
        finally:
            self._session_ready = False  # whatever the migration did to its session, the next one starts afresh

    def _run_statement(self, script: Script, statement: Any) -> None:
        if statement.data is not None:
            self._copy_in(statement)
        elif statement.text.startswith("\\"):
            raise _meta_command_error(script, statement)
        else:
            self._execute(statement.text)

    def _copy_in(self, statement: Any) -> None:
        """COPY ... FROM STDIN with the rows that follow it in the file, as psql sends them.

        The rows go to the server unparsed, in chunks; the server reads the format
        the statement names (text: tabs, ``\\N``, backslash escapes; or csv).
        """
        import psycopg

        data = statement.data
        try:
            with self.connection.cursor() as cur, cur.copy(statement.text) as copy:
                for start in range(0, len(data), _COPY_CHUNK):
                    copy.write(data[start:start + _COPY_CHUNK])
        except psycopg.OperationalError as exc:
            if self.connection.broken or self.connection.closed:
                raise TargetUnreachable(self.dbid, f"connection lost: {redact(server_message(exc))}") from None
            raise

    def _apply_outside_transaction(self, script: Script, checksum: str, up: Any, started: float) -> Applied | None:
        if not self._transaction_pooling:
            return super()._apply_outside_transaction(script, checksum, up, started)
        # No session lock survives a transaction pooler, so claim the version with a
        # 'running' row under the transaction lock; a crash leaves it for 'resolve'.
        if self.schema != "public":
            log.warning("%s: %s runs outside a transaction through a transaction pooler: the search_path is the "
                        "server's default, qualify names with %s.", self.dbid, script.label, self.schema)
        self._begin()
        try:
            self._in_transaction_lock(script.set_id)
            if self._is_recorded(script.set_id, script.version):
                self._safe_rollback()
                return None
            self._insert_row(script.set_id, script.version, checksum, None, status="running")
            self._commit()
        except BaseException:
            self._safe_rollback()
            raise
        mark = (f"UPDATE {self._table_sql} SET status = %s, duration_ms = %s, apply_time = %s, statement = %s, error = %s "
                "WHERE set_id = %s AND version = %s")
        try:
            count = self._run_body(script, up, in_transaction=False)
        except MigrationError as exc:
            self._execute(mark, ("failed", None, int(time.time()), exc.statement, exc.message, script.set_id, script.version))
            raise
        duration = int((time.monotonic() - started) * 1000)
        self._execute(mark, ("applied", duration, int(time.time()), None, None, script.set_id, script.version))
        return Applied(script.version, count, duration)

    def _after_statement(self, script: Script, statement: Any, in_transaction: bool) -> None:
        from psycopg.pq import TransactionStatus

        # A ROLLBACK, COMMIT PREPARED or up()'s own commit() would let the rest run unguarded and split the ledger row off.
        if in_transaction and self.connection.info.transaction_status == TransactionStatus.IDLE:
            what = "this statement ended" if statement is not None else "up() ended"
            raise MigrationError(
                script.label,
                f"{what} the migration's transaction; remove the COMMIT/ROLLBACK, or make the file's first line "
                "'-- orchestrator: no-transaction'",
                statement.number if statement is not None else None, statement.line if statement is not None else None,
            )

    def _error_message(self, exc: BaseException, statement: Any) -> tuple[str, int | None]:
        """The server's message and the file line it points at (error position, or the DO block's line)."""
        diag = getattr(exc, "diag", None)
        line = statement.line if statement else None
        if diag is not None and statement is not None:
            position = diag.statement_position
            context = _PLPGSQL_LINE.search(diag.context or "")
            copy_row = _COPY_LINE.search(diag.context or "") if statement.data is not None else None
            if copy_row:
                line = statement.data_line + int(copy_row.group(1)) - 1  # the server counts the rows from 1
            elif position and str(position).isdigit():
                line = line_of(statement, int(position) - 1)
            elif context and re.match(r"DO\b", statement.text, re.I):
                # PL/pgSQL counts lines from the one holding the opening dollar quote.
                body = _DO_BODY.search(statement.text)
                if body:
                    line = line_of(statement, body.start()) + int(context.group(1)) - 1
        return redact(server_message(exc)), line

