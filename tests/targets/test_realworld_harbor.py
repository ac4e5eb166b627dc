"""Harbor's 39 PostgreSQL migrations through the CLI build the same schema as psql does.

The files are golang-migrate ``NNNN_<version>_schema.up.sql`` scripts copied
byte for byte (see SOURCE.md next to them). Two of them alter golang-migrate's
own bookkeeping table, ``schema_migrations(version bigint, dirty boolean)``,
which golang-migrate creates before it runs any file; so both databases get that
table first, outside the set, as a database migrated by golang-migrate has it.
Then one database is migrated with ``orchestrator up all`` and the other with
``psql -v ON_ERROR_STOP=1 -1 -f`` per file, and their catalogs are compared.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import PG, pg_connect, realworld, unique

GOLANG_MIGRATE_TABLE = "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"

# Everything in schema public that migrations create, our ledger table excluded.
CATALOG = {
    "tables": "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' "
              "AND table_name <> 'migration' ORDER BY 1",
    "columns": "SELECT table_name, column_name, ordinal_position, data_type, udt_name, character_maximum_length, "
               "numeric_precision, numeric_scale, column_default, is_nullable, is_identity FROM information_schema.columns "
               "WHERE table_schema = 'public' AND table_name <> 'migration' ORDER BY 1, 2",
    "constraints": "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
                   "WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'migration' ORDER BY 1, 2",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
               "AND tablename <> 'migration' ORDER BY 1, 2",
    "functions": "SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid) FROM pg_proc p "
                 "WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1, 2",
    "triggers": "SELECT event_object_table, trigger_name, event_manipulation, action_timing, action_statement "
                "FROM information_schema.triggers WHERE trigger_schema = 'public' ORDER BY 1, 2, 3",
    "sequences": "SELECT sequence_name, data_type, start_value, increment FROM information_schema.sequences "
                 "WHERE sequence_schema = 'public' ORDER BY 1",
    "views": "SELECT table_name, view_definition FROM information_schema.views WHERE table_schema = 'public' ORDER BY 1",
    "types": "SELECT t.typname, t.typtype FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace "
             "AND t.typtype IN ('e', 'd', 'c') AND t.typrelid NOT IN (SELECT oid FROM pg_class WHERE relkind <> 'c') ORDER BY 1",
}


def snapshot(dbname: str) -> dict[str, list[tuple[Any, ...]]]:
    with pg_connect(dbname) as conn:
        result = {name: conn.execute(sql).fetchall() for name, sql in CATALOG.items()}
        # Seed rows the migrations insert (roles, properties, ...), counted per table.
        result["rows"] = [(table, conn.execute(f'SELECT count(*) FROM public."{table}"').fetchone()[0])
                          for table, kind in result["tables"] if kind == "BASE TABLE"]
    return result


def test_harbor_schema_matches_psql(pg_db: Any, project: Any, orchestrator: Any) -> None:
    source = realworld("harbor-postgres")
    files = sorted(source.glob("*.up.sql"))
    assert len(files) == 39
    dbid = project.add_target("postgresql", "harbor", pg_db)
    folder = project.add_set("harbor", [dbid])
    for f in files:
        shutil.copyfile(f, folder / f.name)
    with pg_connect(pg_db["dbname"]) as conn:
        conn.execute(GOLANG_MIGRATE_TABLE)

    code, _, err = orchestrator("up", "all", project.config, dbid, "harbor")
    assert code == 0, err

    reference = unique("orch_pg_psql")
    with pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{reference}"')
    try:
        env = {**os.environ, "PGPASSWORD": PG["password"]} if PG["password"] else dict(os.environ)
        psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", PG["ip"], "-p", str(PG["port"]), "-U", PG["user"], "-d", reference]
        subprocess.run(psql + ["-c", GOLANG_MIGRATE_TABLE], check=True, env=env, capture_output=True)
        for f in files:
            done = subprocess.run(psql + ["-1", "-f", str(f)], env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{f.name}: {done.stderr}"
        ours, theirs = snapshot(pg_db["dbname"]), snapshot(reference)
    finally:
        with pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{reference}" WITH (FORCE)')

    assert len(ours["tables"]) == 49 and ("schema_migrations", "BASE TABLE") in ours["tables"]  # as SOURCE.md counts them
    for name in list(CATALOG) + ["rows"]:
        assert ours[name] == theirs[name], name

    with pg_connect(pg_db["dbname"]) as conn:
        rows = conn.execute("SELECT set_id, version, checksum, status FROM migration ORDER BY version").fetchall()
    assert rows == [("harbor", f.name[: -len(".up.sql")], hashlib.sha256(f.read_bytes()).hexdigest(), "applied") for f in files]
    assert "applying out of order" not in err and err.count("applied ") == 39


def test_harbor_rerun_is_a_no_op(pg_db: Any, project: Any, orchestrator: Any, tmp_path: Path) -> None:
    """A second ``up`` reads the ledger once and changes nothing."""
    source = realworld("harbor-postgres")
    dbid = project.add_target("postgresql", "harbor", pg_db)
    folder = project.add_set("harbor", [dbid])
    for f in sorted(source.glob("*.up.sql"))[:5]:
        shutil.copyfile(f, folder / f.name)
    code, _, err = orchestrator("up", "all", project.config, dbid, "harbor")
    assert code == 0, err
    before = snapshot(pg_db["dbname"])
    code, _, err = orchestrator("up", "all", project.config, dbid, "harbor")
    assert code == 0 and "no new migrations" in err
    assert snapshot(pg_db["dbname"]) == before
