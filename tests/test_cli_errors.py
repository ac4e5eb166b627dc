"""Bad migration files met by ``up`` in a real process: one line naming the file, the right exit code, nothing applied."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _up_all(project: Any, dbid: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "up", "all", str(project.config), dbid, "s1"],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=60)


def _tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def test_non_utf8_file_later_in_the_set_stops_up_before_anything_runs(project: Any) -> None:
    dbid = project.add_target("sqlite", "a", {"path": "a.db"})
    project.add_set("s1", [dbid])
    project.write("s1", "001_users.sql", "CREATE TABLE users (id INTEGER);\n")
    project.write("s1", "002_latin1.sql", b"-- caf\xe9\nCREATE TABLE t2 (id INTEGER);\n")
    result = _up_all(project, dbid)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if " | ERROR | " in line]
    assert len(errors) == 1 and errors[0].endswith("| ERROR | orchestrator - s1/002_latin1.sql: not UTF-8 (byte 6)"), errors
    db = project.root / "a.db"
    assert not db.exists() or "users" not in _tables(db)


def test_python_migration_with_a_syntax_error_names_file_and_line(project: Any) -> None:
    dbid = project.add_target("sqlite", "a", {"path": "a.db"})
    project.add_set("s1", [dbid])
    project.write("s1", "001_users.sql", "CREATE TABLE users (id INTEGER);\n")
    project.write("s1", "002_broken.py", "def up(db)\n    pass\n")
    result = _up_all(project, dbid)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " | ERROR | " in line]
    assert len(errors) == 1 and errors[0].endswith("s1/002_broken.py: line 1: syntax error: expected ':'"), errors
    assert "users" not in _tables(project.root / "a.db")


def test_the_first_bad_file_in_name_order_is_the_one_reported(project: Any) -> None:
    dbid = project.add_target("sqlite", "a", {"path": "a.db"})
    project.add_set("s1", [dbid])
    project.write("s1", "001_users.sql", "CREATE TABLE users (id INTEGER);\n")
    project.write("s1", "002_latin1.sql", b"-- caf\xe9\n")
    project.write("s1", "003_pg_only/postgresql.sql", "CREATE TABLE t3 (id INTEGER);\n")
    result = _up_all(project, dbid)
    errors = [line for line in result.stderr.splitlines() if " | ERROR | " in line]
    assert len(errors) == 1 and "s1/002_latin1.sql: not UTF-8" in errors[0], errors
    assert result.returncode == 2
    db = project.root / "a.db"
    assert not db.exists() or "users" not in _tables(db)
