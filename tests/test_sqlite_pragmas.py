"""SQLite runs what the sqlite3 shell runs, and stores each statement exactly as written.

``PRAGMA synchronous`` (Bacula's shipped SQLite schema starts with one) is refused by
SQLite inside a transaction; the shell runs it in autocommit. Pragmas that change the
file and cannot run inside a transaction (``journal_mode = WAL``) fail with one line
naming the ``no-transaction`` directive. ``CREATE INDEX i ON t (a) ;`` is kept in
``sqlite_master`` with the blank before ``;``, as the shell keeps it, so a ``.dump``
round trip is faithful. Each file is compared with ``/usr/bin/sqlite3 DB < file``.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"

# As Bacula's make_sqlite3_tables starts, trimmed: a safety pragma, then the schema.
BACULA_LIKE = """\
PRAGMA synchronous = NORMAL;

CREATE TABLE Filename (
  FilenameId INTEGER,
  Name TEXT DEFAULT '',
  PRIMARY KEY(FilenameId)
  );
CREATE INDEX inx1 ON Filename (Name) ;

CREATE TABLE Job (
   JobId INTEGER,
   Job VARCHAR(128) NOT NULL,
   Name VARCHAR(128) NOT NULL,
   PRIMARY KEY(JobId)
   );
CREATE INDEX inx6 ON Job (Name);
CREATE INDEX inx7 ON Job (Job)	;
CREATE UNIQUE INDEX inx8 ON Job (JobId, Name)
;
CREATE INDEX inx9 ON Job (Name) -- by name
;
CREATE INDEX inx10 ON Job (Job) /* by job */ ;
CREATE VIEW job_names AS SELECT Name FROM Job  ;
CREATE TRIGGER job_ins AFTER INSERT ON Job BEGIN
  INSERT INTO Filename (Name) VALUES (new.Name);
END ;
INSERT INTO Job (Job, Name) VALUES ('j1', 'n1') ;
CREATE INDEX inx11 ON Filename (FilenameId, Name)  \n"""


def shell_build(db: Path, file: Path) -> None:
    assert Path(SQLITE3).exists(), "the sqlite3 shell is needed to compare against (apt-get install sqlite3)"
    with file.open("rb") as fh:
        proc = subprocess.run([SQLITE3, "-bail", str(db)], stdin=fh, capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr


def master(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '%migration%' "
                            "ORDER BY type, name").fetchall()


def ledger(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM migration ORDER BY version")]


def make(project: Any, files: dict[str, str]) -> tuple[Path, str]:
    dbid = project.add_target("sqlite", "app", {"path": "app.db"})
    project.add_set("bacula", [dbid])
    for name, text in files.items():
        project.write("bacula", name, text)
    return project.root / "app.db", dbid


@pytest.mark.parametrize("layout", ["plain", "own transaction"])
def test_schema_text_and_synchronous_match_the_shell(project: Any, orchestrator: Any, tmp_path: Path, layout: str) -> None:
    if layout == "plain":
        files = {"0001_bacula.sql": BACULA_LIKE}
    else:  # a file with its own BEGIN/COMMIT takes the statement-by-statement path
        head, _, rest = BACULA_LIKE.partition("\n")
        files = {"0001_bacula.sql": head + "\nBEGIN TRANSACTION;\n" + rest.rstrip() + " ;\nCOMMIT;\n"}
    db, dbid = make(project, files)
    code, _, err = orchestrator("up", "all", project.config, dbid, "bacula")
    assert code == 0, err

    reference = tmp_path / "shell.db"
    source = tmp_path / "source.sql"
    source.write_text(next(iter(files.values())))
    shell_build(reference, source)
    ours, theirs = master(db), master(reference)
    assert ours == theirs
    by_name = {name: sql for _, name, sql in ours}
    assert by_name["inx1"] == "CREATE INDEX inx1 ON Filename (Name) "
    assert by_name["inx7"] == "CREATE INDEX inx7 ON Job (Job)\t"
    assert by_name["inx8"].endswith("(JobId, Name)\n")
    assert by_name["inx9"] == "CREATE INDEX inx9 ON Job (Name) -- by name\n"
    assert ledger(db) == ["0001_bacula"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT Name FROM Filename").fetchall() == [("n1",)]


def test_last_statement_without_semicolon_matches_the_shell(project: Any, orchestrator: Any, tmp_path: Path) -> None:
    text = "CREATE TABLE t (a int);\nCREATE INDEX m ON t (a) -- no semicolon\n\n"
    db, dbid = make(project, {"0001_t.sql": text})
    code, _, err = orchestrator("up", "all", project.config, dbid, "bacula")
    assert code == 0, err
    source = tmp_path / "t.sql"
    source.write_text(text)
    shell_build(tmp_path / "shell.db", source)
    assert master(db) == master(tmp_path / "shell.db")


def test_synchronous_runs_outside_the_transaction_and_is_restored(project: Any, tmp_path: Path) -> None:
    from orchestrator.config import load
    from orchestrator.runner import run
    from orchestrator.sets import discover
    from orchestrator.targets import open_target

    db, dbid = make(project, {
        "0001_sync.sql": "PRAGMA synchronous = OFF;\nCREATE TABLE a (x);\n",
        "0002_after.sql": "CREATE TABLE b (x);\n",
        "0003_bad.sql": "PRAGMA main.synchronous=EXTRA;\nCREATE TABLE c (x);\nINSERT INTO nope VALUES (1);\n",
    })
    config = load(project.config)
    target = open_target(config.database(dbid), config.table)
    target.connect()
    try:
        before = target.connection.execute("PRAGMA synchronous").fetchone()[0]
        with pytest.raises(Exception) as failure:
            run(target, discover("bacula", config.sets["bacula"].folder), limit=None)
        assert "no such table: nope" in str(failure.value)
        # the connection's own setting is back, after a success and after a failure
        assert target.connection.execute("PRAGMA synchronous").fetchone()[0] == before
    finally:
        target.close()
    assert ledger(db) == ["0001_sync", "0002_after"]
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"a", "b"} <= names and "c" not in names  # 0003 rolled back whole


def test_journal_mode_change_names_the_directive(project: Any, orchestrator: Any) -> None:
    db, dbid = project.root / "app.db", project.add_target("sqlite", "app", {"path": "app.db", "journal_mode": "DELETE"})
    project.add_set("bacula", [dbid])
    project.write("bacula", "0001_wal.sql", "CREATE TABLE a (x);\nPRAGMA journal_mode = WAL;\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "bacula")
    assert code == 1
    lines = [line for line in err.splitlines() if "ERROR" in line]
    assert len(lines) == 1, err
    assert "0001_wal.sql" in lines[0] and "statement 2 (line 2)" in lines[0]
    assert "-- orchestrator: no-transaction" in lines[0]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'a'").fetchone()[0] == 0

    # with the directive it runs, as in the shell
    project.write("bacula", "0001_wal.sql", "-- orchestrator: no-transaction\nCREATE TABLE a (x);\nPRAGMA journal_mode = WAL;\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "bacula")
    assert code == 0, err
    assert ledger(db) == ["0001_wal"]
