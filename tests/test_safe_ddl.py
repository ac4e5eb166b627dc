"""Safe DDL end to end: a migration meeting a lock held by another session, through the CLI, on real servers.

A blocker holds a lock on the table in an open transaction; the migration alters it;
a third session SELECTs every 50 ms. No SELECT may wait longer than the lock timeout
plus 0.5 s while the migration retries; once the blocker commits the migration
applies; when it never lets go the migration fails naming it, with nothing recorded.
"""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.locktimeout import COUNTERS
from tests.conftest import mysql_connect, pg_connect
from tests.test_locktimeout import Reader


class _NoBindings:
    def rows(self):
        return []

    def ready(self):
        return True, ""


def _metric(name: str) -> float:
    """A counter's value on the daemon's /metrics body."""
    from orchestrator.daemon.metrics import Metrics

    body = Metrics(_NoBindings()).render()[0].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + " "))


def _retries(engine: str) -> int:
    return int(COUNTERS.snapshot()["lock_retries"].get(engine, 0))


def _commit_after_first_retry(engine: str, commit) -> threading.Thread:
    before = _retries(engine)

    def wait_then_commit():
        deadline = time.monotonic() + 60
        while _retries(engine) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        commit()

    thread = threading.Thread(target=wait_then_commit, daemon=True)
    thread.start()
    return thread


def _pg_columns(conn):
    return [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 't' "
                                       "ORDER BY ordinal_position")]


def test_postgresql_migration_retries_behind_a_blocker_then_applies(project, orchestrator, pg_db):
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_alter.sql", "-- orchestrator: lock-timeout=300ms lock-retries=5\nALTER TABLE t ADD COLUMN x int;\n")
    setup, blocker, reader_conn = (pg_connect(pg_db["dbname"]) for _ in range(3))
    try:
        setup.execute("CREATE TABLE t (id int)")
        blocker.autocommit = False
        blocker.execute("SELECT * FROM t")
        reader = Reader(lambda: reader_conn.execute("SELECT count(*) FROM t").fetchone())
        reader.start()
        committer = _commit_after_first_retry("postgresql", blocker.commit)
        code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
        reader.stop.set()
        reader.join()
        committer.join()
        assert code == 0, err
        assert "lock timeout (300ms) on attempt 1 of 6" in err and "held by pid" in err
        assert reader.count > 5 and reader.longest < 0.3 + 0.5
        assert _pg_columns(setup) == ["id", "x"]
        assert setup.execute("SELECT version FROM public.migration").fetchall() == [("001_alter",)]
        assert _metric('orchestrator_lock_retries_total{engine="postgresql"}') >= 1
        assert _metric('orchestrator_lock_wait_seconds_total{engine="postgresql"}') > 0
    finally:
        for conn in (setup, blocker, reader_conn):
            conn.close()


def test_postgresql_lock_timeout_goes_with_begin_in_one_round_trip(project, orchestrator, pg_db, monkeypatch):
    from orchestrator.targets.postgresql import PostgresqlTarget

    sent = []
    send = PostgresqlTarget._send
    monkeypatch.setattr(PostgresqlTarget, "_send", lambda self, sql, params: sent.append(sql) or send(self, sql, params))
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    observe = "CREATE TABLE t{v} AS SELECT current_setting('lock_timeout') AS lt;\n"
    project.write("s1", "001.sql", observe.format(v=1))
    project.write("s1", "002.sql", "-- orchestrator: lock-timeout=5s\n" + observe.format(v=2))
    project.write("s1", "003.sql", "-- orchestrator: lock-timeout=off\n" + observe.format(v=3))
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 0, err
    with pg_connect(pg_db["dbname"]) as conn:
        assert [conn.execute(f"SELECT lt FROM t{v}").fetchone()[0] for v in (1, 2, 3)] == ["2s", "5s", "0"]
    assert not [sql for sql in sent if sql.startswith("SET LOCAL lock_timeout = '")]  # a migration's: no round trip of its own
    assert len([sql for sql in sent if "BEGIN" in sql and "SET LOCAL lock_timeout" in sql]) == 2


def test_postgresql_blocker_that_never_lets_go_fails_the_migration_and_changes_nothing(project, orchestrator, pg_db):
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_alter.sql", "-- orchestrator: lock-timeout=200ms lock-retries=1\nCREATE TABLE u (a int);\n"
                                         "ALTER TABLE t ADD COLUMN x int;\n")
    setup, blocker = pg_connect(pg_db["dbname"]), pg_connect(pg_db["dbname"])
    try:
        setup.execute("CREATE TABLE t (id int)")
        blocker.autocommit = False
        blocker.execute("SELECT id FROM t WHERE id = 7")
        pid = blocker.info.backend_pid
        code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
        assert code == 1
        assert (f"statement 2 (line 3): lock timeout after 2 attempts (waiting for AccessShareLock on t held by pid {pid} "
                "(idle in transaction): SELECT id FROM t WHERE id = 7)") in err
        assert _pg_columns(setup) == ["id"]
        assert setup.execute("SELECT to_regclass('u')").fetchone()[0] is None  # the whole transaction rolled back
        if setup.execute("SELECT to_regclass('public.migration')").fetchone()[0]:
            assert setup.execute("SELECT count(*) FROM public.migration").fetchone()[0] == 0
    finally:
        blocker.close()
        setup.close()


def test_postgresql_no_transaction_file_retries_the_statement_that_timed_out(project, orchestrator, pg_db):
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_idx.sql", "-- orchestrator: no-transaction\n-- orchestrator: lock-timeout=300ms lock-retries=5\n"
                                       "CREATE TABLE IF NOT EXISTS v (a int);\nALTER TABLE t ADD COLUMN x int;\n")
    setup, blocker = pg_connect(pg_db["dbname"]), pg_connect(pg_db["dbname"])
    try:
        setup.execute("CREATE TABLE t (id int)")
        blocker.autocommit = False
        blocker.execute("SELECT * FROM t")
        committer = _commit_after_first_retry("postgresql", blocker.commit)
        code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
        committer.join()
        assert code == 0, err
        assert err.count("lock timeout (300ms) on attempt") >= 1
        assert _pg_columns(setup) == ["id", "x"]
    finally:
        blocker.close()
        setup.close()


def _my_columns(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                    "AND table_name = 't' ORDER BY ordinal_position")
        return [r[0] for r in cur.fetchall()]


def test_mysql_metadata_lock_retries_then_applies(project, orchestrator, mysql_db):
    dbid = project.add_target("mysql", "m1", mysql_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_alter.sql", "-- orchestrator: lock-timeout=1s lock-retries=5\nALTER TABLE t ADD COLUMN x int;\n")
    setup, blocker, reader_conn = (mysql_connect(mysql_db["dbname"]) for _ in range(3))
    try:
        with setup.cursor() as cur:
            cur.execute("CREATE TABLE t (id int) ENGINE=InnoDB")
        with blocker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT * FROM t")

        def read():
            with reader_conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM t")
                cur.fetchall()

        reader = Reader(read)
        reader.start()
        committer = _commit_after_first_retry("mysql", blocker.commit)
        code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
        reader.stop.set()
        reader.join()
        committer.join()
        assert code == 0, err
        assert "lock timeout (1s) on attempt 1 of 6" in err and "held by connection" in err
        assert reader.longest < 1 + 0.5
        assert _my_columns(setup) == ["id", "x"]
        with setup.cursor() as cur:
            cur.execute("SELECT version, status FROM migration")
            assert cur.fetchall() == (("001_alter", "applied"),)
    finally:
        for conn in (setup, blocker, reader_conn):
            conn.close()


def test_mysql_blocker_that_never_lets_go_records_the_failure_at_its_statement(project, orchestrator, mysql_db):
    dbid = project.add_target("mysql", "m1", mysql_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_alter.sql", "-- orchestrator: lock-timeout=1s lock-retries=1\nCREATE TABLE u (a int);\n"
                                         "ALTER TABLE t ADD COLUMN x int;\n")
    setup, blocker = mysql_connect(mysql_db["dbname"]), mysql_connect(mysql_db["dbname"])
    try:
        with setup.cursor() as cur:
            cur.execute("CREATE TABLE t (id int) ENGINE=InnoDB")
        with blocker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT * FROM t")
            cur.execute("SELECT CONNECTION_ID()")
            thread = cur.fetchone()[0]
        code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
        assert code == 1
        assert f"statement 2 (line 3): lock timeout after 2 attempts (waiting for a lock held by connection {thread}" in err
        assert _my_columns(setup) == ["id"]
        with setup.cursor() as cur:
            cur.execute("SELECT version, status, statement FROM migration")
            assert cur.fetchall() == (("001_alter", "failed", 2),)
    finally:
        blocker.close()
        setup.close()


def test_statement_timeout_bounds_one_statement_on_postgresql(project, orchestrator, pg_db):
    dbid = project.add_target("postgresql", "p1", {**pg_db, "statement_timeout": "300ms"})
    project.add_set("s1", [dbid])
    project.write("s1", "001_slow.sql", "CREATE TABLE a (x int);\nSELECT pg_sleep(3);\n")
    started = time.monotonic()
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 1 and time.monotonic() - started < 3
    assert "statement 2 (line 2): canceling statement due to statement timeout" in err
    assert "attempt" not in err  # a statement timeout is not a lock timeout: never retried
    with pg_connect(pg_db["dbname"]) as conn:
        assert conn.execute("SELECT to_regclass('a')").fetchone()[0] is None


def test_statement_timeout_bounds_one_statement_on_mariadb(project, orchestrator, mysql_db):
    dbid = project.add_target("mysql", "m1", mysql_db)
    project.add_set("s1", [dbid])
    config = project.config
    import json

    data = json.loads(config.read_text())
    data["migrations"]["statement_timeout"] = "500ms"  # the migrations-wide default this time
    config.write_text(json.dumps(data))
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE a (x int)")
        cur.execute("INSERT INTO a VALUES (1)")
    project.write("s1", "001_slow.sql", "SELECT SLEEP(3) FROM a;\nINSERT INTO a VALUES (2);\n")
    started = time.monotonic()
    code, _, err = orchestrator("up", "all", config, dbid, "s1")
    assert time.monotonic() - started < 3
    assert code == 1 and "statement 1 (line 1): error 1969" in err, err
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT x FROM a")
        assert cur.fetchall() == ((1,),)


def test_mysql_online_alter_makes_the_server_refuse_a_copying_alter(project, orchestrator, mysql_db):
    dbid = project.add_target("mysql", "m1", {**mysql_db, "online_alter": True})
    project.add_set("s1", [dbid])
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (a INT) ENGINE=InnoDB")
    project.write("s1", "001_add.sql", "ALTER TABLE t ADD COLUMN c INT;\n")
    project.write("s1", "002_modify.sql", "ALTER TABLE t MODIFY a BIGINT;\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 1 and "s1/002_modify.sql: statement 1 (line 1): error 1846: ALGORITHM=INPLACE is not supported" in err, err
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("SHOW COLUMNS FROM t")
        assert [(r[0], r[1]) for r in cur.fetchall()] == [("a", "int(11)"), ("c", "int(11)")]
        cur.execute("SELECT version, status FROM migration ORDER BY version")
        assert cur.fetchall() == (("001_add", "applied"), ("002_modify", "failed"))


def _sqlite_columns(path):
    import sqlite3

    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(t)")]


def _sqlite_writer(project, orchestrator, dbid, path):
    """Create t and the ledger through a first run, then let another writer hold the write lock."""
    import sqlite3

    project.write("s1", "000_create.sql", "CREATE TABLE t (id int);\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 0, err
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    writer.execute("INSERT INTO t VALUES (1)")
    return writer


def test_sqlite_writer_holding_the_lock_is_retried_then_the_migration_applies(project, orchestrator, sqlite_db):
    import sqlite3

    dbid = project.add_target("sqlite", "l1", {**sqlite_db, "lock_timeout": "200ms", "lock_retries": 5})
    project.add_set("s1", [dbid])
    writer = _sqlite_writer(project, orchestrator, dbid, sqlite_db["path"])
    project.write("s1", "001_alter.sql", "ALTER TABLE t ADD COLUMN x int;\n")
    reader_conn = sqlite3.connect(sqlite_db["path"], isolation_level=None, check_same_thread=False)
    reader = Reader(lambda: reader_conn.execute("SELECT count(*) FROM t").fetchone())
    reader.start()
    committer = _commit_after_first_retry("sqlite", lambda: writer.execute("COMMIT"))
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    reader.stop.set()
    reader.join()
    committer.join()
    writer.close()
    reader_conn.close()
    assert code == 0, err
    assert "lock timeout (200ms) on attempt 1 of 6 (waiting for the write lock held by another connection)" in err
    assert reader.longest < 0.2 + 0.5
    assert _sqlite_columns(sqlite_db["path"]) == ["id", "x"]


def test_sqlite_writer_that_never_lets_go_fails_the_migration_and_records_nothing(project, orchestrator, sqlite_db):
    import sqlite3

    dbid = project.add_target("sqlite", "l1", sqlite_db)
    project.add_set("s1", [dbid])
    writer = _sqlite_writer(project, orchestrator, dbid, sqlite_db["path"])
    project.write("s1", "001_alter.sql", "-- orchestrator: lock-timeout=200ms lock-retries=1\nALTER TABLE t ADD COLUMN x int;\n")
    try:
        code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert code == 1
    assert "s1/001_alter.sql: lock timeout after 2 attempts (waiting for the write lock held by another connection)" in err
    assert _sqlite_columns(sqlite_db["path"]) == ["id"]
    with sqlite3.connect(sqlite_db["path"]) as conn:
        assert conn.execute("SELECT version FROM migration").fetchall() == [("000_create",)]


@pytest.mark.parametrize("settings, retry_line", [
    ({}, "lock timeout (2s) on attempt 1 of 11"),  # the defaults: 2 s, 10 retries
    ({"lock_timeout": "300ms", "lock_retries": 4}, "lock timeout (300ms) on attempt 1 of 5"),  # migrations-wide
])
def test_sqlite_retries_by_default_and_takes_the_migrations_wide_settings(project, orchestrator, sqlite_db, settings,
                                                                         retry_line):
    import json

    dbid = project.add_target("sqlite", "l1", sqlite_db)  # no lock settings on the entry, none in the file
    project.add_set("s1", [dbid])
    writer = _sqlite_writer(project, orchestrator, dbid, sqlite_db["path"])
    project.write("s1", "001_alter.sql", "ALTER TABLE t ADD COLUMN x int;\n")
    path = project.config  # written anew on each read of the property
    config = json.loads(path.read_text())
    config["migrations"].update(settings)
    path.write_text(json.dumps(config))
    committer = _commit_after_first_retry("sqlite", lambda: writer.execute("COMMIT"))
    code, _, err = orchestrator("up", "all", path, dbid, "s1")
    committer.join()
    writer.close()
    assert code == 0, err
    assert f"{retry_line} (waiting for the write lock held by another connection)" in err
    assert _sqlite_columns(sqlite_db["path"]) == ["id", "x"]


def test_sqlite_another_runner_applying_is_reported_locked_not_retried(project, tmp_path, sqlite_db):
    """A second orchestrator process meets the first one's runner lock: locked after busy_timeout, no retries."""
    import os
    import subprocess
    import sys

    dbid = project.add_target("sqlite", "l1", {**sqlite_db, "busy_timeout": 500})
    project.add_set("s1", [dbid])
    project.write("s1", "001_slow.py", "import time\n\n\ndef up(db):\n    db.execute('CREATE TABLE slow (x int)')\n"
                                       "    time.sleep(4)\n")
    config = project.config
    command = [sys.executable, "-m", "orchestrator", "up", "all", str(config), dbid, "s1"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock_file = tmp_path / (os.path.basename(sqlite_db["path"]) + ".orchestrator-lock")
    deadline = time.monotonic() + 30
    while (not lock_file.exists() or not lock_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first runner is inside its migration once it has written its name
    started = time.monotonic()
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    waited = time.monotonic() - started
    first_err = first.communicate(timeout=60)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 1, second.stderr
    assert f"{dbid}/s1 locked by " in second.stderr and f"pid {first.pid}" in second.stderr
    assert "lock timeout" not in second.stderr  # not taken for another application's writer
    assert waited < 4  # reported after busy_timeout, not after the first runner's migration
    import sqlite3

    with sqlite3.connect(sqlite_db["path"]) as conn:
        assert conn.execute("SELECT version, status FROM migration").fetchall() == [("001_slow", "applied")]
