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
