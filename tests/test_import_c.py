"""C Web Framework migrations: a ``.c`` file in a set says it cannot run here, and ``import-c`` ports it.

``tests/data/cwf/migrations/s1`` holds migrations written as the framework's templates
write them (``int up(const char* dbid)``, ``dbquery(dbid, "...", NULL)`` or the older
``dbqueryf``, adjacent literals, C escapes, the "stop if this query failed" check);
``refused/`` holds ones that do more than send SQL (a loop, a condition, other calls,
query parameters, a macro, an untouched template), which must be listed, not guessed.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cimport import NotConvertible, convert

DATA = Path(__file__).parent / "data" / "cwf" / "migrations"
S1 = sorted(p.name[:-2] for p in (DATA / "s1").glob("*.c"))


def test_converted_sql_is_what_up_sent(tmp_path: Path, orchestrator: Any) -> None:
    dest = tmp_path / "sets" / "s1"
    code, out, err = orchestrator("import-c", DATA / "s1", dest)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 3
    assert sorted(p.name for p in dest.iterdir()) == [f"{v}.sql" for v in S1]  # same versions; CMakeLists.txt left alone
    user = (dest / f"{S1[0]}.sql").read_text()
    assert "CREATE TABLE app_user(id     integer      NOT NULL PRIMARY KEY,email  varchar(100)" in user
    assert "DEFAULT '100%')" in user  # dbqueryf's %% is one %
    seed = (dest / f"{S1[2]}.sql").read_text()
    assert "CREATE TABLE role_note (\n\tid   integer NOT NULL PRIMARY KEY,\n" in seed  # \n and \t decoded
    assert """(2, 'O''Brien''s "crew" \\ back\tslash')""" in seed  # \" \\ \t
    assert "(1, 'ABC café -- not a comment; still the same string');" in seed  # octal, hex, UTF-8 bytes, joined literals


def test_converted_set_builds_the_schema(tmp_path: Path, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("sqlite", "app", {"path": "app.db"})
    project.add_set("s1", [dbid])
    code, _, err = orchestrator("import-c", DATA / "s1", project.root / "sets" / "s1")
    assert code == 0, err
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 0, err
    with sqlite3.connect(project.root / "app.db") as conn:
        assert conn.execute("SELECT name FROM role ORDER BY id").fetchall() == [("admin",), ('O\'Brien\'s "crew" \\ back\tslash',)]
        assert conn.execute("SELECT note FROM role_note").fetchall() == [("ABC café -- not a comment; still the same string",)]
        assert [r[0] for r in conn.execute("SELECT version FROM migration ORDER BY version")] == S1


def test_files_it_cannot_convert_are_listed_one_line_each(tmp_path: Path, orchestrator: Any) -> None:
    source = tmp_path / "src"
    shutil.copytree(DATA / "refused", source)
    shutil.copy(DATA / "s1" / f"{S1[1]}.c", source)
    code, out, err = orchestrator("import-c", source, tmp_path / "dest")
    assert code == 1
    assert out.strip() == f"{S1[1]}.c -> {tmp_path / 'dest' / (S1[1] + '.sql')} (1 statement)"
    lines = [line for line in err.splitlines() if line.strip()]
    refused = sorted(p.name for p in (DATA / "refused").glob("*.c"))
    assert len(lines) == len(refused) == 6
    for line, name in zip(lines, refused):
        assert f"{source / name}" in line and "not converted" in line
    reasons = "\n".join(lines)
    for reason in ("loop_partitions.c:6: not converted: up() has a loop (for)",
                   "only_on_postgres.c:6: not converted: up() has a condition",
                   "log_and_query.c:6: not converted: up() calls log_info()",
                   "with_params.c:6: not converted",
                   "untouched_template.c: not converted: up() sends no SQL",
                   "macro_table.c:3: not converted: preprocessor directive '#define'"):
        assert reason in reasons
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [f"{S1[1]}.sql"]


@pytest.mark.parametrize("source, reason", [
    ('int up(const char* dbid) { dbresult_t* r = dbquery(dbid, "A", params); return dbresult_ok(r); }', "passes query parameters"),
    ('int up(const char* dbid) { char* sql = "X"; dbresult_t* r = dbquery(dbid, sql, NULL); return 1; }', "does more than run SQL"),
    ('int up(const char* dbid) { dbresult_t* r = dbquery(dbid, "A", NULL); return 0; }', "returns 0"),
    ('int up(const char* dbid) { while (1) {} }', "has a loop (while)"),
    ('int up(const char* dbid) { dbresult_t* r = dbquery(dbid, "A", NULL); if (dbresult_ok(r)) return 1; return 1; }',
     "has a condition"),
    ('int up(const char* dbid) { dbresult_t* r = dbqueryf(dbid, "SELECT %d"); return 1; }', "printf conversion"),
    ('static int helper(void) { return 1; }\nint up(const char* dbid) { return helper(); }', "defines helper() besides up()"),
    ('int up(const char* dbid) { dbresult_t* r = dbquery("postgresql.p1", "A", NULL); return 1; }', "does more than run SQL"),
    ('int main(void) { return 0; }', "defines main() besides up()"),
    ('#include "dbquery.h"\n', "defines no 'int up(const char* dbid)'"),
])
def test_refusals(source: str, reason: str) -> None:
    with pytest.raises(NotConvertible) as refused:
        convert(source)
    assert reason in str(refused.value)


def test_escapes_and_adjacent_literals() -> None:
    source = r'''int up(const char* dbid) {
        dbresult_t* r = dbquery(dbid, "SELECT '\x41" "\102\'\"\\\?'" /* between */ "\u00e9\n", NULL);
        dbresult_free(r);
        dbresult_free(dbquery(dbid, "SELECT 2 -- trailing comment", NULL));
        return 1;
    }'''
    assert convert(source) == ["SELECT 'AB'\"\\?'é\n", "SELECT 2 -- trailing comment"]


def test_existing_destination_files_are_not_overwritten_silently(tmp_path: Path, orchestrator: Any) -> None:
    dest = tmp_path / "dest"
    assert orchestrator("import-c", DATA / "s1", dest)[0] == 0
    code, out, err = orchestrator("import-c", DATA / "s1", dest)  # again: identical files are left as they are
    assert code == 0 and out.count("unchanged") == 3, err
    edited = dest / f"{S1[1]}.sql"
    edited.write_text("CREATE TABLE role (id integer PRIMARY KEY, name text, extra text);\n")
    code, out, err = orchestrator("import-c", DATA / "s1", dest)
    assert code == 1
    assert f"{edited} exists and differs; remove it or pass --force" in err
    assert "extra text" in edited.read_text()
    code, _, err = orchestrator("import-c", DATA / "s1", dest, "--force")
    assert code == 0, err
    assert "extra text" not in edited.read_text()


def test_bad_arguments_are_one_line(tmp_path: Path, orchestrator: Any) -> None:
    code, _, err = orchestrator("import-c", tmp_path / "nope", tmp_path / "dest")
    assert code == 2 and "is not a folder" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = orchestrator("import-c", tmp_path / "empty", tmp_path / "dest")
    assert code == 2 and "holds no .c migration" in err


# --- a .c file inside a set ----------------------------------------------------------

def c_set(project: Any) -> str:
    dbid = project.add_target("sqlite", "app", {"path": "app.db"})
    folder = project.add_set("s1", [dbid])
    for name in S1:
        shutil.copy(DATA / "s1" / f"{name}.c", folder)
    project.write("s1", "2024-10-01_00-00-00_add_index.sql", "CREATE INDEX role_name ON role (name);\n")
    return dbid


def test_a_pending_c_file_stops_the_run_saying_how_to_port_it(project: Any, orchestrator: Any) -> None:
    dbid = c_set(project)
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 1
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1, err
    assert f"s1/{S1[0]}.c" in errors[0] and "cannot run here" in errors[0] and "orchestrator import-c" in errors[0]
    assert "ignored" not in err  # not skipped with a warning
    with sqlite3.connect(project.root / "app.db") as conn:  # nothing ran, nothing recorded
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'role_name'").fetchall() == []

    code, out, err = orchestrator("validate", project.config, "--json")
    assert code == 1
    found = json.dumps(json.loads(out))
    for name in S1:  # one finding per .c file
        assert f"s1/{name}.c: a C Web Framework migration cannot run here" in found


def test_c_files_the_c_tool_applied_count_as_applied(project: Any, orchestrator: Any) -> None:
    dbid = c_set(project)
    with sqlite3.connect(project.root / "app.db") as conn:  # what the C tool left: its tables and its ledger
        conn.execute("CREATE TABLE migration (version TEXT PRIMARY KEY, apply_time INTEGER)")
        conn.execute("CREATE TABLE role (id integer NOT NULL PRIMARY KEY, name varchar(100) NOT NULL DEFAULT '')")
        conn.executemany("INSERT INTO migration VALUES (?, 1724968751)", [(f"lib{v}.so",) for v in S1])
    code, _, err = orchestrator("catch-up", project.config)
    assert code == 0, err
    assert "applying: 2024-10-01_00-00-00_add_index" in err and err.count("applying:") == 1
    with sqlite3.connect(project.root / "app.db") as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'role_name'").fetchall() == [("role_name",)]
        rows = conn.execute("SELECT set_id, version FROM migration ORDER BY set_id, version").fetchall()
    assert rows == [("", f"lib{v}.so") for v in S1] + [("s1", "2024-10-01_00-00-00_add_index")]
