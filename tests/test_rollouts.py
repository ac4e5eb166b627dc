"""Rollouts on real targets: waves, failure budget, soak, caps and pins, per-server slots (issue 10).

Every assertion reads the ledgers in the targets (or the target files themselves).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from conftest import mysql_connect, pg_connect, redis_connect, unique

V1 = "2024-01-01_00-00-00_base"
V2 = "2024-02-01_00-00-00_x"
V3 = "2024-03-01_00-00-00_y"


def sqlite_versions(path: str) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        try:
            return dict(conn.execute("SELECT version, apply_time FROM migration").fetchall())
        except sqlite3.OperationalError:
            return {}


def status_json(orchestrator: Any, config: Path, *extra: str) -> dict[str, Any]:
    code, out, _ = orchestrator("status", config, "--json", *extra)
    return json.loads(out) | {"code": code}


def by_target(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["target"]: b for b in report["bindings"]}


def fleet(project: Any, pg_db: Any, mysql_db: Any, redis_prefix: Any, soak: str) -> tuple[Path, list[str], str]:
    """60 SQLite files (10 canaries), PostgreSQL, MariaDB and Redis in three waves, V1 and V2 (not yet in the set)."""
    for i in range(10):
        project.add_target("sqlite", f"c{i:02d}", {"path": f"db/c{i:02d}.db"})
    for i in range(50):
        project.add_target("sqlite", f"t{i:02d}", {"path": f"db/t{i:02d}.db"})
    project.add_target("postgresql", "p1", pg_db)
    project.add_target("mysql", "m1", mysql_db)
    project.add_target("redis", "r1", redis_prefix)
    (project.root / "db").mkdir()
    project.add_set("s1", ["sqlite.*", "postgresql.*", "mysql.*", "redis.*"],
                    rollout={"waves": [{"name": "canary", "targets": ["sqlite.c*", "postgresql.*"]},
                                       {"name": "early", "percent": 10}, {"name": "rest"}],
                             "max_failures": "10%", "soak": soak})
    key = redis_prefix["prefix"]
    project.write("s1", f"{V1}/up.sql", "CREATE TABLE base_t (id int);\n")
    project.write("s1", f"{V1}/redis.redis", f"SET {key}base 1\n")
    dbids = [f"sqlite.c{i:02d}" for i in range(10)] + [f"sqlite.t{i:02d}" for i in range(50)] + \
        ["postgresql.p1", "mysql.m1", "redis.r1"]
    return project.config, dbids, key


def ledger_snapshot(project: Any, dbid: str, pg_db: Any, mysql_db: Any, redis_prefix: Any) -> Any:
    """The target's ledger exactly as stored: a SQLite file's bytes, the server's ledger rows."""
    if dbid.startswith("sqlite."):
        return (project.root / "db" / f"{dbid.split('.')[1]}.db").read_bytes()
    if dbid.startswith("postgresql."):
        with pg_connect(pg_db["dbname"]) as conn:
            return conn.execute("SELECT * FROM migration ORDER BY version").fetchall()
    if dbid.startswith("mysql."):
        with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT * FROM migration ORDER BY version")
            return cur.fetchall()
    client = redis_connect()
    return sorted((k, client.dump(k)) for k in client.scan_iter(match=f"{redis_prefix['prefix']}*"))


def test_waves_budget_held_and_resume(project: Any, pg_db: Any, mysql_db: Any, redis_prefix: Any,
                                      orchestrator: Any) -> None:
    config, dbids, key = fleet(project, pg_db, mysql_db, redis_prefix, soak="1s")
    # V1 everywhere first, wave after wave through the soaks.
    code, _, _ = orchestrator("catch-up", config, "--wait", "--workers", "4")
    assert code == 0
    assert all(V1 in sqlite_versions(str(project.root / "db" / f"{d.split('.')[1]}.db"))
               for d in dbids if d.startswith("sqlite."))
    # V2 fails on two of the 11 canaries (the table it creates is there already): over the budget of 1
    # (10% of 11, rounded down).
    for name in ("c01", "c02"):
        with sqlite3.connect(project.root / "db" / f"{name}.db") as conn:
            conn.execute("CREATE TABLE x_t (id int)")
    project.write("s1", f"{V2}/up.sql", "CREATE TABLE x_t (id int);\n")
    project.write("s1", f"{V2}/redis.redis", f"SET {key}x 1\n")
    waves = by_target(status_json(orchestrator, config))
    later = [d for d in dbids if waves[d]["wave"] != "canary"]
    assert {waves[d]["wave"] for d in dbids} == {"canary", "early", "rest"} and len(later) == 52
    before = {d: ledger_snapshot(project, d, pg_db, mysql_db, redis_prefix) for d in later}
    code, out, _ = orchestrator("catch-up", config, "--json", "--workers", "1")
    assert code == 1
    run = by_target(json.loads(out))
    canary = {f"sqlite.c{i:02d}": sqlite_versions(str(project.root / "db" / f"c{i:02d}.db")) for i in range(10)}
    assert V2 in canary["sqlite.c00"]
    assert [d for d, rows in canary.items() if V2 in rows] == ["sqlite.c00"]  # c03..c09 never started it
    assert (run["sqlite.c01"]["state"], run["sqlite.c01"]["failed_version"]) == ("failed", V2)
    assert run["sqlite.c05"]["state"] == "pending"
    with pg_connect(pg_db["dbname"]) as conn:
        assert conn.execute("SELECT count(*) FROM migration WHERE version = %s", (V2,)).fetchone()[0] == 0
    # Later waves: ledgers byte-for-byte as they were.
    assert {d: ledger_snapshot(project, d, pg_db, mysql_db, redis_prefix) for d in later} == before
    assert run["sqlite.t00"]["state"] == "held"
    assert run["sqlite.t00"]["hold_reason"] == f"waiting for wave canary: 2 of 11 failed {V2}"
    # status (a new process reading only the ledgers) shows held, with the reason, and exits 0 for it.
    code, out, _ = orchestrator("status", config, "--target", "sqlite.t*")
    assert code == 0
    assert "held 1" in out and "waiting for wave canary: 1 of 11 have " + V2 in out
    assert f"rollout s1: {V2}: canary 1/11;" in out
    # Fixed: one run with --wait brings every target to the head, wave by wave, soaks honoured.
    for name in ("c01", "c02"):
        with sqlite3.connect(project.root / "db" / f"{name}.db") as conn:
            conn.execute("DROP TABLE x_t")
    code, _, _ = orchestrator("catch-up", config, "--wait", "--workers", "8")
    assert code == 0
    final = by_target(status_json(orchestrator, config))
    assert all(b["state"] == "current" and b["last_version"] == V2 for b in final.values())
    times = {name: [b["last_apply_time"] for b in final.values() if b["wave"] == name]
             for name in ("canary", "early", "rest")}
    assert min(times["early"]) >= max(times["canary"]) + 1
    assert min(times["rest"]) >= max(times["early"]) + 1
    assert redis_connect().get(f"{key}x") == b"1"


def test_soak_holds_the_next_wave_by_the_ledgers_apply_time(project: Any, orchestrator: Any) -> None:
    for name in ("a", "b", "c", "d"):
        project.add_target("sqlite", name, {"path": f"{name}.db"})
    project.add_set("s1", ["sqlite.*"], rollout={"waves": [{"name": "one", "targets": ["sqlite.a", "sqlite.b"]}],
                                                 "soak": "2s"})
    project.write("s1", f"{V1}.sql", "CREATE TABLE t (id int);\n")
    code, out, _ = orchestrator("catch-up", project.config, "--json")
    assert code == 0
    run = by_target(json.loads(out))
    assert run["sqlite.c"]["state"] == "held" and run["sqlite.c"]["hold_reason"].startswith("soak until ")
    assert run["sqlite.c"]["soak_until"] == max(run[d]["last_apply_time"] for d in ("sqlite.a", "sqlite.b")) + 2
    assert sqlite_versions(str(project.root / "c.db")) == {}
    code, _, _ = orchestrator("catch-up", project.config, "--wait")
    assert code == 0
    first = [sqlite_versions(str(project.root / f"{d}.db"))[V1] for d in "ab"]
    second = [sqlite_versions(str(project.root / f"{d}.db"))[V1] for d in "cd"]
    assert min(second) >= max(first) + 2


def test_percent_waves_agree_across_processes_and_orders(project: Any, tmp_path: Path) -> None:
    names = [f"n{i:02d}" for i in range(40)]
    configs = []
    for order, folder in ((names, "one"), (list(reversed(names)), "two")):
        root = tmp_path / folder
        (root / "sets" / "s1").mkdir(parents=True)
        (root / "sets" / "s1" / f"{V1}.sql").write_text("CREATE TABLE t (id int);\n")
        data = {"databases": {"sqlite": [{"host_id": n, "path": f"{n}.db"} for n in order]},
                "migrations": {"directory": "sets", "sets": {"s1": {
                    "targets": ["sqlite.*"], "rollout": {"waves": [{"name": "slice", "percent": 25}, {"name": "rest"}]}}}}}
        (root / "config.json").write_text(json.dumps(data))
        configs.append(root / "config.json")
    seen = []
    for config in configs:
        out = subprocess.run([sys.executable, "-m", "orchestrator", "status", str(config), "--json"],
                             capture_output=True, text=True, check=False).stdout
        seen.append({b["target"]: b["wave"] for b in json.loads(out)["bindings"]})
    assert seen[0] == seen[1]
    assert sum(1 for w in seen[0].values() if w == "slice") == 10


def test_until_caps_and_pins_stop_targets(project: Any, orchestrator: Any) -> None:
    for name in ("a", "b", "pinned"):
        project.add_target("sqlite", name, {"path": f"{name}.db"})
    project.add_set("s1", ["sqlite.*"], until=V2, pins={"sqlite.pin*": V1})
    for v in (V1, V2, V3):
        project.write("s1", f"{v}.sql", f"CREATE TABLE t_{v[-1]} (id int);\n")
    code, out, _ = orchestrator("catch-up", project.config, "--json")
    assert code == 0
    run = by_target(json.loads(out))
    assert sorted(sqlite_versions(str(project.root / "a.db"))) == [V1, V2]
    assert sorted(sqlite_versions(str(project.root / "pinned.db"))) == [V1]
    assert (run["sqlite.a"]["state"], run["sqlite.a"]["capped"]) == ("capped", [V3])
    assert (run["sqlite.pinned"]["state"], run["sqlite.pinned"]["capped"]) == ("capped", [V2, V3])
    code, out, _ = orchestrator("status", project.config)
    assert code == 0 and "capped 1" in out and "capped 2" in out
    code, out, _ = orchestrator("plan", project.config)
    assert "capped 2 (past its until or pin)" in out
    # Lifting the cap lets the next run apply what it held back.
    project.sets["s1"].pop("until")
    orchestrator("catch-up", project.config)
    assert sorted(sqlite_versions(str(project.root / "a.db"))) == [V1, V2, V3]
    assert sorted(sqlite_versions(str(project.root / "pinned.db"))) == [V1]


def test_per_server_caps_sessions_on_one_server(project: Any, orchestrator: Any) -> None:
    names = [unique("orch_ps") for _ in range(20)]
    tag = unique("tag")
    with pg_connect() as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        from conftest import PG

        for i, name in enumerate(names):
            project.add_target("postgresql", f"p{i:02d}", {"ip": PG["ip"], "port": PG["port"], "user": PG["user"],
                                                          "password": PG["password"], "dbname": name})
        project.add_set("s1", ["postgresql.*"])
        project.write("s1", f"{V1}.sql", f"SELECT pg_sleep(0.3) AS {tag};\nCREATE TABLE t (id int);\n")
        config = project.config
        data = json.loads(config.read_text())
        data["migrations"]["per_server"] = 2
        config.write_text(json.dumps(data))
        peak, sessions, stop = 0, 0, threading.Event()

        def sample() -> None:
            nonlocal peak, sessions
            with pg_connect() as conn:
                while not stop.is_set():
                    # Sessions applying (not idle): a closed connection's backend lingers idle for a moment.
                    rows = conn.execute("SELECT query FROM pg_stat_activity WHERE datname = ANY(%s) "
                                        "AND application_name LIKE 'orchestrator%%' AND state <> 'idle'",
                                        (names,)).fetchall()
                    sessions = max(sessions, len(rows))
                    peak = max(peak, sum(1 for (q,) in rows if tag in (q or "")))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            code, _, _ = orchestrator("catch-up", config, "--workers", "16")
        finally:
            stop.set()
            sampler.join()
        assert code == 0
        assert 1 <= peak <= 2 and sessions <= 2
        for name in names:
            with pg_connect(name) as conn:
                assert conn.execute("SELECT version FROM migration").fetchall() == [(V1,)]
    finally:
        with pg_connect() as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_waves_over_discovered_targets(project: Any, orchestrator: Any) -> None:
    """Targets a glob inventory source finds are split into waves (canary glob, percent, rest) like static ones."""
    db = project.root / "db"
    db.mkdir()
    names = [f"c{i}" for i in range(3)] + [f"t{i:02d}" for i in range(20)]
    for name in names:
        sqlite3.connect(db / f"{name}.db").close()
    project.extra["inventory"] = [{"name": "files", "glob": "db/*.db"}]
    project.add_set("s1", ["sqlite.*"], rollout={"waves": [{"name": "canary", "targets": ["sqlite.c*"]},
                                                           {"name": "early", "percent": 25}, {"name": "rest"}]})
    project.write("s1", f"{V1}.sql", "CREATE TABLE base_t (id int);\n")
    code, _, _ = orchestrator("catch-up", project.config)
    assert code == 0
    assert all(V1 in sqlite_versions(str(db / f"{n}.db")) for n in names)
    waves = by_target(status_json(orchestrator, project.config))
    assert {d: b["wave"] for d, b in waves.items() if b["wave"] == "canary"} == dict.fromkeys(
        ["sqlite.c0", "sqlite.c1", "sqlite.c2"], "canary")
    assert sum(1 for b in waves.values() if b["wave"] == "early") == 6  # 25% of all 23, rounded up
    assert sum(1 for b in waves.values() if b["wave"] == "rest") == 14
    # V2 fails on one canary (no budget): the later waves are held, their files untouched.
    with sqlite3.connect(db / "c1.db") as conn:
        conn.execute("CREATE TABLE x_t (id int)")
    project.write("s1", f"{V2}.sql", "CREATE TABLE x_t (id int);\n")
    later = [n for n in names if not n.startswith("c")]
    before = {n: (db / f"{n}.db").read_bytes() for n in later}
    code, out, _ = orchestrator("catch-up", project.config, "--json", "--workers", "1")
    assert code == 1
    run = by_target(json.loads(out))
    assert (run["sqlite.c1"]["state"], run["sqlite.c1"]["failed_version"]) == ("failed", V2)
    assert {n: (db / f"{n}.db").read_bytes() for n in later} == before
    report = status_json(orchestrator, project.config)
    held = by_target(report)
    assert all(held[f"sqlite.{n}"]["state"] == "held" for n in later)
    assert held["sqlite.t00"]["hold_reason"].startswith("waiting for wave canary: ")
    assert all(V2 not in sqlite_versions(str(db / f"{n}.db")) for n in later)
