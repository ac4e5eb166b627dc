"""The control store: a PostgreSQL database the replicas of a cluster share.

It holds procrastinate's job tables (the work queue, its locks and worker heartbeats)
and three tables of ours: the replicas (host, pid, heartbeat), the fleet view (each
binding's last state, who worked on it and when) and the last time each set's run was
queued (so N replicas noticing one schedule tick queue it once). The program creates
and upgrades all of it itself, in numbered steps recorded in
``orchestrator_control_schema``; replicas starting together take an advisory lock so
each step runs once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from orchestrator.errors import EXIT_UNREACHABLE, OrchestratorError
from orchestrator.redact import redact

if TYPE_CHECKING:
    import psycopg

    from orchestrator.config import PostgresqlConfig

__all__ = ["STEPS", "StoreUnavailable", "applied_steps", "connect", "conninfo_params", "migrate", "session"]

log = logging.getLogger("cluster")

# An advisory lock key of its own (the ledgers' locks hash set names; this is a fixed constant).
_MIGRATE_LOCK = 0x6F72636C  # "orcl"


class StoreUnavailable(OrchestratorError):
    """The control store cannot be reached or answered with an error (one redacted line)."""

    exit_code = EXIT_UNREACHABLE


def conninfo_params(db: PostgresqlConfig, application: str = "orchestrator cluster") -> dict[str, Any]:
    """psycopg connect() keywords for the control store; a dead link is dropped in about ``keepalive`` s."""
    params: dict[str, Any] = {
        "host": db.ip, "port": db.port, "dbname": db.dbname, "user": db.user or None,
        "password": db.password.get_secret_value() or None, "connect_timeout": db.timeout,
        "application_name": application[:63],
    }
    if db.sslmode:
        params["sslmode"] = db.sslmode
    if db.keepalive:
        idle = max(1, db.keepalive // 2)
        params.update(keepalives=1, keepalives_idle=idle, keepalives_interval=max(1, (db.keepalive - idle) // 3),
                      keepalives_count=3)
    if db.tcp_user_timeout:
        params["tcp_user_timeout"] = db.tcp_user_timeout * 1000  # libpq takes milliseconds
    return {k: v for k, v in params.items() if v is not None}


def connect(db: PostgresqlConfig) -> psycopg.Connection[Any]:
    """An autocommit connection to the control store; :class:`StoreUnavailable` when it cannot be had."""
    import psycopg

    try:
        return psycopg.connect(**conninfo_params(db), autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"control store {db.dbid}: {_one_line(exc)}") from None


@contextmanager
def session(db: PostgresqlConfig) -> Iterator[psycopg.Connection[Any]]:
    """A short-lived connection; a driver error inside becomes :class:`StoreUnavailable`."""
    import psycopg

    conn = connect(db)
    try:
        yield conn
    except psycopg.Error as exc:
        raise StoreUnavailable(f"control store {db.dbid}: {_one_line(exc)}") from None
    finally:
        conn.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text)


# -- schema steps ------------------------------------------------------------------


def _procrastinate_schema(conn: psycopg.Connection[Any]) -> None:
    """procrastinate's own tables and functions, as its release ships them (skipped if already there)."""
    from procrastinate.schema import SchemaManager

    if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone() == (None,):
        conn.execute(SchemaManager.get_schema())


_REPLICAS = """
CREATE TABLE orchestrator_replicas (
    id          bigserial PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    worker_id   bigint,
    started_at  timestamptz NOT NULL DEFAULT now(),
    heartbeat   timestamptz NOT NULL DEFAULT now(),
    stopping    boolean NOT NULL DEFAULT false,
    version     text NOT NULL DEFAULT ''
)"""

_BINDINGS = """
CREATE TABLE orchestrator_bindings (
    set_name    text NOT NULL,
    dbid        text NOT NULL,
    state       text NOT NULL,
    binding     jsonb NOT NULL,
    owner       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (set_name, dbid)
)"""

_SET_RUNS = """
CREATE TABLE orchestrator_set_runs (
    set_name    text NOT NULL,
    reason      text NOT NULL,
    queued_at   timestamptz NOT NULL,
    queued_by   text NOT NULL,
    PRIMARY KEY (set_name, reason)
)"""


# procrastinate's fetch rejects a job whose lock (here: the target) has an earlier job waiting or
# running; its own indexes lead with id, so with N jobs queued each fetch compared every job
# with every other (about 1.2 s per claim at 3,000 queued). An index on the lock makes that
# check a lookup: a claim costs a few milliseconds however long the queue.
_JOB_LOCKS = """
CREATE INDEX IF NOT EXISTS orchestrator_jobs_lock_waiting ON procrastinate_jobs (lock)
 WHERE status IN ('todo', 'doing')"""


def _sql(text: str) -> Callable[[psycopg.Connection[Any]], None]:
    def step(conn: psycopg.Connection[Any]) -> None:
        conn.execute(text.encode())

    return step


# Numbered steps: append only. A released step never changes; a new need is a new step.
STEPS: list[tuple[int, str, Callable[[psycopg.Connection[Any]], None]]] = [
    (1, "procrastinate job queue", _procrastinate_schema),
    (2, "replicas", _sql(_REPLICAS)),
    (3, "fleet view", _sql(_BINDINGS)),
    (4, "queued set runs", _sql(_SET_RUNS)),
    (5, "job lock index", _sql(_JOB_LOCKS)),
]


def applied_steps(conn: psycopg.Connection[Any]) -> list[int]:
    if conn.execute("SELECT to_regclass('orchestrator_control_schema')").fetchone() == (None,):
        return []
    return [row[0] for row in conn.execute("SELECT step FROM orchestrator_control_schema ORDER BY step")]


def migrate(db: PostgresqlConfig) -> list[int]:
    """Bring the control store's schema to the newest step; returns the steps this call applied."""
    import psycopg

    done: list[int] = []
    with session(db) as conn:
        # One replica at a time; the others find the steps done when they get the lock.
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS orchestrator_control_schema (step integer PRIMARY KEY,"
                         " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            have = set(applied_steps(conn))
            for number, name, step in STEPS:
                if number in have:
                    continue
                try:
                    with conn.transaction():
                        step(conn)
                        conn.execute("INSERT INTO orchestrator_control_schema (step, name) VALUES (%s, %s)",
                                     (number, name))
                except psycopg.Error as exc:
                    raise StoreUnavailable(f"control store {db.dbid}: schema step {number} ({name}): "
                                           f"{_one_line(exc)}") from None
                log.info("control store %s: schema step %d (%s) applied", db.dbid, number, name)
                done.append(number)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))
    return done
