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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.errors import LockHeld, MigrationError, OrchestratorError, TargetUnreachable
from orchestrator.locktimeout import LockPolicy, pg_blocker, pg_is_lock_timeout, pg_relations, pg_settings
from orchestrator.redact import redact
from orchestrator.sqlsplit import pg_dollar_quote
from orchestrator.targets import runner_identity
from orchestrator.targets._deadline import Deadline
from orchestrator.targets._sql import SqlTarget
from orchestrator.targets._where import ErrorAt

if TYPE_CHECKING:
    from orchestrator.sets import Script
    from orchestrator.sqlsplit import Statement

__all__ = ["PostgresqlTarget"]

log = logging.getLogger("migrations")

_MISSING_TABLE = "42P01"
_MISSING_COLUMN = "42703"
_LOCK_NOT_AVAILABLE = "55P03"
_UNIQUE_VIOLATION = "23505"
_PLPGSQL_LINE = re.compile(r"PL/pgSQL function inline_code_block line (\d+)")
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
    if diag is None or not primary:
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
    """PostgreSQL's hooks of the SqlTarget template; see the module's docstring."""

    driver = "postgresql"
    dialect = "postgresql"
    placeholder = "%s"

    def __init__(self, db: Any, table: str):
        super().__init__(db, table)
        self.schema: str = db.schema_
        self._transaction_pooling = db.pooling == "transaction"
        # No session lock survives a transaction pooler: a no-transaction file claims its version with a 'running' row.
        self.dirty_flag = self._transaction_pooling
        self.ledger_label = self.table_label = f"{self.schema}.{table}"
        self._table_sql = ""
        self._search_path = ""
        self._session_ready = False
        self._cursor: Any = None
        # The runner's own queries (ledger, lock, BEGIN) get connection_timeout; a migration's statements run unbounded.
        self._bound: float | None = db.timeout
        self._deadline = Deadline()

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

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def _send(self, sql: str, params: Any) -> Any:
        cur = self._cursor
        if cur is None or cur.closed:
            # One cursor for the session: a script of 100k statements pays for one, not 100k.
            cur = self._cursor = self.connection.cursor()
        # Statements without parameters go over the simple query protocol, as psql sends them;
        # they are not counted for server-side preparation (a big script would churn that cache).
        if self._bound is None:
            cur.execute(sql, params, prepare=False if params is None else None)
            return cur.fetchall() if cur.description else None
        with self._deadline.bound(self._bound, self.connection.fileno()):
            cur.execute(sql, params, prepare=False if params is None else None)
            return cur.fetchall() if cur.description else None

    def _lost_reason(self, exc: BaseException) -> str | None:
        if self._deadline.expired:
            return _stalled(self.db.timeout)
        conn = self.connection
        if conn is not None and (conn.broken or conn.closed):
            return f"connection lost: {server_message(exc)}"
        return None

    @contextmanager
    def _bounded(self, seconds: float | None) -> Iterator[None]:
        before, self._bound = self._bound, seconds
        try:
            yield
        finally:
            self._bound = before

    def _describe(self, exc: BaseException) -> str:
        return redact(server_message(exc))

    # -- session and transactions ------------------------------------------------

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

    def _begin(self, local_settings: Sequence[str] = ()) -> None:
        if self._transaction_pooling:
            # One round trip. The server connection may come with another client's session settings;
            # a session-level SET here would leak to the others, so the search_path is SET LOCAL.
            self._execute(f"BEGIN; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; SET LOCAL search_path TO {self._search_path}")
        elif not self._session_ready:
            self._execute("; ".join([self._session_sql(), "BEGIN", *local_settings]))  # one round trip
            self._session_ready = True
        else:
            self._execute("; ".join(["BEGIN", *local_settings]))

    def _begin_attempt(self, policy: LockPolicy) -> bool:
        # The attempt's SET LOCAL timeouts go with its BEGIN: one round trip. A lock timeout retries the whole
        # transaction anyway. Behind a transaction pooler they come after the set's in-transaction lock
        # (_in_transaction_lock), which they must not bound.
        if self._transaction_pooling or not (policy.timeout or policy.statement_timeout):
            self._begin()
            return False
        self._begin(pg_settings(policy, local=True))
        return True

    def _commit(self) -> None:
        # Behind a pooler, what a migration SET for the session would stay on the server connection after COMMIT.
        self._execute("SET SESSION AUTHORIZATION DEFAULT; RESET ALL; COMMIT" if self._transaction_pooling else "COMMIT")

    @contextmanager
    def _around_migration(self, script: Script, in_transaction: bool) -> Iterator[None]:
        if not in_transaction:
            # Statements that ran outside a transaction stay: refuse a psql meta-command before the first one runs.
            # In a transaction, meeting one rolls back the whole migration instead.
            if script.kind == "sql":
                for statement in script.statements(self.dialect):
                    if statement.text.startswith("\\"):
                        raise _meta_command_error(script, statement)
            if self._transaction_pooling and self.schema != "public":
                log.warning("%s: %s runs outside a transaction through a transaction pooler: the search_path is the "
                            "server's default, qualify names with %s.", self.dbid, script.label, self.schema)
            elif not self._session_ready and not self._transaction_pooling:
                # In a transaction, BEGIN resets the session in the same round trip.
                with self._recording_errors(script, "resetting the session failed, nothing was applied"):
                    self._execute(self._session_sql())
                self._session_ready = True
        try:
            yield
        finally:
            self._session_ready = False  # whatever the migration did to its session, the next one starts afresh

    # -- ledger ----------------------------------------------------------------

    def _qualified_table(self) -> str:
        return self._table_sql

    def _is_missing_table(self, exc: BaseException) -> bool:
        # A missing schema also reports 42P01 for a qualified name.
        return getattr(exc, "sqlstate", None) == _MISSING_TABLE

    def _is_missing_column(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _MISSING_COLUMN

    def _is_duplicate(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION

    def _ledger_error(self, what: str, exc: BaseException) -> OrchestratorError:
        if getattr(exc, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            return LockHeld(self.dbid, "*", "another runner changing the ledger table")
        return super()._ledger_error(what, exc)

    def _ledger_columns(self) -> set[str]:
        rows = self._execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (self._table_sql,),
        )
        return {r[0] for r in rows or []}

    @contextmanager
    def _ledger_exclusive(self) -> Iterator[None]:
        # Another set's runner may be creating the same table right now: take turns, bounded by the lock wait.
        wait = max(self._waits.values(), default=defaults.LOCK_WAIT)
        with self._transaction(), self._bounded(self.db.timeout + wait):  # the server waits up to lock_timeout on purpose
            self._execute(f"SET LOCAL lock_timeout = {max(int(wait * 1000), 1)}")
            self._execute("SELECT pg_advisory_xact_lock(%s)", (self._key("\x00ledger"),))
            if not self._execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)):
                from psycopg import sql

                self._execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)).as_string(self.connection))
            yield

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

    # -- locking -----------------------------------------------------------------

    def _key(self, set_id: str) -> int:
        """Stable signed 64-bit advisory lock key for (schema, ledger table, set); same in every process and host."""
        digest = hashlib.sha256(f"orchestrator\x00{self.schema}\x00{self.table}\x00{set_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

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

    def _holder(self, set_id: str) -> str | None:
        """``<application_name> (backend pid N, from ADDR) since HH:MM:SSZ`` of the session holding the lock; None when free."""
        key = self._key(set_id)
        since = "a.xact_start" if self._transaction_pooling else "a.backend_start"
        rows = self._execute(
            "SELECT a.application_name, host(a.client_addr), l.pid, "
            f"to_char({since} AT TIME ZONE 'UTC', 'HH24:MI:SS\"Z\"') "
            "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid LIMIT 1",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        )
        if not rows:
            return None
        app, addr, pid, since_text = rows[0]
        where = f"backend pid {pid}" + (f", from {addr}" if addr else "")
        text = f"{app} ({where})" if app else where
        return text + (f" since {since_text}" if since_text else "")

    # -- running statements ----------------------------------------------------------

    def _run_statement(self, script: Script, statement: Statement) -> None:
        if statement.data is not None:
            self._copy_in(statement)
        elif statement.text.startswith("\\"):
            raise _meta_command_error(script, statement)
        else:
            self._execute(statement.text)

    def _copy_in(self, statement: Statement) -> None:
        """COPY ... FROM STDIN with the rows that follow it in the file, as psql sends them.

        The rows go to the server unparsed, in chunks; the server reads the format
        the statement names (text: tabs, ``\\N``, backslash escapes; or csv).
        """
        data = statement.data or ""
        with self.connection.cursor() as cur, cur.copy(statement.text) as copy:
            for start in range(0, len(data), _COPY_CHUNK):
                copy.write(data[start:start + _COPY_CHUNK])

    def _after_statement(self, script: Script, statement: Statement | None, in_transaction: bool) -> None:
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

    # -- lock timeouts (orchestrator.locktimeout) ------------------------------------------

    def _is_lock_timeout(self, exc: BaseException) -> bool:
        return pg_is_lock_timeout(exc)

    def _set_lock_timeouts(self, policy: LockPolicy, in_transaction: bool) -> None:
        if not in_transaction and self._transaction_pooling:
            return  # a session SET would stay on the pooled server connection for other clients
        self._execute("; ".join(pg_settings(policy, local=in_transaction)))

    def _lock_wait_holder(self, exc: BaseException, statement: Statement | None) -> str:
        relations = pg_relations(statement.text) if statement is not None else []
        return pg_blocker(self._execute, relations)

    def _error_at(self, exc: BaseException, statement: Statement) -> ErrorAt:
        """The server's message and where it points: a COPY row, the error position, or a DO block's line."""
        message = self._describe(exc)
        diag = getattr(exc, "diag", None)
        if diag is None:
            return ErrorAt(message, statement)
        context = diag.context or ""
        copy_row = _COPY_LINE.search(context) if statement.data is not None else None
        if copy_row:  # the server counts the rows from 1
            return ErrorAt(message, statement, anchor=statement.data_line, line=int(copy_row.group(1)))
        position = diag.statement_position
        if position and str(position).isdigit():
            return ErrorAt(message, statement, offset=int(position) - 1)
        plpgsql = _PLPGSQL_LINE.search(context)
        body = pg_dollar_quote().search(statement.text) if plpgsql and re.match(r"DO\b", statement.text, re.I) else None
        if plpgsql and body:  # PL/pgSQL counts lines from the one holding the opening dollar quote
            return ErrorAt(message, statement, offset=body.start(), line=int(plpgsql.group(1)))
        return ErrorAt(message, statement)
