"""Engine adapters for the contract suite: everything engine-specific the shared tests need.

A shared test in ``test_target_contract.py`` never asks which engine it runs on;
it asks its :class:`Engine` (how to write a migration that bumps a counter, read the
counter, hold the lock as another runner would, seed a C-tool ledger, cut the
session from the server's side) and compares with the engine's stated traits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator import config as config_module
from orchestrator.targets import Target, open_target
from tests.conftest import mysql_connect, pg_connect, redis_connect
from tests.netproxy import StallProxy

_MODELS = {"sqlite": config_module.SqliteConfig, "postgresql": config_module.PostgresqlConfig,
           "mysql": config_module.MysqlConfig, "redis": config_module.RedisConfig}
_LEGACY_TABLE = "CREATE TABLE migration (version VARCHAR(180) PRIMARY KEY, apply_time INTEGER)"  # as the C tool creates it

# What a Python migration's up() calls to have its session cut under it (see Engine.cut_hook).
CUT: dict[str, Callable[[], None]] = {}


class Engine:
    """One engine as the contract suite sees it."""

    driver = ""
    records_failed_rows = False
    """After a failed migration: a 'failed' row (no transactional DDL) instead of no row."""
    names_lock_holder = True
    """``holder()`` names who holds the lock (SQLite's lock is per write transaction: it cannot tell)."""
    probe = "SELECT 1"
    """A harmless statement or command a Python migration sends through ``db.execute``."""
    without_server: frozenset[str] = frozenset()
    """Protocol methods that need no round trip at all (Redis creates no ledger up front)."""
    """A harmless statement or command a Python migration sends through ``db.execute``."""

    def __init__(self, entry: dict[str, Any]):
        self.entry = entry

    def target(self, readonly: bool = False, **overrides: Any) -> Target:
        db = _MODELS[self.driver].model_validate({"host_id": "t", **self.entry, **overrides})
        target = open_target(db, "migration")
        target.connect(readonly=readonly)
        return target

    def contender(self) -> Target:
        """A second runner that gives up on a held lock quickly."""
        return self.target()

    @contextmanager
    def hold_lock(self, target: Target, set_id: str) -> Iterator[None]:
        """Hold the (target, set) lock as another runner in the middle of a migration would."""
        with target.lock(set_id, 0):
            yield

    def write_migration(self, folder: Path, version: str, ok: bool = True) -> None:
        """A migration that bumps a counter (and, when not ok, then fails)."""
        folder.mkdir(parents=True, exist_ok=True)
        setup = "CREATE TABLE IF NOT EXISTS counter (n INTEGER NOT NULL);\n"
        body = setup + "INSERT INTO counter (n) VALUES (1);\n" + ("INSERT INTO no_such_table VALUES (1);\n" if not ok else "")
        (folder / f"{version}.sql").write_text(body)

    def write_python_migration(self, folder: Path, version: str, body: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{version}.py").write_text(body)

    def counter(self) -> int:
        raise NotImplementedError

    def stored_name(self, version: str) -> str:
        """How the C tool records ``version`` in its ledger (SQL: the compiled migration's file name)."""
        return f"lib{version}.so"

    def seed_legacy_ledger(self, rows: dict[str, int]) -> None:
        """A ledger as the C tool leaves it: stored name -> apply_time, nothing else."""
        raise NotImplementedError

    def cut(self, target: Target) -> None:
        """End the target's session from the server's side, as a crash or a network cut would."""
        raise NotImplementedError

    def restore(self) -> None:
        """After ``cut``: new sessions work again."""


class SqliteEngine(Engine):
    driver = "sqlite"
    names_lock_holder = False

    def contender(self) -> Target:
        return self.target(busy_timeout=200)

    @contextmanager
    def hold_lock(self, target: Target, set_id: str) -> Iterator[None]:
        # The lock is the file's write lock, taken per migration: a writer in the middle of one.
        target.connection.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]
        try:
            yield
        finally:
            target.connection.execute("ROLLBACK")  # type: ignore[attr-defined]

    def counter(self) -> int:
        import sqlite3

        with sqlite3.connect(self.entry["path"]) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM counter").fetchone()[0])

    def seed_legacy_ledger(self, rows: dict[str, int]) -> None:
        import sqlite3

        conn = sqlite3.connect(self.entry["path"])
        with conn:
            conn.execute(_LEGACY_TABLE)
            conn.executemany("INSERT INTO migration VALUES (?, ?)", rows.items())
        conn.close()


class PostgresqlEngine(Engine):
    driver = "postgresql"

    def counter(self) -> int:
        with pg_connect(self.entry["dbname"]) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM counter").fetchone()[0])

    def seed_legacy_ledger(self, rows: dict[str, int]) -> None:
        with pg_connect(self.entry["dbname"]) as conn:
            conn.execute(_LEGACY_TABLE)
            conn.cursor().executemany("INSERT INTO migration VALUES (%s, %s)", list(rows.items()))

    def cut(self, target: Target) -> None:
        pid = target.connection.info.backend_pid  # type: ignore[attr-defined]
        with pg_connect(self.entry["dbname"]) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


class MysqlEngine(Engine):
    driver = "mysql"
    records_failed_rows = True

    def counter(self) -> int:
        with mysql_connect(self.entry["dbname"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM counter")
            return int(cur.fetchone()[0])

    def seed_legacy_ledger(self, rows: dict[str, int]) -> None:
        with mysql_connect(self.entry["dbname"]) as conn, conn.cursor() as cur:
            cur.execute(_LEGACY_TABLE)
            cur.executemany("INSERT INTO migration VALUES (%s, %s)", list(rows.items()))
            conn.commit()

    def cut(self, target: Target) -> None:
        thread = target.connection.thread_id()  # type: ignore[attr-defined]
        with mysql_connect() as conn, conn.cursor() as cur:
            cur.execute(f"KILL {int(thread)}")


class RedisEngine(Engine):
    driver = "redis"
    probe = "PING"
    without_server = frozenset({"ensure_ledger"})

    @property
    def _key(self) -> str:
        return f"{self.entry.get('prefix', '')}counter"

    def write_migration(self, folder: Path, version: str, ok: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{version}.redis").write_text(f"INCR {self._key}\n" + ("NOSUCHCOMMAND x\n" if not ok else ""))

    def counter(self) -> int:
        return int(redis_connect(self.entry.get("dbindex", 0)).get(self._key) or 0)

    def stored_name(self, version: str) -> str:
        return version  # the version hash holds versions as they are

    def seed_legacy_ledger(self, rows: dict[str, int]) -> None:
        # Level 1 on Redis: the version hash alone, readable with redis-cli, no meta entries.
        redis_connect(self.entry.get("dbindex", 0)).hset(f"{self.entry['prefix']}migration:s1", mapping=rows)

    def __init__(self, entry: dict[str, Any], proxy: StallProxy | None = None):
        super().__init__(entry if proxy is None else {**entry, "ip": "127.0.0.1", "port": proxy.port})
        self.proxy = proxy

    def cut(self, target: Target) -> None:
        # redis-py replaces a pooled connection the server closed as it hands it out:
        # only a server that cannot be reached is a lost session here.
        assert self.proxy is not None
        self.proxy.cut()

    def restore(self) -> None:
        assert self.proxy is not None
        self.proxy.restore()


_ENGINES = {"sqlite": SqliteEngine, "postgresql": PostgresqlEngine, "mysql": MysqlEngine, "redis": RedisEngine}


@pytest.fixture
def engine(engine_entry: tuple[str, dict[str, Any]]) -> Engine:
    """Each engine in turn (parametrized through ``engine_entry``)."""
    driver, entry = engine_entry
    return _ENGINES[driver](entry)


@pytest.fixture(params=("postgresql", "mysql", "redis"))
def server_engine(request: Any) -> Iterator[Engine]:
    """Each engine with a server session that can be cut."""
    if request.param != "redis":
        fixture = {"postgresql": "pg_db", "mysql": "mysql_db"}[request.param]
        yield _ENGINES[request.param](request.getfixturevalue(fixture))
        return
    entry = request.getfixturevalue("redis_prefix")
    with StallProxy(entry["ip"], entry["port"]) as proxy:
        yield RedisEngine(entry, proxy)
