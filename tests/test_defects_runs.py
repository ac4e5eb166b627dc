"""Runs that went wrong on real input (issue 8): empty migrations, the folder form of ``up``,
a migration that calls ``sys.exit()``, file names that are not UTF-8, a config nested too
deeply, and a ``--target`` that selects nothing. Each test asserts the targets' real state.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import mysql_connect, pg_connect, redis_connect
from tests.test_daemon import FAST, daemons, poll  # noqa: F401  (daemons: the fixture)

ROOT = Path(__file__).resolve().parents[1]


def sqlite_rows(path: str, sql: str) -> list[tuple[Any, ...]]:
    if not Path(path).exists():
        return []
    with sqlite3.connect(path) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:  # no ledger table yet: nothing recorded
            if "no such table" in str(exc):
                return []
            raise


def pg_rows(dbname: str, sql: str) -> list[tuple[Any, ...]]:
    with pg_connect(dbname) as conn:
        return conn.execute(sql).fetchall()


def mysql_rows(dbname: str, sql: str) -> list[tuple[Any, ...]]:
    with mysql_connect(dbname) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def cli(*argv: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a real process (what a user runs), with its exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *map(str, argv)], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "| ERROR |" in line]


# -- item 9: a migration with nothing to run is never applied or recorded ---------------------


EMPTY_FILES = {
    "comments.sql": "-- only a comment\n/* and a block comment */\n\n   \n",
    "pass.py": "def up(db):\n    pass\n",
    "docstring.py": '"""Nothing yet."""\n\n\ndef up(db):\n    """To do."""\n    ...\n',
}


@pytest.mark.parametrize("filename", sorted(EMPTY_FILES))
def test_a_migration_with_no_statement_fails_up_and_catch_up_and_is_never_recorded(project: Any, sqlite_db: Any,
                                                                                    orchestrator: Any, filename: str) -> None:
    dbid = project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_first.sql", "CREATE TABLE first_t (id INTEGER);\n")
    project.write("s1", f"002_{filename}", EMPTY_FILES[filename])
    config = project.config
    label = f"s1/002_{filename}"

    code, _, err = orchestrator("up", "all", config, dbid, "s1")
    assert code == 1, err
    assert error_lines(err) == [line for line in err.splitlines() if label in line] and len(error_lines(err)) == 1, err
    assert "not applied or recorded" in err
    # Checked before anything ran: not even the good migration before it.
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration") == []
    assert sqlite_rows(sqlite_db["path"], "SELECT name FROM sqlite_master WHERE name = 'first_t'") == []

    code, out, err = orchestrator("catch-up", config)
    assert code == 1, out + err
    assert label in err and "waiting" in err
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration") == []

    code, out, _ = orchestrator("plan", config)
    assert code == 1 and f"waiting: {label}" in out
    code, out, _ = orchestrator("validate", config)
    assert code == 1 and label in out

    # Filled in, it runs as any migration.
    body = "CREATE TABLE filled (id INTEGER);\n" if filename.endswith(".sql") else \
        'def up(db):\n    db.execute("CREATE TABLE filled (id INTEGER)")\n'
    project.write("s1", f"002_{filename}", body)
    code, out, err = orchestrator("catch-up", config)
    assert code == 0, out + err
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration ORDER BY version") == [
        ("001_first",), (f"002_{filename.rsplit('.', 1)[0]}",)]
    assert sqlite_rows(sqlite_db["path"], "SELECT name FROM sqlite_master WHERE name = 'filled'") == [("filled",)]


@pytest.mark.parametrize("kind", ["--sql", "--py"])
def test_untouched_create_templates_are_refused_on_postgresql(project: Any, pg_db: Any, orchestrator: Any, kind: str) -> None:
    dbid = project.add_target("postgresql", "p", pg_db)
    project.add_set("s1", [dbid])
    config = project.config
    code, out, err = orchestrator("create", "add_things", config, "s1", kind)
    assert code == 0, err
    path = Path(out.strip())
    code, _, err = orchestrator("up", "all", config, dbid, "s1")
    assert code == 1 and f"s1/{path.name}" in err and len(error_lines(err)) == 1, err
    assert pg_rows(pg_db["dbname"], "SELECT count(*) FROM information_schema.tables WHERE table_name = 'migration'") == [(0,)] \
        or pg_rows(pg_db["dbname"], "SELECT count(*) FROM migration") == [(0,)]


def test_untouched_redis_template_is_refused_on_redis(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    dbid = project.add_target("redis", "r", redis_prefix)
    project.add_set("s1", [dbid])
    config = project.config
    code, out, err = orchestrator("create", "warm_cache", config, "s1", "--redis")
    assert code == 0, err
    path = Path(out.strip())
    code, _, err = orchestrator("up", "all", config, dbid, "s1")
    assert code == 1 and f"s1/{path.name}" in err and "holds no Redis command" in err, err
    client = redis_connect()
    assert list(client.scan_iter(match=f"{redis_prefix['prefix']}*")) == []
    code, out, _ = orchestrator("validate", config)
    assert code == 1 and f"s1/{path.name}: holds no Redis command" in out


def test_daemon_waits_on_an_untouched_template_until_it_is_filled_in(project: Any, sqlite_db: Any, daemons: Any,
                                                                      orchestrator: Any) -> None:
    dbid = project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", [dbid], schedule={"every": "300ms"})
    project.write("s1", "001_first.sql", "CREATE TABLE first_t (id INTEGER);\n")
    project.extra["daemon"] = FAST
    config = project.config
    daemon = daemons(config)
    daemon.wait_ready()
    poll(lambda: (daemon.binding("s1", dbid) or {}).get("state") == "current", what="001 applied")

    code, out, err = orchestrator("create", "add_table", config, "s1")
    assert code == 0, err
    template = Path(out.strip())
    label = f"s1/{template.name}"
    waiting = poll(lambda: (b := daemon.binding("s1", dbid)) and b.get("waiting") and b, what="the binding waiting")
    assert waiting["state"] == "pending" and label in waiting["error"] and waiting["pending"] == [template.stem]
    # Several scheduled runs later: still waiting, said once, never retried as a failure, never recorded.
    runs = daemon.status()["daemon"]["sets"]["s1"]["runs"]
    poll(lambda: daemon.status()["daemon"]["sets"]["s1"]["runs"] >= runs + 3, what="three more runs")
    status = daemon.status()
    assert status["daemon"]["retries"] == [] and daemon.binding("s1", dbid)["waiting"] is True
    assert sum(label in line for line in daemon.lines) == 1, daemon.log
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration ORDER BY version") == [("001_first",)]

    template.write_text("CREATE TABLE added (id INTEGER);\n")
    poll(lambda: (b := daemon.binding("s1", dbid)) and b["state"] == "current" and not b["waiting"], what="the filled-in file applied")
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration ORDER BY version") == [("001_first",), (template.stem,)]
    assert sqlite_rows(sqlite_db["path"], "SELECT name FROM sqlite_master WHERE name = 'added'") == [("added",)]
    assert daemon.proc.poll() is None and "Traceback" not in daemon.log


# -- item 10: the folder form of up records under the configured set's name -----------------------


def test_up_with_a_set_folder_records_under_the_set_that_owns_it(project: Any, sqlite_db: Any, orchestrator: Any) -> None:
    dbid = project.add_target("sqlite", "a", sqlite_db)
    project.sets["appx"] = {"targets": [dbid], "path": "sets/app"}
    project.write("app", "001_users.sql", "CREATE TABLE users (id INTEGER);\n")
    project.write("app", "002_roles.sql", "CREATE TABLE roles (id INTEGER);\n")
    config = project.config

    code, _, err = orchestrator("up", "all", config, dbid, "./sets/app")
    assert code == 0, err
    assert sqlite_rows(sqlite_db["path"], "SELECT set_id, version FROM migration ORDER BY version") == [
        ("appx", "001_users"), ("appx", "002_roles")]
    code, out, err = orchestrator("catch-up", config)
    assert code == 0, out + err
    assert "0 migrations applied" in out
    assert sqlite_rows(sqlite_db["path"], "SELECT count(*) FROM migration") == [(2,)]
    # The absolute path names the same set.
    project.write("app", "003_more.sql", "CREATE TABLE more_t (id INTEGER);\n")
    code, _, err = orchestrator("up", config, dbid, project.root / "sets" / "app")
    assert code == 0, err
    assert sqlite_rows(sqlite_db["path"], "SELECT DISTINCT set_id FROM migration") == [("appx",)]


# -- item 12: sys.exit() in a migration is a failed migration, not the end of the process ------------


EXITS = {
    "sys.exit(0)": "import sys\n\n\ndef up(db):\n    db.execute('CREATE TABLE half (id INTEGER)')\n    sys.exit(0)\n",
    "SystemExit": "def up(db):\n    db.execute('CREATE TABLE half (id INTEGER)')\n    raise SystemExit('bye')\n",
    "KeyboardInterrupt": "def up(db):\n    db.execute('CREATE TABLE half (id INTEGER)')\n    raise KeyboardInterrupt\n",
    "exit at import": "import sys\nsys.exit(0)\n\n\ndef up(db):\n    db.execute('CREATE TABLE half (id INTEGER)')\n",
}


def _exit_set(project: Any, dbid: str, body: str) -> Path:
    project.add_set("s1", [dbid])
    project.write("s1", "v0001.sql", "CREATE TABLE one (id INTEGER);\n")
    project.write("s1", "v0002.py", body)
    project.write("s1", "v0003.sql", "CREATE TABLE three (id INTEGER);\n")
    return project.config


@pytest.mark.parametrize("how", sorted(EXITS))
def test_sqlite_migration_that_exits_fails_and_rolls_back(project: Any, sqlite_db: Any, how: str) -> None:
    dbid = project.add_target("sqlite", "a", sqlite_db)
    config = _exit_set(project, dbid, EXITS[how])
    result = cli("up", "all", config, dbid, "s1")
    assert result.returncode == 1, result.stderr
    assert "s1/v0002.py" in result.stderr and ("SystemExit" in result.stderr or "KeyboardInterrupt" in result.stderr)
    assert "Traceback" not in result.stderr
    assert sqlite_rows(sqlite_db["path"], "SELECT version, status FROM migration") == [("v0001", "applied")]
    names = {row[0] for row in sqlite_rows(sqlite_db["path"], "SELECT name FROM sqlite_master")}
    assert "one" in names and "half" not in names and "three" not in names


def test_postgresql_migration_that_exits_fails_and_rolls_back(project: Any, pg_db: Any) -> None:
    dbid = project.add_target("postgresql", "p", pg_db)
    config = _exit_set(project, dbid, EXITS["sys.exit(0)"])
    result = cli("up", "all", config, dbid, "s1")
    assert result.returncode == 1, result.stderr
    assert "s1/v0002.py" in result.stderr and "SystemExit" in result.stderr and "Traceback" not in result.stderr
    assert pg_rows(pg_db["dbname"], "SELECT version, status FROM migration") == [("v0001", "applied")]
    assert pg_rows(pg_db["dbname"], "SELECT to_regclass('public.half') IS NULL, to_regclass('public.three') IS NULL") == [
        (True, True)]


def test_mysql_migration_that_exits_is_recorded_failed(project: Any, mysql_db: Any) -> None:
    dbid = project.add_target("mysql", "m", mysql_db)
    config = _exit_set(project, dbid, EXITS["KeyboardInterrupt"])
    result = cli("catch-up", config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "s1/v0002.py" in result.stderr and "KeyboardInterrupt" in result.stderr
    rows = mysql_rows(mysql_db["dbname"], "SELECT version, status FROM migration ORDER BY version")
    assert rows == [("v0001", "applied"), ("v0002", "failed")]
    assert mysql_rows(mysql_db["dbname"], "SHOW TABLES LIKE 'three'") == []


def test_redis_python_migration_that_exits_fails(project: Any, redis_prefix: Any) -> None:
    dbid = project.add_target("redis", "r", redis_prefix)
    project.add_set("s1", [dbid])
    project.write("s1", "v0001.py", "import sys\n\n\ndef up(db):\n    sys.exit(0)\n")
    result = cli("up", "all", project.config, dbid, "s1")
    assert result.returncode == 1 and "SystemExit" in result.stderr, result.stderr
    assert list(redis_connect().scan_iter(match=f"{redis_prefix['prefix']}*:s1")) == []


def test_daemon_keeps_serving_after_a_migration_exits(project: Any, pg_db: Any, daemons: Any) -> None:
    dbid = project.add_target("postgresql", "p", pg_db)
    project.add_set("s1", [dbid])
    project.write("s1", "v0001.sql", "CREATE TABLE one (id INTEGER);\n")
    project.write("s1", "v0002.py", EXITS["sys.exit(0)"])
    project.extra["daemon"] = FAST
    daemon = daemons(project.config)
    daemon.wait_ready()
    failed = poll(lambda: (b := daemon.binding("s1", dbid)) and b["state"] == "failed" and b, what="v0002 failed")
    assert "SystemExit" in failed["error"]
    assert pg_rows(pg_db["dbname"], "SELECT version FROM migration") == [("v0001",)]
    assert pg_rows(pg_db["dbname"], "SELECT to_regclass('public.half') IS NULL") == [(True,)]
    # Retried later (a failure), and the process is still up and serving.
    poll(lambda: daemon.status()["daemon"]["retries"], what="a retry scheduled")
    assert daemon.proc.poll() is None and daemon.get("/healthz")[0] == 200
    project.write("s1", "v0002.py", "def up(db):\n    db.execute('CREATE TABLE fixed (id INTEGER)')\n")
    poll(lambda: (daemon.binding("s1", dbid) or {}).get("state") == "current", what="the fixed migration applied")
    assert pg_rows(pg_db["dbname"], "SELECT version FROM migration ORDER BY version") == [("v0001",), ("v0002",)]


# -- item 13: bad file names and absurd configs are one clear line, exit 2 ---------------------------


def test_a_file_name_that_is_not_utf8_is_refused_before_anything_runs(project: Any, sqlite_db: Any, tmp_path: Path) -> None:
    dbid = project.add_target("sqlite", "a", sqlite_db)
    folder = project.add_set("s1", [dbid])
    project.write("s1", "001_first.sql", "CREATE TABLE first_t (id INTEGER);\n")
    with open(os.path.join(os.fsencode(folder), b"002_caf\xe9.sql"), "wb") as fh:
        fh.write(b"CREATE TABLE second_t (id INTEGER);\n")
    config = project.config
    for argv in (("up", "all", config, dbid, "s1"), ("catch-up", config)):
        result = cli(*argv)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and "s1/002_caf\\xe9.sql" in lines[0] and "not valid UTF-8" in lines[0], result.stderr
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration") == []
    assert sqlite_rows(sqlite_db["path"], "SELECT name FROM sqlite_master WHERE name = 'first_t'") == []


@pytest.mark.parametrize("depth", [100_000, 990])
def test_a_config_nested_too_deeply_is_a_config_error(tmp_path: Path, depth: int) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"databases": ' + "[" * depth + "]" * depth + "}")
    result = cli("status", config)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(config) in lines[0] and "nested too deeply" in lines[0], result.stderr
    assert "internal error" not in result.stderr


# -- item 17: a filter that selects nothing is an error ---------------------------------------------


@pytest.mark.parametrize("command", ["catch-up", "status", "plan", "validate"])
def test_a_target_filter_that_matches_nothing_exits_2(project: Any, sqlite_db: Any, orchestrator: Any, command: str) -> None:
    dbid = project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_first.sql", "CREATE TABLE first_t (id INTEGER);\n")
    config = project.config
    code, out, err = orchestrator(command, config, "--target", "postgresql.*")
    assert code == 2, out + err
    assert err.count("\n") == 1 and "--target 'postgresql.*' matches no target" in err and "sqlite.a" in err
    assert "nothing selected" not in out
    code, out, err = orchestrator(command, config, "--set", "nope")
    assert code == 2 and err.count("\n") == 1 and "unknown set 'nope'" in err
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration") == []
