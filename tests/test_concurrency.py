"""Worker budgets of a fleet run: SQLite files and server targets apart unless a count is given."""

from __future__ import annotations

import os
import threading
from typing import Any

from orchestrator import concurrency, defaults, fleet
from orchestrator.concurrency import FileSlots, budgets, file_threads
from orchestrator.config import load


def test_without_a_count_files_and_servers_get_their_own_pools() -> None:
    targets = [(f"sqlite.f{i}", "sqlite") for i in range(100)] + [(f"postgresql.p{i}", "postgresql") for i in range(50)]
    targets += [("redis.r1", "redis"), ("mysql.m1", "mysql")]
    pools = budgets(targets, None)
    assert [size for size, _ in pools] == [min(defaults.WORKERS, file_threads()), defaults.SERVER_WORKERS]
    assert pools[0][1] == [f"sqlite.f{i}" for i in range(100)]
    assert pools[1][1] == [f"postgresql.p{i}" for i in range(50)] + ["redis.r1", "mysql.m1"]
    assert defaults.SERVER_WORKERS > defaults.WORKERS


def test_an_explicit_count_is_the_budget_for_all_the_files_taking_at_most_their_cap(monkeypatch: Any) -> None:
    monkeypatch.setattr(concurrency, "file_threads", lambda: 4)
    files = [f"sqlite.f{i}" for i in range(10)]
    servers = ["redis.r", "postgresql.p", "mysql.m"]
    targets = [(d, "sqlite") for d in files] + [(d, d.split(".")[0]) for d in servers]
    assert budgets(targets, 8) == [(4, files), (3, servers)]  # 4 + 4 allowed: never more than 8 open
    assert budgets(targets, 6) == [(4, files), (2, servers)]
    assert budgets(targets[:2] + targets[-1:], 3) == [(2, files[:2]), (1, ["mysql.m"])]
    assert budgets(targets[:10], 8) == [(4, files)]  # files alone: the cap still holds
    assert budgets(targets[10:], 8) == [(3, servers)]
    assert budgets(targets, 4) == [(4, files + servers)]  # too small to split: one pool, as before
    assert budgets(targets, 1) == [(1, files + servers)]


def test_files_get_a_few_threads_per_processor_this_process_may_use() -> None:
    assert file_threads() == concurrency.FILE_THREADS_PER_CPU * len(os.sched_getaffinity(0))


def test_pools_never_outnumber_their_targets_and_empty_ones_are_left_out() -> None:
    assert budgets([("redis.r", "redis")], None) == [(1, ["redis.r"])]
    assert budgets([("sqlite.a", "sqlite"), ("sqlite.b", "sqlite")], None) == [(2, ["sqlite.a", "sqlite.b"])]
    assert budgets([], None) == []


def _threads_by_target(project: Any, redis_prefix: dict[str, Any], **options: Any) -> dict[str, str]:
    """Catch-up over two SQLite files and two Redis prefixes; the pool thread each target ran on, by dbid."""
    for i in range(2):
        project.add_target("sqlite", f"f{i}", {"path": str(project.root / f"f{i}.db")})
        project.add_target("redis", f"r{i}", {**redis_prefix, "prefix": f"{redis_prefix['prefix']}{i}:"})
    project.add_set("sq", ["sqlite.*"])
    project.write("sq", "2024-01-01_00-00-00_a.sql", "CREATE TABLE a (id INTEGER);\n")
    project.add_set("kv", ["redis.*"])
    project.write("kv", "2024-01-01_00-00-00_a.redis", f"SET {redis_prefix['prefix']}a 1\n")
    project.extra = options
    threads: dict[str, str] = {}
    report = fleet.catch_up(load(project.config), on_result=lambda st: threads.setdefault(st.dbid, threading.current_thread().name))
    assert {(st.dbid, st.state) for st in report.bindings} == {(dbid, "current") for dbid in threads}, report.bindings
    return {dbid: name.rsplit("_", 1)[0] for dbid, name in threads.items()}


def test_a_fleet_run_without_a_count_works_files_and_servers_on_pools_of_their_own(project: Any, redis_prefix: Any) -> None:
    assert _threads_by_target(project, redis_prefix) == {"sqlite.f0": "fleet-files", "sqlite.f1": "fleet-files",
                                                         "redis.r0": "fleet-servers", "redis.r1": "fleet-servers"}


def test_daemon_workers_written_in_the_config_is_the_budget_for_all(project: Any, redis_prefix: Any) -> None:
    threads = _threads_by_target(project, redis_prefix, daemon={"workers": 3})
    assert set(threads.values()) == {"fleet"} and len(threads) == 4


def test_a_file_holds_a_processor_slot_while_read_and_lets_go_of_it_while_applying() -> None:
    slots = FileSlots(1)
    inside: list[str] = []
    a_applying, b_done = threading.Event(), threading.Event()

    def b() -> None:
        with slots.thinking("sqlite.b"):
            inside.append("b")
        b_done.set()

    with slots.thinking("sqlite.a"):
        thread = threading.Thread(target=b)
        thread.start()
        assert not b_done.wait(0.2) and inside == []  # a is being read: b waits for the one slot
        with slots.waiting("sqlite.a"):
            a_applying.set()
            assert b_done.wait(5) and inside == ["b"]  # a applies: b is read meanwhile
        with slots.thinking("postgresql.p"):  # server targets never wait for a slot
            inside.append("p")
    thread.join()
    assert inside == ["b", "p"]
