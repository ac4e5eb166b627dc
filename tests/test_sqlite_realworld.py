"""Hard, real-world SQLite scripts build the same database through a set as through the sqlite3 shell.

The scripts in ``tests/data/sqlite/`` hold what real schema files hold: triggers whose
bodies carry ``CASE ... END`` and ``;``, FTS5 tables with their sync triggers, R*Tree,
views, partial and expression indexes, generated columns, CHECK constraints whose
strings hold ``;`` and ``--``, comments with ``;``, non-ASCII text, a ``.dump`` with
``BEGIN TRANSACTION; ... COMMIT;`` and ``PRAGMA writable_schema``, a file without a
final ``;`` and a trailing ``pragma user_version = 7``. Each file is fed to
``sqlite3 DB < file`` and, as a set, to ``orchestrator up all``; schema, user_version
and data must match.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data" / "sqlite"
SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"
LEDGER = ("migration", "sqlite_autoindex_migration_1")
CLOCK_COLUMNS = {"created_at", "updated_at", "at"}  # DEFAULT now: differs by the second between the two builds


def shell_build(db: Path, files: list[Path]) -> None:
    assert Path(SQLITE3).exists(), "the sqlite3 shell is needed to compare against (apt-get install sqlite3)"
    for file in files:
        with file.open("rb") as fh:
            proc = subprocess.run([SQLITE3, "-bail", str(db)], stdin=fh, capture_output=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == b"", (file.name, proc.stderr)


def schema(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT IN (?, ?) "
                            "ORDER BY type, name", LEDGER).fetchall()


def user_version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def contents(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's and view's rows, without the clock columns and the ledger."""
    out = {}
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                             "AND name NOT IN (?, ?) ORDER BY name", LEDGER)]
        for name in names:
            cur = conn.execute(f'SELECT * FROM "{name}"')
            keep = [i for i, d in enumerate(cur.description) if d[0] not in CLOCK_COLUMNS]
            out[name] = sorted((tuple(row[i] for i in keep) for row in cur), key=repr)
    return out


@pytest.fixture
def realworld(project: Any) -> Any:
    project.dbid = project.add_target("sqlite", "app", {"path": "app.db", "journal_mode": "WAL"})
    folder = project.add_set("shop", [project.dbid])
    for file in sorted(DATA.glob("*.sql")):
        shutil.copy(file, folder / file.name)
    project.files = sorted(folder.glob("*.sql"))
    return project


def test_data_files_are_the_hard_cases() -> None:
    text = {f.name: f.read_text(encoding="utf-8") for f in DATA.glob("*.sql")}
    assert len(text) >= 4
    joined = "\n".join(text.values())
    for needle in ("CREATE TRIGGER", "CASE", "USING fts5", "USING rtree", "CREATE VIEW", "WHERE status = 'active'",
                   "BEGIN TRANSACTION;", "PRAGMA writable_schema=ON", "'suspended; pending review'", "'closed -- for good'",
                   "WITHOUT ROWID", "GENERATED ALWAYS", "STRICT", "日本語"):
        assert needle in joined, needle
    assert any(t.rstrip().endswith("pragma user_version = 7") for t in text.values())
    assert sum(not t.rstrip().endswith(";") for t in text.values()) >= 2  # files whose last statement has no ';'


def test_set_builds_what_the_sqlite3_shell_builds(realworld: Any, orchestrator: Any, tmp_path: Path) -> None:
    code, out, err = orchestrator("up", "all", realworld.config, realworld.dbid, "shop")
    assert code == 0, err
    ours = realworld.root / "app.db"
    theirs = tmp_path / "shell.db"
    shell_build(theirs, realworld.files)

    assert schema(ours) == schema(theirs)
    assert len(schema(ours)) > 40
    assert user_version(ours) == user_version(theirs) == 7
    assert contents(ours) == contents(theirs)
    with sqlite3.connect(ours) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        ledger = conn.execute("SELECT set_id, version, status FROM migration ORDER BY version").fetchall()
        # The search index and the triggers work on the built database, as on the shell's.
        conn.execute("INSERT INTO note (title, body) VALUES ('Brötchen', 'frisch; jeden Morgen')")
        hits = conn.execute("SELECT title FROM note_fts WHERE note_fts MATCH 'brotchen OR sundays' ORDER BY title").fetchall()
        conn.execute("UPDATE \"order\" SET state = 'shipped' WHERE id = 1")
        with pytest.raises(sqlite3.IntegrityError, match="order cancelled; it cannot change state -- open a new one"):
            conn.execute("UPDATE \"order\" SET state = 'cancelled' WHERE id = 2")
            conn.execute("UPDATE \"order\" SET state = 'paid' WHERE id = 2")
        wiki = conn.execute("SELECT rowid FROM wiki_fts WHERE wiki_fts MATCH 'semicolon OR naive'").fetchall()
    assert ledger == [("shop", f.stem, "applied") for f in realworld.files]
    assert hits == [("Brötchen",), ("Café opening hours",)]
    assert sorted(wiki) == [(1,), (2,)]  # the index restored through writable_schema answers queries
    # Statement counts: the dump's BEGIN TRANSACTION and COMMIT were absorbed, not run.
    dump = next(f for f in realworld.files if "dump" in f.name)
    assert f"applied {dump.stem} (" in err
    assert "BEGIN TRANSACTION" not in err


def test_each_file_alone_matches_the_shell(realworld: Any, tmp_path: Path, orchestrator: Any) -> None:
    # File by file, so a divergence names the file that causes it.
    cfg = realworld.config
    theirs = tmp_path / "shell.db"
    for file in realworld.files:
        code, _, err = orchestrator("up", cfg, realworld.dbid, "shop")
        assert code == 0, err
        shell_build(theirs, [file])
        assert schema(realworld.root / "app.db") == schema(theirs), file.name
        assert user_version(realworld.root / "app.db") == user_version(theirs), file.name


def test_dump_wrapper_is_atomic_unlike_the_shell(realworld: Any, orchestrator: Any, tmp_path: Path) -> None:
    # A dump whose tail fails: the shell has already committed the dump's transaction,
    # the set must leave nothing behind (its COMMIT was absorbed into the runner's transaction).
    dump = next(f for f in realworld.files if "dump" in f.name)
    for other in realworld.files:
        if other != dump:
            other.unlink()
    dump.write_text(dump.read_text(encoding="utf-8") + "INSERT INTO wiki_page (slug) VALUES ('no title');\n", encoding="utf-8")
    code, _, err = orchestrator("up", "all", realworld.config, realworld.dbid, "shop")
    assert code == 1
    last = err.splitlines()[-1]
    assert f"shop/{dump.name}: statement " in last and "NOT NULL constraint failed: wiki_page.title" in last
    with sqlite3.connect(realworld.root / "app.db") as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name NOT IN (?, ?)", LEDGER).fetchall() == []
        assert conn.execute("SELECT count(*) FROM migration").fetchone() == (0,)
    shell = tmp_path / "shell.db"
    with dump.open("rb") as fh:
        proc = subprocess.run([SQLITE3, str(shell)], stdin=fh, capture_output=True, timeout=60)
    assert b"NOT NULL constraint failed" in proc.stderr
    assert ("table", "wiki_page") in [r[:2] for r in schema(shell)]  # the shell kept the half-applied dump
