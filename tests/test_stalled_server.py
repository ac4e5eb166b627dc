"""A server or link that stops answering mid-run: the run ends as ``unreachable`` instead of hanging.

A real TCP proxy (tests/netproxy.py) sits between orchestrator and the real
server and, on a marker in the client's bytes, stops forwarding in both
directions while keeping the connection open: the peer's kernel still
acknowledges, so only a client-side bound on the runner's own queries ends the
wait. Commands run in a subprocess under a generous hard timeout; no timing is
asserted beyond that guard.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import load
from orchestrator.targets import open_target
from tests.conftest import mysql_connect, pg_connect
from tests.netproxy import StallProxy

HARD_TIMEOUT = 60  # seconds: a hang fails the test instead of the suite
VERSIONS = ["2024-01-01_first", "2024-01-02_second", "2024-01-03_third"]
ENGINES = ("postgresql", "mysql")


@pytest.fixture
def proxies() -> Iterator[list[StallProxy]]:
    made: list[StallProxy] = []
    yield made
    for p in made:  # before the database fixtures drop what a stalled session still holds
        p.close()


def entry_for(driver: str, pg_db: dict[str, Any], mysql_db: dict[str, Any]) -> dict[str, Any]:
    return {"postgresql": pg_db, "mysql": mysql_db}[driver]


def stalled(proxies: list[StallProxy], entry: dict[str, Any], marker: str) -> dict[str, Any]:
    """The entry, reached through a new proxy that stalls when the client sends ``marker``."""
    p = StallProxy(entry["ip"], entry["port"])
    proxies.append(p)
    p.stall_on(marker)
    return {**entry, "port": p.port, "connection_timeout": 1}


def write_set(project: Any, name: str, targets: list[str]) -> None:
    project.add_set(name, targets)
    for i, version in enumerate(VERSIONS, 1):
        # The versions appear in no statement: the first bytes holding one are the runner's ledger write.
        project.write(name, f"{version}.sql", f"CREATE TABLE t{i} (id INTEGER);\n")


def cli(*argv: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *map(str, argv)], capture_output=True, text=True,
                          timeout=HARD_TIMEOUT, cwd=Path(__file__).resolve().parent.parent)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if " | ERROR | " in line]


def ledger(driver: str, entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(set_id, version, status) rows, read straight from the server."""
    query = "SELECT set_id, version, status FROM migration ORDER BY set_id, version"
    if driver == "postgresql":
        with pg_connect(entry["dbname"]) as conn:
            return [tuple(r) for r in conn.execute(query).fetchall()]
    with mysql_connect(entry["dbname"]) as conn, conn.cursor() as cur:
        cur.execute(query)
        return [tuple(r) for r in cur.fetchall()]


def tables(driver: str, entry: dict[str, Any]) -> list[str]:
    if driver == "postgresql":
        with pg_connect(entry["dbname"]) as conn:
            rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
    else:
        with mysql_connect(entry["dbname"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
                        (entry["dbname"],))
            rows = cur.fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("driver", ENGINES)
def test_up_all_ends_unreachable_when_the_link_stalls_after_the_first_migration(
    driver: str, pg_db: Any, mysql_db: Any, project: Any, proxies: list[StallProxy]
) -> None:
    entry = entry_for(driver, pg_db, mysql_db)
    # Stall as the runner writes the second migration's ledger row (PostgreSQL: inside its
    # transaction, after its body; MySQL: the 'running' row, before its body).
    dbid = project.add_target(driver, "x", stalled(proxies, entry, VERSIONS[1]))
    write_set(project, "app", [dbid])
    done = cli("up", "all", project.config, dbid, "app")
    assert proxies[0].triggered.is_set(), done.stderr
    assert done.returncode == 3, done.stderr
    (line,) = error_lines(done.stderr)
    assert f"{dbid}: unreachable: no answer within 1 s (connection_timeout)" in line
    assert "Traceback" not in done.stdout + done.stderr
    proxies[0].close()  # the stalled session ends; PostgreSQL rolls the second migration back
    assert ledger(driver, entry) == [("app", VERSIONS[0], "applied")]
    assert tables(driver, entry) == ["migration", "t1"]


@pytest.mark.parametrize("stuck", ENGINES)
def test_catch_up_and_status_report_the_stalled_target_and_finish_the_other(
    stuck: str, pg_db: Any, mysql_db: Any, project: Any, proxies: list[StallProxy]
) -> None:
    other = "mysql" if stuck == "postgresql" else "postgresql"
    stuck_entry, other_entry = entry_for(stuck, pg_db, mysql_db), entry_for(other, pg_db, mysql_db)
    stuck_id = project.add_target(stuck, "stuck", stalled(proxies, stuck_entry, VERSIONS[1]))
    other_id = project.add_target(other, "ok", {**other_entry, "connection_timeout": 1})
    write_set(project, "app", [stuck_id, other_id])
    done = cli("catch-up", project.config, "--json")
    assert done.returncode == 3, done.stderr
    by = {b["target"]: b for b in json.loads(done.stdout)["bindings"]}
    assert by[stuck_id]["state"] == "unreachable" and by[stuck_id]["applied_now"] == VERSIONS[:1]
    assert "connection_timeout" in by[stuck_id]["error"]
    assert by[other_id]["state"] == "current" and by[other_id]["applied_now"] == VERSIONS
    assert "Traceback" not in done.stderr
    assert ledger(other, other_entry) == [("app", v, "applied") for v in VERSIONS]
    proxies[0].close()
    assert ledger(stuck, stuck_entry) == [("app", VERSIONS[0], "applied")]

    # status: this time the link stalls on the ledger read itself, after connecting.
    config = json.loads(project.config.read_text())
    config["migrations"]["table"] = "ledger_stall_mark"  # the first client bytes naming it are the ledger read
    project.config.write_text(json.dumps(config))
    cfg = project.root / "status.json"
    p = StallProxy(stuck_entry["ip"], stuck_entry["port"])
    proxies.append(p)
    p.stall_on("ledger_stall_mark")
    config["databases"][stuck][0]["port"] = p.port
    cfg.write_text(json.dumps(config))
    done = cli("status", cfg, "--json")
    assert p.triggered.is_set(), done.stderr
    assert done.returncode == 3, done.stderr
    by = {b["target"]: b for b in json.loads(done.stdout)["bindings"]}
    assert by[stuck_id]["state"] == "unreachable" and "connection_timeout" in by[stuck_id]["error"]
    assert by[other_id]["state"] == "pending"  # a fresh ledger table name: nothing recorded there yet


@pytest.mark.parametrize("driver", ENGINES)
def test_a_migration_slower_than_connection_timeout_is_not_cut(
    driver: str, pg_db: Any, mysql_db: Any, project: Any, proxies: list[StallProxy]
) -> None:
    entry = entry_for(driver, pg_db, mysql_db)
    p = StallProxy(entry["ip"], entry["port"])  # forwarding all the way: the slowness is the server's
    proxies.append(p)
    dbid = project.add_target(driver, "x", {**entry, "port": p.port, "connection_timeout": 1})
    project.add_set("app", [dbid])
    sleep = "SELECT pg_sleep(2.5)" if driver == "postgresql" else "SELECT SLEEP(2.5)"
    project.write("app", "001_slow.sql", f"CREATE TABLE slow (id INTEGER);\n{sleep};\nINSERT INTO slow VALUES (1);\n")
    project.write("app", "002_slow.py", f"def up(db):\n    db.query({sleep!r})\n    db.execute('INSERT INTO slow VALUES (2)')\n")
    done = cli("up", "all", project.config, dbid, "app")
    assert done.returncode == 0, done.stderr
    assert ledger(driver, entry) == [("app", "001_slow", "applied"), ("app", "002_slow", "applied")]


@pytest.mark.parametrize("driver", ENGINES)
def test_keepalive_and_tcp_user_timeout_from_the_config_are_on_the_socket(
    driver: str, pg_db: Any, mysql_db: Any, project: Any
) -> None:
    entry = entry_for(driver, pg_db, mysql_db)
    project.add_target(driver, "d", entry)  # defaults: about a minute
    project.add_target(driver, "c", {**entry, "keepalive": 20, "tcp_user_timeout": 7})
    project.add_target(driver, "off", {**entry, "keepalive": 0})
    config = load(project.config)

    def options(host_id: str) -> tuple[int, int, int, int, int]:
        target = open_target(config.databases[f"{driver}.{host_id}"], config.table)
        target.connect()
        try:
            conn: Any = target.connection  # type: ignore[attr-defined]
            fd = conn.fileno() if driver == "postgresql" else conn._sock.fileno()
            with socket.socket(fileno=__import__("os").dup(fd)) as sock:
                return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        finally:
            target.close()

    assert options("d") == (1, 30, 10, 3, 60_000)
    assert options("c") == (1, 10, 3, 3, 7_000)
    assert options("off")[0] == 0


def test_a_bad_keepalive_is_a_config_error_naming_the_field(project: Any, pg_db: Any, orchestrator: Any) -> None:
    dbid = project.add_target("postgresql", "p", {**pg_db, "tcp_user_timeout": -5})
    project.add_set("app", [dbid])
    code, _, err = orchestrator("status", project.config)
    assert code == 2
    (line,) = error_lines(err)
    assert "tcp_user_timeout" in line and "Traceback" not in err
