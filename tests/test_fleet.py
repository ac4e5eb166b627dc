"""Fleet commands on SQLite targets: catch-up, status, plan, validate, baseline and the fleet API."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from orchestrator import checks, fleet
from orchestrator.config import load

V1, V2, V3 = "2024-01-01_00-00-00_users", "2024-01-02_00-00-00_orders", "2024-01-03_00-00-00_seed"


def write_app_set(project: Any, name: str = "app") -> None:
    project.write(name, f"{V1}.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n")
    project.write(name, f"{V2}.sql", "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER);\n")
    project.write(name, f"{V3}.sql", "INSERT INTO users (name) VALUES ('a;b');\nINSERT INTO users (name) VALUES ('c');\n")


def sqlite_fleet(project: Any, n: int, set_name: str = "app", **set_options: Any) -> list[str]:
    dbids = [project.add_target("sqlite", f"t{i:02d}", {"path": f"var/t{i:02d}.db"}) for i in range(n)]
    project.add_set(set_name, ["sqlite.*"], **set_options)
    write_app_set(project, set_name)
    return dbids


def ledger(path: Path, table: str = "migration") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT set_id, version, status FROM {table} ORDER BY set_id, version").fetchall()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_catch_up_applies_every_target_once_then_is_a_no_op(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 5)
    code, out, err = orchestrator("catch-up", project.config, "--workers", "3")
    assert code == 0, err
    assert "catch-up: 5 targets, 5 bindings: 5 applied; 15 migrations applied" in out
    for i in range(5):
        path = project.root / f"var/t{i:02d}.db"
        assert ledger(path) == [("app", V1, "applied"), ("app", V2, "applied"), ("app", V3, "applied")]
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT name FROM users ORDER BY id").fetchall() == [("a;b",), ("c",)]
    code, out, _ = orchestrator("catch-up", project.config)
    assert code == 0
    assert "5 current; 0 migrations applied" in out


def test_status_reports_each_binding_in_table_and_json(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 3)
    cfg = project.config
    assert orchestrator("up", "1", cfg, "sqlite.t01", "app")[0] == 0
    assert orchestrator("up", "all", cfg, "sqlite.t02", "app")[0] == 0
    code, out, _ = orchestrator("status", cfg)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["SET", "TARGET", "STATE", "APPLIED"]
    rows = {line.split()[1]: line.split() for line in lines[1:4]}
    assert rows["sqlite.t00"][2:5] == ["pending", "3", "0"]
    assert rows["sqlite.t01"][2:6] == ["pending", "2", "1", V1]
    assert rows["sqlite.t02"][2:5] == ["current", "3", V3]
    assert lines[-1].startswith("status: 3 targets, 3 bindings: 1 current, 2 pending")

    code, out, _ = orchestrator("status", cfg, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["command"] == "status" and doc["exit_code"] == 0 and doc["targets"] == 3
    assert doc["summary"]["current"] == 1 and doc["summary"]["pending"] == 2
    by = {b["target"]: b for b in doc["bindings"]}
    assert by["sqlite.t01"]["pending"] == [V2, V3]
    assert by["sqlite.t01"]["last_version"] == V1
    assert by["sqlite.t02"]["last_apply_utc"].endswith("Z")
    assert set(by["sqlite.t00"]) >= {"set", "target", "driver", "apply", "state", "applied", "pending", "out_of_order",
                                     "last_version", "last_apply_time", "last_apply_utc", "drift", "holder", "error"}
    # --set and --target narrow the rows.
    doc = json.loads(orchestrator("status", cfg, "--json", "--target", "sqlite.t0[12]")[1])
    assert [b["target"] for b in doc["bindings"]] == ["sqlite.t01", "sqlite.t02"]


def test_status_and_plan_create_and_change_nothing(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 2)
    cfg = project.config
    assert orchestrator("up", "1", cfg, "sqlite.t00", "app")[0] == 0
    db0 = project.root / "var/t00.db"
    before = sha(db0)
    for command in ("status", "plan", "validate"):
        code, _, err = orchestrator(command, cfg)
        assert code == 0, err
    assert sha(db0) == before
    assert not (project.root / "var/t01.db").exists()  # never created to say "nothing applied"
    assert ledger(db0) == [("app", V1, "applied")]


def test_plan_lists_versions_in_order_and_flags_out_of_order(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 1)
    cfg = project.config
    assert orchestrator("up", "all", cfg, "sqlite.t00", "app")[0] == 0
    early = "2023-12-31_00-00-00_late_arrival"
    project.write("app", f"{early}.sql", "CREATE TABLE late (id INTEGER);\n")
    project.write("app", "2024-02-01_00-00-00_next.sql", "CREATE TABLE nxt (id INTEGER);\n")
    code, out, _ = orchestrator("plan", cfg)
    assert code == 0
    assert out.splitlines()[:4] == [
        "sqlite.t00",
        "  app: would apply 2, in this order:",
        f"      {early}  (out of order: older than the newest applied)",
        "      2024-02-01_00-00-00_next",
    ]
    assert "catch-up would apply 2 migrations on 1 target(s); nothing was changed" in out
    doc = json.loads(orchestrator("plan", cfg, "--json")[1])
    assert doc["bindings"][0]["out_of_order"] == [early]
    status_out = orchestrator("status", cfg)[1]
    assert early in status_out.splitlines()[1]  # OUT OF ORDER column
    code, _, err = orchestrator("catch-up", cfg)
    assert code == 0
    assert "applying out of order" in err
    assert [r[1] for r in ledger(project.root / "var/t00.db")][0] == early


def test_report_only_set_is_never_applied(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 2, apply="report")
    code, out, err = orchestrator("catch-up", project.config)
    assert code == 0
    assert "2 pending; 0 migrations applied" in out
    assert "3 pending, not applied (apply: report)" in err
    assert not any((project.root / "var").glob("*.db")) or all(
        not ledger_exists(p) for p in (project.root / "var").glob("*.db"))
    doc = json.loads(orchestrator("plan", project.config, "--json")[1])
    assert {b["apply"] for b in doc["bindings"]} == {"report"}
    assert "not applied (apply: report)" in orchestrator("plan", project.config)[1]


def ledger_exists(path: Path) -> bool:
    with sqlite3.connect(path) as conn:
        return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'migration'").fetchall())


def test_a_failing_target_does_not_stop_the_others(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 4)
    cfg = project.config
    # t02 already has a table the first migration creates: it fails there, only there.
    path = project.root / "var/t02.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (x INTEGER)")
    code, out, err = orchestrator("catch-up", cfg, "--json")
    assert code == 1
    doc = json.loads(out)
    by = {b["target"]: b for b in doc["bindings"]}
    assert by["sqlite.t02"]["state"] == "failed"
    assert f"app/{V1}.sql: statement 1 (line 1): table users already exists" in by["sqlite.t02"]["error"]
    assert by["sqlite.t02"]["applied_now"] == []
    for t in ("sqlite.t00", "sqlite.t01", "sqlite.t03"):
        assert by[t]["state"] == "current" and by[t]["applied_now"] == [V1, V2, V3]
    assert doc["summary"]["failed"] == 1 and doc["summary"]["migrations_applied"] == 9
    assert "sqlite.t02/app: failed: " in err
    assert ledger(path) == []  # rolled back together with its ledger row


def test_a_failure_midway_reports_what_was_applied_before_it(project: Any) -> None:
    sqlite_fleet(project, 1)
    project.write("app", "2024-01-04_00-00-00_broken.sql", "INSERT INTO nowhere VALUES (1);\n")
    project.write("app", "2024-01-05_00-00-00_after.sql", "CREATE TABLE after_broken (x INTEGER);\n")
    report = fleet.catch_up(project.config)
    (b,) = report.bindings
    assert b.state == "failed" and b.applied_now == [V1, V2, V3]
    assert b.pending == ["2024-01-04_00-00-00_broken", "2024-01-05_00-00-00_after"]
    assert "statement 1 (line 1): no such table: nowhere" in (b.error or "")
    assert report.exit_code == 1


def test_unreachable_sqlite_target_is_isolated_and_exits_3(project: Any, orchestrator: Any, tmp_path: Path) -> None:
    sqlite_fleet(project, 2)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    project.add_target("sqlite", "broken", {"path": str(blocker / "x.db")})
    code, out, err = orchestrator("catch-up", project.config, "--json")
    assert code == 3
    by = {b["target"]: b for b in json.loads(out)["bindings"]}
    assert by["sqlite.broken"]["state"] == "unreachable"
    assert by["sqlite.t00"]["state"] == by["sqlite.t01"]["state"] == "current"
    assert "Traceback" not in err


def test_exit_code_precedence() -> None:
    def report(*states: str, set_error: bool = False) -> fleet.FleetReport:
        return fleet.FleetReport([fleet.BindingStatus("s", f"sqlite.t{i}", s, set_error=set_error and i == 0)
                                  for i, s in enumerate(states)])

    assert report("current", "pending").exit_code == 0
    assert report("current", "unreachable").exit_code == 3
    assert report("unreachable", "failed").exit_code == 1
    assert report("unreachable", "locked").exit_code == 1
    assert report("drift", "current").exit_code == 1
    assert report("failed", "unreachable", set_error=True).exit_code == 2


def test_drift_is_reported_and_does_not_block_new_migrations(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 1)
    cfg = project.config
    assert orchestrator("catch-up", cfg)[0] == 0
    project.write("app", f"{V2}.sql", "CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL);\n")  # edited after applying
    project.write("app", "2024-01-04_00-00-00_more.sql", "CREATE TABLE more (id INTEGER);\n")
    (project.root / "sets/app" / f"{V3}.sql").unlink()  # applied, then removed from the set
    code, out, _ = orchestrator("status", cfg, "--json")
    assert code == 1
    (b,) = json.loads(out)["bindings"]
    assert b["state"] == "drift"
    assert any(f"app/{V2}.sql: changed since it was applied on sqlite.t00" in d for d in b["drift"])
    assert any(f"app/{V3}: applied on sqlite.t00 but missing from the set" in d for d in b["drift"])
    code, out, err = orchestrator("catch-up", cfg, "--json")
    assert code == 1
    (b,) = json.loads(out)["bindings"]
    assert b["state"] == "drift" and b["applied_now"] == ["2024-01-04_00-00-00_more"]
    assert "sqlite.t00/app: applied 1 migration, then drift" in err
    code, out, _ = orchestrator("validate", cfg)
    assert code == 1
    assert f"app/{V2}.sql: changed since it was applied on sqlite.t00" in out
    assert f"app/{V3}: applied on sqlite.t00 but missing from the set" in out


def test_adopted_c_tool_rows_are_not_drift(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 1)
    path = project.root / "var/t00.db"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE migration (version VARCHAR(180) PRIMARY KEY, apply_time BIGINT)")
        conn.execute("INSERT INTO migration VALUES (?, 1700000000), ('1999-01-01_other_tool', 1600000000)", (V1,))
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    doc = json.loads(orchestrator("status", project.config, "--json")[1])
    (b,) = doc["bindings"]
    assert (b["state"], b["applied"], b["pending"], b["drift"]) == ("pending", 1, [V2, V3], [])
    assert b["last_apply_utc"] == "2023-11-14 22:13:20Z"
    code, _, err = orchestrator("catch-up", project.config)
    assert code == 0, err
    assert orchestrator("validate", project.config)[0] == 0


def test_validate_lists_every_problem_of_the_sets(project: Any, orchestrator: Any) -> None:
    project.add_target("sqlite", "a", {"path": "var/a.db"})
    project.add_target("redis", "r", {"ip": "127.0.0.1", "port": 1, "connection_timeout": 1})
    project.add_set("app", ["sqlite.a", "redis.r"])
    project.write("app", "001_ok.sql", "CREATE TABLE t (id INTEGER);\n")
    project.write("app", "002_typo.sq", "CREATE TABLE t2 (id INTEGER);\n")
    project.write("app", "003_directive.sql", "-- orchestrator: no-transacton\nCREATE TABLE t3 (id INTEGER);\n")
    project.write("app", "004_latin1.sql", b"-- caf\xe9\nCREATE TABLE t4 (id INTEGER);\n")
    project.write("app", "005_empty.sql", "-- nothing here yet\n")
    project.write("app", "006_py.py", "def upp(db):\n    pass\n")
    project.write("app", "007_both/sqlite.sql", "CREATE TABLE t7 (id INTEGER);\n")
    project.write("app", "007_both/notes.txt", "x")
    project.write("app", ".hidden.sql", "ignored on purpose")
    project.write("app", "000_old.down.sql", "ignored on purpose")
    code, out, _ = orchestrator("validate", project.config)
    assert code == 1
    lines = out.splitlines()
    expected = [
        "app/002_typo.sq: ignored (unknown extension",
        "app/007_both/notes.txt: ignored",
        "app/001_ok.sql: no file for redis",
        "app/003_directive.sql:1: unknown directive 'no-transacton'",
        "app/004_latin1.sql: not UTF-8 (byte 6)",
        "app/005_empty.sql: holds no SQL statement",
        "app/006_py.py: defines no up(db) function",
        "app/007_both: no file for redis",
    ]
    for text in expected:
        assert any(line.startswith(text) for line in lines), (text, out)
    assert not any("hidden" in line or "down.sql" in line for line in lines)
    assert any(line.startswith("redis.r: unreachable") for line in lines)
    assert lines[-1].startswith("validate: ")
    doc = json.loads(orchestrator("validate", project.config, "--json")[1])
    assert doc["exit_code"] == 1 and len(doc["findings"]) >= len(expected) and len(doc["unreachable"]) == 1


def test_validate_clean_unreachable_and_numeric_order(project: Any, orchestrator: Any) -> None:
    project.add_target("sqlite", "a", {"path": "var/a.db"})
    project.add_set("app", ["sqlite.a"])
    for n in (1, 2, 10):
        project.write("app", f"{n}_step.sql", f"CREATE TABLE t{n} (id INTEGER);\n")
    code, out, _ = orchestrator("validate", project.config)
    assert code == 1
    assert "app: numeric version prefixes are not zero-padded" in out
    for n in (1, 2, 10):
        (project.root / f"sets/app/{n}_step.sql").rename(project.root / f"sets/app/{n:03d}_step.sql")
    code, out, _ = orchestrator("validate", project.config)
    assert (code, out.splitlines()[-1][:40]) == (0, "validate: clean in 1 set(s) and 1 target")
    project.add_target("postgresql", "down", {"ip": "127.0.0.1", "port": 1, "dbname": "x", "connection_timeout": 1})
    project.sets["app"]["targets"].append("postgresql.down")
    code, out, _ = orchestrator("validate", project.config)
    assert code == 3, out
    assert out.startswith("postgresql.down: unreachable")


def test_config_and_usage_errors_exit_2_with_one_line(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 1)
    cfg = project.config
    for argv in (("status", project.root / "missing.json"), ("catch-up", cfg, "--workers", "0"),
                 ("status", cfg, "--set", "nope"), ("validate", project.root / "missing.json")):
        code, out, err = orchestrator(*argv)
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_set_fails_its_bindings_only(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 2)
    project.add_set("dup", ["sqlite.t00"])
    project.write("dup", "001_a.sql", "CREATE TABLE d1 (id INTEGER);\n")
    project.write("dup", "001_a.py", "def up(db):\n    pass\n")
    code, out, err = orchestrator("catch-up", project.config, "--json")
    assert code == 2
    by = {(b["set"], b["target"]): b for b in json.loads(out)["bindings"]}
    assert by[("dup", "sqlite.t00")]["state"] == "failed"
    assert "duplicate version '001_a'" in by[("dup", "sqlite.t00")]["error"]
    assert by[("app", "sqlite.t00")]["state"] == by[("app", "sqlite.t01")]["state"] == "current"
    code, out, _ = orchestrator("validate", project.config)
    assert code == 1
    assert "dup/001_a.sql: duplicate version '001_a' (also dup/001_a.py)" in out.splitlines()


def test_baseline_records_without_running_then_catch_up_runs_the_rest(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 1)
    cfg = project.config
    path = project.root / "var/t00.db"
    code, _, err = orchestrator("baseline", cfg, "sqlite.t00", "app", V2)
    assert code == 0, err
    assert "baseline: 2 migration(s) recorded as applied" in err
    assert ledger(path) == [("app", V1, "applied"), ("app", V2, "applied")]
    with sqlite3.connect(path) as conn:  # recorded, not run
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name IN ('users', 'orders')").fetchall()
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")  # the schema the baseline stands for
    doc = json.loads(orchestrator("status", cfg, "--json")[1])
    assert doc["bindings"][0]["pending"] == [V3] and doc["bindings"][0]["drift"] == []
    assert orchestrator("catch-up", cfg)[0] == 0
    assert [r[1] for r in ledger(path)] == [V1, V2, V3]
    # A second baseline records nothing new; bad input is one line and exit 2.
    assert orchestrator("baseline", cfg, "sqlite.t00", "app", V3)[0] == 0
    assert [r[1] for r in ledger(path)] == [V1, V2, V3]
    for argv, text in (((cfg, "sqlite.t00", "app", "2099_nope"), "no migration with version '2099_nope'"),
                       ((cfg, "sqlite.nope", "app", V1), "unknown target 'sqlite.nope'"),
                       ((cfg, "sqlite.t00", "nope", V1), "unknown set 'nope'")):
        code, _, err = orchestrator("baseline", *argv)
        assert code == 2 and text in err, err


def test_shard_of_is_stable_and_partitions_the_fleet(project: Any) -> None:
    assert fleet.shard_of("postgresql.p1", 4) == fleet.shard_of("postgresql.p1", 4)
    assert fleet.shard_of("postgresql.p1", 1) == 0
    # Fixed values: replicas on other machines and Python versions must agree.
    assert [fleet.shard_of(f"sqlite.t{i}", 3) for i in range(6)] == [
        int.from_bytes(hashlib.sha1(f"sqlite.t{i}".encode()).digest()[:8], "big") % 3 for i in range(6)]
    with pytest.raises(ValueError):
        fleet.shard_of("x.y", 0)
    sqlite_fleet(project, 9)
    config = load(project.config)
    seen: list[str] = []
    for i in range(3):
        report = fleet.catch_up(config, shard=(i, 3))
        assert all(fleet.shard_of(b.dbid, 3) == i for b in report.bindings)
        seen += [b.dbid for b in report.bindings if b.applied_now]
        assert [b.dbid for b in fleet.status(config, shard=(i, 3)).bindings] == [b.dbid for b in report.bindings]
    assert sorted(seen) == sorted(config.databases)


def test_api_callbacks_skip_and_stop(project: Any) -> None:
    sqlite_fleet(project, 6)
    config = load(project.config)
    seen: list[str] = []
    report = fleet.catch_up(config, workers=1, on_result=lambda b: seen.append(b.dbid),
                            skip=lambda set_id, dbid: dbid == "sqlite.t03")
    assert "sqlite.t03" not in [b.dbid for b in report.bindings]
    assert sorted(seen) == sorted(b.dbid for b in report.bindings) and len(seen) == 5
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    project.write("app", "2024-01-09_00-00-00_new.sql", "CREATE TABLE new_one (id INTEGER);\n")
    report = fleet.catch_up(config, workers=1, should_stop=stop)
    assert 0 < len(report.bindings) < 6  # nothing new started once stop was asked
    report = fleet.catch_up(config, workers=2)
    assert all(b.state == "current" for b in report.bindings)
    assert checks.validate(config) == []
    assert fleet.plan(config).exit_code == 0


class _Terminal:
    """A text stream that says it is a terminal, to see what people at one get."""

    def __init__(self) -> None:
        import io

        self.buffer = io.StringIO()

    def write(self, text: str) -> int:
        return self.buffer.write(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def getvalue(self) -> str:
        return self.buffer.getvalue()


def test_terminal_gets_a_rich_table_and_a_progress_bar(project: Any, monkeypatch: Any) -> None:
    import logging
    import sys

    from orchestrator import render

    sqlite_fleet(project, 3)
    config = load(project.config)
    report = fleet.catch_up(config)
    table = _Terminal()
    render.report(fleet.status(config), table)  # type: ignore[arg-type]
    out = table.getvalue()
    assert "\x1b[" in out and "sqlite.t01" in out and "current" in out  # colours, not plain text
    assert out.rstrip().splitlines()[-1].startswith("status: 3 targets, 3 bindings: 3 current")
    # The bar draws on stderr; log lines written meanwhile go through its console and the handler is put back.
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)  # type: ignore[arg-type]
    logging.getLogger().addHandler(handler)
    try:
        with render.progress(len(report.bindings), "catch-up") as advance:
            logging.getLogger("fleet").warning("a line while the bar shows")
            for _ in report.bindings:
                advance()
        assert handler.stream is terminal
    finally:
        logging.getLogger().removeHandler(handler)
    assert "a line while the bar shows" in terminal.getvalue()


def test_plan_fails_when_catch_up_would(project: Any, orchestrator: Any) -> None:
    sqlite_fleet(project, 1)
    project.write("app", "2024-01-04_00-00-00_cache.redis", "SET warm 1\n")  # no file a SQLite target can run
    code, out, _ = orchestrator("plan", project.config)
    assert code == 1
    assert "    warning: would fail: app/2024-01-04_00-00-00_cache.redis: no file for sqlite" in out
    assert orchestrator("status", project.config)[0] == 0  # status reports what is, and nothing failed yet
    code, out, _ = orchestrator("catch-up", project.config, "--json")
    (b,) = json.loads(out)["bindings"]
    assert code == 1 and b["state"] == "failed" and b["applied_now"] == []  # checked before anything ran


def test_shared_slots_cap_the_targets_open_across_runs(project: Any) -> None:
    import threading

    from orchestrator.config import load

    dbid = project.add_target("sqlite", "a", {"path": "a.db"})
    project.add_set("s1", [dbid])
    project.write("s1", "001_t.sql", "CREATE TABLE t (id INTEGER);\n")
    config = load(project.config)
    slots = threading.Semaphore(0)  # every slot taken by other runs
    done: list[Any] = []
    runner = threading.Thread(target=lambda: done.append(fleet.catch_up(config, slots=slots)))
    runner.start()
    runner.join(0.5)
    assert runner.is_alive() and not (project.root / "a.db").exists()  # waits for a slot, opens nothing
    slots.release()
    runner.join(30)
    assert done and [b.applied_now for b in done[0].bindings] == [["001_t"]]
