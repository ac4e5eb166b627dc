"""Per-server slots: real PostgreSQL sessions sampled in pg_stat_activity never exceed the limit."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from conftest import PG, pg_connect, unique

from orchestrator.serverslots import ServerSlots, interleave, server_key


def test_server_key_groups_by_driver_host_port_and_leaves_sqlite_free() -> None:
    a = SimpleNamespace(driver="postgresql", ip="127.0.0.1", port=5432, dbname="a")
    b = SimpleNamespace(driver="postgresql", ip="127.0.0.1", port=5432, dbname="b")
    assert server_key(a) == server_key(b) == ("postgresql", "127.0.0.1", 5432)
    assert server_key(SimpleNamespace(driver="mysql", ip="127.0.0.1", port=3306)) != server_key(a)
    assert server_key(SimpleNamespace(driver="sqlite", path="x.db")) is None


def test_interleave_spreads_servers() -> None:
    items = ["a1", "a2", "a3", "b1", "b2", "c1"]
    assert interleave(items, lambda s: s[0]) == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert interleave([], lambda s: s) == []


def test_no_limit_and_no_server_never_wait() -> None:
    slots = ServerSlots(None)
    with slots.slot(("postgresql", "h", 1)), slots.slot(("postgresql", "h", 1)):
        pass
    one = ServerSlots(1)
    with one.slot(None), one.slot(None):
        pass


def test_sixteen_threads_two_slots_two_sessions_on_the_server() -> None:
    tag = unique("slots")
    slots = ServerSlots(2)
    key = ("postgresql", PG["ip"], PG["port"])
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        with pg_connect() as conn:
            while not stop.is_set():
                (n,), = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                     "AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'", (tag,)).fetchall()
                peak = max(peak, n)

    def work(_: int) -> None:
        with slots.slot(key), pg_connect(application_name=tag) as conn:
            conn.execute("SELECT pg_sleep(0.05)")

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(work, range(20)))
    finally:
        stop.set()
        sampler.join()
    assert 1 <= peak <= 2  # without the slots all 16 threads would sleep at once
