"""Lock timeouts with bounded retries: the policy alone, then against real blocking sessions through the drivers."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

import pytest

from orchestrator import directives
from orchestrator.locktimeout import (
    COUNTERS,
    LockPolicy,
    LockRetriesExhausted,
    backoff,
    mysql_blocker,
    mysql_is_lock_timeout,
    mysql_settings,
    pg_blocker,
    pg_is_lock_timeout,
    pg_relations,
    pg_settings,
    retrying,
    sqlite_is_busy,
)
from tests.conftest import mysql_connect, pg_connect


def test_backoff_grows_from_about_a_second_to_thirty_with_jitter():
    rng = random.Random(7)
    delays = [backoff(n, rng) for n in range(1, 12)]
    assert 0.75 <= delays[0] <= 1.25
    assert 1.5 <= delays[1] <= 2.5
    assert all(d <= 30 for d in delays) and delays[-1] >= 22.5
    assert len({round(backoff(1, rng), 6) for _ in range(20)}) > 1  # jitter


def test_policy_follows_file_directives_and_off_means_one_unbounded_attempt():
    base = LockPolicy()
    assert (base.timeout, base.retries, base.attempts) == (2.0, 10, 11)
    found, problems = directives.leading("-- orchestrator: lock-timeout=500ms lock-retries=20\nSELECT 1;\n")
    assert problems == []
    assert base.with_directives(found) == LockPolicy(0.5, 20, 0.0)
    off, _ = directives.leading("-- orchestrator: lock-timeout=off\n-- orchestrator: no-transaction\nSELECT 1;")
    assert off.no_transaction and base.with_directives(off).attempts == 1


@pytest.mark.parametrize("line, problem", [
    ("-- orchestrator: lock-timeout=soon", "lock-timeout: invalid duration 'soon'"),
    ("-- orchestrator: lock-retries=many", "lock-retries takes a whole number"),
    ("-- orchestrator: allow", "unknown directive 'allow'"),
    ("-- orchestrator: allow Drop Table", "'allow' takes rule ids"),
    ("-- orchestrator: fast", "unknown directive 'fast'"),
])
def test_bad_directives_are_named(line, problem):
    _found, problems = directives.leading(line + "\nSELECT 1;")
    assert len(problems) == 1 and problems[0][0] == 1 and problem in problems[0][1]


def test_retrying_bounds_attempts_and_passes_other_errors_through():
    calls, slept = [], []

    class Timeout(Exception):
        pass

    def attempt(n):
        calls.append(n)
        raise Timeout()

    with pytest.raises(LockRetriesExhausted) as info:
        retrying(attempt, LockPolicy(0.1, 3), engine="test", label="s/1.sql", is_lock_timeout=lambda e: isinstance(e, Timeout),
                 blocker=lambda e: "waiting for X held by pid 1: q", sleep=slept.append)
    assert calls == [1, 2, 3, 4] and len(slept) == 3
    assert str(info.value) == "lock timeout after 4 attempts (waiting for X held by pid 1: q)"

    def other(n):
        raise ValueError("syntax")

    with pytest.raises(ValueError):
        retrying(other, LockPolicy(0.1, 3), engine="test", label="x", is_lock_timeout=lambda e: isinstance(e, KeyError),
                 blocker=str, sleep=slept.append)


class Reader(threading.Thread):
    """A third session running a SELECT on the table every 50 ms, recording the longest wait."""

    def __init__(self, query):
        super().__init__(daemon=True)
        self.query, self.longest, self.count, self.stop = query, 0.0, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            self.query()
            self.longest = max(self.longest, time.monotonic() - started)
            self.count += 1
            time.sleep(0.05)


def _pg_attempt(conn, policy, sql):
    def attempt(n):
        with conn.transaction():
            for statement in pg_settings(policy, local=True):
                conn.execute(statement)
            conn.execute(sql)
    return attempt


def test_postgresql_retries_without_queueing_readers_then_applies_once_the_blocker_commits(pg_db):
    blocker, migration, reader_conn = (pg_connect(pg_db["dbname"]) for _ in range(3))
    try:
        migration.execute("CREATE TABLE t (id int)")
        blocker.autocommit = False
        blocker.execute("SELECT * FROM t")  # AccessShareLock held until commit
        reader = Reader(lambda: reader_conn.execute("SELECT count(*) FROM t").fetchone())
        reader.start()
        policy = LockPolicy(0.3, 5)
        slept = []

        def sleep(delay):
            slept.append(delay)
            time.sleep(0.3)
            if len(slept) == 2:
                blocker.commit()

        retrying(_pg_attempt(migration, policy, "ALTER TABLE t ADD COLUMN x int"), policy, engine="postgresql",
                 label="s/1.sql", is_lock_timeout=pg_is_lock_timeout, blocker=lambda e: "?", sleep=sleep)
        reader.stop.set()
        reader.join()
        assert len(slept) == 2 and reader.count > 5
        assert reader.longest < policy.timeout + 0.5
        cols = [r[0] for r in migration.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 't'")]
        assert cols == ["id", "x"]
    finally:
        for conn in (blocker, migration, reader_conn):
            conn.close()


def test_postgresql_gives_up_naming_the_blocker_and_changes_nothing(pg_db):
    blocker, migration = pg_connect(pg_db["dbname"]), pg_connect(pg_db["dbname"])
    try:
        migration.execute("CREATE TABLE t (id int)")
        blocker.autocommit = False
        blocker.execute("SELECT * FROM t WHERE id = 42")
        pid = blocker.info.backend_pid
        sql = "ALTER TABLE t ADD COLUMN x int"
        before = dict(COUNTERS.snapshot()["lock_retries"])
        with pytest.raises(LockRetriesExhausted) as info:
            retrying(_pg_attempt(migration, LockPolicy(0.2, 2), sql), LockPolicy(0.2, 2), engine="postgresql",
                     label="s/1.sql", is_lock_timeout=pg_is_lock_timeout,
                     blocker=lambda e: pg_blocker(lambda q, p: migration.execute(q, p).fetchall(), pg_relations(sql)), sleep=lambda d: None)
        assert str(info.value) == (f"lock timeout after 3 attempts (waiting for AccessShareLock on t held by pid {pid} "
                                   "(idle in transaction): SELECT * FROM t WHERE id = 42)")
        assert COUNTERS.snapshot()["lock_retries"]["postgresql"] == before.get("postgresql", 0) + 2
        cols = [r[0] for r in migration.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 't'")]
        assert cols == ["id"]
    finally:
        blocker.close()
        migration.close()


def test_mysql_metadata_lock_times_out_per_statement_and_retries(mysql_db):
    blocker, migration, reader_conn = (mysql_connect(mysql_db["dbname"]) for _ in range(3))
    try:
        with migration.cursor() as cur:
            cur.execute("CREATE TABLE t (id int) ENGINE=InnoDB")
            cur.execute("INSERT INTO t VALUES (1)")
            cur.execute("SELECT @@version")
            mariadb = "mariadb" in cur.fetchone()[0].lower()
            policy = LockPolicy(0.4, 4, statement_timeout=30)
            assert mysql_settings(policy, mariadb)[:2] == ["SET SESSION lock_wait_timeout = 1",
                                                           "SET SESSION innodb_lock_wait_timeout = 1"]
            for statement in mysql_settings(policy, mariadb):
                cur.execute(statement)
        with blocker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT * FROM t")  # shared metadata lock until the transaction ends
            cur.execute("SELECT CONNECTION_ID()")
            thread = cur.fetchone()[0]

        def read():
            with reader_conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM t")
                cur.fetchall()

        reader = Reader(read)
        reader.start()
        described, slept = [], []

        def attempt(n):
            with migration.cursor() as cur:
                cur.execute("ALTER TABLE t ADD COLUMN x int")

        def sleep(delay):
            slept.append(delay)
            if len(slept) == 2:
                blocker.commit()

        retrying(attempt, policy, engine="mysql", label="s/1.sql", is_lock_timeout=mysql_is_lock_timeout,
                 blocker=lambda e: described.append(mysql_blocker(lambda q, p: _rows(migration, q, p))) or described[-1], sleep=sleep)
        reader.stop.set()
        reader.join()
        assert len(slept) == 2
        assert described[0].startswith(f"waiting for a lock held by connection {thread}")
        assert reader.longest < 1 + 0.5  # whole seconds on this server: the timeout rounds up to 1 s
        with migration.cursor() as cur:
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                        "AND table_name = 't' ORDER BY ordinal_position")
            assert [r[0] for r in cur.fetchall()] == ["id", "x"]
    finally:
        for conn in (blocker, migration, reader_conn):
            conn.close()


def test_sqlite_busy_writer_is_retried_until_it_lets_go(tmp_path):
    path = str(tmp_path / "t.db")
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE t (id int)")
    setup.close()
    writer = sqlite3.connect(path, isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    migration = sqlite3.connect(path, isolation_level=None, timeout=0.2)
    slept = []

    def attempt(n):
        migration.execute("BEGIN IMMEDIATE")
        try:
            migration.execute("ALTER TABLE t ADD COLUMN x int")
            migration.execute("COMMIT")
        except BaseException:
            migration.execute("ROLLBACK")
            raise

    def sleep(delay):
        slept.append(delay)
        writer.execute("COMMIT")

    retrying(attempt, LockPolicy(0.2, 3), engine="sqlite", label="s/1.sql", is_lock_timeout=sqlite_is_busy,
             blocker=lambda e: "waiting for the write lock held by another connection", sleep=sleep)
    assert len(slept) == 1
    assert [r[1] for r in migration.execute("PRAGMA table_info(t)")] == ["id", "x"]


def _rows(conn, sql, params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()
