"""MySQL/MariaDB scripts as the ``mariadb`` client runs them: DELIMITER chunks that
hold several statements, and a session that every migration starts afresh.
Each test applies files through the CLI to its own real MariaDB database and
asserts the catalog, the data and the ledger."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import mysql_connect

MULTI = Path(__file__).resolve().parent / "data" / "mysql" / "multi"


def query(entry: dict[str, Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with mysql_connect(entry["dbname"]) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def ledger(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keys = ("version", "status", "statement", "error")
    rows = query(entry, "SELECT version, status, statement, error FROM migration ORDER BY version")
    return {row[0]: dict(zip(keys, row)) for row in rows}


def setup_project(project: Any, mysql_db: dict[str, Any], files: dict[str, str]) -> Path:
    dbid = project.add_target("mysql", "m1", mysql_db)
    project.add_set("s1", [dbid])
    for name, content in files.items():
        project.write("s1", name, content)
    return project.config


# -- several statements in one DELIMITER chunk ----------------------------------


def test_parts_of_a_chunk_keep_their_file_lines() -> None:
    from orchestrator.sqlsplit import mysql_parts, split

    text = ("-- header\nDELIMITER //\nDROP TRIGGER IF EXISTS a;\n\nCREATE TRIGGER a AFTER INSERT ON t FOR EACH ROW\n"
            "BEGIN\n  SET @n = 1;\nEND;\n//\nDELIMITER ;\nSELECT 1;\n")
    chunk, single = list(split(text, "mysql"))
    assert (chunk.number, chunk.line) == (1, 3)
    assert [(p.number, p.line, p.text.split()[0]) for p in mysql_parts(chunk)] == [(1, 3, "DROP"), (2, 5, "CREATE")]
    assert mysql_parts(chunk)[1].text.endswith("END")  # the body's own ';' stays inside
    assert [(p.number, p.line, p.text) for p in mysql_parts(single)] == [(1, 11, "SELECT 1")]


def test_chunks_of_several_statements_run_as_the_client_runs_them(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("mysql", "m1", mysql_db)
    folder = project.add_set("s1", [dbid])
    for path in sorted(MULTI.glob("*.sql")):
        shutil.copy(path, folder / path.name)
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 0, err
    rows = ledger(mysql_db)
    assert {v: (r["status"], r["statement"], r["error"]) for v, r in rows.items()} == {
        "001_accounting_procedures": ("applied", None, None),
        "002_event_triggers": ("applied", None, None),
    }
    routines = query(mysql_db, "SELECT ROUTINE_NAME, ROUTINE_TYPE, SECURITY_TYPE FROM information_schema.ROUTINES "
                               "WHERE ROUTINE_SCHEMA = DATABASE() ORDER BY ROUTINE_NAME")
    assert routines == [("acct_start", "PROCEDURE", "INVOKER"), ("acct_stop", "PROCEDURE", "INVOKER"),
                        ("new_usage_period", "PROCEDURE", "INVOKER")]
    triggers = query(mysql_db, "SELECT TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS "
                               "WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY TRIGGER_NAME")
    assert triggers == [("event_delete_trigger", "DELETE", "event"), ("event_insert_trigger", "INSERT", "event"),
                        ("event_update_trigger", "UPDATE", "event"), ("monitor_insert_trigger", "INSERT", "monitor")]
    # The procedures ran (a repeated start is one row) and the triggers fired.
    assert query(mysql_db, "SELECT username, session_seconds, input_octets, output_octets, terminate_cause FROM acct_session") == [
        ("alice", 1800, 1000, 2500, "User-Request")]
    assert query(mysql_db, "SELECT monitor_id, total_events, total_disk_space, archived_events FROM monitor_status "
                           "ORDER BY monitor_id") == [(1, 2, 350, 1), (2, 0, 0, 0)]
    query(mysql_db, "CALL new_usage_period()")
    assert query(mysql_db, "SELECT username, octets FROM usage_period") == [("alice", 3500)]


@pytest.mark.parametrize(("second", "line", "error"), [
    # A run-time error: the server names no line; the failing statement's own line is reported.
    ("INSERT INTO missing_table VALUES (1);\nCREATE PROCEDURE q() BEGIN END$$\n", 9, "error 1146: Table '{db}.missing_table' doesn't exist"),
    # A syntax error: the server counts lines from the failing statement's start.
    ("CREATE PROCEDURE q()\nBEGIN\n  SELEC 1;\nEND$$\n", 11, "error 1064: You have an error in your SQL syntax"),
])
def test_a_failure_inside_a_chunk_names_the_chunk_and_its_statement(
    second: str, line: int, error: str, mysql_db: Any, project: Any, orchestrator: Any
) -> None:
    config = setup_project(project, mysql_db, {
        "001_routines.sql": (
            "CREATE TABLE t (id INT);\n"                 # 1  statement 1
            "DELIMITER $$\n"                             # 2
            "DROP PROCEDURE IF EXISTS p;\n"              # 3  statement 2
            "CREATE PROCEDURE p()\n"                     # 4
            "BEGIN\n  SELECT * FROM t;\nEND$$\n"         # 5-7
            "DROP PROCEDURE IF EXISTS q;\n"              # 8  statement 3, its first statement
            + second                                     # 9  its second statement
            + "DELIMITER ;\nCREATE TABLE never (id INT);\n"
        ),
    })
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 1
    expected = error.format(db=mysql_db["dbname"])
    assert f"s1/001_routines.sql: statement 3 (line {line}): {expected}" in err
    assert "(in its statement 2, of the block from line 8)" in err
    row = ledger(mysql_db)["001_routines"]
    assert row["status"] == "failed" and row["statement"] == 3 and row["error"].startswith(expected)
    # What ran before the failure stays, as with the client; nothing after it ran.
    assert query(mysql_db, "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()") == [("p",)]
    assert query(mysql_db, "SHOW TABLES") == [("migration",), ("t",)]


# -- every migration starts from the session of connect ---------------------------

SEEN = ("foreign_key_checks", "unique_checks", "sql_mode", "character_set_client", "character_set_connection",
        "character_set_results", "collation_connection", "time_zone", "tx_isolation", "insert_id")


def test_session_settings_do_not_leak_into_the_next_migration(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    from orchestrator.targets.mysql import lock_name

    lock = lock_name(mysql_db["dbname"], "migration", "s1")
    config = setup_project(project, mysql_db, {
        # What dump files and hand-written scripts set at their top, and never set back.
        "001_settings.sql": (
            "/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;\n"
            "SET unique_checks = 0;\n"
            "SET sql_mode = '';\n"
            "SET NAMES latin1;\n"
            "SET time_zone = '+05:00';\n"
            "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n"
            "SET @leak = 'from 001', @number = 42;\n"
            "SET insert_id = 1000;\n"
            "SET timestamp = 1000000000;\n"
            "CREATE TABLE parent (id INT PRIMARY KEY) ENGINE=InnoDB;\n"
            "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT, FOREIGN KEY (parent_id) REFERENCES parent (id)) ENGINE=InnoDB;\n"
            "CREATE TABLE short_text (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(3)) ENGINE=InnoDB;\n"
        ),
        # Reads the session as it finds it.
        "002_observe.py": (
            "def up(db):\n"
            "    db.execute('CREATE TABLE seen (name VARCHAR(64) PRIMARY KEY, value VARCHAR(512) NULL)')\n"
            f"    for name in {SEEN!r}:\n"
            "        db.execute('INSERT INTO seen SELECT %s, @@SESSION.' + name, (name,))\n"
            "    db.execute(\"INSERT INTO seen SELECT 'leak', @leak\")\n"
            "    db.execute(\"INSERT INTO seen SELECT 'number', @number\")\n"
            "    db.execute(\"INSERT INTO seen SELECT 'frozen clock', NOW() < '2010-01-01'\")\n"
            f"    db.execute(\"INSERT INTO seen SELECT 'holds the run lock', IS_USED_LOCK(%s) = CONNECTION_ID()\", ({lock!r},))\n"
        ),
        # Behaves by them: non-ASCII text through the connection's character set, an auto-increment id.
        "003_text.sql": "INSERT INTO short_text (v) VALUES ('ünï');\n",
        # Strict mode is back: this would be silently truncated under sql_mode ''.
        "004_strict.sql": "INSERT INTO short_text (v) VALUES ('far too long');\n",
    })
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 1
    assert "s1/004_strict.sql: statement 1 (line 1): error 1406: Data too long for column 'v'" in err
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT " + ", ".join(f"@@SESSION.{name}" for name in SEEN))
        defaults = dict(zip(SEEN, (None if v is None else str(v) for v in cur.fetchone())))
    assert defaults["foreign_key_checks"] == "1" and defaults["character_set_client"] == "utf8mb4"
    assert dict(query(mysql_db, "SELECT name, value FROM seen")) == {
        **defaults, "leak": None, "number": None, "frozen clock": "0", "holds the run lock": "1",
    }
    assert query(mysql_db, "SELECT id, v FROM short_text") == [(1, "ünï")]
    rows = ledger(mysql_db)
    assert [rows[v]["status"] for v in sorted(rows)] == ["applied", "applied", "applied", "failed"]
    assert rows["004_strict"]["statement"] == 1 and rows["004_strict"]["error"].startswith("error 1406: ")


def test_a_change_only_the_server_sees_is_set_back_and_plain_files_skip_the_check(mysql_db: Any, tmp_path: Path) -> None:
    """The server flags each statement that changed the session: a trigger setting a user variable is caught
    (no file text says so), and files whose statements changed nothing are not checked at all."""
    from orchestrator.config import MysqlConfig
    from orchestrator.runner import run
    from orchestrator.sets import discover
    from orchestrator.targets import open_target

    folder = tmp_path / "s1"
    folder.mkdir()
    files = {
        "001_table.sql": "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB;\n",
        "002_trigger.sql": "CREATE TRIGGER note_id BEFORE INSERT ON t FOR EACH ROW SET @last_id = NEW.id;\n",
        "003_insert.sql": "INSERT INTO t VALUES (7);\n",  # fires the trigger: @last_id = 7 in the runner's session
        "004_observe.sql": "CREATE TABLE seen AS SELECT @last_id AS last_id;\n",
        "005_plain.sql": "CREATE TABLE u (id INT PRIMARY KEY);\nINSERT INTO u VALUES (1);\n",
        "006_plain.sql": "ALTER TABLE u ADD COLUMN v INT;\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    target = open_target(MysqlConfig.model_validate({"host_id": "m1", **mysql_db}), "migration")
    target.connect()
    try:
        def checks() -> int:  # the session digest queries this connection has run
            rows = target.connection.cursor()
            rows.execute("SHOW SESSION STATUS LIKE 'Com_execute_sql'")
            return int(rows.fetchone()[1])

        report = run(target, discover("s1", folder))
        assert [a.version for a in report.applied] == [n[:-4] for n in files]
        done = checks()
        more = ["007_plain.sql", "008_plain.sql", "009_set.sql"]
        (folder / "007_plain.sql").write_text("CREATE TABLE w (id INT);\n")
        (folder / "008_plain.sql").write_text("INSERT INTO w VALUES (1), (2);\n")
        (folder / "009_set.sql").write_text("SET @leak = 1;\nCREATE TABLE x (id INT);\n")
        assert [a.version for a in run(target, discover("s1", folder)).applied] == [n[:-4] for n in more]
        assert checks() - done == 1  # 009 only: 007 and 008 changed nothing the server flags
        cur = target.connection.cursor()
        cur.execute("SELECT @leak, @last_id")
        assert cur.fetchone() == (None, None)  # both set back
    finally:
        target.close()
    assert query(mysql_db, "SELECT last_id FROM seen") == [(None,)]  # 003's trigger did not leak into 004


def test_lock_timeouts_follow_each_file_and_are_sent_only_when_they_change(
        mysql_db: Any, project: Any, orchestrator: Any, monkeypatch: Any) -> None:
    from orchestrator.targets.mysql import MysqlTarget

    sent: list[str] = []
    send = MysqlTarget._send
    monkeypatch.setattr(MysqlTarget, "_send", lambda self, sql, params: sent.append(sql) or send(self, sql, params))
    observe = ("CREATE TABLE IF NOT EXISTS seen (version VARCHAR(8), lw INT, ilw INT);\n"
               "INSERT INTO seen SELECT '{v}', @@SESSION.lock_wait_timeout, @@SESSION.innodb_lock_wait_timeout;\n")
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@SESSION.lock_wait_timeout, @@SESSION.innodb_lock_wait_timeout")
        connect = cur.fetchone()
    config = setup_project(project, mysql_db, {
        "001.sql": observe.format(v="001"),
        "002.sql": observe.format(v="002") + "SET SESSION lock_wait_timeout = 77, innodb_lock_wait_timeout = 78;\n",
        "003.sql": observe.format(v="003"),
        "004.sql": "-- orchestrator: lock-timeout=5s\n" + observe.format(v="004"),
        "005.sql": "-- orchestrator: lock-timeout=off\n" + observe.format(v="005"),
        "006.sql": observe.format(v="006"),
    })
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 0, err
    assert query(mysql_db, "SELECT version, lw, ilw FROM seen ORDER BY version") == [
        ("001", 2, 2), ("002", 2, 2), ("003", 2, 2), ("004", 5, 5), ("005", *connect), ("006", 2, 2),
    ]
    # Set when they change (001, 004, 005 back to those of connect, 006), and set back after 002 changed them.
    lock_sets = [sql for sql in sent if sql.startswith("SET ") and "lock_wait_timeout" in sql and "77" not in sql]
    assert len(lock_sets) == 5, lock_sets


def test_foreign_key_checks_are_back_on_for_the_next_migration(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    config = setup_project(project, mysql_db, {
        "001_load.sql": (
            "SET FOREIGN_KEY_CHECKS = 0;\n"
            "CREATE TABLE parent (id INT PRIMARY KEY) ENGINE=InnoDB;\n"
            "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT, FOREIGN KEY (parent_id) REFERENCES parent (id)) ENGINE=InnoDB;\n"
            "INSERT INTO child VALUES (1, 42);\n"  # allowed here, as in a dump being loaded
        ),
        "002_orphan.sql": "INSERT INTO child VALUES (2, 43);\n",
    })
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 1
    assert "s1/002_orphan.sql: statement 1 (line 1): error 1452: Cannot add or update a child row" in err
    assert query(mysql_db, "SELECT id, parent_id FROM child") == [(1, 42)]
    rows = ledger(mysql_db)
    assert rows["001_load"]["status"] == "applied" and rows["002_orphan"]["status"] == "failed"
