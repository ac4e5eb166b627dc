"""Cluster mode's parts against a real PostgreSQL control store: schema steps, replicas, fleet view, queue, jobs.

The daemon-level behaviour (several processes, SIGKILL, a cut store) is in test_cluster.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import config as config_module
from orchestrator.cluster import Engine, StoreUnavailable, TargetWork, control, status, store
from orchestrator.config import PostgresqlConfig
from tests.conftest import pg_connect


def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


@pytest.fixture
def control_db(pg_db: dict[str, Any]) -> PostgresqlConfig:
    return PostgresqlConfig(host_id="control", **pg_db)


def rows(db: PostgresqlConfig, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with pg_connect(db.dbname) as conn:
        return list(conn.execute(sql, params).fetchall())


def test_schema_steps_create_procrastinate_and_our_tables_once_even_from_replicas_starting_together(
        control_db: PostgresqlConfig) -> None:
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(store.migrate(control_db))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=len) == [[], [], [], [1, 2, 3, 4, 5]]
    assert rows(control_db, "SELECT step, name FROM orchestrator_control_schema ORDER BY step") == [
        (1, "procrastinate job queue"), (2, "replicas"), (3, "fleet view"), (4, "queued set runs"), (5, "job lock index")]
    tables = {r[0] for r in rows(control_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"procrastinate_jobs", "procrastinate_workers", "orchestrator_replicas", "orchestrator_bindings",
            "orchestrator_set_runs"} <= tables
    assert store.migrate(control_db) == []


def test_a_later_step_is_applied_to_a_store_an_older_release_created(control_db: PostgresqlConfig) -> None:
    store.migrate(control_db)
    with pg_connect(control_db.dbname) as conn:
        conn.execute("DROP TABLE orchestrator_set_runs")
        conn.execute("DELETE FROM orchestrator_control_schema WHERE step = 4")
    assert store.migrate(control_db) == [4]
    assert rows(control_db, "SELECT count(*) FROM orchestrator_set_runs") == [(0,)]


def test_an_unreachable_store_is_one_line_without_the_password() -> None:
    db = PostgresqlConfig(host_id="control", ip="127.0.0.1", port=1, dbname="x", password="s3cret-pw",  # type: ignore[arg-type]
                          connection_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        store.migrate(db)
    text = str(info.value)
    assert text.startswith("control store postgresql.control: ") and "\n" not in text and "s3cret-pw" not in text
    assert info.value.exit_code == 3


def test_replicas_heartbeat_and_a_silent_one_shows_until_its_lease_ends(control_db: PostgresqlConfig) -> None:
    store.migrate(control_db)
    with store.session(control_db) as conn:
        a = control.register(conn, "h1", 11, "1.0")
        b = control.register(conn, "h2", 22, "1.0")
        conn.execute("UPDATE orchestrator_replicas SET heartbeat = now() - interval '20 seconds' WHERE id = %s", (b,))
        listed = {r["owner"]: r for r in control.replicas(conn, 30)}
        assert listed["h1 pid 11"]["state"] == "live" and listed["h2 pid 22"]["state"] == "silent"
        conn.execute("UPDATE orchestrator_replicas SET heartbeat = now() - interval '40 seconds' WHERE id = %s", (b,))
        assert [r["owner"] for r in control.replicas(conn, 30)] == ["h1 pid 11"]
        # a replica pruned while cut off registers again at its next heartbeat
        assert control.heartbeat(conn, b, "h2", 22, "1.0", None) != b
        control.unregister(conn, a)
        assert [r["owner"] for r in control.replicas(conn, 30)] == ["h2 pid 22"]


def test_fleet_view_keeps_the_last_state_of_each_binding_with_owner_and_update_time(
        control_db: PostgresqlConfig) -> None:
    store.migrate(control_db)
    with store.session(control_db) as conn:
        control.publish(conn, "h1 pid 1", [{"set": "s", "target": "sqlite.a", "state": "pending", "pending": ["1"]}])
        control.publish(conn, "h2 pid 2", [{"set": "s", "target": "sqlite.a", "state": "current", "pending": []},
                                           {"set": "s", "target": "sqlite.b", "state": "failed", "pending": []}])
        view = control.read_view(conn)
    assert [(v["target"], v["state"], v["owner"]) for v in view] == [("sqlite.a", "current", "h2 pid 2"),
                                                                     ("sqlite.b", "failed", "h2 pid 2")]
    updated = datetime.fromisoformat(view[0]["updated"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - updated).total_seconds()) < 60 and view[0]["updated"].endswith("Z")
    now = datetime.now(UTC)
    old = (now - timedelta(seconds=301)).isoformat()
    assert control.is_stale(old, now, 150) and not control.is_stale(old, now, 151)
    assert not control.is_stale(old, now, None) and control.is_stale((now - timedelta(seconds=601)).isoformat(), now, None)


def test_a_set_run_noticed_by_several_replicas_is_claimed_by_one(control_db: PostgresqlConfig) -> None:
    store.migrate(control_db)
    with store.session(control_db) as conn:
        assert control.claim_set_run(conn, "s", "schedule", 30, "a")
        assert not control.claim_set_run(conn, "s", "schedule", 30, "b")
        assert control.claim_set_run(conn, "s", "start", 30, "b")  # another trigger
        conn.execute("UPDATE orchestrator_set_runs SET queued_at = now() - interval '31 seconds'")
        assert control.claim_set_run(conn, "s", "schedule", 30, "c")


def test_work_is_queued_once_per_target_and_each_job_runs_once_on_one_of_two_workers(
        control_db: PostgresqlConfig) -> None:
    store.migrate(control_db)
    seen: list[tuple[str, str, str]] = []
    guard = threading.Lock()
    busy: set[str] = set()
    overlap: list[str] = []

    def handler(name: str) -> Any:
        def run(dbid: str, sets: list[str], reason: str, attempt: int) -> None:
            with guard:
                if dbid in busy:
                    overlap.append(dbid)
                busy.add(dbid)
            time.sleep(0.05)
            with guard:
                busy.discard(dbid)
                seen.append((name, dbid, ",".join(sets)))
        return run

    engines = [Engine(control_db, handler(n), workers=4, lease=3, name=n) for n in ("a", "b")]
    assert engines[0].enqueue("sqlite.t0", ["s1", "s2"], "start")
    assert not engines[1].enqueue("sqlite.t0", ["s1", "s2"], "start")  # the same run, noticed twice: queued once
    assert engines[1].enqueue("sqlite.t0", ["s2"], "change")  # other work on the same target: queued, runs after
    for i in range(1, 30):
        engines[i % 2].enqueue(f"sqlite.t{i}", ["s1"], "start")
    for e in engines:
        e.start()
    try:
        wait_for(lambda: len(seen) == 31, 30, "every job done")
        assert {n for n, _, _ in seen} == {"a", "b"}  # both workers took work
        assert sorted((d, s) for _, d, s in seen).count(("sqlite.t0", "s1,s2")) == 1
        assert overlap == []  # one worker at a time on a target
        status_doc = status.read(control_db, 3)
        assert status_doc["queued"] == [] and status_doc["schema_steps"] == [1, 2, 3, 4, 5]
    finally:
        for e in engines:
            e.stop()
    assert rows(control_db, "SELECT count(*) FROM procrastinate_workers") == [(0,)]


def test_a_claim_of_a_worker_gone_silent_is_taken_over_after_the_lease(control_db: PostgresqlConfig) -> None:
    store.migrate(control_db)
    done: list[tuple[str, str]] = []
    engine = Engine(control_db, lambda dbid, sets, reason, attempt: done.append((dbid, reason)),
                    workers=2, lease=2, name="b")
    assert engine.enqueue("sqlite.x", ["s"], "start")
    with pg_connect(control_db.dbname) as conn:  # a replica that claimed it, then froze (no more heartbeats)
        dead = conn.execute("SELECT procrastinate_register_worker_v1()").fetchone()[0]
        claimed = conn.execute("SELECT id FROM procrastinate_fetch_job_v2(ARRAY['orchestrator'], %s)", (dead,)).fetchone()
        assert claimed[0] is not None
        conn.execute("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 second'")
    started = time.monotonic()
    engine.start()
    try:
        wait_for(lambda: done == [("sqlite.x", "start")], 15, "the claim taken over")
        assert time.monotonic() - started < 2 + 10
    finally:
        engine.stop()


def test_cluster_status_lists_replicas_their_claims_and_the_queue(control_db: PostgresqlConfig) -> None:
    store.migrate(control_db)
    release = threading.Event()
    engine = Engine(control_db, lambda *a: release.wait(20), workers=1, lease=3, name="a")
    engine.enqueue("sqlite.busy", ["s"], "start")
    engine.enqueue("sqlite.waiting", ["s"], "retry", 1, 600)
    with store.session(control_db) as conn:
        me = control.register(conn, "hostA", 4242, "1.0")
    engine.start()
    try:
        wait_for(lambda: engine.worker_id is not None, 10, "the worker registered")
        with store.session(control_db) as conn:
            control.heartbeat(conn, me, "hostA", 4242, "1.0", engine.worker_id)
        wait_for(lambda: status.read(control_db, 3)["replicas"][0]["claims"] == ["sqlite.busy"], 10, "the claim")
        doc = status.read(control_db, 3)
        assert [(q["target"], q["reason"]) for q in doc["queued"]] == [("sqlite.waiting", "retry")]
        text = status.render(doc)
        assert "hostA pid 4242" in text and "claims: sqlite.busy" in text and "sqlite.waiting" in text
        assert "1 target(s) queued" in text
    finally:
        release.set()
        engine.stop()


def test_a_job_catches_up_the_target_publishes_and_queues_a_retry_for_a_failure(
        project: Any, tmp_path: Any) -> None:
    targets = [project.add_target("sqlite", "a", {"path": str(tmp_path / "a.db")}),
               project.add_target("sqlite", "b", {"path": str(tmp_path / "b.db")})]
    project.add_set("s1", targets)
    project.add_set("s2", targets[:1])
    project.write("s1", "001_t.sql", "CREATE TABLE t (x INTEGER);\n")
    project.write("s2", "001_bad.sql", "CREATE TABLE nope (;\n")
    config = config_module.load(project.config)
    published: list[dict[str, Any]] = []
    queued: list[tuple[Any, ...]] = []
    work = TargetWork(lambda: config, published.extend, lambda *a: queued.append(a) or True, lambda: False)
    results = work("sqlite.a", ["s1", "s2", "gone"], "start", 0)
    assert [(b.set_id, b.state) for b in results] == [("s1", "current"), ("s2", "failed")]
    assert [(p["set"], p["target"], p["state"]) for p in published] == [("s1", "sqlite.a", "current"),
                                                                         ("s2", "sqlite.a", "failed")]
    assert queued == [("sqlite.a", ["s2"], "retry", 1, config.daemon.retry_min)]
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT version FROM migration WHERE set_id = 's1'").fetchall() == [("001_t",)]
    # stopping before a set starts hands it back at once
    stopped = TargetWork(lambda: config, published.extend, lambda *a: queued.append(a) or True, lambda: True)
    assert stopped("sqlite.b", ["s1"], "start", 0) == []
    assert queued[-1] == ("sqlite.b", ["s1"], "handback", 0, 0.0)


def test_shard_auto_takes_the_first_index_variable_set_and_a_missing_one_is_one_line() -> None:
    from orchestrator.cluster.shard import resolve_shard
    from orchestrator.errors import ConfigError

    assert resolve_shard("auto/4", {"JOB_COMPLETION_INDEX": "2", "POD_INDEX": "1"}) == "2/4"
    assert resolve_shard("auto/4", {"ORCHESTRATOR_SHARD_INDEX": "3", "JOB_COMPLETION_INDEX": "2"}) == "3/4"
    assert resolve_shard("auto/3", {"POD_INDEX": "0"}) == "0/3"
    assert resolve_shard("1/2", {}) == "1/2"
    with pytest.raises(ConfigError) as info:
        resolve_shard("auto/3", {"ORCHESTRATOR_SHARD_INDEX": ""})
    assert "ORCHESTRATOR_SHARD_INDEX, JOB_COMPLETION_INDEX, POD_INDEX" in str(info.value) and info.value.exit_code == 2
    with pytest.raises(ConfigError, match="POD_INDEX='web-1' is not a shard index"):
        resolve_shard("auto/3", {"POD_INDEX": "web-1"})


def test_a_set_run_noticed_by_two_replicas_queues_each_target_once_and_the_view_merges_with_local_state(
        control_db: PostgresqlConfig, project: Any, tmp_path: Any) -> None:
    from orchestrator.cluster.mode import ClusterMode
    from orchestrator.state import BindingStatus

    targets = [project.add_target("sqlite", f"t{i}", {"path": str(tmp_path / f"t{i}.db")}) for i in range(3)]
    project.add_set("s", targets, schedule={"every": "1m"})
    config = config_module.load(project.config)
    store.migrate(control_db)
    modes = [ClusterMode(control_db, lambda: config, workers=1, lease=3, should_stop=lambda: False) for _ in range(2)]
    assert modes[0].queue_set("s", "schedule") == 3
    assert modes[1].queue_set("s", "schedule") == 0  # the same tick, noticed by a second replica
    assert modes[1].queue_set("s", "change") == 0  # the targets' work already waits
    assert len(status.read(control_db, 3)["queued"]) == 3
    with store.session(control_db) as conn:
        control.publish(conn, "other pid 1", [BindingStatus("s", "sqlite.t0", "current", driver="sqlite").to_json()])
    modes[0].replica.refresh_view()
    local = {("s", "sqlite.t1"): BindingStatus("s", "sqlite.t1", "pending", pending=["001"])}
    rows_ = modes[0].bindings(local, datetime.now(UTC))
    assert [(b.dbid, b.state, n["owner"], n["stale"]) for b, n in rows_] == [
        ("sqlite.t0", "current", "other pid 1", False), ("sqlite.t1", "pending", modes[0].owner, False)]
    later = datetime.now(UTC) + timedelta(seconds=121)
    assert all(n["stale"] for _, n in modes[0].bindings(local, datetime.now(UTC), later))


def test_a_set_run_queues_its_targets_in_batches_leaving_out_work_already_waiting(control_db: PostgresqlConfig) -> None:
    from orchestrator.cluster.engine import BATCH

    store.migrate(control_db)
    engine = Engine(control_db, lambda *a: None, workers=1, lease=3, name="a")
    try:
        assert engine.enqueue("sqlite.t00005", ["s"], "change")
        work = [(f"sqlite.t{i:05d}", ["s"]) for i in range(2 * BATCH + 7)]  # more than one batch
        assert engine.enqueue_many(work, "start") == len(work) - 1
        assert engine.enqueue_many(work, "schedule") == 0  # the same targets' work already waits
        queued = rows(control_db, "SELECT args->>'dbid', lock, queueing_lock, priority FROM procrastinate_jobs"
                                  " WHERE status = 'todo' ORDER BY id")
        assert len(queued) == len(work)
        assert all(lock == dbid and ql == f"{dbid}|s" and prio == 0 for dbid, lock, ql, prio in queued)
        # a queue this deep got fresh statistics, so claims go through the job lock index
        assert rows(control_db, "SELECT reltuples >= %s FROM pg_class WHERE relname = 'procrastinate_jobs'",
                    len(work)) == [(True,)]
        assert rows(control_db, "SELECT count(*) FROM pg_indexes WHERE indexname = 'orchestrator_jobs_lock_waiting'") \
            == [(1,)]
    finally:
        engine.stop()


def test_a_job_reads_its_set_once_and_again_when_a_file_changes_or_the_config_is_reloaded(
        project: Any, tmp_path: Any) -> None:
    target = project.add_target("sqlite", "a", {"path": str(tmp_path / "a.db")})
    project.add_set("s", [target])
    project.write("s", "001_t.sql", "CREATE TABLE t (x INTEGER);\n")
    config = config_module.load(project.config)
    work = TargetWork(lambda: config, lambda _: None, lambda *a: True, lambda: False)
    assert [b.applied_now for b in work("sqlite.a", ["s"], "start", 0)] == [["001_t"]]
    first = work.sets.get(config, "s")
    assert work.sets.get(config, "s") is first  # nothing changed: the set as read before
    project.write("s", "002_u.sql", "CREATE TABLE u (x INTEGER);\n")
    assert [b.applied_now for b in work("sqlite.a", ["s"], "change", 0)] == [["002_u"]]
    assert work.sets.get(config, "s") is not first
    reloaded = config_module.load(project.config)
    assert work.sets.get(reloaded, "s") is not work.sets.get(config, "s")
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT version FROM migration ORDER BY version").fetchall() == [("001_t",), ("002_u",)]
