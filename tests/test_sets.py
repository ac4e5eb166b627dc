"""Set discovery: byte order, versions, checksums, kinds, per-engine folders, unusable files and directives.

Tests run as root, so ``chmod 000`` does not make a file unreadable here; an unreadable
migration is simulated with a dangling symlink and with a folder where a file is expected.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from orchestrator import sets as sets_module
from orchestrator.errors import MigrationError, SetError
from orchestrator.sets import discover


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Warnings are logged once per process; each test wants to see its own.
    monkeypatch.setattr(sets_module, "_warned", set())


def make(folder: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return folder


def test_byte_order_versions_and_kinds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make(tmp_path / "s1", {
        "2024-01-10_b.sql": "SELECT 1;",
        "2024-01-02_a.up.sql": "SELECT 1;",
        "2024-01-02_a.down.sql": "SELECT 1;",
        "a_lower.py": "def up(db):\n    pass\n",
        "B_upper.redis": "SET k v\n",
        "Z_upper/sqlite.sql": "SELECT 1;",
        "Z_upper/postgresql.sql": "SELECT 1;",
        "_under.sql": "SELECT 1;",
        ".hidden.sql": "SELECT 1;",
        "README.md": "# notes",
        "__pycache__/x.pyc": b"\x00",
    })
    with caplog.at_level(logging.WARNING, logger="sets"):
        s = discover("s1", folder)
    # Byte order: digits < uppercase < '_' < lowercase; '2024-01-02' < '2024-01-10'.
    assert s.versions == ["2024-01-02_a", "2024-01-10_b", "B_upper", "Z_upper", "_under", "a_lower"]
    assert [m.kind for m in s.migrations] == ["sql", "sql", "redis", "folder", "sql", "py"]
    assert s.get("Z_upper").files == ("postgresql.sql", "sqlite.sql")
    assert s.get("2024-01-02_a").path.name == "2024-01-02_a.up.sql"  # .up.sql stripped from the version
    messages = [r.getMessage() for r in caplog.records]
    for expected in ("s1/2024-01-02_a.down.sql: ignored (migrations are forward-only",
                     "s1/.hidden.sql: ignored (hidden)",
                     "s1/README.md: ignored (unknown extension"):
        assert any(expected in m for m in messages), messages
        assert any(expected in w for w in s.warnings), s.warnings
    assert not any("__pycache__" in m for m in messages)
    # A second scan lists the warnings again but logs nothing new.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sets"):
        again = discover("s1", folder)
    assert again.warnings == s.warnings and caplog.records == []


def test_order_is_bytes_not_locale_or_numbers(tmp_path: Path) -> None:
    names = ["2024-01-02_x", "2024-01-10_y", "2024-1-5_z", "10_ten", "9_nine", "A", "a", "É_accent", "Z", "ä"]
    folder = make(tmp_path / "s", {f"{n}.sql": "SELECT 1;" for n in names})
    assert discover("s", folder).versions == sorted(names, key=lambda n: n.encode("utf-8"))
    assert discover("s", folder).versions[:3] == ["10_ten", "2024-01-02_x", "2024-01-10_y"]


def test_checksum_is_sha256_of_the_content(tmp_path: Path) -> None:
    content = "-- café\nCREATE TABLE t (a TEXT DEFAULT 'x;y');\n".encode("utf-8")
    folder = make(tmp_path / "s", {"001_a.sql": content, "002_b/sqlite.sql": b"SELECT 2;", "002_b/up.sql": b"SELECT 3;"})
    s = discover("s", folder)
    assert s.migrations[0].script_for("sqlite").checksum == hashlib.sha256(content).hexdigest()
    assert s.migrations[1].script_for("sqlite").checksum == hashlib.sha256(b"SELECT 2;").hexdigest()
    assert s.migrations[1].script_for("mysql").checksum == hashlib.sha256(b"SELECT 3;").hexdigest()
    # Same name, new content (a different length, so the stat-keyed cache sees the change): new checksum.
    (folder / "001_a.sql").write_bytes(content + b"-- edited\n")
    assert discover("s", folder).migrations[0].script_for("sqlite").checksum == hashlib.sha256(content + b"-- edited\n").hexdigest()


def test_each_engine_picks_its_file(tmp_path: Path) -> None:
    folder = make(tmp_path / "s", {
        "001_all/postgresql.sql": "SELECT 1;", "001_all/sqlite.sql": "SELECT 1;", "001_all/up.sql": "SELECT 1;",
        "001_all/redis.redis": "SET a b\n",
        "002_py/up.py": "def up(db):\n    pass\n", "002_py/mysql.sql": "SELECT 1;",
        "003_pg_only/postgresql.sql": "SELECT 1;",
        "004_plain.sql": "SELECT 1;", "005_cmds.redis": "SET a b\n", "006_code.py": "def up(db):\n    pass\n",
    })
    s = discover("s", folder)
    picks = {(m.version, d): m.script_for(d) for m in s.migrations for d in ("postgresql", "mysql", "sqlite", "redis")
             if not (m.version == "003_pg_only" and d != "postgresql")
             and not (m.version == "004_plain" and d == "redis") and not (m.version == "005_cmds" and d != "redis")}
    assert picks[("001_all", "postgresql")].path.name == "postgresql.sql"
    assert picks[("001_all", "mysql")].path.name == "up.sql"
    assert picks[("001_all", "sqlite")].label == "s/001_all/sqlite.sql"
    assert (picks[("001_all", "redis")].path.name, picks[("001_all", "redis")].kind) == ("redis.redis", "redis")
    assert picks[("002_py", "mysql")].path.name == "mysql.sql"
    assert (picks[("002_py", "sqlite")].path.name, picks[("002_py", "sqlite")].kind) == ("up.py", "py")
    assert picks[("006_code", "redis")].kind == "py"
    pg_only = s.get("003_pg_only")
    with pytest.raises(MigrationError) as err:
        pg_only.script_for("sqlite")
    assert str(err.value).startswith("s/003_pg_only: no file for sqlite (has postgresql.sql; add sqlite.sql or up.py)")
    with pytest.raises(MigrationError, match=r"^s/004_plain.sql: no file for redis"):
        s.get("004_plain").script_for("redis")
    with pytest.raises(MigrationError, match=r"^s/005_cmds.redis: no file for sqlite"):
        s.get("005_cmds").script_for("sqlite")


def test_engine_without_a_file_fails_that_target_through_the_cli(project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("sqlite", "a", {"path": "a.db"})
    project.add_set("s1", [dbid])
    project.write("s1", "001_users.sql", "CREATE TABLE users (id INTEGER);\n")
    project.write("s1", "002_view/postgresql.sql", "CREATE VIEW v AS SELECT 1;\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 1
    errors = [line for line in err.splitlines() if " | ERROR | " in line]
    assert len(errors) == 1 and errors[0].endswith("s1/002_view: no file for sqlite (has postgresql.sql; add sqlite.sql or up.py)")
    # Every file of the run is checked before the first one runs: nothing applied.
    with sqlite3.connect(project.root / "a.db") as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'users'").fetchall() == []


@pytest.mark.parametrize("files, message", [
    ({"001_a.sql": "", "001_a.py": ""}, "s/001_a.sql: duplicate version '001_a' (also s/001_a.py)"),
    ({"001_a.sql": "", "001_a.up.sql": ""}, "duplicate version '001_a'"),
    ({"001_a.redis": "", "001_a/sqlite.sql": ""}, "duplicate version '001_a'"),
    ({"001_a/up.py": "", "001_a/up.sql": ""}, "s/001_a: holds both up.py and up.sql"),
    ({"001_a/notes.txt": ""}, "s/001_a: migration folder holds no migration file"),
    ({"001_a.sql/sqlite.sql": ""}, "s/001_a.sql: is a folder where a migration file is expected"),
    ({"001_a/sqlite.sql/x": ""}, "s/001_a/sqlite.sql: a folder; an engine file must be a regular file"),
    ({("x" * 181) + ".sql": ""}, "version is longer than 180 characters"),
])
def test_set_errors_name_the_file(tmp_path: Path, files: dict[str, str], message: str) -> None:
    folder = make(tmp_path / "s", files)
    with pytest.raises(SetError) as err:
        discover("s", folder)
    assert message in str(err.value)


def test_unreadable_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    # Running as root, chmod 000 would not stop us; a dangling symlink is unreadable for anyone.
    folder = make(tmp_path / "s", {"002_ok/up.sql": "SELECT 1;"})
    (folder / "001_gone.sql").symlink_to(tmp_path / "nowhere.sql")
    s = discover("s", folder)
    with pytest.raises(SetError, match=r"^s/001_gone.sql: cannot read: No such file or directory$"):
        s.get("001_gone").script_for("sqlite").prepare()
    # In a per-engine folder, an unreadable engine file must not fall back to up.sql.
    (folder / "002_ok" / "sqlite.sql").symlink_to(tmp_path / "nowhere.sql")
    with pytest.raises(SetError, match=r"s/002_ok/sqlite.sql: not a readable file"):
        discover("s", folder)


def test_set_folder_missing_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(SetError, match="cannot read set 's'"):
        discover("s", tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SetError, match="cannot read set 's'"):
        discover("s", tmp_path / "file")


def test_non_utf8_is_an_error_naming_the_file_and_byte(tmp_path: Path) -> None:
    folder = make(tmp_path / "s", {"001_latin1.sql": "-- ok\nINSERT INTO t VALUES ('caf\xe9');\n".encode("latin-1"),
                                   "002_cut.sql": "SELECT 'é".encode("utf-8")[:-1]})
    s = discover("s", folder)
    with pytest.raises(SetError, match=r"^s/001_latin1.sql: not UTF-8 \(byte 32\)$"):
        s.get("001_latin1").script_for("sqlite").prepare()
    with pytest.raises(SetError, match=r"^s/002_cut.sql: not UTF-8"):
        s.get("002_cut").script_for("sqlite").prepare()


def test_bom_is_accepted_and_checksummed(tmp_path: Path) -> None:
    raw = b"\xef\xbb\xbf-- orchestrator: no-transaction\nVACUUM;\n"
    s = discover("s", make(tmp_path / "s", {"001.sql": raw}))
    script = s.migrations[0].script_for("sqlite")
    assert script.inspect() == (hashlib.sha256(raw).hexdigest(), True)
    assert script.text().startswith("-- orchestrator")


@pytest.mark.parametrize("content, no_transaction", [
    ("-- orchestrator: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\n", True),
    ("-- Add an index without blocking writes.\n--orchestrator:no-transaction\n\nCREATE INDEX i ON t (a);\n", True),
    ("-- ORCHESTRATOR: No-Transaction\nSELECT 1;\n", True),
    ("CREATE TABLE t (a INT);\n", False),
    ("-- orchestrator runs this file in name order\nSELECT 1;\n", False),  # prose, not a directive
    ("SELECT 1;\n-- orchestrator: keep this comment short, it is prose\n", False),
])
def test_directives(tmp_path: Path, content: str, no_transaction: bool) -> None:
    s = discover("s", make(tmp_path / "s", {"001.sql": content}))
    assert s.migrations[0].script_for("sqlite").no_transaction is no_transaction


@pytest.mark.parametrize("name, content, message", [
    ("001.sql", "-- Adds an index.\n-- orchestrator: no-transacton\nCREATE INDEX i ON t (a);\n",
     "s/001.sql:2: unknown directive 'no-transacton' (known: no-transaction, lock-timeout=DURATION|off, lock-retries=N, allow RULE[,RULE])"),
    ("001.sql", "-- orchestrator: no_transaction, please\nSELECT 1;\n", "s/001.sql:1: unknown directive"),
    ("001.sql", "-- orchestrator no-transaction\nSELECT 1;\n", "s/001.sql:1: directive 'no-transaction' lacks its colon"),
    ("001.sql", "CREATE TABLE t (a INT);\n-- orchestrator: no-transaction\n", "s/001.sql:2: directive 'no-transaction' after the first statement"),
    ("001.py", "# orchestrator: no-transacton\ndef up(db):\n    pass\n", "s/001.py:1: unknown directive 'no-transacton'"),
])
def test_bad_directives_name_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    s = discover("s", make(tmp_path / "s", {name: content}))
    with pytest.raises(SetError) as err:
        s.migrations[0].script_for("sqlite").prepare()
    assert str(err.value).startswith(message)


def test_python_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    s = discover("s", make(tmp_path / "s", {"001.py": "def up(db):\n    db.execute('x'\n\n"}))
    with pytest.raises(MigrationError) as err:
        s.migrations[0].script_for("sqlite").prepare()
    assert str(err.value).startswith("s/001.py: line 2: syntax error")


def test_python_without_up_and_failing_import(tmp_path: Path) -> None:
    s = discover("s", make(tmp_path / "s", {"001.py": "UP = 1\n", "002.py": "import no_such_module_here\n"}))
    with pytest.raises(MigrationError, match=r"^s/001.py: defines no up\(db\) function$"):
        s.migrations[0].script_for("sqlite").load_up()
    with pytest.raises(MigrationError, match=r"^s/002.py: line 1: loading failed: ModuleNotFoundError: No module named"):
        s.migrations[1].script_for("sqlite").load_up()
    assert not (tmp_path / "s" / "__pycache__").exists()


def test_unpadded_numbers_are_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make(tmp_path / "s", {"1_a.sql": "", "2_b.sql": "", "10_c.sql": ""})
    with caplog.at_level(logging.WARNING, logger="sets"):
        s = discover("s", folder)
    assert s.versions == ["10_c", "1_a", "2_b"]  # byte order, as the C tool
    assert any("not zero-padded" in w for w in s.warnings)
    assert any("not zero-padded" in r.getMessage() for r in caplog.records)
