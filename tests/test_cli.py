"""The migrate-compatible CLI: ``create NAME CONFIG DIR``, ``up [all|N] CONFIG DBID SET``, output, exit codes."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator import sets as sets_module
from orchestrator.runner import run
from orchestrator.sets import discover

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| (DEBUG|INFO|WARNING|ERROR) \| [\w.]+ - .+$")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sets_module, "_warned", set())


@pytest.fixture
def app(project: Any) -> Any:
    """A SQLite target and a set of four migrations; each one records itself in an ``applied_order`` table."""
    project.dbid = project.add_target("sqlite", "local", {"path": "var/app.db", "journal_mode": "WAL"})
    project.add_set("s1", [project.dbid])
    project.write("s1", "2024-01-02_00-00-00_first.sql",
                  "CREATE TABLE applied_order (n INTEGER PRIMARY KEY AUTOINCREMENT, version TEXT NOT NULL);\n"
                  "INSERT INTO applied_order (version) VALUES ('2024-01-02_00-00-00_first');\n")
    for version in ("2024-01-10_00-00-00_second", "2024-01-10_00-00-00_third"):
        project.write("s1", f"{version}.sql", f"INSERT INTO applied_order (version) VALUES ('{version}');\n")
    project.write("s1", "2024-02-01_00-00-00_fourth.py",
                  "def up(db):\n    db.execute(\"INSERT INTO applied_order (version) VALUES (?)\", ('2024-02-01_00-00-00_fourth',))\n")
    project.db = project.root / "var" / "app.db"
    return project


def ledger(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT set_id, version, apply_time, checksum FROM migration ORDER BY version").fetchall()


def order(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM applied_order ORDER BY n")]


def messages(err: str) -> list[str]:
    lines = err.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    return [line.split(" - ", 1)[1] for line in lines]


# -- up -----------------------------------------------------------------------------------------------

def test_up_without_count_applies_one_then_two_then_all(app: Any, orchestrator: Any) -> None:
    cfg = app.config
    code, out, err = orchestrator("up", cfg, app.dbid, "s1")
    assert code == 0 and out == ""
    assert re.fullmatch(r"applied 2024-01-02_00-00-00_first \(2 statements, \d+ ms\)", messages(err)[-1])
    assert order(app.db) == ["2024-01-02_00-00-00_first"]
    code, _, err = orchestrator("up", "2", cfg, app.dbid, "s1")
    assert code == 0
    assert [m for m in messages(err) if m.startswith("appl")] == [
        "applying: 2024-01-10_00-00-00_second", messages(err)[1], "applying: 2024-01-10_00-00-00_third", messages(err)[3]]
    assert re.fullmatch(r"applied 2024-01-10_00-00-00_second \(1 statement, \d+ ms\)", messages(err)[1])
    assert len(ledger(app.db)) == 3
    code, _, err = orchestrator("up", "all", cfg, app.dbid, "s1")
    assert code == 0
    assert re.fullmatch(r"applied 2024-02-01_00-00-00_fourth \(1 statement, \d+ ms\)", messages(err)[-1])
    assert order(app.db) == ["2024-01-02_00-00-00_first", "2024-01-10_00-00-00_second",
                             "2024-01-10_00-00-00_third", "2024-02-01_00-00-00_fourth"]
    assert [r[:2] for r in ledger(app.db)] == [("s1", v) for v in order(app.db)]


def test_log_lines_and_verbosity(app: Any, orchestrator: Any) -> None:
    code, _, err = orchestrator("up", "all", app.config, app.dbid, "s1")
    assert code == 0
    lines = err.splitlines()
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} \| INFO \| migrations - applying: 2024-01-02_00-00-00_first", line) for line in lines)
    code, _, err = orchestrator("-v", "up", "all", app.config, app.dbid, "s1")
    assert code == 0
    assert messages(err) == [f"skipping already applied: {v}" for v in order(app.db)] + ["no new migrations"]
    assert " | DEBUG | " in err
    code, out, err = orchestrator("up", "all", app.config, app.dbid, "s1", "-q")
    assert (code, out, err) == (0, "", "")
    app.write("s1", "2024-03-01_00-00-00_broken.sql", "SELECT * FROM missing_table;\n")
    code, out, err = orchestrator("-q", "up", "all", app.config, app.dbid, "s1")
    assert code == 1
    assert messages(err) == ["s1/2024-03-01_00-00-00_broken.sql: statement 1 (line 1): no such table: missing_table"]


def test_second_run_applies_nothing_and_leaves_the_ledger_alone(app: Any, orchestrator: Any) -> None:
    assert orchestrator("up", "all", app.config, app.dbid, "s1")[0] == 0
    before = ledger(app.db)
    code, _, err = orchestrator("up", "all", app.config, app.dbid, "s1")
    assert code == 0 and messages(err) == ["no new migrations"]
    assert ledger(app.db) == before
    assert len(order(app.db)) == 4


def test_name_order_is_byte_order(project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("sqlite", "a", {"path": "a.db"})
    project.add_set("s1", [dbid])
    names = ["2024-01-10_x", "2024-01-02_x", "a_lower", "B_upper", "_underscore", "Z_upper"]
    project.write("s1", "0_setup.sql", "CREATE TABLE applied_order (n INTEGER PRIMARY KEY, version TEXT);\n")
    for name in names:
        project.write("s1", f"{name}.sql", f"INSERT INTO applied_order (version) VALUES ('{name}');\n")
    assert orchestrator("up", "all", project.config, dbid, "s1")[0] == 0
    assert order(project.root / "a.db") == ["2024-01-02_x", "2024-01-10_x", "B_upper", "Z_upper", "_underscore", "a_lower"]


def test_out_of_order_file_is_applied_and_flagged(app: Any, orchestrator: Any) -> None:
    assert orchestrator("up", "all", app.config, app.dbid, "s1")[0] == 0
    late = "2024-01-05_00-00-00_late"
    app.write("s1", f"{late}.sql", f"INSERT INTO applied_order (version) VALUES ('{late}');\n")
    code, _, err = orchestrator("up", "all", app.config, app.dbid, "s1")
    assert code == 0
    assert f"applying out of order: {late} is older than the newest applied migration" in err
    assert " | WARNING | migrations - applying out of order: " in err
    assert order(app.db)[-1] == late
    # The runner reports it too (what fleet status and the daemon show).
    newer = "2024-01-06_00-00-00_later"
    app.write("s1", f"{newer}.sql", "SELECT 1;\n")
    from orchestrator.config import load
    from orchestrator.targets import open_target

    config = load(app.config)
    target = open_target(config.database(app.dbid), config.table)
    target.connect()
    try:
        report = run(target, discover("s1", config.sets["s1"].folder))
    finally:
        target.close()
    assert report.out_of_order == [newer] and [a.version for a in report.applied] == [newer]


def test_failure_in_the_middle_stops_and_rolls_back(app: Any, orchestrator: Any) -> None:
    app.write("s1", "2024-01-10_00-00-00_second.sql",
              "CREATE TABLE half_done (x INTEGER);\n\n-- a typo in the second statement\nINSERT INTO half_dne VALUES (1);\n")
    code, out, err = orchestrator("up", "all", app.config, app.dbid, "s1")
    assert code == 1 and out == ""
    assert messages(err)[-1] == "s1/2024-01-10_00-00-00_second.sql: statement 2 (line 4): no such table: half_dne"
    assert "applied 2024-01-10_00-00-00_second" not in err and "applying: 2024-01-10_00-00-00_third" not in err
    assert [r[1] for r in ledger(app.db)] == ["2024-01-02_00-00-00_first"]
    with sqlite3.connect(app.db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall() == []
    assert order(app.db) == ["2024-01-02_00-00-00_first"]


@pytest.mark.parametrize("body, message", [
    ("def up(db):\n    db.execute('CREATE TABLE py_made (x)')\n    return False\n", "s1/2024-01-03_00-00-00_py.py: up() returned False"),
    ("def up(db):\n    db.execute('CREATE TABLE py_made (x)')\n    if True:\n        raise RuntimeError('no; stop')\n",
     "s1/2024-01-03_00-00-00_py.py: line 4: up() raised RuntimeError: no; stop"),
    ("def up(db):\n    db.execute('CREATE TABLE py_made (x)')\n    db.execute('INSERT INTO nope VALUES (1)')\n",
     "s1/2024-01-03_00-00-00_py.py: line 3: up() raised OperationalError: no such table: nope"),
])
def test_failing_python_migration(app: Any, orchestrator: Any, body: str, message: str) -> None:
    app.write("s1", "2024-01-03_00-00-00_py.py", body)
    code, _, err = orchestrator("up", "all", app.config, app.dbid, "s1")
    assert code == 1
    assert messages(err)[-1] == message
    assert [r[1] for r in ledger(app.db)] == ["2024-01-02_00-00-00_first"]
    with sqlite3.connect(app.db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'py_made'").fetchall() == []


@pytest.mark.parametrize("argv, expected", [
    (("up", "0", "{cfg}", "sqlite.local", "s1"), "up: count must be 'all' or a positive number, not '0'"),
    (("up", "-1", "{cfg}", "sqlite.local", "s1"), "up: count must be 'all' or a positive number, not '-1'"),
    (("up", "x", "{cfg}", "sqlite.local", "s1"), "up: count must be 'all' or a positive number, not 'x'"),
    (("up", "1.5", "{cfg}", "sqlite.local", "s1"), "not '1.5'"),
    (("up", "ALL2", "{cfg}", "sqlite.local", "s1"), "not 'ALL2'"),
    (("up", "{cfg}", "sqlite.local"), "usage: orchestrator up [all|N] CONFIG DBID SET"),
    (("up", "1", "2", "{cfg}", "sqlite.local", "s1"), "usage: orchestrator up [all|N] CONFIG DBID SET"),
    (("up", "{cfg}", "sqlite.remote", "s1"), "unknown target 'sqlite.remote' (declared: sqlite.local)"),
    (("up", "{cfg}", "mysql.local", "s1"), "unknown target 'mysql.local'"),
    (("up", "{cfg}", "local", "s1"), "bad dbid 'local'"),
    (("up", "{cfg}", "sqlite.local", "s9"), "unknown set 's9'"),
    (("up", "--lock-wait", "soon", "{cfg}", "sqlite.local", "s1"), "usage: argument --lock-wait: invalid float value: 'soon'"),
    (("frobnicate",), "usage: argument command: invalid choice: 'frobnicate'"),
    (("create", "bad name", "{cfg}", "s1"), "create: bad name 'bad name': use letters, digits, '_' and '-'"),
    (("create", "../escape", "{cfg}", "s1"), "create: bad name '../escape'"),
    (("create", "x" * 161, "{cfg}", "s1"), "create: name is longer than 160 characters"),
    (("create", "ok", "{cfg}", "nowhere"), "create: nowhere does not exist (sets in config.json: s1)"),
    (("create", "ok", "{cfg}", "config.json"), "is not a folder"),
    (("create", "ok", "{cfg}", "s1", "--sql", "--py"), "not allowed with argument"),
])
def test_usage_errors_are_one_line_exit_2(app: Any, orchestrator: Any, argv: tuple[str, ...], expected: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = app.config
    monkeypatch.chdir(app.root)
    code, out, err = orchestrator(*(a.replace("{cfg}", str(cfg)) for a in argv))
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert expected in err, err
    assert not app.db.exists()
    assert sorted(p.name for p in (app.root / "sets" / "s1").iterdir()) == sorted(
        ["2024-01-02_00-00-00_first.sql", "2024-01-10_00-00-00_second.sql", "2024-01-10_00-00-00_third.sql", "2024-02-01_00-00-00_fourth.py"])


def test_set_given_as_a_folder_like_the_c_tool(app: Any, orchestrator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app.config  # written on first use
    monkeypatch.chdir(app.root)
    code, _, err = orchestrator("up", "all", "config.json", app.dbid, "sets/s1")
    assert code == 0, err
    assert {r[0] for r in ledger(app.db)} == {"s1"} and len(ledger(app.db)) == 4


def test_set_not_bound_to_the_target_is_applied_with_a_warning(app: Any, orchestrator: Any) -> None:
    other = app.add_target("sqlite", "other", {"path": "var/other.db"})
    code, _, err = orchestrator("up", app.config, other, "s1")
    assert code == 0
    assert "s1 is not bound to sqlite.other in config.json; applying as asked" in err
    assert len(ledger(app.root / "var" / "other.db")) == 1


def test_unreachable_target_exits_3(project: Any, orchestrator: Any) -> None:
    (project.root / "blocker").write_text("a file where a folder should be")
    dbid = project.add_target("sqlite", "a", {"path": "blocker/app.db"})
    project.add_set("s1", [dbid])
    project.write("s1", "001.sql", "SELECT 1;\n")
    code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 3 and out == ""
    assert messages(err) == [f"sqlite.a: unreachable: cannot create folder {project.root / 'blocker'}: part of that path is a file"]


def _up_all_behind_a_writer(app: Any, orchestrator: Any) -> tuple[int, str]:
    """``up all`` on the app's file while another connection holds the write lock."""
    cfg = app.config
    holder = sqlite3.connect(app.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        code, _, err = orchestrator("up", "all", cfg, app.dbid, "s1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    return code, err


def test_locked_target_exits_1(app: Any, orchestrator: Any) -> None:
    """Another runner applying on the file (its runner lock and the write lock held): locked, naming it, no retries."""
    import fcntl

    app.databases["sqlite"][0]["busy_timeout"] = 50
    assert orchestrator("up", app.config, app.dbid, "s1")[0] == 0
    with open(f"{app.db}.orchestrator-lock", "w") as runner_lock:
        fcntl.flock(runner_lock, fcntl.LOCK_EX)
        runner_lock.write("build-host pid 4242")
        runner_lock.flush()
        code, err = _up_all_behind_a_writer(app, orchestrator)
    assert code == 1
    assert messages(err)[-1] == "sqlite.local/s1 locked by build-host pid 4242; another runner is applying this set, try again later"
    assert "lock timeout" not in err
    assert len(ledger(app.db)) == 1


def test_another_writer_on_the_file_is_waited_for_with_the_lock_policy(app: Any, orchestrator: Any) -> None:
    app.databases["sqlite"][0].update(busy_timeout=50, lock_timeout="100ms", lock_retries=1)
    assert orchestrator("up", app.config, app.dbid, "s1")[0] == 0
    code, err = _up_all_behind_a_writer(app, orchestrator)  # the application writing, not a runner
    assert code == 1
    assert "lock timeout (100ms) on attempt 1 of 2" in err
    assert messages(err)[-1].endswith("lock timeout after 2 attempts (waiting for the write lock held by another connection)")
    assert len(ledger(app.db)) == 1


def test_version_flag(orchestrator: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        orchestrator("--version")
    assert exit_info.value.code == 0


# -- create -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, ext", [(None, "sql"), ("--sql", "sql"), ("--py", "py"), ("--redis", "redis")])
def test_create_writes_a_utc_timestamped_template(app: Any, orchestrator: Any, flag: str | None, ext: str) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    code, out, err = orchestrator("create", "add_index", app.config, "s1", *([flag] if flag else []))
    after = datetime.now(timezone.utc)
    assert code == 0, err
    path = Path(out.strip())
    assert path.parent == app.root / "sets" / "s1" and path.exists()
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)_add_index\." + ext, path.name)
    assert m, path.name
    stamp = datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S").replace(tzinfo=timezone.utc)
    assert before <= stamp <= after + timedelta(seconds=1)
    assert "add_index" in path.read_text()
    s = discover("s1", app.root / "sets" / "s1")
    assert s.versions[-1] == path.name.rsplit(".", 1)[0]  # newest last
    if ext == "redis":
        assert s.migrations[-1].script_for("redis").redis_commands() == []  # comments only: nothing to run
        return
    # The untouched template is refused, never recorded; filled in, it applies after the existing files.
    code, _, err = orchestrator("up", "all", app.config, app.dbid, "s1")
    assert code == 1 and f"s1/{path.name}" in err and "not applied or recorded" in err, err
    with sqlite3.connect(app.db) as conn:  # checked before anything ran: no ledger table yet, or no row
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name = 'migration'").fetchall() \
            or path.name.rsplit(".", 1)[0] not in [r[1] for r in ledger(app.db)]
    path.write_text(path.read_text() + ("CREATE TABLE made_by_template (id INTEGER);\n" if ext == "sql" else
                                        "    db.execute('CREATE TABLE made_by_template (id INTEGER)')\n"))
    code, _, err = orchestrator("up", "all", app.config, app.dbid, "s1")
    assert code == 0, err
    assert ledger(app.db)[-1][1] == path.name.rsplit(".", 1)[0]


def test_create_into_a_folder_path(app: Any, orchestrator: Any, tmp_path: Path) -> None:
    folder = app.root / "sets" / "adhoc"
    folder.mkdir()
    code, out, _ = orchestrator("create", "first", app.config, folder, "--py")
    assert code == 0 and Path(out.strip()).parent == folder
    # Relative to the config's folder also works when run from elsewhere.
    code, out, _ = orchestrator("create", "second", app.config, "sets/adhoc")
    assert code == 0 and Path(out.strip()).parent == folder
    assert sorted(p.suffix for p in folder.iterdir()) == [".py", ".sql"]


# -- two processes --------------------------------------------------------------------------------------

def test_racing_processes_apply_each_migration_exactly_once(project: Any) -> None:
    dbid = project.add_target("sqlite", "shared", {"path": "shared.db", "journal_mode": "DELETE", "busy_timeout": 20000})
    project.add_set("s1", [dbid])
    count = 12
    for i in range(count):
        project.write("s1", f"2024-01-{i + 1:02d}_00-00-00_m{i}.sql",
                      "CREATE TABLE IF NOT EXISTS counter (migration TEXT NOT NULL);\n"
                      f"INSERT INTO counter VALUES ('m{i}');\n"
                      # some work while holding the write lock, so that the processes overlap
                      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 80000) SELECT count(*) FROM c;\n")
    cfg = project.config
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "all", str(cfg), dbid, "s1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 0, 0], results
    db = project.root / "shared.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT migration, count(*) FROM counter GROUP BY migration ORDER BY migration").fetchall()
        ledger_rows = conn.execute("SELECT version, count(*) FROM migration GROUP BY version").fetchall()
    assert len(rows) == count and all(n == 1 for _, n in rows)
    assert len(ledger_rows) == count and all(n == 1 for _, n in ledger_rows)
    # Losers find each version recorded when they re-read the ledger inside the write lock.
    applied = [err.count("| INFO | migrations - applied ") for _, err in results]
    assert sum(applied) == count  # each migration reported applied by exactly one process
