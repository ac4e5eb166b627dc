"""A real migration history, unchanged: Flipt's 16 MySQL files (golang-migrate format).

Their numeric prefixes are not zero-padded (0, 1, ..., 9, 10, ..., 15), so name
order is not numeric order. The test renames them with zero padding into a set,
applies it through the CLI, builds the same schema with the ``mariadb`` client
one file at a time in numeric order in a second database, and compares the two
catalogs, our ledger aside.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from orchestrator.sets import discover, numeric_order_warning
from tests.conftest import MYSQL, mysql_connect, realworld, unique

_NUMBER = re.compile(r"^(\d+)_")

# What defines a schema, per catalog view; the ledger table is left out of each.
CATALOG = {
    "tables": "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, ROW_FORMAT, TABLE_COLLATION, CREATE_OPTIONS, TABLE_COMMENT "
              "FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
    "columns": "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_DEFAULT, IS_NULLABLE, COLUMN_TYPE, "
               "CHARACTER_SET_NAME, COLLATION_NAME, COLUMN_KEY, EXTRA, COLUMN_COMMENT "
               "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s",
    "indexes": "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE, SUB_PART, COLLATION, INDEX_TYPE, NULLABLE "
               "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s",
    "constraints": "SELECT TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE FROM information_schema.TABLE_CONSTRAINTS "
                   "WHERE TABLE_SCHEMA = %s",
    "key_columns": "SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, ORDINAL_POSITION, POSITION_IN_UNIQUE_CONSTRAINT, "
                   "REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
                   "WHERE TABLE_SCHEMA = %s",
    "foreign_keys": "SELECT TABLE_NAME, CONSTRAINT_NAME, UNIQUE_CONSTRAINT_NAME, REFERENCED_TABLE_NAME, MATCH_OPTION, "
                    "UPDATE_RULE, DELETE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS "
                    "WHERE CONSTRAINT_SCHEMA = %s",
}


def flipt_files() -> list[Path]:
    flipt = realworld("flipt-mysql")
    files = sorted(flipt.glob("*.up.sql"), key=lambda p: int(_NUMBER.match(p.name).group(1)))  # type: ignore[union-attr]
    assert len(files) == 16, f"expected Flipt's 16 migrations in {flipt}"
    return files


def catalog(dbname: str, exclude: str) -> dict[str, Any]:
    """Every catalog view of ``dbname`` as sorted rows, plus SHOW CREATE TABLE per table."""
    result: dict[str, Any] = {}
    with mysql_connect(dbname) as conn, conn.cursor() as cur:
        for view, sql in CATALOG.items():
            cur.execute(sql, (dbname,))
            result[view] = sorted((row for row in cur.fetchall() if row[0] != exclude), key=repr)
        for (table, *_rest) in result["tables"]:
            cur.execute(f"SHOW CREATE TABLE `{table}`")
            result[f"create {table}"] = cur.fetchone()[1]
    return result


def mariadb_client() -> str:
    for name in ("mariadb", "mysql"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("the mariadb (or mysql) command-line client is needed to build the reference schema")


def test_flipt_history_applies_like_the_mariadb_client(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("mysql", "m1", mysql_db)
    folder = project.add_set("flipt", [dbid])
    for path in flipt_files():
        number, rest = path.name.split("_", 1)
        shutil.copyfile(path, folder / f"{int(number):02d}_{rest}")  # renamed only, content byte for byte
    code, _, err = orchestrator("up", "all", project.config, dbid, "flipt")
    assert code == 0, err

    reference = unique("orch_ref")
    client = mariadb_client()
    env = {**os.environ, "MYSQL_PWD": MYSQL["password"]}
    base = [client, "-h", MYSQL["ip"], "-P", str(MYSQL["port"]), "-u", MYSQL["user"]]
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{reference}` CHARACTER SET utf8mb4")
    try:
        for path in flipt_files():
            with path.open("rb") as script:
                done = subprocess.run([*base, reference], stdin=script, capture_output=True, env=env, timeout=60, check=False)
            assert done.returncode == 0, f"{path.name}: {done.stderr.decode(errors='replace')}"
        ours, theirs = catalog(mysql_db["dbname"], "migration"), catalog(reference, "migration")
    finally:
        with mysql_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{reference}`")

    assert len(ours["tables"]) >= 10 and ours["foreign_keys"]  # a real schema, not an empty one
    for view in theirs:
        assert ours[view] == theirs[view], view
    assert ours.keys() == theirs.keys()
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT version, status, set_id FROM migration ORDER BY version")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == sorted(p.name.removesuffix(".up.sql") for p in folder.iterdir())
    assert {(r[1], r[2]) for r in rows} == {("applied", "flipt")}


def test_unpadded_numeric_versions_are_flagged_on_discovery(caplog: Any, tmp_path: Path) -> None:
    name = unique("flipt")  # warnings are said once per message; a fresh set name gets its own
    with caplog.at_level(logging.WARNING, logger="sets"):
        unpadded = discover(name, realworld("flipt-mysql"))
    assert [m.version for m in unpadded.migrations][:4] == ["0_initial", "10_alter_rules_rollout_segments",
                                                            "11_change_timestamp_precision", "12_namespaces_add_state_modified_at"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{name}: numeric version prefixes are not zero-padded" in w and "rename them with zero padding" in w
               for w in warnings), warnings

    for path in flipt_files():
        number, rest = path.name.split("_", 1)
        shutil.copyfile(path, tmp_path / f"{int(number):02d}_{rest}")
    padded = discover(unique("flipt"), tmp_path)
    assert numeric_order_warning(padded) is None
    assert [m.version[:2] for m in padded.migrations] == [f"{i:02d}" for i in range(16)]

