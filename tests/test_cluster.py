"""Cluster mode with real daemon processes, a real control store and real targets.

Replicas share the fleet through procrastinate jobs in a PostgreSQL control store.
The lease is 3 s here (30 s by default) so failover tests stay short. Migrations sleep
about a second inside ``up`` so work is in flight when a test kills, stops or cuts.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cluster import status as cluster_status
from orchestrator.config import PostgresqlConfig
from tests.conftest import pg_connect, redis_connect
from tests.netproxy import StallProxy
from tests.test_daemon import FAST, mysql_rows, pg_rows, poll, sqlite_rows
from tests.test_daemon import daemons as daemons  # noqa: F401 - a fixture

LEASE = 3
SLOW = ("import time\n\n\ndef up(db):\n    time.sleep({seconds})\n"
        "    if db.driver == 'redis':\n        db.execute(['INCR', db.prefix + 'slow'])\n"
        "    else:\n        db.execute('CREATE TABLE slow (x INTEGER)')\n")


@pytest.fixture
def control_db(pg_db: dict[str, Any]) -> dict[str, Any]:
    return pg_db


def cluster_project(project: Any, control: dict[str, Any], sqlite_dir: Path, sqlite_count: int,
                    servers: dict[str, dict[str, Any]], seconds: float = 1.0, workers: int = 4,
                    every: str = "1h") -> list[str]:
    """A fleet of SQLite files plus server targets, one set with a slow migration and a quick one."""
    project.add_target("postgresql", "control", control)
    targets = [project.add_target("sqlite", f"f{i:03d}", {"path": str(sqlite_dir / f"f{i:03d}.db")})
               for i in range(sqlite_count)]
    for driver, entry in servers.items():
        targets.append(project.add_target(driver, "srv", entry))
    project.add_set("s", targets, schedule={"every": every})
    project.write("s", "001_slow.py", SLOW.format(seconds=seconds))
    project.write("s", "002_quick/up.sql", "CREATE TABLE quick (x INTEGER);\n")
    project.write("s", "002_quick/redis.redis", "SET quick 1\n")
    project.extra["daemon"] = {**FAST, "workers": workers,
                               "cluster": {"store": "postgresql.control", "lease": f"{LEASE}s"}}
    return targets


def ledger_versions(dbid: str, sqlite_dir: Path, servers: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    sql = "SELECT version FROM migration WHERE set_id = 's' ORDER BY version"
    if dbid.startswith("sqlite."):
        path = sqlite_dir / f"{dbid.split('.')[1]}.db"
        return sqlite_rows(str(path), sql) if path.exists() else []
    if dbid.startswith("postgresql."):
        dbname = servers["postgresql"]["dbname"]
        if pg_rows(dbname, "SELECT to_regclass('target.migration')") == [(None,)]:
            return []
        return pg_rows(dbname, sql.replace("FROM migration", "FROM target.migration"))
    if dbid.startswith("mysql."):
        dbname = servers["mysql"]["dbname"]
        if mysql_rows(dbname, "SHOW TABLES LIKE 'migration'") == []:
            return []
        return mysql_rows(dbname, sql)
    prefix = servers["redis"]["prefix"]
    return [(v.decode(),) for v in sorted(redis_connect().hkeys(f"{prefix}migration:s"))]


HEAD = [("001_slow",), ("002_quick",)]


def at_head(targets: list[str], sqlite_dir: Path, servers: dict[str, dict[str, Any]]) -> bool:
    behind = [dbid for dbid in targets if ledger_versions(dbid, sqlite_dir, servers) != HEAD]
    if behind:  # poll reports the last exception seen: say which are behind
        raise AssertionError(f"{len(behind)} behind, e.g. {behind[:5]}")
    return True


def assert_applied_once(targets: list[str], sqlite_dir: Path, servers: dict[str, dict[str, Any]]) -> None:
    for dbid in targets:
        assert ledger_versions(dbid, sqlite_dir, servers) == HEAD, dbid
    # a second run of 001_slow would fail on CREATE TABLE (SQL) or count 2 (Redis)
    assert redis_connect().get(f"{servers['redis']['prefix']}slow") == b"1"
    assert mysql_rows(servers["mysql"]["dbname"], "SELECT count(*) FROM migration WHERE set_id = 's'") == [(2,)]


def applied_lines(replica: Any) -> list[str]:
    return [line for line in replica.lines if re.search(r"\S+/s: applied \d", line)]


def store_config(control: dict[str, Any]) -> PostgresqlConfig:
    return PostgresqlConfig(host_id="control", **control)


@pytest.mark.slow
def test_replicas_share_the_fleet_newcomers_take_work_and_every_replica_shows_the_whole_fleet(
        project: Any, control_db: Any, tmp_path: Path, pg_db: Any, mysql_db: Any, redis_prefix: Any,
        daemons: Any) -> None:
    # pg_db is the control store's database; the PostgreSQL target gets a schema of its own in it.
    servers = {"postgresql": {**pg_db, "schema": "target"}, "mysql": mysql_db,
               "redis": dict(redis_prefix)}
    with pg_connect(pg_db["dbname"]) as conn:
        conn.execute("CREATE SCHEMA target")
    sqlite_dir = tmp_path / "files"
    sqlite_dir.mkdir()
    targets = cluster_project(project, control_db, sqlite_dir, 300, servers, seconds=1.0, workers=8)
    config = project.config
    first = [daemons(config) for _ in range(3)]
    for d in first:
        d.wait_ready(30)
    # while the first three are at work, two more join: no config change
    poll(lambda: sum(len(applied_lines(d)) for d in first) >= 20, 60, "work under way")
    late = [daemons(config) for _ in range(2)]
    for d in late:
        d.wait_ready(30)
    poll(lambda: at_head(targets, sqlite_dir, servers), 120, "every binding at the head")
    assert_applied_once(targets, sqlite_dir, servers)
    for d in first + late:
        assert applied_lines(d), f"replica applied nothing:\n{d.log}"  # the work spread over all five
    # /status and /metrics of each replica list every binding of the fleet with the same states
    expected = {(dbid, "current") for dbid in targets}

    def views_agree() -> bool:
        return all({(b["target"], b["state"]) for b in d.status()["bindings"]} == expected for d in first + late)

    poll(views_agree, 20, "every replica showing the whole fleet current")
    owners = set()
    for d in first + late:
        doc = d.status()
        assert len(doc["bindings"]) == len(targets)
        for b in doc["bindings"]:
            assert re.fullmatch(r".+ pid \d+", b["owner"]) and b["updated"].endswith("Z") and b["stale"] is False
            owners.add(b["owner"])
        code, page = d.get("/")
        assert code == 200 and page.count('class="note owner">by ') == len(targets)
        code, metrics = d.get("/metrics")
        assert code == 200
        states = re.findall(r'orchestrator_binding_state\{set="s",state="current",target="([^"]+)"\} 1\.0', metrics)
        if not states:
            states = re.findall(r'orchestrator_binding_state\{set="s",target="([^"]+)",state="current"\} 1\.0', metrics)
        assert sorted(states) == sorted(targets)
    assert len(owners) == 5
    for d in first + late:
        d.send(signal.SIGTERM)
    assert [d.wait(30) for d in first + late] == [0] * 5


@pytest.mark.slow
def test_a_replica_killed_mid_run_loses_its_claims_after_the_lease_and_one_stopped_hands_them_back(
        project: Any, control_db: Any, tmp_path: Path, pg_db: Any, mysql_db: Any, redis_prefix: Any,
        daemons: Any, orchestrator: Any) -> None:
    servers = {"postgresql": {**pg_db, "schema": "target"}, "mysql": mysql_db, "redis": dict(redis_prefix)}
    with pg_connect(pg_db["dbname"]) as conn:
        conn.execute("CREATE SCHEMA target")
    sqlite_dir = tmp_path / "files"
    sqlite_dir.mkdir()
    targets = cluster_project(project, control_db, sqlite_dir, 20, servers, seconds=1.5, workers=2)
    config = project.config
    replicas = [daemons(config) for _ in range(3)]
    for d in replicas:
        d.wait_ready(30)
    db = store_config(control_db)

    def claims_of(d: Any) -> list[str]:
        for r in cluster_status.read(db, LEASE)["replicas"]:
            if r["pid"] == d.proc.pid:
                return list(r["claims"])
        return []

    victim, stopped = replicas[0], replicas[1]
    claimed = poll(lambda: claims_of(victim), 30, "the victim holding claims")
    victim.proc.send_signal(signal.SIGKILL)
    victim.wait(10)
    # its claims are taken over by the others within the lease plus 10 s
    poll(lambda: all(ledger_versions(dbid, sqlite_dir, servers) == HEAD for dbid in claimed), LEASE + 10 + 2 * 1.5,
         f"the killed replica's targets {claimed} at the head")
    # SIGTERM: the migration in flight finishes, the rest of its claims go back at once, exit 0
    held = poll(lambda: claims_of(stopped), 30, "the second replica holding claims")
    stopped.send(signal.SIGTERM)
    assert stopped.wait(30) == 0, stopped.log
    # what it did not finish went back to the queue at once, not after a lease
    with pg_connect(control_db["dbname"]) as conn:
        handed_back = {row[0] for row in conn.execute(
            "SELECT args->>'dbid' FROM procrastinate_jobs WHERE args->>'reason' = 'handback'").fetchall()}
    unfinished = {dbid for dbid in held if ledger_versions(dbid, sqlite_dir, servers) != HEAD}
    assert unfinished <= handed_back, (unfinished, handed_back, stopped.log)
    # ... and not by a survivor after a lease, as a silent replica's are (the stopped one may itself have
    # taken over the killed one's claims earlier: those lines name other targets)
    stalled = [line for d in (stopped, replicas[2]) for line in d.log.splitlines()
               if "gone silent handed back" in line and line.split(" - ", 1)[-1].split(":", 1)[0] in held]
    assert stalled == [], stalled
    poll(lambda: at_head(targets, sqlite_dir, servers), 120, "every binding at the head")
    assert_applied_once(targets, sqlite_dir, servers)
    code, out, _ = orchestrator("cluster", "status", config, "--json")
    doc = json.loads(out)
    assert code == 0 and [r["pid"] for r in doc["replicas"] if r["state"] == "live"] == [replicas[2].proc.pid]
    replicas[2].send(signal.SIGTERM)
    assert replicas[2].wait(30) == 0


@pytest.mark.slow
def test_a_cut_control_store_leaves_the_page_served_claims_nothing_and_catches_up_when_back(
        project: Any, control_db: Any, tmp_path: Path, pg_db: Any, mysql_db: Any, redis_prefix: Any,
        daemons: Any) -> None:
    servers = {"postgresql": {**pg_db, "schema": "target"}, "mysql": mysql_db, "redis": dict(redis_prefix)}
    with pg_connect(pg_db["dbname"]) as conn:
        conn.execute("CREATE SCHEMA target")
    sqlite_dir = tmp_path / "files"
    sqlite_dir.mkdir()
    proxy = StallProxy(control_db["ip"], control_db["port"])
    try:
        through_proxy = {**control_db, "ip": "127.0.0.1", "port": proxy.port, "connection_timeout": 2}
        targets = cluster_project(project, through_proxy, sqlite_dir, 30, servers, seconds=1.0, workers=2)
        config = project.config
        replicas = [daemons(config) for _ in range(2)]
        for d in replicas:
            d.wait_ready(30)
        poll(lambda: sum(len(applied_lines(d)) for d in replicas) >= 4, 60, "work under way")
        before = {d.proc.pid: d.status()["bindings"] for d in replicas}
        proxy.cut()
        for d in replicas:
            poll(lambda d=d: d.status()["cluster"]["error"], 20, "the replica noticing the store is gone")
        # the migrations in flight end; after that nothing new is claimed while the store is away
        time.sleep(2 * 1.0 + 1)
        frozen = sum(len(ledger_versions(dbid, sqlite_dir, servers)) for dbid in targets)
        time.sleep(LEASE)
        assert sum(len(ledger_versions(dbid, sqlite_dir, servers)) for dbid in targets) == frozen
        with pytest.raises(AssertionError):
            at_head(targets, sqlite_dir, servers)
        for d in replicas:  # the page and /status are served from the last snapshot
            assert len(d.status()["bindings"]) >= len(before[d.proc.pid])
            assert d.get("/")[0] in (200, 401)
        proxy.restore()
        poll(lambda: at_head(targets, sqlite_dir, servers), 120, "every binding at the head once the store is back")
        assert_applied_once(targets, sqlite_dir, servers)
        expected = {(dbid, "current") for dbid in targets}
        for d in replicas:
            poll(lambda d=d: {(b["target"], b["state"]) for b in d.status()["bindings"]} == expected, 30,
                 "the view catching up")
            d.send(signal.SIGTERM)
        assert [d.wait(30) for d in replicas] == [0, 0]
    finally:
        proxy.close()


def test_shard_and_a_control_store_together_are_a_usage_error(project: Any, control_db: Any, tmp_path: Path,
                                                              orchestrator: Any) -> None:
    cluster_project(project, control_db, tmp_path, 1, {})
    code, out, err = orchestrator("daemon", project.config, "--shard", "0/2")
    assert code == 2 and "--shard" in err and "cluster" in err and "Traceback" not in err, err


def test_shard_auto_without_an_index_variable_exits_2_with_one_line(project: Any, tmp_path: Path, orchestrator: Any,
                                                                    monkeypatch: Any) -> None:
    for name in ("ORCHESTRATOR_SHARD_INDEX", "JOB_COMPLETION_INDEX", "POD_INDEX"):
        monkeypatch.delenv(name, raising=False)
    project.add_set("s", [project.add_target("sqlite", "a", {"path": str(tmp_path / "a.db")})])
    project.write("s", "001_a.sql", "CREATE TABLE a (x INTEGER);\n")
    code, out, err = orchestrator("daemon", project.config, "--once", "--shard", "auto/2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "JOB_COMPLETION_INDEX" in err, err
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    from orchestrator.fleet import shard_of
    code, out, err = orchestrator("daemon", project.config, "--once", "--shard", "auto/2")
    assert code == 0, err
    assert (tmp_path / "a.db").exists() == (shard_of("sqlite.a", 2) == 0)


def test_every_replica_publishes_its_shard_in_metrics(project: Any, tmp_path: Path, daemons: Any) -> None:
    project.add_set("s", [project.add_target("sqlite", "a", {"path": str(tmp_path / "a.db")})])
    project.write("s", "001_a.sql", "CREATE TABLE a (x INTEGER);\n")
    project.extra["daemon"] = FAST
    replica = daemons(project.config, "--shard", "auto/3", env={"POD_INDEX": "2"})
    replica.wait_ready()
    code, metrics = replica.get("/metrics")
    assert code == 200
    assert re.search(r"^orchestrator_shard_count 3\.0$", metrics, re.M), metrics
    assert re.search(r"^orchestrator_shard_index 2\.0$", metrics, re.M), metrics
    replica.send(signal.SIGTERM)
    assert replica.wait() == 0


def test_cluster_status_lists_replicas_and_queued_work(project: Any, control_db: Any, tmp_path: Path,
                                                       daemons: Any, orchestrator: Any) -> None:
    cluster_project(project, control_db, tmp_path, 3, {}, seconds=0.1)
    config = project.config
    code, out, err = orchestrator("cluster", "status", config)
    assert code == 0 and "0 replica(s)" in out, out + err  # the store's schema is created on first use
    replica = daemons(config)
    replica.wait_ready(30)
    code, out, _ = orchestrator("cluster", "status", config, "--json")
    doc = json.loads(out)
    assert code == 0 and [r["pid"] for r in doc["replicas"]] == [replica.proc.pid]
    assert doc["replicas"][0]["state"] == "live" and doc["schema_steps"] == [1, 2, 3, 4, 5]
    code, out, _ = orchestrator("cluster", "status", config)
    assert f"pid {replica.proc.pid}" in out and "live" in out
    replica.send(signal.SIGTERM)
    assert replica.wait() == 0
    code, out, _ = orchestrator("cluster", "status", config, "--json")
    assert json.loads(out)["replicas"] == []  # a clean stop leaves at once


def test_cluster_status_without_a_store_in_the_config_is_a_usage_error(project: Any, tmp_path: Path,
                                                                        orchestrator: Any) -> None:
    project.add_set("s", [project.add_target("sqlite", "a", {"path": str(tmp_path / "a.db")})])
    code, out, err = orchestrator("cluster", "status", project.config)
    assert code == 2 and "daemon.cluster" in err and "Traceback" not in err, err


def test_a_gated_set_is_refused_in_cluster_mode_not_ignored(project: Any, control_db: Any, tmp_path: Path,
                                                            orchestrator: Any) -> None:
    """Cluster jobs do not go through the rollout gate: a set with a rollout, until or pins is a config error there."""
    from orchestrator.config import load
    from orchestrator.daemon.service import Daemon

    targets = cluster_project(project, control_db, tmp_path, 2, {}, seconds=0)
    daemon = Daemon(load(project.config))  # without a rollout: accepted
    project.sets["s"]["rollout"] = {"waves": [{"name": "canary", "targets": [targets[0]]}]}
    code, _, err = orchestrator("daemon", project.config)
    errors = [line for line in err.splitlines() if "| ERROR |" in line]
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and "migrations.sets.s.rollout: not supported with daemon.cluster" in errors[0], err
    assert not (tmp_path / "f000.db").exists() and not (tmp_path / "f001.db").exists()  # nothing ran
    # A running replica keeps its configuration when a reload brings a gated set in.
    assert daemon.reload() is False
    assert "migrations.sets.s.rollout: not supported" in daemon.snapshot.info()["reload"]["error"]
    project.sets["s"].pop("rollout")
    project.sets["s"]["pins"] = {targets[1]: "001_slow"}
    code, _, err = orchestrator("daemon", project.config)
    assert code == 2 and "migrations.sets.s.pins: not supported with daemon.cluster" in err, err
