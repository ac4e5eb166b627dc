"""SQLite target quirks: the ledger's columns, one transaction per migration, pragmas, C-tool adoption, read-only status."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import SqliteConfig
from orchestrator.errors import LockHeld, MigrationError, TargetUnreachable
from orchestrator.runner import run
from orchestrator.sets import discover
from orchestrator.targets import open_target
from tests.conftest import race
from orchestrator.targets.sqlite import SqliteTarget


def target_for(path: Path, readonly: bool = False, **entry: Any) -> SqliteTarget:
    target = open_target(SqliteConfig.model_validate({"host_id": "t", "path": str(path), **entry}), "migration")
    target.connect(readonly=readonly)
    return target  # type: ignore[return-value]


def write_set(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return folder


def apply_all(db: Path, folder: Path, name: str = "s1", **entry: Any) -> Any:
    target = target_for(db, **entry)
    try:
        return run(target, discover(name, folder))
    finally:
        target.close()


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def tables(db: Path) -> list[str]:
    return [r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def test_ledger_has_the_c_tool_columns_and_ours(tmp_path: Path) -> None:
    folder = write_set(tmp_path / "s1", {"2024-01-01_00-00-00_users.sql": "CREATE TABLE users (id INTEGER PRIMARY KEY);\n"})
    db = tmp_path / "app.db"
    before = int(time.time())
    report = apply_all(db, folder)
    after = int(time.time())
    columns = {name: (ctype, notnull) for _, name, ctype, notnull, _, _ in query(db, "PRAGMA table_info(migration)")}
    assert columns["version"] == ("VARCHAR(180)", 1)
    assert columns["apply_time"] == ("BIGINT", 1)
    assert {"set_id", "checksum", "duration_ms"} <= set(columns)
    pk = [name for _, name, _, _, _, pk in sorted(query(db, "PRAGMA table_info(migration)"), key=lambda r: r[5]) if pk]
    assert pk == ["set_id", "version"]
    [(set_id, version, apply_time, checksum, duration_ms, status)] = query(
        db, "SELECT set_id, version, apply_time, checksum, duration_ms, status FROM migration")
    assert (set_id, version, status) == ("s1", "2024-01-01_00-00-00_users", "applied")
    assert isinstance(apply_time, int) and before <= apply_time <= after  # Unix seconds, as the C tool
    assert checksum == hashlib.sha256((folder / "2024-01-01_00-00-00_users.sql").read_bytes()).hexdigest()
    assert isinstance(duration_ms, int) and duration_ms >= 0
    assert [a.version for a in report.applied] == ["2024-01-01_00-00-00_users"] and report.applied[0].statements == 1
    assert tables(db) == ["migration", "users"]


def test_migration_and_ledger_row_commit_together(tmp_path: Path) -> None:
    # Statement 1 creates a table, statement 2 fails: no table, no row, the next file never runs.
    folder = write_set(tmp_path / "s1", {
        "001_ok.sql": "CREATE TABLE a (x INTEGER);\nINSERT INTO a VALUES (1);\n",
        "002_bad.sql": "CREATE TABLE b (x INTEGER);\n\n-- then a typo\nINSERT INTO no_such_table VALUES (1);\nCREATE TABLE b2 (x);\n",
        "003_never.sql": "CREATE TABLE c (x INTEGER);\n",
    })
    db = tmp_path / "app.db"
    with pytest.raises(MigrationError) as err:
        apply_all(db, folder)
    assert str(err.value) == "s1/002_bad.sql: statement 2 (line 4): no such table: no_such_table"
    assert (err.value.statement, err.value.line) == (2, 4)
    assert tables(db) == ["a", "migration"]
    assert query(db, "SELECT version FROM migration") == [("001_ok",)]
    # Fixing the file lets the run continue where it stopped.
    (folder / "002_bad.sql").write_text("CREATE TABLE b (x INTEGER);\n")
    report = apply_all(db, folder)
    assert [a.version for a in report.applied] == ["002_bad", "003_never"]
    assert tables(db) == ["a", "b", "c", "migration"]


def test_a_failing_ledger_write_rolls_the_migration_back(tmp_path: Path) -> None:
    # A trigger that refuses ledger rows stands in for a full disk at the INSERT or COMMIT.
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001_ok.sql": "SELECT 1;\n"})
    apply_all(db, folder)
    write_set(folder, {"002_blocked.sql": "CREATE TABLE t (x);\nCREATE TRIGGER no_rows BEFORE INSERT ON migration "
                                          "BEGIN SELECT RAISE(ABORT, 'ledger frozen; ask the DBA'); END;\n"})
    with pytest.raises(MigrationError) as err:
        apply_all(db, folder)
    assert str(err.value) == "s1/002_blocked.sql: recording it failed, the migration was rolled back: ledger frozen; ask the DBA"
    assert tables(db) == ["migration"]
    assert query(db, "SELECT name FROM sqlite_master WHERE type = 'trigger'") == []


def test_script_transaction_wrapper_is_absorbed_and_stays_atomic(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # BEGIN/COMMIT inside the file are skipped: the runner's own transaction holds the
    # whole file and its ledger row, so a failure after the file's COMMIT still undoes it all.
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {
        "001_wrapped.sql": "BEGIN TRANSACTION;\nCREATE TABLE a (x);\nINSERT INTO a VALUES (1);\nCOMMIT;\n"
                           "begin immediate transaction;\nINSERT INTO a VALUES (2);\nEND TRANSACTION;\nINSERT INTO nope VALUES (1);\n",
    })
    with caplog.at_level(logging.DEBUG, logger="migrations"), pytest.raises(MigrationError, match=r"statement 8 \(line 8\): no such table: nope"):
        apply_all(db, folder)
    assert tables(db) == ["migration"]
    assert query(db, "SELECT count(*) FROM migration") == [(0,)]
    assert any("statement 4 (line 4): COMMIT skipped" in r.getMessage() for r in caplog.records)
    (folder / "001_wrapped.sql").write_text("BEGIN TRANSACTION;\nCREATE TABLE a (x);\nINSERT INTO a VALUES (1);\nCOMMIT;\n")
    report = apply_all(db, folder)
    assert report.applied[0].statements == 2  # BEGIN and COMMIT are not counted
    assert query(db, "SELECT x FROM a") == [(1,)]


def test_rollback_in_a_script_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001_rb.sql": "CREATE TABLE a (x);\nSAVEPOINT sp;\nINSERT INTO a VALUES (1);\n"
                                                     "ROLLBACK TO sp;\nRELEASE sp;\nROLLBACK;\nCREATE TABLE after_rollback (x);\n"})
    with pytest.raises(MigrationError) as err:
        apply_all(db, folder)
    assert str(err.value).startswith("s1/001_rb.sql: statement 6 (line 6): ROLLBACK ended the migration's transaction")
    assert tables(db) == ["migration"]  # nothing after the ROLLBACK ran outside a transaction
    assert query(db, "SELECT count(*) FROM migration") == [(0,)]


def test_python_migrations_run_in_the_transaction(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {
        "001_seed.py": "ROLES = ['admin', 'viewer']\n\n\ndef up(db):\n"
                       "    assert db.driver == 'sqlite' and db.dbid == 'sqlite.t'\n"
                       "    db.execute('CREATE TABLE role (name TEXT PRIMARY KEY)')\n"
                       "    for r in ROLES:\n        db.execute('INSERT INTO role VALUES (?)', (r,))\n"
                       "    assert db.query('SELECT count(*) FROM role') == [(2,)]\n"
                       "    assert db.connection.in_transaction\n",
        "002_false.py": "def up(db):\n    db.execute('CREATE TABLE f (x)')\n    return False\n",
    })
    with pytest.raises(MigrationError, match=r"^s1/002_false.py: up\(\) returned False$"):
        apply_all(db, folder)
    assert tables(db) == ["migration", "role"]
    assert query(db, "SELECT name FROM role ORDER BY name") == [("admin",), ("viewer",)]
    assert query(db, "SELECT version FROM migration") == [("001_seed",)]


def test_python_raise_names_the_line_and_rolls_back(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001_raise.py": "def helper():\n    raise ValueError('bad data; row 7')\n\n\n"
                                                        "def up(db):\n    db.execute('CREATE TABLE r (x)')\n    helper()\n"})
    with pytest.raises(MigrationError) as err:
        apply_all(db, folder)
    assert str(err.value) == "s1/001_raise.py: line 2: up() raised ValueError: bad data; row 7"
    assert tables(db) == ["migration"]
    assert query(db, "SELECT count(*) FROM migration") == [(0,)]


def test_python_commit_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001_commit.py": "def up(db):\n    db.execute('CREATE TABLE c (x)')\n    db.connection.commit()\n"})
    with pytest.raises(MigrationError, match=r"^s1/001_commit.py: up\(\) ended the migration's transaction"):
        apply_all(db, folder)
    assert query(db, "SELECT count(*) FROM migration") == [(0,)]


def test_no_transaction_directive(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001_big.sql": "CREATE TABLE t (x);\nINSERT INTO t VALUES (randomblob(100000));\nDELETE FROM t;\n",
                                         "002_vacuum.sql": "VACUUM;\n"})
    with pytest.raises(MigrationError) as err:
        apply_all(db, folder)
    assert str(err.value) == ("s1/002_vacuum.sql: statement 1 (line 1): cannot VACUUM from within a transaction; "
                              "make '-- orchestrator: no-transaction' the first line to run this migration outside a transaction")
    (folder / "002_vacuum.sql").write_text("-- orchestrator: no-transaction\nVACUUM;\nPRAGMA journal_mode = DELETE;\n")
    report = apply_all(db, folder, journal_mode="DELETE")
    assert [a.version for a in report.applied] == ["002_vacuum"]
    assert query(db, "SELECT version FROM migration ORDER BY version") == [("001_big",), ("002_vacuum",)]


def test_foreign_keys_pragma_inside_the_transaction_is_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001.sql": "PRAGMA foreign_keys=OFF;\nPRAGMA foreign_keys = ON;\nCREATE TABLE p (id INTEGER PRIMARY KEY);\n"})
    with caplog.at_level(logging.WARNING, logger="migrations"):
        apply_all(db, folder)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["s1/001.sql: statement 2 (line 2): PRAGMA foreign_keys has no effect inside a transaction, foreign keys "
                        "stay OFF; make '-- orchestrator: no-transaction' the first line to run this migration outside a transaction"]


def test_user_version_and_non_ascii(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001_ü.sql": "CREATE TABLE \"straße\" (name TEXT DEFAULT 'Grüß; Gott -- ok');\n"
                                                    "INSERT INTO \"straße\" VALUES ('日本語; テキスト'), ('emoji 🚀');\n"
                                                    "-- the last statement has no ';'\npragma user_version = 7"})
    report = apply_all(db, folder)
    assert report.applied[0].version == "001_ü" and report.applied[0].statements == 3
    assert query(db, "PRAGMA user_version") == [(7,)]
    assert query(db, 'SELECT name FROM "straße" ORDER BY rowid') == [("日本語; テキスト",), ("emoji 🚀",)]
    assert query(db, "SELECT version FROM migration") == [("001_ü",)]


@pytest.mark.parametrize("configured, expected", [("WAL", "wal"), ("DELETE", "delete"), ("truncate", "truncate")])
def test_journal_mode_from_config(tmp_path: Path, configured: str, expected: str) -> None:
    db = tmp_path / "app.db"
    # Start from the other mode, so the target has to switch it.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = " + ("DELETE" if expected == "wal" else "WAL"))
    conn.close()
    apply_all(db, write_set(tmp_path / "s1", {"001.sql": "CREATE TABLE t (x);\n"}), journal_mode=configured)
    conn = sqlite3.connect(db)
    try:
        actual = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    # WAL is a property of the file; the others are per connection, so ask the target's own connection too.
    target = target_for(db, journal_mode=configured)
    try:
        assert target.connection.execute("PRAGMA journal_mode").fetchone()[0] == expected
    finally:
        target.close()
    assert actual == ("wal" if expected == "wal" else "delete")


def test_busy_timeout_from_config_and_a_held_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    target = target_for(db, busy_timeout=1234)
    try:
        assert target.connection.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
    finally:
        target.close()
    folder = write_set(tmp_path / "s1", {"001.sql": "CREATE TABLE t (x);\n"})
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer in the middle of something
    try:
        with pytest.raises(LockHeld) as err:
            apply_all(db, folder, busy_timeout=100)
        assert str(err.value) == "sqlite.t/s1 locked by another writer (waited busy_timeout 100 ms); another runner is applying this set, try again later"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [a.version for a in apply_all(db, folder).applied] == ["001"]


def test_c_tool_ledger_is_adopted_without_losing_rows(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE migration (version VARCHAR(180) PRIMARY KEY, apply_time INTEGER);
        INSERT INTO migration VALUES ('2023-01-01_00-00-00_init', 1672531200), ('2023-02-01_00-00-00_users', 1675209600),
                                     ('2022-12-01_00-00-00_gone', 1669852800);
        CREATE TABLE users (id INTEGER PRIMARY KEY);
    """)
    conn.close()
    folder = write_set(tmp_path / "s1", {
        "2023-01-01_00-00-00_init.sql": "CREATE TABLE init (x);\n",
        "2023-02-01_00-00-00_users.sql": "CREATE TABLE users (id INTEGER PRIMARY KEY);\n",
        "2024-01-01_00-00-00_orders.sql": "CREATE TABLE orders (id INTEGER PRIMARY KEY);\n",
    })
    # A read-only look first: the old rows count, nothing is changed.
    reader = target_for(db, readonly=True)
    try:
        assert sorted(reader.applied("s1")) == ["2022-12-01_00-00-00_gone", "2023-01-01_00-00-00_init", "2023-02-01_00-00-00_users"]
        assert reader.applied("s1")["2023-01-01_00-00-00_init"].legacy
    finally:
        reader.close()
    assert [r[1] for r in query(db, "PRAGMA table_info(migration)")] == ["version", "apply_time"]
    report = apply_all(db, folder)
    assert [a.version for a in report.applied] == ["2024-01-01_00-00-00_orders"]  # the adopted ones are not re-run
    assert "init" not in tables(db)
    assert query(db, "SELECT set_id, version, apply_time, status FROM migration ORDER BY version") == [
        ("", "2022-12-01_00-00-00_gone", 1669852800, "applied"),
        ("", "2023-01-01_00-00-00_init", 1672531200, "applied"),
        ("", "2023-02-01_00-00-00_users", 1675209600, "applied"),
        ("s1", "2024-01-01_00-00-00_orders", query(db, "SELECT apply_time FROM migration WHERE set_id = 's1'")[0][0], "applied"),
    ]
    assert not any(name.startswith("migration_") for name in tables(db))
    # The C tool keeps working on the adopted table: its two-column insert still fits.
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO migration (version, apply_time) VALUES ('2024-02-01_00-00-00_c_tool', 1706745600)")
    conn.commit()
    conn.close()
    target = target_for(db)
    try:
        assert target.applied("other_set")["2024-02-01_00-00-00_c_tool"].legacy
    finally:
        target.close()


def test_readonly_status_on_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "not" / "yet" / "app.db"
    target = target_for(db, readonly=True)
    try:
        assert target.applied("s1") == {}
    finally:
        target.close()
    assert not db.exists() and not (tmp_path / "not").exists()


def test_readonly_status_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    apply_all(db, write_set(tmp_path / "s1", {"001.sql": "CREATE TABLE t (x);\n"}), journal_mode="DELETE")
    stat = db.stat()
    target = target_for(db, readonly=True, journal_mode="WAL")
    try:
        assert list(target.applied("s1")) == ["001"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            target.connection.execute("CREATE TABLE x (y)")
    finally:
        target.close()
    assert (db.stat().st_mtime_ns, db.stat().st_size) == (stat.st_mtime_ns, stat.st_size)
    # no -wal/-shm: the mode was not switched (the runner lock file is the apply's)
    assert sorted(os.listdir(tmp_path)) == ["app.db", "app.db.orchestrator-lock", "s1"]


@pytest.mark.parametrize("name", ["app #1?.db", "100% ü.db", "a%20b.db"])
def test_readonly_status_opens_a_file_whose_name_a_uri_would_misread(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "dir with space"
    db = folder / name
    apply_all(db, write_set(tmp_path / "s1", {"001.sql": "CREATE TABLE t (x);\n"}), journal_mode="DELETE")
    before = sorted(os.listdir(folder))
    target = target_for(db, readonly=True)
    try:
        assert list(target.applied("s1")) == ["001"]
    finally:
        target.close()
    assert sorted(os.listdir(folder)) == before  # the file itself was read, nothing new beside it


def test_new_database_and_its_folder_are_created(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "var" / "data" / "app.db"
    with caplog.at_level(logging.INFO, logger="migrations"):
        apply_all(db, write_set(tmp_path / "s1", {"001.sql": "CREATE TABLE t (x);\n"}))
    assert tables(db) == ["migration", "t"]
    assert any(f"sqlite.t: created new database {db}" == r.getMessage() for r in caplog.records)


def test_unopenable_paths_are_unreachable(tmp_path: Path) -> None:
    (tmp_path / "plain_file").write_text("x")
    (tmp_path / "not_a_db.db").write_text("hello, I am text\n" * 100)
    cases = [(tmp_path / "plain_file" / "app.db", "cannot create folder"), (tmp_path / "not_a_db.db", "file is not a database"),
             (tmp_path, "unable to open database file")]
    for path, message in cases:
        with pytest.raises(TargetUnreachable) as err:
            target_for(path)
        assert str(err.value).startswith("sqlite.t: unreachable: ") and message in str(err.value)
        assert err.value.exit_code == 3


def test_sets_on_one_file_are_independent(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    apply_all(db, write_set(tmp_path / "a", {"001.sql": "CREATE TABLE a (x);\n"}), name="a")
    apply_all(db, write_set(tmp_path / "b", {"001.sql": "CREATE TABLE b (x);\n"}), name="b")
    assert query(db, "SELECT set_id, version FROM migration ORDER BY set_id") == [("a", "001"), ("b", "001")]
    assert tables(db) == ["a", "b", "migration"]


def test_custom_ledger_table_name(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    target = open_target(SqliteConfig.model_validate({"host_id": "t", "path": str(db)}), "schema_history")
    target.connect()
    try:
        run(target, discover("s1", write_set(tmp_path / "s1", {"001.sql": "CREATE TABLE t (x);\n"})))
    finally:
        target.close()
    assert tables(db) == ["schema_history", "t"]
    assert query(db, "SELECT version FROM schema_history") == [("001",)]


def test_no_transaction_migration_runs_once_under_racing_runners(tmp_path: Path) -> None:
    # Without a transaction there is no write lock to serialise on; a lock file takes its place.
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {
        "001_once.sql": "-- orchestrator: no-transaction\nCREATE TABLE once (x INTEGER);\n"
                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000) SELECT count(*) FROM c;\n"
                        "INSERT INTO once VALUES (1);\n",
        "002_after.sql": "INSERT INTO once VALUES (2);\n",
    })
    migration_set = discover("s1", folder)
    errors = race(3, lambda: target_for(db, busy_timeout=10000), migration_set)
    assert errors == []
    assert query(db, "SELECT x FROM once ORDER BY x") == [(1,), (2,)]
    assert query(db, "SELECT version FROM migration ORDER BY version") == [("001_once",), ("002_after",)]


def test_held_lock_file_reports_locked_with_its_holder(tmp_path: Path) -> None:
    import fcntl

    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001.sql": "-- orchestrator: no-transaction\nVACUUM;\n"})
    lock_path = tmp_path / "app.db.orchestrator-lock"
    with open(lock_path, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("build-host pid 4242")
        holder.flush()
        with pytest.raises(LockHeld) as err:
            apply_all(db, folder, busy_timeout=100)
    assert str(err.value) == "sqlite.t/s1 locked by build-host pid 4242; another runner is applying this set, try again later"
    assert query(db, "SELECT count(*) FROM migration") == [(0,)]
    assert [a.version for a in apply_all(db, folder).applied] == ["001"]  # released with its holder's file


def test_runner_lock_is_held_from_the_first_migration_until_the_set_is_let_go(tmp_path: Path) -> None:
    """Taken once per run, not once per migration: another runner finds it held between two migrations too."""
    import fcntl

    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001.sql": "CREATE TABLE a (x INTEGER);\n", "002.sql": "CREATE TABLE b (y INTEGER);\n",
                                         "003.sql": "-- orchestrator: no-transaction\nCREATE TABLE c (z INTEGER);\n"})
    scripts = [m.script_for("sqlite") for m in discover("s1", folder).migrations]
    target = target_for(db, busy_timeout=1234, lock_timeout="3s")

    def held_by_another() -> bool:
        with open(tmp_path / "app.db.orchestrator-lock", "a+") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(other, fcntl.LOCK_UN)
            return False

    def busy_timeout() -> int:
        return int(target.connection.execute("PRAGMA busy_timeout").fetchone()[0])

    try:
        with target.lock("s1", 1):
            target.ensure_ledger()
            assert not held_by_another()  # taken by the first migration, not by lock()
            assert target.apply(scripts[0]) is not None
            assert held_by_another() and busy_timeout() == 3000  # between migrations: still held, the lock timeout kept
            assert target.apply(scripts[1]) is not None
            assert target.apply(scripts[2]) is not None  # no-transaction: each statement waits busy_timeout
            assert held_by_another() and busy_timeout() == 1234
        assert not held_by_another() and busy_timeout() == 1234  # let go with the set, the entry's busy timeout back
        other_set = discover("s2", write_set(tmp_path / "s2", {"004.sql": "CREATE TABLE d (w INTEGER);\n"}))
        assert target.apply(other_set.migrations[0].script_for("sqlite")) is not None
        assert not held_by_another()  # outside lock(): let go after the migration
    finally:
        target.close()
    assert tables(db) == ["a", "b", "c", "d", "migration"]


def test_later_files_of_a_run_go_directly_and_a_busy_write_lock_is_their_first_attempt(tmp_path: Path) -> None:
    """The second file on takes the short way (BEGIN and body, row, COMMIT); its rows are the general path's, and
    an application writer holding the write lock costs it one attempt of the lock policy, no more, no less."""
    from orchestrator.targets import runner_identity

    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {"001.sql": "CREATE TABLE a (x);\n", "002.sql": "CREATE TABLE b (y);\n"})
    scripts = [m.script_for("sqlite") for m in discover("s1", folder).migrations]
    target = target_for(db, lock_timeout="1s", lock_retries=0)
    writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        with target.lock("s1", 1):
            target.ensure_ledger()
            assert target.apply(scripts[0]) is not None  # the general path, which takes the runner lock
            writer.execute("BEGIN IMMEDIATE")  # another application's writer
            started = time.monotonic()
            with pytest.raises(MigrationError, match=r"lock timeout after 1 attempt \(waiting for the write lock held by"):
                target.apply(scripts[1])
            assert 0.9 < time.monotonic() - started < 1.7  # one wait of the lock timeout: the direct path's was the attempt
            writer.execute("ROLLBACK")
            assert target.apply(scripts[1]) is not None
            assert target.apply(scripts[1]) is None  # recorded: the direct path's failed insert is the general path's None
    finally:
        writer.close()
        target.close()
    assert tables(db) == ["a", "b", "migration"]
    assert query(db, "SELECT set_id, version, checksum, status, applied_by FROM migration ORDER BY version") == [
        ("s1", s.version, s.checksum, "applied", runner_identity()) for s in scripts]


def test_journal_mode_off_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="migrations"):
        target_for(tmp_path / "app.db", journal_mode="OFF").close()
    assert any("journal_mode OFF: SQLite cannot roll back" in r.getMessage() for r in caplog.records)


def test_plain_sql_runs_as_one_script_and_a_failure_still_names_its_statement(tmp_path: Path) -> None:
    """A plain file runs in one call into SQLite; a failure is rolled back and located statement by statement."""
    db = tmp_path / "app.db"
    folder = write_set(tmp_path / "s1", {
        "001_ok.sql": "CREATE TABLE a (x INTEGER) -- the first table; its comment ends the line\n;\n"
                      "CREATE TABLE b (y TEXT DEFAULT 'x;y');\nINSERT INTO b (y) VALUES ('semi;colon');\n",
        "002_bad.sql": "CREATE TABLE c (z INTEGER);\nINSERT INTO c VALUES (1);\n\nINSERT INTO missing VALUES (1);\n",
    })
    migration_set = discover("s1", folder)
    target = target_for(db)
    try:
        with pytest.raises(MigrationError) as failure:
            run(target, migration_set)
        rows = target.applied("s1")
    finally:
        target.close()
    assert (failure.value.statement, failure.value.line) == (3, 4)
    assert "no such table: missing" in str(failure.value)
    assert list(rows) == ["001_ok"] and rows["001_ok"].checksum == migration_set.migrations[0].script_for("sqlite").checksum
    assert query(db, "SELECT y FROM b") == [("semi;colon",)]
    tables = [r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    assert tables == ["a", "b", "migration"]  # c rolled back with its failed migration
    assert query(db, "SELECT sql FROM sqlite_master WHERE name = 'b'") == [("CREATE TABLE b (y TEXT DEFAULT 'x;y')",)]
