"""A real C Web Framework install: its config.json and its ledger work unchanged.

The framework's ``config.json`` holds ``main``, ``migrations`` (``source_directory``),
``translations``, ``task_manager``, ``servers``, ``databases``, ``storages``,
``sessions``, ``mail`` and ``mimetypes``; ``tests/data/cwf/config.json`` is modelled
on it. Its ``migrate`` tool records ``lib<name>.so`` (the library CMake built) in
``migration(version varchar(180) PRIMARY KEY, apply_time integer)``: such a row is
version ``<name>``, so adopting the database never re-runs what the C tool applied.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import mysql_connect, pg_connect
from orchestrator.config import load

CWF_CONFIG = Path(__file__).parent / "data" / "cwf" / "config.json"

# The framework's own s1 history, as SQL; the C tool applied the first two.
C_APPLIED = ("2023-04-04_17-55-00_create_user_table", "2024-08-29_21-59-11_create_role_table")
LATER = ("2024-08-29_21-59-48_create_permission_table", "2024-08-29_22-00-07_create_user_role_table")
FILES = {
    C_APPLIED[0]: "CREATE TABLE app_user (id integer NOT NULL PRIMARY KEY, email varchar(100) NOT NULL DEFAULT '');\n",
    C_APPLIED[1]: "CREATE TABLE role (id integer NOT NULL PRIMARY KEY, name varchar(100) NOT NULL DEFAULT '');\n",
    LATER[0]: "CREATE TABLE permission (id integer NOT NULL PRIMARY KEY, name varchar(100) NOT NULL DEFAULT '');\n",
    LATER[1]: "CREATE TABLE user_role (user_id integer NOT NULL, role_id integer NOT NULL, PRIMARY KEY (user_id, role_id));\n",
}
C_ROWS = [(f"lib{C_APPLIED[0]}.so", 1724968751), (f"lib{C_APPLIED[1]}.so", 1724968788)]


# --- config.json ---------------------------------------------------------------

def cwf_project(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    shutil.copy(CWF_CONFIG, path)
    return path


def test_framework_config_loads_unchanged(tmp_path: Path) -> None:
    data = json.loads(CWF_CONFIG.read_text())
    assert list(data) == ["main", "migrations", "translations", "task_manager", "servers", "databases",
                          "storages", "sessions", "mail", "mimetypes"]
    config = load(cwf_project(tmp_path))
    assert sorted(config.databases) == ["mysql.m1", "postgresql.p1", "redis.r1", "sqlite.db1"]
    assert config.sets_directory == tmp_path / "app" / "migrations"
    assert config.sets == {}


def test_up_finds_the_set_under_source_directory(tmp_path: Path, orchestrator: Any) -> None:
    config = cwf_project(tmp_path)
    folder = tmp_path / "app" / "migrations" / "s1"
    folder.mkdir(parents=True)
    for version, sql in FILES.items():
        (folder / f"{version}.sql").write_text(sql)
    code, _, err = orchestrator("up", "all", config, "sqlite.db1", "s1")
    assert code == 0, err
    with sqlite3.connect(tmp_path / "var" / "app.db") as conn:
        rows = conn.execute("SELECT set_id, version FROM migration ORDER BY version").fetchall()
    assert rows == [("s1", v) for v in sorted(FILES)]


def test_sections_orchestrator_reads_stay_strict(tmp_path: Path, orchestrator: Any) -> None:
    data = json.loads(CWF_CONFIG.read_text())
    data["databases"]["postgresql"][0]["prot"] = 5433
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    code, _, err = orchestrator("status", path)
    assert code == 2
    assert "databases.postgresql[0].prot: unknown field (did you mean 'port'?)" in err

    data = json.loads(CWF_CONFIG.read_text())
    data["migrations"]["directory"] = "sets"
    path.write_text(json.dumps(data))
    code, _, err = orchestrator("status", path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "migrations.source_directory: give either 'directory' or 'source_directory'" in err

    data = json.loads(CWF_CONFIG.read_text())
    data["daemon"] = {"wrokers": 2}
    path.write_text(json.dumps(data))
    code, _, err = orchestrator("status", path)
    assert code == 2 and "daemon.wrokers: unknown field (did you mean 'workers'?)" in err

    data = json.loads(CWF_CONFIG.read_text())
    data["migration"] = data.pop("migrations")  # a misspelt section of ours is not ignored
    path.write_text(json.dumps(data))
    code, _, err = orchestrator("status", path)
    assert code == 2 and "migration: unknown field (did you mean 'migrations'?)" in err


def test_without_a_directory_the_sets_are_under_the_working_directory(tmp_path: Path, orchestrator: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(CWF_CONFIG.read_text())
    del data["migrations"]
    data["migrations"] = {"sets": {"s1": {"targets": ["sqlite.db1"]}}}
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "config.json"
    config.write_text(json.dumps(data))
    work = tmp_path / "build"
    (work / "migrations" / "s1").mkdir(parents=True)
    (work / "migrations" / "s1" / f"{LATER[0]}.sql").write_text(FILES[LATER[0]])
    monkeypatch.chdir(work)
    assert load(config).sets["s1"].folder == work / "migrations" / "s1"
    code, _, err = orchestrator("catch-up", config)
    assert code == 0, err
    with sqlite3.connect(tmp_path / "etc" / "var" / "app.db") as conn:
        assert conn.execute("SELECT set_id, version FROM migration").fetchall() == [("s1", LATER[0])]

    # a 'sets' folder beside the config is still the default where there is one
    (tmp_path / "etc" / "sets" / "s1").mkdir(parents=True)
    assert load(config).sets["s1"].folder == tmp_path / "etc" / "sets" / "s1"


# --- the C tool's ledger ---------------------------------------------------------

def c_tool_ledger_sqlite(entry: dict[str, Any]) -> tuple[Any, Any]:
    conn = sqlite3.connect(entry["path"], isolation_level=None)
    conn.execute("CREATE TABLE migration (version TEXT PRIMARY KEY, apply_time INTEGER)")
    return conn, lambda sql, params=(): conn.execute(sql.replace("%s", "?"), params).fetchall()


def c_tool_ledger_server(connect: Any) -> tuple[Any, Any]:
    conn = connect()

    def run(sql: str, params: Any = ()) -> Any:
        cur = conn.cursor()
        cur.execute(sql, params or None)
        rows = cur.fetchall() if cur.description else []
        cur.close()
        return [tuple(r) for r in rows]

    run("CREATE TABLE migration (version varchar(180) PRIMARY KEY, apply_time integer)")
    return conn, run


@pytest.mark.parametrize("command", ["up all", "catch-up"])
@pytest.mark.parametrize("driver", ["sqlite", "postgresql", "mysql"])
def test_c_tool_rows_count_as_applied(driver: str, command: str, request: Any, project: Any, orchestrator: Any) -> None:
    entry = request.getfixturevalue({"sqlite": "sqlite_db", "postgresql": "pg_db", "mysql": "mysql_db"}[driver])
    if driver == "sqlite":
        conn, run = c_tool_ledger_sqlite(entry)
    elif driver == "postgresql":
        conn, run = c_tool_ledger_server(lambda: pg_connect(entry["dbname"]))
    else:
        conn, run = c_tool_ledger_server(lambda: mysql_connect(entry["dbname"]))
    try:
        # what the C tool did: ran the first two migrations and recorded their libraries
        for version in C_APPLIED:
            run(FILES[version].rstrip().rstrip(";"))
        for version, at in C_ROWS:
            run("INSERT INTO migration (version, apply_time) VALUES (%s, %s)", (version, at))

        dbid = project.add_target(driver, "c1", entry)
        project.add_set("s1", [dbid])
        for version, sql in FILES.items():
            project.write("s1", f"{version}.sql", sql)
        if command == "up all":
            code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
        else:
            code, _, err = orchestrator("catch-up", project.config)
        assert code == 0, err
        assert "applying: " + C_APPLIED[0] not in err and "applying: " + C_APPLIED[1] not in err
        assert "applying: " + LATER[0] in err and "applying: " + LATER[1] in err

        rows = run("SELECT set_id, version, apply_time FROM migration ORDER BY version")
        assert [(r[0], r[1], int(r[2])) for r in rows if r[0] == ""] == [("", v, at) for v, at in C_ROWS]  # kept
        assert [(r[0], r[1]) for r in rows if r[0] != ""] == [("s1", v) for v in LATER]
        for table in ("permission", "user_role"):
            assert run(f"SELECT count(*) FROM {table}") == [(0,)]

        code, out, err = orchestrator("status", project.config, "--json")
        assert code == 0, err
        (binding,) = json.loads(out)["bindings"]
        assert (binding["state"], binding["pending"], binding["drift"]) == ("current", [], [])
        assert binding["applied"] == 4 and binding["last_version"] == LATER[1]

        # and a second run changes nothing
        code, _, err = orchestrator("catch-up", project.config)
        assert code == 0 and "applying" not in err, err
        assert len(run("SELECT version FROM migration")) == 4
    finally:
        conn.close()


def test_c_tool_rows_before_adoption_are_read_as_their_versions(sqlite_db: dict[str, Any], project: Any,
                                                                orchestrator: Any) -> None:
    # status reads the C tool's table as it is (never changing it): the rows are the versions, nothing pending
    conn, run = c_tool_ledger_sqlite(sqlite_db)
    for version in C_APPLIED:
        run(FILES[version].rstrip().rstrip(";"))
    for version, at in C_ROWS:
        run("INSERT INTO migration (version, apply_time) VALUES (?, ?)", (version, at))
    conn.close()
    dbid = project.add_target("sqlite", "c1", sqlite_db)
    project.add_set("s1", [dbid])
    for version in C_APPLIED:
        project.write("s1", f"{version}.sql", FILES[version])
    code, out, err = orchestrator("status", project.config, "--json")
    assert code == 0, err
    (binding,) = json.loads(out)["bindings"]
    assert (binding["state"], binding["applied"], binding["last_version"]) == ("current", 2, C_APPLIED[1])
    with sqlite3.connect(sqlite_db["path"]) as check:
        assert check.execute("SELECT version FROM migration ORDER BY version").fetchall() == [(v,) for v, _ in C_ROWS]
