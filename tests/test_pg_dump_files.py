"""Real pg_dump output and psql-only syntax: meta-commands, COPY FROM STDIN, session state between migrations.

``tests/data/postgresql/shop.dump.sql`` is the unedited output of the real
``pg_dump`` (see SOURCE.md there): it opens with ``\\restrict KEY``, sets
``search_path`` to '' for the session, and loads its rows with ``COPY ... FROM
stdin`` blocks. It is restored through orchestrator into a fresh database and
compared with a database built from ``source.sql``, the one the dump was taken of.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.sqlsplit import split
from tests.conftest import pg_connect, unique

DATA = Path(__file__).resolve().parent / "data" / "postgresql"
DUMP = DATA / "shop.dump.sql"


def query(dbname: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with pg_connect(dbname) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "ERROR" in line]


# -- splitting, as psql reads the file (no server) ------------------------------------------


def test_restrict_and_unrestrict_are_skipped_as_psql_does() -> None:
    sql = "\\restrict abcDEF123\n\nSET x = 1;\n  \\unrestrict abcDEF123\nSELECT 2;\n\\unrestrict"
    out = list(split(sql, "postgresql"))
    assert [(s.number, s.line, s.text) for s in out] == [(1, 3, "SET x = 1"), (2, 5, "SELECT 2")]


def test_other_meta_commands_are_statements_of_their_own_line() -> None:
    sql = ("SELECT 1;\n\\connect other user\nSELECT '\\c not one', E'\\\\set no', $$\\i no$$ -- \\i no\n;\n"
           "/* \\set no */ SELECT \"\\x\";\nSELECT format('x') \\gexec\n\\echo hi \\quit\n")
    out = [(s.line, s.text) for s in split(sql, "postgresql")]
    assert out == [
        (1, "SELECT 1"),
        (2, "\\connect other user"),
        (3, "SELECT '\\c not one', E'\\\\set no', $$\\i no$$ -- \\i no"),
        (5, 'SELECT "\\x"'),
        (6, "SELECT format('x')"),
        (6, "\\gexec"),
        (7, "\\echo hi \\quit"),
    ]


def test_copy_from_stdin_takes_its_rows_as_data_up_to_the_terminator() -> None:
    sql = ("COPY t (a, b) FROM stdin;\n"
           "1\tit's; $$ -- not /* a comment\n"
           "2\t\\N\n"
           "3\tback\\\\slash \\. tab\\t\n"
           "\\.\n"
           "SELECT 'after';\n"
           "copy t from STDIN with (format csv); SELECT 'rest of the line';\n"
           "\"a\",\"b;\n\\.x\"\n"
           "\\.\r\n"
           "COPY t TO stdout;\n"
           "COPY t FROM stdin;\n"
           "no terminator: the rest of the file is data;\n")
    out = list(split(sql, "postgresql"))
    assert [(s.number, s.line, s.text, s.data, s.data_line) for s in out] == [
        (1, 1, "COPY t (a, b) FROM stdin", "1\tit's; $$ -- not /* a comment\n2\t\\N\n3\tback\\\\slash \\. tab\\t\n", 2),
        (2, 6, "SELECT 'after'", None, 0),
        (3, 7, "copy t from STDIN with (format csv)", '"a","b;\n\\.x"\n', 8),
        (4, 7, "SELECT 'rest of the line';", None, 0),
        (5, 11, "COPY t TO stdout", None, 0),
        (6, 12, "COPY t FROM stdin", "no terminator: the rest of the file is data;\n", 13),
    ]


def test_the_real_dump_splits_into_sql_and_three_copy_blocks() -> None:
    text = DUMP.read_text(encoding="utf-8")
    assert text.splitlines()[4].startswith("\\restrict ") and "\\unrestrict " in text  # as pg_dump wrote it
    out = list(split(text, "postgresql"))
    assert not [s for s in out if s.text.startswith("\\")]
    copies = [s for s in out if s.data is not None]
    assert [s.text for s in copies] == [
        "COPY public.plain (k, v) FROM stdin",
        "COPY shop.customer (id, name, note, mood, tags, meta, created) FROM stdin",
        'COPY shop.purchase (id, customer_id, amount, raw, "weird; name") FROM stdin',
    ]
    assert [len(s.data.splitlines()) for s in copies] == [4, 5, 3]  # type: ignore[union-attr]
    assert text.splitlines()[copies[1].data_line - 1].startswith("1\tTab\\tSeparated\t")


# -- against the server -----------------------------------------------------------------


def _snapshot(dbname: str) -> dict[str, list[tuple[Any, ...]]]:
    """Schema and rows of the dumped objects, in a form two databases can be compared by."""
    mine = "n.nspname IN ('shop', 'public') AND c.relname NOT IN ('migration', 'after_dump')"
    catalog = {
        "columns": "SELECT table_schema, table_name, ordinal_position, column_name, data_type, udt_name, is_nullable, "
                   "column_default, is_identity FROM information_schema.columns WHERE table_schema IN ('shop', 'public') "
                   "AND table_name NOT IN ('migration', 'after_dump') ORDER BY 1, 2, 3",
        "constraints": "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k JOIN pg_class c "
                       f"ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {mine} ORDER BY 1, 2",
        "indexes": "SELECT schemaname, indexname, indexdef FROM pg_indexes WHERE schemaname IN ('shop', 'public') "
                   "AND tablename NOT IN ('migration', 'after_dump') ORDER BY 1, 2",
        "functions": "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p "
                     "WHERE p.pronamespace = 'shop'::regnamespace ORDER BY 1",
        "triggers": "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
        "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'shop' ORDER BY 1",
        "enum": "SELECT enumsortorder, enumlabel FROM pg_enum WHERE enumtypid = 'shop.mood'::regtype ORDER BY 1",
        "comments": "SELECT obj_description('shop.customer'::regclass, 'pg_class')",
        "sequences": "SELECT schemaname, sequencename, last_value FROM pg_sequences "
                     "WHERE schemaname IN ('shop', 'public') ORDER BY 1, 2",
    }
    snapshot = {name: query(dbname, sql) for name, sql in catalog.items()}
    for table in ("shop.customer", "shop.purchase", "public.plain"):
        snapshot[table] = query(dbname, f"SELECT r::text FROM {table} r ORDER BY 1")
    return snapshot


@pytest.fixture
def source_db() -> Any:
    """A database built from source.sql: what the committed dump was taken of."""
    name = unique("orch_pgsrc")
    with pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with pg_connect(name) as conn:
            conn.execute((DATA / "source.sql").read_text(encoding="utf-8"))
        yield name
    finally:
        with pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_real_pg_dump_restores_like_the_source_and_the_next_migration_starts_afresh(
        pg_db: Any, source_db: str, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    project.write("s1", "0001_restore.sql", DUMP.read_bytes())
    # The dump set search_path to '' and check_function_bodies off for its session: neither may reach this one.
    project.write("s1", "0002_after.sql",
                  "CREATE TABLE after_dump (id int);\nINSERT INTO after_dump VALUES (1);\n"
                  "DO $$ BEGIN IF current_setting('check_function_bodies') <> 'on' "
                  "OR current_setting('client_min_messages') <> 'notice' THEN RAISE 'settings leaked'; END IF; END $$;\n")
    code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 0, err
    target = pg_db["dbname"]
    assert _snapshot(target) == _snapshot(source_db)
    # The rows pg_dump escaped, as the source holds them.
    assert query(target, "SELECT name, note, tags FROM shop.customer WHERE id IN (1, 2, 4) ORDER BY id") == [
        ("Tab\tSeparated", "line one\nline two\r\nline three", ["a", "b c", None]),
        ("back\\slash \\N not null", "set by\ttrigger", None),
        ("\\.", "\\.\n\\.", ["\\."]),
    ]
    assert query(target, "SELECT name FROM shop.customer WHERE id = 3") == [("ünïcødé 日本語 🎉",)]
    assert query(target, "SELECT v FROM public.plain ORDER BY k") == [("\r\n",), ("",), ("\f\bv",), (None,)]
    assert query(target, "SELECT raw, \"weird; name\" FROM shop.purchase WHERE id = 1") == [(b"\x00\xff\x5c\x0a\x09", "a\tb")]
    assert query(target, "SELECT shop.total(1), shop.total(3)") == query(source_db, "SELECT shop.total(1), shop.total(3)")
    # Unqualified, in the configured schema (public): the dump's empty search_path did not carry over.
    assert query(target, "SELECT to_regclass('public.after_dump') IS NOT NULL, (SELECT id FROM public.after_dump)") == [(True, 1)]
    assert query(target, "SELECT version, status FROM migration ORDER BY 1") == [("0001_restore", "applied"), ("0002_after", "applied")]


def test_session_state_is_reset_between_migrations_and_the_lock_is_kept(pg_db: Any, project: Any, orchestrator: Any) -> None:
    role = unique("orch_role")
    with pg_connect() as conn:
        conn.execute(f'CREATE ROLE "{role}"')
    try:
        dbid = project.add_target("postgresql", "p1", {**pg_db, "schema": "app"})
        project.add_set("s1", [dbid])
        project.write("s1", "0001_change_everything.sql",
                      # (the ledger row is written in the migration's transaction, so under its role too)
                      f"GRANT USAGE, CREATE ON SCHEMA app TO \"{role}\";\nGRANT SELECT, INSERT ON app.migration TO \"{role}\";\n"
                      f"SET ROLE \"{role}\";\nSET statement_timeout = '7s';\nSET search_path = pg_catalog;\n"
                      "SELECT pg_catalog.set_config('search_path', '', false);\n"
                      "CREATE TEMPORARY TABLE scratch (x int);\nCREATE TABLE app.made_by_role (x int);\n")
        project.write("s1", "0002_check.sql",
                      "CREATE TABLE scratch (x int);\n"  # the first file's temporary table is gone
                      "DO $$ BEGIN\n"
                      "  IF current_user <> session_user THEN RAISE 'role leaked: %', current_user; END IF;\n"
                      "  IF current_setting('statement_timeout') <> '0' THEN RAISE 'statement_timeout leaked'; END IF;\n"
                      "  IF (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) = 0\n"
                      "    THEN RAISE 'the runner lost its lock'; END IF;\n"
                      "END $$;\n")
        code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
        assert code == 0, err
        db = pg_db["dbname"]
        assert query(db, "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                         "WHERE c.relnamespace = 'app'::regnamespace AND c.relname IN ('made_by_role', 'scratch') ORDER BY 1") == [
            ("made_by_role", role), ("scratch", pg_db["user"])]
        assert query(db, "SELECT version FROM app.migration ORDER BY 1") == [("0001_change_everything",), ("0002_check",)]
    finally:
        with pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{pg_db["dbname"]}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_bad_copy_row_names_the_statement_and_its_file_line(pg_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    project.write("s1", "0001_copy.sql",
                  "CREATE TABLE t (id int, name text);\n"
                  "COPY t (id, name) FROM stdin;\n"
                  "1\tone\n"
                  "2\ttwo; 'three'\n"
                  "x\tfour\n"
                  "\\.\n"
                  "INSERT INTO t VALUES (9, 'nine');\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 1, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert 's1/0001_copy.sql: statement 2 (line 5): invalid input syntax for type integer: "x"' in lines[0]
    assert query(pg_db["dbname"], "SELECT to_regclass('t'), (SELECT count(*) FROM migration)") == [(None, 0)]


def test_copy_from_stdin_csv_loads_inside_the_migrations_transaction(pg_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    project.write("s1", "0001_csv.sql",
                  "CREATE TABLE t (id int, name text);\n"
                  "COPY t FROM STDIN WITH (FORMAT csv, HEADER true);\n"
                  "id,name\n"
                  "1,\"a, \"\"quoted\"\"; value\"\n"
                  "2,\"two\nlines\"\n"
                  "3,\n"
                  "\\.\n")
    project.write("s1", "0002_fails.sql", "COPY t FROM stdin;\n4\tfour\n\\.\nSELECT nosuch;\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 1 and "s1/0002_fails.sql: statement 2 (line 4)" in err, err
    assert query(pg_db["dbname"], "SELECT id, name FROM t ORDER BY id") == [
        (1, 'a, "quoted"; value'), (2, "two\nlines"), (3, None)]  # 0002's row rolled back with it
    assert query(pg_db["dbname"], "SELECT version FROM migration") == [("0001_csv",)]


@pytest.mark.parametrize(("meta", "name"), [
    ("\\connect other_db", "connect"),
    ("\\c other_db postgres", "c"),
    ("\\set ON_ERROR_STOP on", "set"),
    ("\\i other.sql", "i"),
    ("\\ir other.sql", "ir"),
    ("\\copy t FROM 'rows.csv' csv", "copy"),
    ("\\echo done \\quit", "echo"),
    ("SELECT 'CREATE TABLE gexec_t (id int)' \\gexec", "gexec"),
])
@pytest.mark.parametrize("no_transaction", [False, True])
def test_other_meta_commands_are_refused_with_one_line_and_nothing_applied(
        meta: str, name: str, no_transaction: bool, pg_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    head = "-- orchestrator: no-transaction\n" if no_transaction else "-- a psql script\n"
    project.write("s1", "0001_psql.sql", head + "\\restrict k3y\nCREATE TABLE t (id int);\n\n" + meta + "\nCREATE TABLE u (id int);\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 1, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert f"s1/0001_psql.sql: statement {3 if name == 'gexec' else 2} (line 5): psql meta-command \\{name} cannot run here" in lines[0]
    assert "Traceback" not in err and "other_db" not in err and "rows.csv" not in err  # arguments are not echoed
    assert query(pg_db["dbname"], "SELECT to_regclass('t'), to_regclass('u'), to_regclass('gexec_t')") == [(None, None, None)]
    assert query(pg_db["dbname"], "SELECT count(*) FROM migration") == [(0,)]
