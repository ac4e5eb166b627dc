"""``orchestrator resolve`` after a failed migration on a target without transactional DDL.

MySQL commits DDL as it goes, so a migration failing at statement 3 keeps the
effects of statements 1-2 and leaves a ``failed`` row that blocks the set. Each
way out (``--retry`` after fixing the file, ``--mark-applied`` after finishing
by hand, ``--forget`` after reverting by hand) is driven through the CLI and
checked in the database itself.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import mysql_connect

BAD = (
    "-- two statements that work, then one that does not\n"
    "CREATE TABLE first_t (id INT PRIMARY KEY);\n"
    "INSERT INTO first_t VALUES (1), (2);\n"
    "INSERT INTO no_such_table VALUES (1);\n"
    "CREATE TABLE never_t (id INT);\n"
)
FIXED = (
    "-- fixed: safe to run again over the first attempt's leftovers\n"
    "CREATE TABLE IF NOT EXISTS first_t (id INT PRIMARY KEY);\n"
    "INSERT IGNORE INTO first_t VALUES (1), (2);\n"
    "CREATE TABLE IF NOT EXISTS no_such_table (id INT);\n"
    "INSERT INTO no_such_table VALUES (1);\n"
    "CREATE TABLE never_t (id INT);\n"
)


def query(entry: dict[str, Any], sql: str) -> list[tuple[Any, ...]]:
    with mysql_connect(entry["dbname"]) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def ledger(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keys = ("set_id", "version", "apply_time", "checksum", "status", "statement", "error")
    rows = query(entry, "SELECT set_id, version, apply_time, checksum, status, statement, error FROM migration ORDER BY version")
    return {row[1]: dict(zip(keys, row)) for row in rows}


def tables(entry: dict[str, Any]) -> set[str]:
    return {row[0] for row in query(entry, "SHOW TABLES")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def failed(project: Any, mysql_db: Any, orchestrator: Any) -> Any:
    """A MySQL target where 002_bad failed at statement 3; yields (config, entry, path of 002_bad.sql)."""
    dbid = project.add_target("mysql", "m1", mysql_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_base.sql", "CREATE TABLE base (id INT);\n")
    bad = project.write("s1", "002_bad.sql", BAD)
    project.write("s1", "003_after.sql", "CREATE TABLE after_t (id INT);\n")
    config = project.config
    code, _, err = orchestrator("up", "all", config, dbid, "s1")
    assert code == 1
    db = mysql_db["dbname"]
    assert f"s1/002_bad.sql: statement 3 (line 4): error 1146: Table '{db}.no_such_table' doesn't exist" in err
    return config, mysql_db, bad


def test_failure_keeps_earlier_statements_records_the_failure_and_blocks(failed: Any, orchestrator: Any) -> None:
    config, entry, bad = failed
    # Statements 1-2 committed (DDL auto-commits), statement 4 never ran, nor did 003.
    assert tables(entry) == {"migration", "base", "first_t"}
    assert query(entry, "SELECT id FROM first_t ORDER BY id") == [(1,), (2,)]
    rows = ledger(entry)
    assert rows["001_base"]["status"] == "applied"
    assert "003_after" not in rows
    row = rows["002_bad"]
    assert (row["status"], row["statement"], row["set_id"], row["checksum"]) == ("failed", 3, "s1", sha256(bad))
    assert row["error"] == f"error 1146: Table '{entry['dbname']}.no_such_table' doesn't exist"
    # The set stays blocked, and the message names the exact command that unblocks it.
    for _ in range(2):
        code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
        assert code == 1
        assert "mysql.m1/s1: 002_bad failed at statement 3: error 1146" in err
        assert f"'orchestrator resolve {config} mysql.m1 s1 002_bad --retry|--mark-applied|--forget'" in err
        assert "Traceback" not in err
    assert "after_t" not in tables(entry)


def test_retry_after_fixing_the_file_applies_it(failed: Any, orchestrator: Any) -> None:
    config, entry, bad = failed
    bad.write_text(FIXED)
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "002_bad", "--retry")
    assert code == 0, err
    rows = ledger(entry)
    assert rows["002_bad"]["status"] == "applied" and rows["002_bad"]["checksum"] == sha256(bad)
    assert rows["002_bad"]["statement"] is None and rows["002_bad"]["error"] is None
    assert {"never_t", "no_such_table"} <= tables(entry)
    assert "003_after" not in rows  # retry runs the one version it names
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 0, err
    assert ledger(entry)["003_after"]["status"] == "applied"
    assert "after_t" in tables(entry)


def test_retry_of_an_unfixed_file_fails_again_and_stays_blocked(failed: Any, orchestrator: Any) -> None:
    config, entry, _ = failed
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "002_bad", "--retry")
    assert code == 1
    # Statement 1 now fails: first_t is left over from the first attempt.
    assert "s1/002_bad.sql: statement 1 (line 2): error 1050: Table 'first_t' already exists" in err
    row = ledger(entry)["002_bad"]
    assert (row["status"], row["statement"]) == ("failed", 1)


def test_mark_applied_after_finishing_by_hand(failed: Any, orchestrator: Any) -> None:
    config, entry, bad = failed
    query(entry, "CREATE TABLE never_t (id INT)")  # the operator finishes the job
    before = int(time.time())
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "002_bad", "--mark-applied")
    assert code == 0, err
    row = ledger(entry)["002_bad"]
    assert (row["status"], row["checksum"], row["statement"], row["error"]) == ("applied", sha256(bad), None, None)
    assert row["apply_time"] >= before - 1
    assert query(entry, "SELECT COUNT(*) FROM first_t") == [(2,)]  # not run again
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 0, err
    assert ledger(entry)["003_after"]["status"] == "applied"


def test_forget_after_reverting_by_hand_runs_it_again(failed: Any, orchestrator: Any) -> None:
    config, entry, bad = failed
    query(entry, "DROP TABLE first_t")  # the operator reverts statements 1-2
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "002_bad", "--forget")
    assert code == 0, err
    assert "002_bad" not in ledger(entry)
    bad.write_text(BAD.replace("INSERT INTO no_such_table VALUES (1);\n", ""))
    code, _, err = orchestrator("up", "all", config, "mysql.m1", "s1")
    assert code == 0, err
    rows = ledger(entry)
    assert [rows[v]["status"] for v in ("001_base", "002_bad", "003_after")] == ["applied"] * 3
    assert {"first_t", "never_t", "after_t"} <= tables(entry)


def test_resolve_refuses_what_it_cannot_resolve_and_changes_nothing(failed: Any, orchestrator: Any) -> None:
    config, entry, bad = failed
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "003_after", "--retry")
    assert code == 2 and "mysql.m1/s1: '003_after' is not in the ledger; nothing to resolve" in err
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "001_base", "--mark-applied")
    assert code == 2 and "mysql.m1/s1: 001_base is applied, not failed; nothing to resolve" in err
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "002_bad")
    assert code == 2 and "usage:" in err
    # A failed version whose file was deleted: --retry refuses before touching the row; --forget clears it.
    bad.unlink()
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "002_bad", "--retry")
    assert code == 2 and "'002_bad' is not in the set; use --forget" in err
    assert ledger(entry)["002_bad"]["status"] == "failed"
    code, _, err = orchestrator("resolve", config, "mysql.m1", "s1", "002_bad", "--forget")
    assert code == 0, err
    assert "002_bad" not in ledger(entry)


def test_retry_applies_only_the_named_version_even_with_older_pending(project: Any, mysql_db: Any, orchestrator: Any) -> None:
    dbid = project.add_target("mysql", "m1", mysql_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INT);\n")
    project.write("s1", "003_c.sql", "CREATE TABLE c (id INT);\nINSERT INTO nope VALUES (1);\n")
    config = project.config
    assert orchestrator("up", "all", config, dbid, "s1")[0] == 1
    project.write("s1", "002_b.sql", "CREATE TABLE b (id INT);\n")  # an out-of-order file arrives
    project.write("s1", "003_c.sql", "CREATE TABLE IF NOT EXISTS c (id INT);\n")
    code, _, err = orchestrator("resolve", config, dbid, "s1", "003_c", "--retry")
    assert code == 0, err
    rows = ledger(mysql_db)
    assert sorted(rows) == ["001_a", "003_c"] and rows["003_c"]["status"] == "applied"
    assert "b" not in tables(mysql_db)


def test_an_interrupted_run_blocks_until_resolved(project: Any, mysql_db: Any, orchestrator: Any) -> None:
    dbid = project.add_target("mysql", "m1", mysql_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INT);\n")
    config = project.config
    assert orchestrator("up", "all", config, dbid, "s1")[0] == 0
    project.write("s1", "002_b.sql", "CREATE TABLE b (id INT);\n")
    # What a runner killed mid-migration leaves behind: its running row.
    query(mysql_db, "INSERT INTO migration (set_id, version, apply_time, status, applied_by) "
                    "VALUES ('s1', '002_b', UNIX_TIMESTAMP(), 'running', 'host-a pid 412')")
    code, _, err = orchestrator("up", "all", config, dbid, "s1")
    assert code == 1
    assert "mysql.m1/s1: 002_b was interrupted (state running)" in err and "--retry|--mark-applied|--forget" in err
    code, _, err = orchestrator("resolve", config, dbid, "s1", "002_b", "--retry")
    assert code == 0, err
    assert ledger(mysql_db)["002_b"]["status"] == "applied"
    assert "b" in tables(mysql_db)


def test_on_transactional_engines_a_failure_leaves_nothing_to_resolve(project: Any, sqlite_db: Any, orchestrator: Any) -> None:
    dbid = project.add_target("sqlite", "local", sqlite_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_bad.sql", "CREATE TABLE a (id INT);\nINSERT INTO nope VALUES (1);\n")
    config = project.config
    code, _, err = orchestrator("up", "all", config, dbid, "s1")
    assert code == 1 and "s1/001_bad.sql: statement 2 (line 2)" in err
    code, _, err = orchestrator("resolve", config, dbid, "s1", "001_bad", "--retry")
    assert code == 2 and "'001_bad' is not in the ledger; nothing to resolve" in err
