"""Short lock timeouts with bounded retries, so a migration never freezes a busy table.

A DDL statement that waits for a lock queues every later query on that table
behind it. So each attempt waits at most ``lock_timeout`` for a lock; when it
times out, the attempt is undone and tried again after a backoff that grows from
about one second to 30 seconds, with jitter, at most ``lock_retries`` times. After
the last one the migration fails naming what held the lock; it never makes an
unbounded last attempt. The engine helpers here talk to the servers through their
drivers; the targets decide what one attempt is (a whole transaction, or one
statement of a no-transaction file).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator.directives import Directives

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "COUNTERS",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "Counters",
    "LockPolicy",
    "LockRetriesExhausted",
    "LockTimedOut",
    "backoff",
    "mysql_blocker",
    "mysql_is_lock_timeout",
    "mysql_session_values",
    "mysql_settings",
    "pg_blocker",
    "pg_is_lock_timeout",
    "pg_relations",
    "pg_settings",
    "retrying",
    "sqlite_is_busy",
]

log = logging.getLogger("migrations")

DEFAULT_TIMEOUT = 2.0
DEFAULT_RETRIES = 10
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class LockPolicy:
    """How long one attempt waits for a lock (seconds; 0 = as long as it takes) and how often it is tried again."""

    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    statement_timeout: float = 0.0  # 0 = off

    @property
    def attempts(self) -> int:
        return 1 if not self.timeout else self.retries + 1

    def with_directives(self, directives: Directives) -> LockPolicy:
        """This policy as a file's ``lock-timeout=``/``lock-retries=`` directives change it."""
        timeout = self.timeout if directives.lock_timeout is None else directives.lock_timeout
        retries = self.retries if directives.lock_retries is None else directives.lock_retries
        return LockPolicy(timeout, retries, self.statement_timeout)

    def describe(self) -> str:
        if not self.timeout:
            return "lock timeout off"
        return f"lock timeout {_seconds(self.timeout)}, {self.retries} retries"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:g}s"


class LockRetriesExhausted(Exception):
    """Every attempt timed out waiting for a lock; ``str()`` is the message the migration fails with."""

    def __init__(self, attempts: int, blocker: str):
        self.attempts = attempts
        self.blocker = blocker
        super().__init__(f"lock timeout after {attempts} attempt{'s' if attempts != 1 else ''} ({blocker})")


class LockTimedOut(Exception):
    """One attempt of a migration timed out waiting for a lock: the target retries it (see :func:`retrying`).

    ``statement`` is the statement that waited (None for a Python ``up``), ``error`` the driver's error.
    """

    def __init__(self, statement: Any, error: BaseException):
        self.statement = statement
        self.error = error
        super().__init__(str(error))


class Counters:
    """Retries and lock waits, per engine, for ``/metrics``. Thread-safe; counts only go up."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self.retries: dict[str, int] = {}
        self.timeouts: dict[str, int] = {}
        self.exhausted: dict[str, int] = {}
        self.wait_seconds: dict[str, float] = {}

    def add(self, engine: str, *, retry: bool = False, timeout: bool = False, exhausted: bool = False,
            waited: float = 0.0) -> None:
        with self._guard:
            if retry:
                self.retries[engine] = self.retries.get(engine, 0) + 1
            if timeout:
                self.timeouts[engine] = self.timeouts.get(engine, 0) + 1
            if exhausted:
                self.exhausted[engine] = self.exhausted.get(engine, 0) + 1
            if waited:
                self.wait_seconds[engine] = self.wait_seconds.get(engine, 0.0) + waited

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._guard:
            return {"lock_retries": dict(self.retries), "lock_timeouts": dict(self.timeouts),
                    "lock_retries_exhausted": dict(self.exhausted), "lock_wait_seconds": dict(self.wait_seconds)}


COUNTERS = Counters()


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt *attempt* (1-based): doubling from ~1 s, capped at 30 s, ±25 % jitter.

    Jitter keeps many targets (or replicas) from retrying in step against one blocker.
    """
    base = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(attempt - 1, 0))
    jitter = (rng or random).uniform(0.75, 1.25)
    return float(min(BACKOFF_MAX, base * jitter))


def retrying(attempt: Callable[[int], _T], policy: LockPolicy, *, engine: str, label: str,
             is_lock_timeout: Callable[[BaseException], bool], blocker: Callable[[BaseException], str],
             sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
             on_retry: Callable[[BaseException], None] | None = None) -> _T:
    """Run ``attempt(n)`` until it succeeds, retrying a lock timeout with backoff at most ``policy.retries`` times.

    ``attempt`` must leave nothing behind when it raises (rolled back); ``blocker(exc)``
    names what held the lock, best effort. Any other error propagates at once. After the
    last attempt raises :class:`LockRetriesExhausted` (chained to the driver error).
    """
    n = 1
    while True:
        started = time.monotonic()
        try:
            return attempt(n)
        except Exception as exc:
            if not policy.timeout or not is_lock_timeout(exc):
                raise
            COUNTERS.add(engine, timeout=True, waited=time.monotonic() - started)
            try:
                holder = blocker(exc)
            except Exception as describe_exc:  # naming the holder is a courtesy; it never hides the timeout
                holder = f"waiting for a lock; its holder could not be named: {' '.join(str(describe_exc).split())}"
            if n >= policy.attempts:
                COUNTERS.add(engine, exhausted=True)
                raise LockRetriesExhausted(n, holder) from exc
            delay = backoff(n, rng)
            COUNTERS.add(engine, retry=True)
            log.warning("%s: lock timeout (%s) on attempt %d of %d (%s); retrying in %.1fs",
                        label, _seconds(policy.timeout), n, policy.attempts, holder, delay)
            if on_retry is not None:
                on_retry(exc)
            sleep(delay)
            n += 1


# --- PostgreSQL ----------------------------------------------------------------

_PG_LOCK_NOT_AVAILABLE = "55P03"


def pg_is_lock_timeout(exc: BaseException) -> bool:
    """SQLSTATE 55P03 (lock_not_available): ``lock_timeout`` expired."""
    return getattr(exc, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE


def pg_settings(policy: LockPolicy, local: bool) -> list[str]:
    """SET statements for one attempt: ``SET LOCAL`` inside the migration's transaction, session-wide outside one."""
    scope = "SET LOCAL" if local else "SET"
    statements = [f"{scope} lock_timeout = '{math.ceil(policy.timeout * 1000)}ms'"]
    if policy.statement_timeout:
        statements.append(f"{scope} statement_timeout = '{math.ceil(policy.statement_timeout * 1000)}ms'")
    return statements


def pg_relations(sql: str) -> list[str]:
    """Names of the tables a statement touches (unqualified, as PostgreSQL folds them), from its parse tree."""
    try:
        from pglast import ast, parse_sql
        from pglast.visitors import Visitor
    except ImportError:  # pragma: no cover - a dependency; a missing one only loses the blocker's name
        return []
    try:
        tree = parse_sql(sql)
    except Exception:
        return []
    names: list[str] = []

    class _Tables(Visitor):
        def visit_RangeVar(self, ancestors: Any, node: Any) -> None:
            if node.relname and node.relname not in names:
                names.append(node.relname)

    _Tables()(tree)
    for statement in tree:  # ALTER TYPE ... ADD VALUE and the like name no RangeVar
        if isinstance(statement.stmt, ast.DropStmt):
            for obj in statement.stmt.objects or ():
                last = obj[-1] if isinstance(obj, tuple) and obj else None
                if isinstance(last, ast.String) and last.sval and last.sval not in names:
                    names.append(last.sval)
    return names


_PG_BLOCKER = """
SELECT l.mode, c.relname, a.pid, a.state, left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200)
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid() AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND c.relname = ANY(%s)
ORDER BY (l.mode = 'AccessExclusiveLock') DESC, a.xact_start NULLS LAST
LIMIT 1
"""


def pg_blocker(fetch: Callable[[str, Any], Any], relations: list[str]) -> str:
    """``waiting for <lock> on <table> held by pid P (<state>): <query>`` for a session holding a lock on *relations*.

    Asked after the attempt was rolled back (the waiting statement is gone, so
    ``pg_blocking_pids`` cannot be used): the holder of a granted lock on the tables the
    statement names is the one it waited for. ``fetch(sql, params)`` returns the rows.
    """
    if relations:
        rows = fetch(_PG_BLOCKER, (relations,))
        if rows:
            mode, relname, pid, state, query = rows[0]
            return f"waiting for {mode} on {relname} held by pid {pid}{f' ({state})' if state else ''}: {query or '?'}"
    return "waiting for a lock whose holder let go before it could be named"


# --- MySQL / MariaDB -----------------------------------------------------------

_MYSQL_LOCK_ERRORS = (1205, 1213)  # ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK


def mysql_is_lock_timeout(exc: BaseException) -> bool:
    """Lock wait timeout (1205: metadata or row lock) or deadlock (1213): the statement may be run again."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return bool(args) and args[0] in _MYSQL_LOCK_ERRORS


def mysql_session_values(policy: LockPolicy, mariadb: bool) -> dict[str, str]:
    """A migration's session variables and their SQL values: whole seconds on these servers, so a timeout rounds up."""
    values: dict[str, str] = {}
    if policy.timeout:
        seconds = str(max(1, math.ceil(policy.timeout)))
        values.update(lock_wait_timeout=seconds, innodb_lock_wait_timeout=seconds)
    if policy.statement_timeout:
        if mariadb:
            values["max_statement_time"] = f"{policy.statement_timeout:g}"
        else:  # MySQL bounds only SELECTs, in milliseconds
            values["max_execution_time"] = str(math.ceil(policy.statement_timeout * 1000))
    return values


def mysql_settings(policy: LockPolicy, mariadb: bool) -> list[str]:
    """:func:`mysql_session_values` as ``SET SESSION`` statements."""
    return [f"SET SESSION {name} = {value}" for name, value in mysql_session_values(policy, mariadb).items()]


_MYSQL_BLOCKER = """
SELECT p.id, p.command, p.time, LEFT(COALESCE(t.trx_query, p.info, ''), 200), t.trx_started
FROM information_schema.processlist p
JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = p.id
WHERE p.id <> CONNECTION_ID()
ORDER BY t.trx_started
LIMIT 1
"""


def mysql_blocker(fetch: Callable[[str, Any], Any]) -> str:
    """The oldest other open transaction: metadata locks are held until the transaction that took them ends."""
    rows = fetch(_MYSQL_BLOCKER, None)
    if rows:
        thread, command, seconds, query, _started = rows[0]
        what = " ".join(str(query or "").split()) or f"idle in transaction ({command}, {seconds}s)"
        return f"waiting for a lock held by connection {thread}: {what}"
    return "waiting for a lock whose holder let go before it could be named"


# --- SQLite ----------------------------------------------------------------------


def sqlite_is_busy(exc: BaseException) -> bool:
    """``database is locked`` / busy: another connection held the write lock past ``busy_timeout``."""
    import sqlite3

    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))
