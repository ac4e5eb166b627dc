"""PostgreSQL target quirks, against the real server (and a real PgBouncer for transaction pooling).

Each test gets its own database (``pg_db``); roles and PgBouncer instances it
starts are removed afterwards. The server here trusts local connections, so
wrong-password handling is checked through a PgBouncer that does SCRAM
authentication itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from orchestrator.config import PostgresqlConfig
from orchestrator.errors import LockHeld, MigrationError, OrchestratorError
from orchestrator.runner import run
from orchestrator.sets import discover
from orchestrator.targets.postgresql import PostgresqlTarget
from tests.conftest import PG, pg_connect, race, unique

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw"
BOUNCER_PASSWORD = "bouncer-pw-42"
ADVISORY_LOCKS = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                  "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def target(entry: dict[str, Any], readonly: bool = False, **overrides: Any) -> PostgresqlTarget:
    t = PostgresqlTarget(PostgresqlConfig.model_validate({"host_id": "p1", **entry, **overrides}), "migration")
    t.connect(readonly=readonly)
    return t


def query(entry: dict[str, Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with pg_connect(entry["dbname"]) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PgBouncer (transaction pooling, SCRAM auth) -------------------------------------


@pytest.fixture(scope="module")
def bouncer() -> Iterator[int]:
    """A PgBouncer in transaction pooling mode in front of the test server; yields its port."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        pytest.fail("pgbouncer is not installed: apt-get install -y pgbouncer (.ci/run does it)")
    folder = Path(tempfile.mkdtemp(prefix="orch_bouncer_"))
    folder.chmod(0o755)  # pgbouncer refuses to run as root, so it drops to postgres and must read this
    port = free_port()
    server = f"host={PG['ip']} port={PG['port']}" + (f" password={PG['password']}" if PG["password"] else "")
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = {server}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {folder / 'userlist.txt'}\npool_mode = transaction\n"
        "max_client_conn = 200\ndefault_pool_size = 20\nignore_startup_parameters = extra_float_digits\n"
    )
    (folder / "userlist.txt").write_text(f'"{PG["user"]}" "{BOUNCER_PASSWORD}"\n')
    for f in folder.iterdir():
        f.chmod(0o644)
    argv = [binary] + (["-u", "postgres"] if os.geteuid() == 0 else []) + [str(folder / "pgbouncer.ini")]
    log_file = open(folder / "log", "wb")
    proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                psycopg.connect(host="127.0.0.1", port=port, user=PG["user"], password=BOUNCER_PASSWORD, dbname="postgres",
                                connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
        else:
            pytest.fail(f"pgbouncer did not come up: {(folder / 'log').read_text()[-500:]}")
        if proc.poll() is not None:
            pytest.fail(f"pgbouncer exited: {(folder / 'log').read_text()[-500:]}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
        shutil.rmtree(folder, ignore_errors=True)


def via_bouncer(pg_db: dict[str, Any], port: int, **extra: Any) -> dict[str, Any]:
    return {**pg_db, "ip": "127.0.0.1", "port": port, "password": BOUNCER_PASSWORD, "pooling": "transaction", **extra}


# -- connecting ---------------------------------------------------------------------


def test_one_autocommit_connection_named_after_the_runner(pg_db: Any) -> None:
    t = target(pg_db)
    try:
        assert t.connection.autocommit
        (name,) = t._execute("SELECT current_setting('application_name')")[0]
        assert name.startswith("orchestrator ") and f"pid {os.getpid()}" in name
        assert t.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        t.close()
    assert t.connection is None


@pytest.mark.parametrize("case", ["refused", "unknown-database", "wrong-password"])
def test_unreachable_is_exit_3_naming_dbid_and_cause_never_the_password(case: str, pg_db: Any, project: Any, orchestrator: Any,
                                                                        monkeypatch: Any, request: Any) -> None:
    monkeypatch.setenv("ORCH_TEST_PG_PASSWORD", PASSWORD)
    entry = {**pg_db, "password": "${ORCH_TEST_PG_PASSWORD}", "connection_timeout": 3}
    expected = {"refused": "connection refused", "unknown-database": "does not exist", "wrong-password": "authentication failed"}[case]
    if case == "refused":
        entry["port"] = free_port()
    elif case == "unknown-database":
        entry["dbname"] = unique("orch_missing")
    else:
        entry["port"] = request.getfixturevalue("bouncer")  # SCRAM with another password than s3cret-pw
    dbid = project.add_target("postgresql", "p1", entry)
    write(project.add_set("s1", [dbid]), "0001_t.sql", "CREATE TABLE t (id int);\n")
    code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 3, err
    lines = [line for line in err.splitlines() if "ERROR" in line]
    assert len(lines) == 1 and "postgresql.p1: unreachable:" in lines[0] and expected in lines[0].lower(), err
    assert f"{entry['port']}/{entry['dbname']}" in lines[0]
    assert "Traceback" not in err
    assert PASSWORD not in out + err


def test_connection_lost_mid_run_is_unreachable(pg_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("postgresql", "p1", pg_db)
    folder = project.add_set("s1", [dbid])
    write(folder, "0001_a.sql", "CREATE TABLE a (id int);\n")
    write(folder, "0002_b.sql", "CREATE TABLE b (id int);\nSELECT pg_terminate_backend(pg_backend_pid());\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 3, err
    assert "postgresql.p1: unreachable: connection lost" in err
    assert [r[0] for r in query(pg_db, "SELECT version FROM migration ORDER BY 1")] == ["0001_a"]
    assert query(pg_db, "SELECT to_regclass('b')") == [(None,)]


# -- ledger -------------------------------------------------------------------------


def test_schema_holds_ledger_and_unqualified_objects_and_reading_creates_nothing(pg_db: Any, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_users.sql", "CREATE TABLE users (id serial PRIMARY KEY, name text);\nINSERT INTO users (name) VALUES ('a');\n")
    migration_set = discover("s1", tmp_path / "s1")
    reader = target(pg_db, readonly=True, schema="Tenant A")
    try:
        assert reader.applied("s1") == {}
    finally:
        reader.close()
    assert query(pg_db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'Tenant A'") == [(0,)]
    t = target(pg_db, schema="Tenant A")
    try:
        run(t, migration_set)
    finally:
        t.close()
    assert query(pg_db, 'SELECT set_id, version FROM "Tenant A".migration') == [("s1", "0001_users")]
    assert query(pg_db, "SELECT table_schema FROM information_schema.tables WHERE table_name = 'users'") == [("Tenant A",)]
    assert query(pg_db, "SELECT to_regclass('public.migration')") == [(None,)]


def test_status_works_with_read_only_privileges(pg_db: Any, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_t.sql", "CREATE TABLE t (id int);\n")
    t = target(pg_db)
    try:
        run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()
    role = unique("orch_ro")
    with pg_connect(pg_db["dbname"]) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT SELECT ON migration TO "{role}"')
        conn.execute('REVOKE CREATE ON SCHEMA public FROM PUBLIC')
    try:
        reader = target(pg_db, readonly=True, user=role)
        try:
            rows = reader.applied("s1")
            assert list(rows) == ["0001_t"] and rows["0001_t"].checksum
            assert reader.holder("s1") is None
            assert reader.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        finally:
            reader.close()
        with pg_connect(pg_db["dbname"]) as conn:
            conn.execute(f'REVOKE SELECT ON migration FROM "{role}"')
        reader = target(pg_db, readonly=True, user=role)
        try:
            with pytest.raises(OrchestratorError, match=r"^postgresql\.p1: cannot read the ledger public\.migration: permission denied"):
                reader.applied("s1")
        finally:
            reader.close()
    finally:
        with pg_connect(pg_db["dbname"]) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with pg_connect() as conn:
            conn.execute(f'DROP ROLE "{role}"')


@pytest.mark.parametrize("pk", ["", "CONSTRAINT c_tool_key "])
def test_adopts_a_c_tool_ledger_without_losing_rows(pk: str, pg_db: Any, tmp_path: Path) -> None:
    query(pg_db, f"CREATE TABLE migration (version VARCHAR(180) {pk}PRIMARY KEY, apply_time INTEGER)")
    query(pg_db, "INSERT INTO migration VALUES ('0001_old', 1700000000), ('0002_old', 1700000100)")
    for name in ("0001_old", "0002_old", "0003_new"):
        write(tmp_path / "s1", f"{name}.sql", f"CREATE TABLE t_{name} (id int);\n")
    t = target(pg_db)
    try:
        assert sorted(t.applied("s1")) == ["0001_old", "0002_old"]  # read before adoption, nothing changed
        report = run(t, discover("s1", tmp_path / "s1"))
        rows = t.applied("s1")
        assert t.applied("another-set").keys() == {"0001_old", "0002_old"}  # adopted rows count for every set
    finally:
        t.close()
    assert [a.version for a in report.applied] == ["0003_new"]
    assert query(pg_db, "SELECT to_regclass('t_0001_old')") == [(None,)]  # adopted, not re-run
    assert (rows["0001_old"].set_id, rows["0001_old"].apply_time, rows["0003_new"].set_id) == ("", 1700000000, "s1")
    assert query(pg_db, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'migration'::regclass AND contype = 'p'") \
        == [("PRIMARY KEY (set_id, version)",)]
    assert query(pg_db, "SELECT data_type FROM information_schema.columns WHERE table_name = 'migration' AND column_name = 'apply_time'") \
        == [("bigint",)]
    query(pg_db, "INSERT INTO migration (version, apply_time) VALUES ('0004_c_tool', 1)")  # the C tool can still write


def test_a_table_of_another_shape_is_not_taken_for_a_ledger(pg_db: Any, tmp_path: Path) -> None:
    query(pg_db, "CREATE TABLE migration (id int, note text)")
    write(tmp_path / "s1", "0001_t.sql", "CREATE TABLE t (id int);\n")
    t = target(pg_db)
    try:
        with pytest.raises(OrchestratorError, match="exists but is not a migration ledger"):
            run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()


def test_different_sets_creating_the_ledger_at_once_do_not_collide(pg_db: Any, tmp_path: Path) -> None:
    sets = [f"s{i}" for i in range(4)]
    for name in sets:
        write(tmp_path / name, f"0001_{name}.sql", f"CREATE TABLE t_{name} (id int);\n")
    barrier, errors = threading.Barrier(len(sets)), []

    def runner(name: str) -> None:
        t = target(pg_db, schema="fresh")
        try:
            barrier.wait()
            run(t, discover(name, tmp_path / name), lock_wait=30)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            t.close()

    threads = [threading.Thread(target=runner, args=(name,)) for name in sets]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    assert sorted(query(pg_db, "SELECT set_id FROM fresh.migration")) == [(s,) for s in sets]


# -- locking ------------------------------------------------------------------------


def test_lock_key_is_a_stable_64_bit_hash_of_schema_table_and_set(pg_db: Any) -> None:
    t = PostgresqlTarget(PostgresqlConfig.model_validate({"host_id": "p1", **pg_db}), "migration")
    digest = hashlib.sha256(b"orchestrator\x00public\x00migration\x00s1").digest()
    assert t._key("s1") == int.from_bytes(digest[:8], "big", signed=True)
    other = PostgresqlTarget(PostgresqlConfig.model_validate({"host_id": "p1", **pg_db, "schema": "x"}), "migration")
    assert len({t._key("s1"), t._key("s2"), other._key("s1")}) == 3
    assert -(2**63) <= t._key("s1") < 2**63


def test_holder_names_the_session_and_a_waiter_never_blocks(pg_db: Any) -> None:
    first, second = target(pg_db), target(pg_db)
    try:
        assert second.holder("s1") is None
        with first.lock("s1", wait=0):
            holder = second.holder("s1")
            (pid,) = first._execute("SELECT pg_backend_pid()")[0]
            assert holder is not None and re.fullmatch(
                rf"orchestrator \S+ pid {os.getpid()} \(backend pid {pid}, from 127\.0\.0\.1\) since \d\d:\d\d:\d\dZ", holder), holder
            with pytest.raises(LockHeld) as held:
                with second.lock("s1", wait=0.2):
                    pass
            assert str(held.value).startswith(f"postgresql.p1/s1 locked by {holder}")
            assert second.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert second.holder("s1") is None
        assert query(pg_db, ADVISORY_LOCKS) == [(0,)]
    finally:
        first.close()
        second.close()


def test_four_cli_processes_apply_each_migration_exactly_once(pg_db: Any, project: Any) -> None:
    dbid = project.add_target("postgresql", "p1", pg_db)
    folder = project.add_set("s1", [dbid])
    versions = [f"{i:04d}_bump" for i in range(1, 9)]
    write(folder, versions[0] + ".sql", "CREATE TABLE counter (version text PRIMARY KEY);\nINSERT INTO counter VALUES ('0001_bump');\n")
    for version in versions[1:]:
        write(folder, version + ".sql", f"INSERT INTO counter VALUES ('{version}');\nSELECT pg_sleep(0.02);\n")
    config = project.config
    argv = [sys.executable, "-m", "orchestrator", "up", "all", str(config), dbid, "s1", "--lock-wait", "120"]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(180), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    assert query(pg_db, "SELECT version FROM counter ORDER BY 1") == [(v,) for v in versions]
    assert query(pg_db, "SELECT version FROM migration WHERE set_id = 's1' ORDER BY 1") == [(v,) for v in versions]
    assert sum(err.count("applied ") for _, err in results) == len(versions)


# -- applying -----------------------------------------------------------------------


def test_failure_names_statement_and_file_line_and_rolls_everything_back(pg_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("postgresql", "p1", pg_db)
    folder = project.add_set("s1", [dbid])
    write(folder, "0001_bad.sql",
          "-- creates, fills, then fails\nCREATE TABLE items (id int, name text);\n\n"
          "INSERT INTO items VALUES (1, 'a;b');\nSELECT id,\n       nosuch\n  FROM items;\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 1
    lines = [line for line in err.splitlines() if "ERROR" in line]
    assert len(lines) == 1, err
    assert lines[0].endswith('s1/0001_bad.sql: statement 3 (line 6): column "nosuch" does not exist')
    assert query(pg_db, "SELECT to_regclass('items'), to_regclass('migration') IS NOT NULL") == [(None, True)]
    assert query(pg_db, "SELECT count(*) FROM migration") == [(0,)]


def test_do_block_failure_points_at_the_failing_line_with_hint(pg_db: Any, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_do.sql",
          "CREATE TABLE t (id int);\n\nDO $body$\nDECLARE n int;\nBEGIN\n  SELECT count(*) INTO n FROM t;\n"
          "  IF n = 0 THEN\n    RAISE EXCEPTION 'table t is empty' USING HINT = 'seed it first';\n  END IF;\nEND\n$body$;\n")
    t = target(pg_db)
    try:
        with pytest.raises(MigrationError) as failure:
            run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()
    assert (failure.value.statement, failure.value.line) == (2, 8)
    assert failure.value.message == "table t is empty (hint: seed it first)"


def test_rollback_failure_still_reports_the_first_error(pg_db: Any, tmp_path: Path, caplog: Any) -> None:
    write(tmp_path / "s1", "0001_bad.sql", "CREATE TABLE t (id int);\nINSERT INTO nosuch VALUES (1);\n")
    t = target(pg_db)

    def broken_rollback() -> None:
        raise psycopg.OperationalError("rollback failed on purpose")

    t._rollback = broken_rollback  # type: ignore[method-assign]
    try:
        with pytest.raises(MigrationError, match=r'statement 2 \(line 2\): relation "nosuch" does not exist'):
            run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()  # closing the connection discards the open transaction
    assert "error ignored in rollback: rollback failed on purpose" in caplog.text
    assert query(pg_db, "SELECT to_regclass('t'), to_regclass('migration') IS NOT NULL") == [(None, True)]


def test_a_script_that_ends_the_transaction_is_refused_and_rolled_back(pg_db: Any, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_rb.sql", "CREATE TABLE t (id int);\nROLLBACK;\nCREATE TABLE u (id int);\n")
    t = target(pg_db)
    try:
        with pytest.raises(MigrationError, match=r"statement 2 \(line 2\): this statement ended the migration's transaction"):
            run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()
    assert query(pg_db, "SELECT to_regclass('t'), to_regclass('u'), (SELECT count(*) FROM migration)") == [(None, None, 0)]


REAL_SCRIPT = r"""-- A script as people write them: nothing here may be changed to run it.
/* block comment; with a semicolon /* and a nested one; */ still comment */
CREATE TABLE "odd;name" ("col;1" text DEFAULT 'x;y', "naïve" text, qty int CHECK (qty >= 0));

CREATE FUNCTION bump(n int) RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
  s text := 'inside; a string';
BEGIN
  -- a comment; inside the body
  RETURN n + 1;
END;
$fn$;

CREATE FUNCTION twice(n int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT n * 2;
END;

DO $$
BEGIN
  INSERT INTO "odd;name" ("col;1", "naïve", qty) VALUES ('from DO; block', 'ünïcödé 日本語', bump(1));
END
$$;

INSERT INTO "odd;name" VALUES (E'it''s \\; escaped', $q$dollar 'quoted'; text$q$, twice(2));
COMMENT ON TABLE "odd;name" IS 'semi; colon';
INSERT INTO "odd;name" VALUES ('no trailing semicolon', '✓', 0)"""


def test_real_scripts_run_unchanged(pg_db: Any, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_real.sql", REAL_SCRIPT)
    t = target(pg_db)
    try:
        report = run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()
    assert report.applied[0].statements == 7
    assert query(pg_db, 'SELECT "col;1", "naïve", qty FROM "odd;name" ORDER BY qty, "col;1"') == [
        ("no trailing semicolon", "✓", 0),
        ("from DO; block", "ünïcödé 日本語", 2),
        ("it's \\; escaped", "dollar 'quoted'; text", 4),
    ]
    assert query(pg_db, "SELECT bump(41), twice(21), obj_description('\"odd;name\"'::regclass)") == [(42, 42, "semi; colon")]


def test_no_transaction_runs_create_index_concurrently_and_records_after_success(pg_db: Any, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_table.sql", "CREATE TABLE t (id int, name text);\n")
    write(tmp_path / "s1", "0002_index.sql",
          "-- orchestrator: no-transaction\nCREATE INDEX CONCURRENTLY t_name ON t (name);\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n")
    write(tmp_path / "s1", "0003_broken.sql",
          "-- orchestrator: no-transaction\nCREATE INDEX CONCURRENTLY t_both ON t (id, name);\nCREATE INDEX CONCURRENTLY bad ON nosuch (x);\n")
    t = target(pg_db)
    try:
        with pytest.raises(MigrationError, match=r"0003_broken.sql: statement 2 \(line 3\): relation \"nosuch\" does not exist"):
            run(t, discover("s1", tmp_path / "s1"))
        rows = t.applied("s1")
    finally:
        t.close()
    assert sorted(rows) == ["0001_table", "0002_index"]  # the failed one is not recorded...
    assert query(pg_db, "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE i.indrelid = 't'::regclass ORDER BY 1") == [("t_both", True), ("t_id", True), ("t_name", True)]
    # ...and its first statement, which ran outside any transaction, stays: the README says to write such files idempotently.


def test_python_migration_gets_the_psycopg_connection_and_runs_in_the_transaction(pg_db: Any, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_py.py",
          "def up(db):\n"
          "    assert type(db.connection).__module__.startswith('psycopg')\n"
          "    db.execute('CREATE TABLE kv (k text PRIMARY KEY, v text)')\n"
          "    for k, v in [('a', '%s literal'), ('b', 'ünï')]:\n"
          "        db.execute('INSERT INTO kv VALUES (%s, %s)', (k, v))\n"
          "    assert db.query('SELECT v FROM kv WHERE k = %s', ('b',)) == [('ünï',)]\n"
          "    assert db.driver == 'postgresql' and db.dbid == 'postgresql.p1'\n")
    write(tmp_path / "s1", "0002_fails.py",
          "def up(db):\n    db.execute('INSERT INTO kv VALUES (%s, %s)', ('c', 'gone'))\n    raise ValueError('no good')\n")
    t = target(pg_db)
    try:
        with pytest.raises(MigrationError, match=r"0002_fails.py: line 3: up\(\) raised ValueError: no good"):
            run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()
    assert query(pg_db, "SELECT k, v FROM kv ORDER BY k") == [("a", "%s literal"), ("b", "ünï")]
    assert query(pg_db, "SELECT version FROM migration") == [("0001_py",)]


@pytest.mark.slow
def test_a_big_generated_script_applies_with_about_one_copy_in_memory(pg_db: Any, project: Any, tmp_path: Path) -> None:
    """~5 MB of INSERTs through the CLI in a child process; its peak RSS is compared with a one-line migration's."""
    dbid = project.add_target("postgresql", "p1", pg_db)
    folder = project.add_set("big", [dbid])
    project.add_set("tiny", [dbid])
    write(project.root / "sets" / "tiny", "0001_tiny.sql", "CREATE TABLE tiny (id int);\n")
    rows, size = 0, 0
    with (folder / "0001_big.sql").open("w", encoding="utf-8") as fh:
        fh.write("CREATE TABLE big (id bigint PRIMARY KEY, name text, note text);\n")
        while size < 5_000_000:
            line = f"INSERT INTO big (id, name, note) VALUES ({rows}, 'name {rows}; ok', 'héllo {'x' * 60}');\n"
            fh.write(line)
            size += len(line.encode())
            rows += 1
    config = project.config
    probe = ("import resource, sys; from orchestrator import cli; code = cli.main(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")

    def peak_kb(set_name: str) -> int:
        done = subprocess.run([sys.executable, "-c", probe, "up", "all", str(config), dbid, set_name],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    baseline, big = peak_kb("tiny"), peak_kb("big")
    assert query(pg_db, "SELECT count(*) FROM big") == [(rows,)]
    assert query(pg_db, "SELECT checksum FROM migration WHERE version = '0001_big'") == \
        [(hashlib.sha256((folder / "0001_big.sql").read_bytes()).hexdigest(),)]
    # The file is read once (bytes, then text: two copies at the peak); statements are slices sent one by one.
    assert big - baseline < 3 * size // 1024, (baseline, big, size)


# -- PgBouncer transaction pooling --------------------------------------------------------


def test_transaction_pooling_applies_each_migration_once_and_leaves_no_session_state(pg_db: Any, bouncer: int, tmp_path: Path) -> None:
    entry = via_bouncer(pg_db, bouncer, schema="app")
    versions = [f"{i:04d}_m" for i in range(1, 9)]  # more than psycopg's prepare threshold (5)
    for i, version in enumerate(versions):
        setup = "CREATE TABLE counter (version text PRIMARY KEY);\n" if i == 0 else ""
        write(tmp_path / "s1", version + ".sql", setup + f"INSERT INTO counter VALUES ('{version}');\n")
    migration_set = discover("s1", tmp_path / "s1")
    errors = race(3, lambda: target(entry), migration_set, lock_wait=60)
    assert errors == []
    assert query(pg_db, "SELECT version FROM app.counter ORDER BY 1") == [(v,) for v in versions]  # SET LOCAL search_path
    assert query(pg_db, "SELECT version, status FROM app.migration ORDER BY 1") == [(v, "applied") for v in versions]
    assert query(pg_db, ADVISORY_LOCKS) == [(0,)]
    with psycopg.connect(host="127.0.0.1", port=bouncer, user=PG["user"], password=BOUNCER_PASSWORD, dbname=pg_db["dbname"],
                         autocommit=True) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)  # nothing leaked to pooled servers


def test_transaction_pooling_lock_is_per_transaction_and_bounded(pg_db: Any, bouncer: int, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_t.sql", "CREATE TABLE t (id int);\n")
    script = discover("s1", tmp_path / "s1").migrations[0].script_for("postgresql")
    first, second = target(via_bouncer(pg_db, bouncer)), target(via_bouncer(pg_db, bouncer))
    try:
        second.ensure_ledger()
        with first.lock("s1", wait=0):  # takes no session lock through a transaction pooler
            assert first.holder("s1") is None
        first._begin()
        first._in_transaction_lock("s1")
        holder = second.holder("s1")
        assert holder is not None and "backend pid" in holder and re.search(r"since \d\d:\d\d:\d\dZ$", holder), holder
        with pytest.raises(LockHeld, match=r"^postgresql\.p1/s1 locked by .*backend pid"):
            with second.lock("s1", wait=0.2):
                second.apply(script)
        assert query(pg_db, "SELECT to_regclass('t'), (SELECT count(*) FROM migration)") == [(None, 0)]
        first._rollback()
        with second.lock("s1", wait=0):
            assert second.apply(script) is not None
        assert second.holder("s1") is None
    finally:
        first.close()
        second.close()


def test_transaction_pooling_no_transaction_file_claims_its_version_first(pg_db: Any, bouncer: int, tmp_path: Path) -> None:
    write(tmp_path / "s1", "0001_table.sql", "CREATE TABLE t (id int);\n")
    write(tmp_path / "s1", "0002_index.sql", "-- orchestrator: no-transaction\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n")
    write(tmp_path / "s1", "0003_bad.sql", "-- orchestrator: no-transaction\nCREATE INDEX CONCURRENTLY bad ON nosuch (x);\n")
    t = target(via_bouncer(pg_db, bouncer))
    try:
        with pytest.raises(MigrationError, match=r"statement 1 \(line 2\): relation \"nosuch\" does not exist"):
            run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()
    assert query(pg_db, "SELECT version, status, statement, error FROM migration ORDER BY 1") == [
        ("0001_table", "applied", None, None),
        ("0002_index", "applied", None, None),
        ("0003_bad", "failed", 1, 'relation "nosuch" does not exist'),  # outcome recorded: it ran outside a transaction
    ]
    assert query(pg_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_id'::regclass") == [(True,)]


def test_transaction_pooling_a_pg_dump_file_leaks_no_session_state(pg_db: Any, bouncer: int, tmp_path: Path) -> None:
    # The real dump sets search_path to '' and check_function_bodies off for its session, and loads rows with COPY.
    write(tmp_path / "s1", "0001_restore.sql", (REPO / "tests" / "data" / "postgresql" / "shop.dump.sql").read_text(encoding="utf-8"))
    write(tmp_path / "s1", "0002_after.sql", "CREATE TABLE after_dump (id int);\n"
          "DO $$ BEGIN IF current_setting('check_function_bodies') <> 'on' THEN RAISE 'settings leaked'; END IF; END $$;\n")
    t = target(via_bouncer(pg_db, bouncer, schema="app"))
    try:
        report = run(t, discover("s1", tmp_path / "s1"))
    finally:
        t.close()
    assert [a.version for a in report.applied] == ["0001_restore", "0002_after"]
    assert query(pg_db, "SELECT count(*), to_regclass('app.after_dump') IS NOT NULL FROM shop.customer") == [(5, True)]
    with psycopg.connect(host="127.0.0.1", port=bouncer, user=PG["user"], password=BOUNCER_PASSWORD, dbname=pg_db["dbname"],
                         autocommit=True) as conn:
        for _ in range(3):  # whichever pooled server connection answers
            assert conn.execute("SELECT current_setting('search_path'), current_setting('check_function_bodies')").fetchone() \
                == ('"$user", public', "on")
