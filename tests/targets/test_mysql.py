"""MySQL/MariaDB quirks: connection settings, the ledger's MySQL shape and its
adoption from the C tool, GET_LOCK locking, the dirty flag, real scripts, and
several processes at once. Every test runs against the real server in its own
database (the ``mysql_db`` fixture)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import MysqlConfig
from orchestrator.errors import LockHeld, OrchestratorError, TargetUnreachable
from orchestrator.sets import discover
from orchestrator.targets import open_target
from orchestrator.targets.mysql import lock_name
from tests.conftest import mysql_connect, unique

DATA = Path(__file__).resolve().parent.parent / "data" / "mysql"


def make_target(entry: dict[str, Any], table: str = "migration", **overrides: Any):
    target = open_target(MysqlConfig.model_validate({"host_id": "m1", **entry, **overrides}), table)
    target.connect()
    return target


def query(entry: dict[str, Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with mysql_connect(entry["dbname"]) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def ledger(entry: dict[str, Any], table: str = "migration") -> dict[str, dict[str, Any]]:
    rows = query(entry, f"SELECT set_id, version, apply_time, checksum, duration_ms, status, statement, error FROM `{table}` ORDER BY version")
    keys = ("set_id", "version", "apply_time", "checksum", "duration_ms", "status", "statement", "error")
    return {row[1]: dict(zip(keys, row)) for row in rows}


def setup_project(project: Any, mysql_db: dict[str, Any], files: dict[str, str], **entry: Any) -> Path:
    dbid = project.add_target("mysql", "m1", {**mysql_db, **entry})
    project.add_set("s1", [dbid])
    for name, content in files.items():
        project.write("s1", name, content)
    return project.config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- connecting --------------------------------------------------------------


def test_connects_without_tls_in_autocommit_with_no_extra_round_trips(mysql_db: Any) -> None:
    target = make_target(mysql_db)
    try:
        conn = target.connection
        # PyMySQL's "preferred" TLS would build a context per connect; none was built.
        assert conn.ssl is False and getattr(conn, "ctx", None) is None
        assert conn.get_autocommit()
        rows = target._execute("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_cipher', 'Questions')")
        status = {name: value for name, value in rows}
        assert status["Ssl_cipher"] == ""
        # SET NAMES and this SHOW STATUS: no SHOW VARIABLES, no SET autocommit.
        assert int(status["Questions"]) <= 2
    finally:
        target.close()


def test_tls_true_never_falls_back_to_plain_text(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    have_ssl = query(mysql_db, "SELECT @@have_ssl")[0][0]
    config = setup_project(project, mysql_db, {"001_t.sql": "CREATE TABLE t (id INT);"}, tls=True)
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    if have_ssl == "YES":
        assert code == 0, err
        target = make_target(mysql_db, tls=True)
        try:
            assert target._execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")[0][1] != ""
        finally:
            target.close()
    else:
        # This server offers no TLS: asking for it must fail, not silently connect in clear.
        assert code == 3
        assert "mysql.m1: unreachable" in err and "TLS" in err
        assert query(mysql_db, "SHOW TABLES") == []


@pytest.fixture
def password_user(mysql_db: Any) -> Any:
    """A user with a password, for checking that the password never leaks."""
    user, password = unique("orch_u"), "Pw-" + unique("secret")
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
        cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'%%'", (user,))
    yield user, password
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))


@pytest.mark.parametrize("case", ["wrong password", "refused port", "unknown database"])
def test_unreachable_names_dbid_and_cause_never_the_password(
    case: str, mysql_db: Any, password_user: Any, project: Any, orchestrator: Any, monkeypatch: Any
) -> None:
    user, password = password_user
    entry = {**mysql_db, "user": user, "password": "${ORCH_TEST_MYSQL_PASSWORD}"}
    if case == "wrong password":
        password = "Wrong-" + unique("secret")
        expected = ("error 1045", "Access denied", "check user and password")
    elif case == "refused port":
        entry["port"] = free_port()
        expected = ("error 2003", "Connection refused")
    else:
        entry["dbname"] = unique("orch_missing")
        expected = ("error 1049", "Unknown database", "create the database")
    monkeypatch.setenv("ORCH_TEST_MYSQL_PASSWORD", password)
    dbid = project.add_target("mysql", "m1", entry)
    project.add_set("s1", [dbid])
    project.write("s1", "001_t.sql", "CREATE TABLE t (id INT);")
    for argv in (("up", "all"), ("up", "all", "-vv"), ("resolve",)):
        if argv == ("resolve",):
            args = ("resolve", project.config, dbid, "s1", "001_t", "--forget")
        else:
            args = (*argv[:2], project.config, dbid, "s1", *argv[2:])
        code, out, err = orchestrator(*args)
        assert code == 3, err
        assert "mysql.m1: unreachable" in err
        for word in expected:
            assert word in err
        assert password not in out + err
        assert "Traceback" not in err
        assert len([line for line in err.splitlines() if "ERROR" in line]) == 1


def test_password_user_applies_and_password_never_printed(
    mysql_db: Any, password_user: Any, project: Any, orchestrator: Any, monkeypatch: Any
) -> None:
    user, password = password_user
    monkeypatch.setenv("ORCH_TEST_MYSQL_PASSWORD", password)
    config = setup_project(project, mysql_db, {"001_t.sql": "CREATE TABLE t (id INT);"},
                           user=user, password="${ORCH_TEST_MYSQL_PASSWORD}")
    code, out, err = orchestrator("up", "all", config, "mysql.m1", "s1", "-vv")
    assert code == 0, err
    assert password not in out + err
    assert ledger(mysql_db)["001_t"]["status"] == "applied"


def test_a_server_that_never_answers_is_unreachable_after_the_timeout(mysql_db: Any) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts TCP connections, never sends a handshake
        with pytest.raises(TargetUnreachable) as unreachable:
            make_target(mysql_db, port=silent.getsockname()[1], connection_timeout=1)
    assert "error 2013" in str(unreachable.value) and "did not answer within connection_timeout" in str(unreachable.value)


def test_long_statements_are_not_cut_by_the_connect_timeout(mysql_db: Any, tmp_path: Path) -> None:
    # connection_timeout bounds the runner's own ledger and lock queries, never a migration's statements.
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "001_slow.sql").write_text("SELECT SLEEP(1.2);\nCREATE TABLE t (id INT);\n")
    script = discover("s1", tmp_path / "s1").migrations[0].script_for("mysql")
    target = make_target(mysql_db, connection_timeout=1)
    try:
        target.ensure_ledger()
        assert target.apply(script).statements == 2
    finally:
        target.close()
    assert ledger(mysql_db)["001_slow"]["status"] == "applied"


def test_unknown_charset_is_a_config_error(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    config = setup_project(project, mysql_db, {"001_t.sql": "SELECT 1;"}, charset="klingon")
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 2
    assert "mysql.m1: charset 'klingon' is not a MySQL character set" in err


def test_lost_connection_is_unreachable(mysql_db: Any) -> None:
    target = make_target(mysql_db)
    try:
        with mysql_connect() as conn, conn.cursor() as cur:
            cur.execute("KILL %s", (target.connection.thread_id(),))
        with pytest.raises(TargetUnreachable) as lost:
            target.applied("s1")
        assert lost.value.exit_code == 3 and "mysql.m1: unreachable: lost the connection" in str(lost.value)
    finally:
        target.close()


# -- the ledger ----------------------------------------------------------------


def test_ledger_has_mysql_types_and_a_set_version_key(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    long_version = "2024-01-01_00-00-00_" + "x" * 160  # 180 characters: the longest allowed
    config = setup_project(project, mysql_db, {f"{long_version}.sql": "CREATE TABLE t (id INT);"})
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 0, err
    columns = {name: (ctype, nullable, collation) for name, ctype, nullable, collation in query(
        mysql_db,
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'migration'",
    )}
    assert columns["version"] == ("varchar(180)", "NO", "utf8mb4_bin")
    assert columns["set_id"] == ("varchar(100)", "NO", "utf8mb4_bin")
    assert columns["apply_time"][0] == "bigint(20)"
    assert {"checksum", "duration_ms", "status", "statement", "error", "applied_by"} <= set(columns)
    key = query(mysql_db, "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                          "AND TABLE_NAME = 'migration' AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX")
    assert [k[0] for k in key] == ["set_id", "version"]
    assert query(mysql_db, "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                           "AND TABLE_NAME = 'migration'")[0][0] == "InnoDB"
    assert ledger(mysql_db)[long_version]["status"] == "applied"


@pytest.mark.parametrize("c_table", [
    "CREATE TABLE migration (version VARCHAR(180) PRIMARY KEY, apply_time INT)",
    "CREATE TABLE migration (version VARCHAR(255) NOT NULL, apply_time INT NULL) CHARACTER SET latin1",
])
def test_adopts_a_c_tool_ledger_without_losing_rows(c_table: str, mysql_db: Any, project: Any, orchestrator: Any) -> None:
    query(mysql_db, c_table)
    query(mysql_db, "INSERT INTO migration VALUES ('2020-01-01_00-00-00_one', 1577836800), ('2020-01-02_00-00-00_two', NULL)"
          if "NULL)" in c_table else
          "INSERT INTO migration VALUES ('2020-01-01_00-00-00_one', 1577836800), ('2020-01-02_00-00-00_two', 1577923200)")
    files = {"2020-01-01_00-00-00_one.sql": "CREATE TABLE one (id INT);",
             "2020-01-02_00-00-00_two.sql": "CREATE TABLE two (id INT);",
             "2020-01-03_00-00-00_three.sql": "CREATE TABLE three (id INT);"}
    config = setup_project(project, mysql_db, files)
    # Status reads the old table as it is (no set_id column yet) and changes nothing.
    target = make_target(mysql_db)
    try:
        before = target.applied("s1")
        assert sorted(before) == ["2020-01-01_00-00-00_one", "2020-01-02_00-00-00_two"]
        assert all(row.legacy for row in before.values())
        assert "set_id" not in target._ledger_columns()
    finally:
        target.close()
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 0, err
    rows = ledger(mysql_db)
    assert sorted(rows) == sorted(v.removesuffix(".sql") for v in files)
    assert rows["2020-01-01_00-00-00_one"]["apply_time"] == 1577836800
    assert rows["2020-01-01_00-00-00_one"]["set_id"] == "" and rows["2020-01-01_00-00-00_one"]["status"] == "applied"
    assert rows["2020-01-03_00-00-00_three"]["set_id"] == "s1"
    # Only the new migration ran: the adopted ones are not run again.
    tables = {t[0] for t in query(mysql_db, "SHOW TABLES")}
    assert tables == {"migration", "three"}
    key = query(mysql_db, "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                          "AND TABLE_NAME = 'migration' AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX")
    assert [k[0] for k in key] == ["set_id", "version"]
    # The C tool keeps working against the adopted table.
    query(mysql_db, "INSERT INTO migration (version, apply_time) VALUES ('2020-01-04_00-00-00_c_tool', 1)")
    assert ledger(mysql_db)["2020-01-04_00-00-00_c_tool"]["status"] == "applied"


def test_a_table_of_another_shape_is_not_taken_for_a_ledger(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    query(mysql_db, "CREATE TABLE migration (id INT PRIMARY KEY, note TEXT)")
    config = setup_project(project, mysql_db, {"001_t.sql": "CREATE TABLE t (id INT);"})
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 1
    assert f"mysql.m1: table {mysql_db['dbname']}.migration exists but is not a migration ledger" in err
    target = make_target(mysql_db)
    try:
        with pytest.raises(OrchestratorError, match="is not a migration ledger"):
            target.ensure_ledger()
    finally:
        target.close()
    assert [c[0] for c in query(mysql_db, "SHOW COLUMNS FROM migration")] == ["id", "note"]  # untouched
    assert query(mysql_db, "SHOW TABLES LIKE 't'") == []


@pytest.mark.parametrize("start", ["no table", "c-tool table"])
def test_runners_of_different_sets_create_or_upgrade_the_ledger_once(start: str, mysql_db: Any) -> None:
    if start == "c-tool table":
        query(mysql_db, "CREATE TABLE migration (version VARCHAR(180) PRIMARY KEY, apply_time INT)")
        query(mysql_db, "INSERT INTO migration VALUES ('v0', 7)")
    targets = [make_target(mysql_db) for _ in range(4)]
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def runner(index: int) -> None:
        try:
            with targets[index].lock(f"set{index}", wait=5):
                barrier.wait()
                targets[index].ensure_ledger()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for target in targets:
        target.close()
    assert errors == []
    rows = ledger(mysql_db)
    assert rows == ({} if start == "no table" else {"v0": {**rows["v0"], "set_id": "", "apply_time": 7, "status": "applied"}})
    assert len(query(mysql_db, "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                               "AND TABLE_NAME = 'migration' AND COLUMN_NAME = 'set_id'")) == 1


# -- locking -------------------------------------------------------------------


def test_lock_names_are_bounded_and_distinct() -> None:
    short = lock_name("app", "migration", "s1")
    assert short == "orchestrator:app.migration:s1"
    long_a = lock_name("d" * 64, "migration", "a" * 100)
    long_b = lock_name("d" * 64, "migration", "b" * 100)
    assert len(long_a) <= 64 and len(long_b) <= 64 and long_a != long_b
    assert lock_name("app", "migration", "") != lock_name("app", "migration", "s1")


def test_get_lock_holder_is_named_and_released(mysql_db: Any) -> None:
    set_id = "s" * 100  # a lock name past 64 characters, hashed
    first, second = make_target(mysql_db), make_target(mysql_db)
    try:
        assert second.holder(set_id) is None
        with first.lock(set_id, wait=0):
            holder = second.holder(set_id)
            assert holder is not None and holder.startswith(f"connection {first.connection.thread_id()} from 127.0.0.1:")
            with pytest.raises(LockHeld) as held:
                with second.lock(set_id, wait=0.2):
                    pass
            assert f"mysql.m1/{set_id} locked by connection {first.connection.thread_id()}" in str(held.value)
        assert second.holder(set_id) is None
        with second.lock(set_id, wait=0):
            pass
        # Inside a migration, the holder also names the runner and the version from its running row.
        first.ensure_ledger()
        first._insert_row(set_id, "007_slow", None, None, status="running")
        with first.lock(set_id, wait=0):
            assert second.holder(set_id).endswith(f"pid {os.getpid()}, applying 007_slow)")
    finally:
        first.close()
        second.close()


def test_missing_privileges_give_one_line_not_a_traceback(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    user = unique("orch_ro")
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER %s@'%%'", (user,))
        cur.execute(f"GRANT SELECT ON `{mysql_db['dbname']}`.* TO %s@'%%'", (user,))
    try:
        config = setup_project(project, mysql_db, {"001_t.sql": "CREATE TABLE t (id INT);"}, user=user)
        code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
        assert code == 1
        assert f"mysql.m1: cannot create or upgrade the ledger table migration: error 1142: CREATE command denied to user '{user}'" in err
        assert "Traceback" not in err and "internal error" not in err
    finally:
        with mysql_connect() as conn, conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))


# -- the dirty flag ------------------------------------------------------------


def test_a_version_recorded_meanwhile_is_skipped_not_run(mysql_db: Any, tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "001_t.sql").write_text("CREATE TABLE t (id INT);\n")
    script = discover("s1", tmp_path / "s1").migrations[0].script_for("mysql")
    target = make_target(mysql_db)
    try:
        target.ensure_ledger()
        target.record("s1", "001_t", script.checksum)  # another runner got there first
        assert target.apply(script) is None
    finally:
        target.close()
    assert query(mysql_db, "SHOW TABLES LIKE 't'") == []
    assert ledger(mysql_db)["001_t"]["status"] == "applied"


def test_a_transaction_left_open_is_rolled_back_and_fails(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    config = setup_project(project, mysql_db, {
        "001_t.sql": "CREATE TABLE t (id INT) ENGINE=InnoDB;",
        "002_open.sql": "START TRANSACTION;\nINSERT INTO t VALUES (1);\n",
    })
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 1
    assert "s1/002_open.sql: left a transaction open" in err
    assert query(mysql_db, "SELECT COUNT(*) FROM t")[0][0] == 0
    assert ledger(mysql_db)["002_open"]["status"] == "failed"


def test_explicit_transactions_and_use_in_scripts(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    other = unique("orch_other")
    query(mysql_db, f"CREATE DATABASE `{other}`")
    try:
        config = setup_project(project, mysql_db, {
            "001_txn.sql": "CREATE TABLE t (id INT) ENGINE=InnoDB;\nSTART TRANSACTION;\nINSERT INTO t VALUES (1);\nCOMMIT;\n",
            "002_use.sql": f"USE `{other}`;\nCREATE TABLE elsewhere (id INT);\n",
            "003_here.sql": "CREATE TABLE here (id INT);\n",
        })
        code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
        assert code == 0, err
        assert query(mysql_db, "SELECT id FROM t") == [(1,)]
        assert sorted(ledger(mysql_db)) == ["001_txn", "002_use", "003_here"]
        # After a USE, the next migration still runs in the target's database.
        assert {t[0] for t in query(mysql_db, "SHOW TABLES")} == {"migration", "t", "here"}
        assert query(mysql_db, f"SHOW TABLES FROM `{other}`") == [("elsewhere",)]
    finally:
        query(mysql_db, f"DROP DATABASE IF EXISTS `{other}`")


# -- real scripts ---------------------------------------------------------------


def test_real_scripts_run_unchanged(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("mysql", "m1", mysql_db)
    folder = project.add_set("s1", [dbid])
    for path in sorted(DATA.glob("*.sql")):
        shutil.copy(path, folder / path.name)
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 0, err
    rows = ledger(mysql_db)
    assert [rows[v]["status"] for v in sorted(rows)] == ["applied"] * 3
    # DELIMITER blocks: trigger, procedures and a function, all working.
    routines = {name: kind for name, kind in query(
        mysql_db, "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()")}
    assert routines == {"deposit": "PROCEDURE", "double_it": "FUNCTION", "count_down": "PROCEDURE", "bump": "PROCEDURE"}
    triggers = {t[0] for t in query(mysql_db, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()")}
    assert triggers == {"account_ai", "tally_bi"}
    assert query(mysql_db, "SELECT note FROM audit ORDER BY id") == [("opened; balance 10.50",), ("negative; opened in debt",)]
    assert query(mysql_db, "SELECT double_it(21)") == [(42,)]
    query(mysql_db, "CALL deposit(1, 4.50)")
    assert str(query(mysql_db, "SELECT balance FROM account WHERE id = 1")[0][0]) == "15.00"
    # Bootstrap-style procedure body without DELIMITER, called by the same file.
    assert query(mysql_db, "SELECT k, n FROM tally ORDER BY k") == [("a", 2), ("b", 1)]
    # Strings, identifiers and comments holding ';', non-ASCII and emoji, byte for byte.
    assert query(mysql_db, "SELECT id, `col;umn`, note FROM `odd;name` ORDER BY id") == [
        (1, "plain; semicolon", 'double "quoted"; text'),
        (2, "it's; doubled quote", "backslash ' quote; here"),
        (3, "héllo wörld; ünïcode", "漢字; かな"),
        (4, "emoji 🚀; 🎉", "end -- not a comment; really"),
        (5, "after a versioned comment", None),
    ]
    assert query(mysql_db, "SELECT COLUMN_COMMENT FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                           "AND COLUMN_NAME = 'col;umn'") == [("a comment; with a semicolon",)]


def test_errors_name_file_statement_line_and_server_message(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    config = setup_project(project, mysql_db, {
        "001_syntax.sql": "-- header\nCREATE TABLE ok1 (id INT);\n\nCREATE TABLE bad (\n  id INT,\n  name VARCHAR(10) NOT NULL,\n  WHERE x INT\n);\n",
    })
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 1
    # The server says "at line 4" of the statement, which starts on line 4 of the file.
    assert "s1/001_syntax.sql: statement 2 (line 7): error 1064: You have an error in your SQL syntax" in err
    assert "near 'WHERE x INT )' at line 4" in err
    row = ledger(mysql_db)["001_syntax"]
    assert row["status"] == "failed" and row["statement"] == 2 and row["error"].startswith("error 1064: ")


def test_python_migration_gets_the_pymysql_connection(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    config = setup_project(project, mysql_db, {
        "001_py.py": (
            "import pymysql\n\n"
            "def up(db):\n"
            "    assert isinstance(db.connection, pymysql.connections.Connection)\n"
            "    assert db.driver == 'mysql' and db.dbid == 'mysql.m1'\n"
            "    with db.connection.cursor() as cur:\n"
            "        cur.execute('CREATE TABLE py (id INT, label VARCHAR(20))')\n"
            "    db.execute('INSERT INTO py VALUES (%s, %s)', (1, 'ünï 🚀'))\n"
            "    assert db.query('SELECT label FROM py WHERE id = %s', (1,)) == [('ünï 🚀',)]\n"
        ),
        "002_py_fails.py": "def up(db):\n    db.execute('INSERT INTO py VALUES (2, %s)', ('two',))\n    return False\n",
    })
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 1
    assert "s1/002_py_fails.py: up() returned False" in err
    rows = ledger(mysql_db)
    assert rows["001_py"]["status"] == "applied"
    assert rows["002_py_fails"]["status"] == "failed" and rows["002_py_fails"]["error"] == "up() returned False"
    assert query(mysql_db, "SELECT id, label FROM py ORDER BY id") == [(1, "ünï 🚀"), (2, "two")]


# -- several processes ------------------------------------------------------------


def test_four_processes_apply_each_migration_exactly_once(mysql_db: Any, project: Any) -> None:
    files = {"000_counter.sql": "CREATE TABLE counter (version VARCHAR(50) NOT NULL, pid INT);\n"}
    for i in range(1, 13):
        files[f"{i:03d}_bump.sql"] = f"INSERT INTO counter (version) VALUES ('{i:03d}');\nDO SLEEP(0.01);\n"
    config = setup_project(project, mysql_db, files)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "all", str(config), "mysql.m1", "s1", "--lock-wait", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    counts = query(mysql_db, "SELECT version, COUNT(*) FROM counter GROUP BY version ORDER BY version")
    assert counts == [(f"{i:03d}", 1) for i in range(1, 13)]
    rows = ledger(mysql_db)
    assert sorted(rows) == sorted(v.removesuffix(".sql") for v in files)
    assert {row["status"] for row in rows.values()} == {"applied"}
