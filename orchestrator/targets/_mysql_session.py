"""MySQL session state between migrations: every migration starts from the session of connect.

A migration may change session variables (FOREIGN_KEY_CHECKS, sql_mode, NAMES,
time_zone, SET timestamp) and user variables; the mariadb client would start the
next file in a new session. The runner keeps one session for the run (closing it,
or COM_RESET_CONNECTION, would release its GET_LOCK), so it sets back what
changed instead, checked by one prepared digest query per migration. Where the
server flags the statements that change a session (``session_track_state_change``,
:class:`SessionWatch`), a migration none of whose statements was flagged skips that
query. The runner's own settings (lock timeouts) are pinned into that session: sent
once per connection, and set back like the others when a migration changes them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.sets import Script

__all__ = ["SESSION_TRACK", "Session", "SessionWatch", "capture_session"]

log = logging.getLogger("migrations")

Execute = Callable[..., Any]

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
SESSION_TRACK = 1 << 23
"""The client capability (CLIENT_SESSION_TRACK) under which the server flags a statement that changed the session."""
_SESSION_STATE_CHANGED = 0x4000  # in the status of the statement's OK packet
# Statements that could turn the flagging off, directly or inside a procedure: such a file is always checked.
_MAY_STOP_TRACKING = re.compile(r"session_track|(?<![0-9A-Za-z_$])call(?![0-9A-Za-z_$])", re.IGNORECASE)
_SESSION_CHECK = "orchestrator_session_check"  # a prepared statement: parsing ~200 @@names costs 1 ms, running it 0.2
_ER_UNKNOWN_PREPARED = 1243


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


@dataclass
class Session:
    """The session as it was at connect, and a one-row query that tells whether it still is."""

    names: tuple[str, ...]
    values: tuple[Any, ...]
    check: str  # the PREPARE text
    expected: tuple[Any, ...]
    user_query: str | None
    user_vars: dict[str, tuple[Any, str | None]]
    initial: dict[str, Any] = field(default_factory=dict)  # values at connect of the variables pinned since

    def _state(self, execute: Execute, errors: tuple[type[BaseException], ...]) -> tuple[Any, ...]:
        try:
            return tuple(execute(f"EXECUTE {_SESSION_CHECK}")[0])
        except errors as exc:
            if _errno(exc) != _ER_UNKNOWN_PREPARED:
                raise
            execute(f"PREPARE {_SESSION_CHECK} FROM %s", (self.check,))  # the migration deallocated it
            return tuple(execute(f"EXECUTE {_SESSION_CHECK}")[0])

    def pin(self, execute: Execute, errors: tuple[type[BaseException], ...], settings: dict[str, str | None]) -> None:
        """Make the runner's own settings (``name: SQL value``; None = the value at connect) part of that session.

        From then on a migration starts with them, and one that changes them gets them
        set back: so they are sent once per connection, not before every migration.
        """
        connect = dict(zip(self.names, self.values, strict=True))
        assignments, params = [], []
        for name, value in settings.items():
            if value is not None:
                assignments.append(f"SESSION {_quote(name)} = {value}")
            elif name in connect:
                assignments.append(f"SESSION {_quote(name)} = %s")
                params.append(self.initial.get(name, connect[name]))
        if not assignments:
            return
        execute("SET " + ", ".join(assignments), tuple(params))
        pinned = [name for name in settings if name in connect]
        if pinned:
            now = execute("SELECT " + ", ".join(f"@@SESSION.{_quote(n)}" for n in pinned))[0]
            for name, value in zip(pinned, now, strict=True):
                self.initial.setdefault(name, connect[name])
                connect[name] = value
            self.values = tuple(connect[n] for n in self.names)
        self.expected = (self._state(execute, errors)[0], *self.expected[1:])

    def restore(self, execute: Execute, errors: tuple[type[BaseException], ...], dbid: str) -> None:
        """Set back whatever session variable or user variable the last migration changed (one query when none)."""
        state = self._state(execute, errors)
        if state == self.expected and not self.user_vars:
            return
        assignments: list[str] = []
        params: list[Any] = []
        if not state[1]:
            assignments.append("timestamp = DEFAULT")
        if state[0] != self.expected[0]:
            now = execute("SELECT " + ", ".join(f"@@SESSION.{_quote(n)}" for n in self.names))[0]
            for name, then, value in zip(self.names, self.values, now, strict=True):
                if value != then:
                    assignments.append(f"SESSION {_quote(name)} = %s")
                    params.append(then)
        if self.user_query is not None and (state[2] != len(self.user_vars) or self.user_vars):
            current = {name: value for name, value, _ in execute(self.user_query) or ()}
            for name in current.keys() - self.user_vars.keys():
                assignments.append(f"@{_quote(name)} = NULL")
            for name, (then, kind) in self.user_vars.items():
                if current.get(name) != then:
                    assignments.append(f"@{_quote(name)} = %s")
                    params.append(_user_value(then, kind))
        if assignments:
            log.debug("%s: restoring the session: %s", dbid, ", ".join(assignments))
            execute("SET " + ", ".join(assignments), tuple(params))


class SessionWatch:
    """Whether a migration's statements changed the session, as the server flags them.

    ``start`` asks the server, once per connection, to flag each statement that
    changes the session state (system and user variables, the default schema,
    temporary tables, prepared statements); a server that does not flag the
    request itself is not trusted, and every migration is checked. Statements that
    return rows are counted as changes (their end-of-rows status is not read), and
    so are files that could turn the flagging off (``session_track``, ``CALL``) and
    Python migrations, which may use the connection directly.
    """

    def __init__(self) -> None:
        self.tracked = False
        self._watching = False
        self._changed = False

    def start(self, connection: Any, errors: tuple[type[BaseException], ...]) -> None:
        try:
            connection.query("SET SESSION session_track_state_change = ON")
        except errors:
            self.tracked = False  # an old server: the digest query decides, every time
            return
        self.tracked = bool(connection.server_status & _SESSION_STATE_CHANGED)

    def begin(self) -> None:
        self._watching, self._changed = True, False

    def end(self) -> None:
        self._watching = False

    def see(self, connection: Any, has_rows: bool) -> None:
        """After each statement's result (each one of a multi-statement chunk)."""
        if self._watching and (has_rows or connection.server_status & _SESSION_STATE_CHANGED):
            self._changed = True

    def unchanged(self, script: Script) -> bool:
        """True when the server says the migration left the session as it found it."""
        return (self.tracked and not self._changed and script.kind == "sql"
                and not script.derived("mysql:may-stop-tracking", lambda: bool(_MAY_STOP_TRACKING.search(script.text()))))


def _user_value(value: Any, kind: str | None) -> Any:
    # information_schema gives the text; the type comes back for numbers.
    if value is not None and kind in ("INT", "DECIMAL", "DOUBLE"):
        return {"INT": int, "DECIMAL": Decimal, "DOUBLE": float}[kind](value)
    return value


def capture_session(execute: Execute, errors: tuple[type[BaseException], ...], dbid: str) -> Session:
    """The session's variables now: before the first migration they are still those of connect."""
    try:
        rows = execute(
            "SELECT LOWER(VARIABLE_NAME) FROM information_schema.SYSTEM_VARIABLES "
            "WHERE VARIABLE_SCOPE IN ('SESSION', 'SESSION ONLY') AND READ_ONLY = 'NO'"
        )
        names = {row[0] for row in rows or ()}
    except errors:  # MySQL has no such table: the variables scripts commonly set
        names = set(_SESSION_COMMON) & {row[0].lower() for row in execute("SHOW SESSION VARIABLES") or ()}
    # Character sets before collations (setting one resets the other).
    ordered = tuple(sorted(names - _SESSION_SKIP, key=lambda n: (
        not n.startswith("character_set_"), not n.startswith("collation_"), n)))
    values = tuple(execute("SELECT " + ", ".join(f"@@SESSION.{_quote(n)}" for n in ordered))[0])
    user_query, user_vars = None, {}
    for candidate in _USER_VARIABLES:
        try:
            user_vars = {name: (value, kind) for name, value, kind in execute(candidate) or ()}
        except errors:
            continue
        user_query = candidate
        break
    else:
        log.debug("%s: user variables cannot be listed on this server; they are not reset between migrations", dbid)
    # One row: a digest of every variable, whether SET timestamp froze the clock, how many user variables hold a value.
    quoted = ", ".join(f"QUOTE(@@SESSION.{_quote(n)})" for n in ordered)
    check = f"SELECT MD5(CONCAT_WS(',', {quoted})), NOW() = SYSDATE()"
    if user_query:
        check += f", (SELECT COUNT(*) FROM ({user_query}) AS u)"
    execute(f"PREPARE {_SESSION_CHECK} FROM %s", (check,))
    digest = execute(f"EXECUTE {_SESSION_CHECK}")[0][0]
    expected = (digest, 1, len(user_vars)) if user_query else (digest, 1)
    return Session(ordered, values, check, expected, user_query, user_vars)
