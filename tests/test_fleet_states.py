"""A mixed fleet on the real servers: every state reported right, cuts mid-run lose nothing, reads change nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from orchestrator import fleet
from orchestrator.config import load
from orchestrator.targets import open_target
from tests.conftest import mysql_connect, pg_connect, redis_connect, unique

ENGINES = ("sqlite", "postgresql", "mysql", "redis")
CLOSED_PORT = 1  # nothing listens there: connections are refused at once


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def mysql_dbs() -> Iterator[Callable[[int], list[dict[str, Any]]]]:
    """Make N fresh MariaDB databases (config entries without host_id); all dropped afterwards."""
    made: list[str] = []

    def make(n: int) -> list[dict[str, Any]]:
        from tests.conftest import MYSQL

        names = [unique("orch_my") for _ in range(n)]
        with mysql_connect() as conn, conn.cursor() as cur:
            for name in names:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                made.append(name)
        return [{"ip": MYSQL["ip"], "port": MYSQL["port"], "user": MYSQL["user"], "password": MYSQL["password"],
                 "dbname": name} for name in names]

    yield make
    with mysql_connect() as conn, conn.cursor() as cur:
        for name in made:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


class CutProxy:
    """A TCP proxy in front of a server (psycopg's ``proxy`` fixture idea).

    ``cut()`` drops every open connection and refuses new ones until ``restore()``;
    ``cut_on(marker)`` does it, once, when a client sends bytes holding ``marker``
    (the chunk is not forwarded), so a test can cut at an exact statement.
    """

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = False
        self.marker: bytes | None = None
        self.cuts = 0
        self._sockets: set[socket.socket] = set()
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_on(self, marker: str) -> None:
        self.marker = marker.encode()

    def cut(self) -> None:
        with self._guard:
            self.down = True
            self.cuts += 1
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            self._sockets.clear()

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._guard:
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self.marker is not None and self.marker in data:
                    self.marker = None
                    self.cut()
                    return
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy() -> Iterator[Callable[[str, int], CutProxy]]:
    made: list[CutProxy] = []

    def make(host: str, port: int) -> CutProxy:
        made.append(CutProxy(host, port))
        return made[-1]

    yield make
    for p in made:
        p.close()


# -- sets that run on every engine -----------------------------------------------


def write_set(project: Any, name: str, steps: list[tuple[str, str, str]]) -> list[str]:
    """Folder migrations with one generic SQL file and one Redis file each: (version, sql, redis)."""
    for version, sql, redis_commands in steps:
        project.write(name, f"{version}/up.sql", sql)
        project.write(name, f"{version}/redis.redis", redis_commands)
    return [v for v, _, _ in steps]


def sql_count(driver: str, entry: dict[str, Any], table: str) -> int:
    if driver == "sqlite":
        with sqlite3.connect(entry["path"]) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    if driver == "postgresql":
        with pg_connect(entry["dbname"]) as conn:
            return conn.execute(f'SELECT COUNT(*) FROM "{entry.get("schema", "public")}".{table}').fetchone()[0]
    with mysql_connect(entry["dbname"]) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return cur.fetchone()[0]


def ledger_versions(config: Any, dbid: str, set_id: str) -> list[tuple[str, str]]:
    target = open_target(config.databases[dbid], config.table)
    target.connect(readonly=True)
    try:
        return sorted((v, r.status) for v, r in target.applied(set_id).items())
    finally:
        target.close()


# -- the mixed fleet -------------------------------------------------------------

PLAN = {  # host ids per engine, by the state they are put in
    "sqlite": ["cur0", "cur1", "cur2", "pend0", "pend1", "pend2", "fail0", "drift0", "down0"],
    "postgresql": ["cur0", "cur1", "pend0", "fail0", "drift0", "lock0", "down0"],
    "mysql": ["cur0", "pend0", "fail0", "fail1", "drift0", "lock0", "down0"],
    "redis": ["cur0", "cur1", "pend0", "fail0", "drift0", "lock0", "down0"],
}


def build_fleet(project: Any, pg_db: dict[str, Any], mysql_dbs: Callable[[int], list[dict[str, Any]]],
                redis_prefix: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    my = iter(mysql_dbs(sum(1 for h in PLAN["mysql"] if not h.startswith("down"))))
    not_a_file = tmp_path / "a-folder.db"  # a folder where the database file should be: cannot be opened
    not_a_file.mkdir()
    for driver, hosts in PLAN.items():
        for host in hosts:
            down = host.startswith("down")
            if driver == "sqlite":
                entry = {"path": str(not_a_file if down else tmp_path / f"{host}.db")}
            elif driver == "postgresql":
                entry = {**pg_db, "schema": f"fleet_{host}"}
            elif driver == "mysql":
                entry = {**pg_db, "dbname": "x"} if down else next(my)
                entry = {k: v for k, v in entry.items() if k != "schema"}
            else:
                entry = {**redis_prefix, "prefix": f"{redis_prefix['prefix']}{host}:"}
            if down and driver != "sqlite":
                entry = {**entry, "port": CLOSED_PORT, "connection_timeout": 1}
            entries[project.add_target(driver, host, entry)] = entry
    key = redis_prefix["prefix"]  # migration keys stay under the test's prefix, so the fixture cleans them

    def by_state(state: str) -> list[str]:
        return sorted(d for d in entries if d.split(".")[1].startswith(state))

    project.add_set("app", by_state("cur") + by_state("pend") + by_state("lock") + by_state("down"))
    write_set(project, "app", [
        ("2024-01-01_a", "CREATE TABLE app_a (id INTEGER);\n", f"RPUSH {key}app_a 1\n"),
        ("2024-01-02_b", "CREATE TABLE app_b (id INTEGER);\n", f"SET {key}app_b 1\n"),
        ("2024-01-03_c", "INSERT INTO app_a (id) VALUES (1);\n", f"RPUSH {key}app_c 1\n"),
    ])
    project.add_set("bad", by_state("fail"))
    write_set(project, "bad", [
        ("2024-02-01_ok", "CREATE TABLE bad_a (id INTEGER);\n", f"SET {key}bad_a 1\n"),
        ("2024-02-02_broken", "INSERT INTO bad_a (id) VALUES (1);\nINSERT INTO no_such_table (id) VALUES (1);\n",
         f"SET {key}bad_b 1\nLPUSH {key}bad_a x\n"),  # LPUSH on a string key fails inside EXEC
    ])
    project.add_set("drifty", by_state("drift"))
    write_set(project, "drifty", [
        ("2024-03-01_x", "CREATE TABLE drift_x (id INTEGER);\n", f"SET {key}drift_x 1\n"),
    ])
    return entries


def test_mixed_fleet_of_30_targets_reports_every_state(project: Any, pg_db: Any, mysql_dbs: Any, redis_prefix: Any,
                                                       tmp_path: Path, orchestrator: Any) -> None:
    entries = build_fleet(project, pg_db, mysql_dbs, redis_prefix, tmp_path)
    assert len(entries) == 30
    cfg = project.config
    config = load(cfg)
    # Put each target in its state.
    for pattern in ("*.cur*", "*.drift*", "*.fail*"):
        fleet.catch_up(config, target=pattern, workers=8)
    for dbid in ("sqlite.pend1", "postgresql.pend0", "redis.pend0"):
        assert orchestrator("up", "1", cfg, dbid, "app")[0] == 0
    project.write("drifty", "2024-03-01_x/up.sql", "CREATE TABLE drift_x (id INTEGER, edited INTEGER);\n")
    project.write("drifty", "2024-03-01_x/redis.redis", f"SET {redis_prefix['prefix']}drift_x 2\n")
    with contextlib.ExitStack() as held:
        for dbid in ("postgresql.lock0", "mysql.lock0", "redis.lock0"):
            holder = open_target(config.databases[dbid], config.table)
            holder.connect()
            held.callback(holder.close)
            held.enter_context(holder.lock("app", 0))

        code, out, err = orchestrator("status", cfg, "--json")
        assert code == 1, err
        doc = json.loads(out)
        by = {b["target"]: b for b in doc["bindings"]}
        assert len(by) == 30 and doc["targets"] == 30

        def check(dbid: str, state: str, **fields: Any) -> None:
            b = by[dbid]
            assert b["state"] == state, (dbid, b)
            for name, value in fields.items():
                assert b[name] == value, (dbid, name, b)

        for driver in ENGINES:
            for host in PLAN[driver]:
                dbid = f"{driver}.{host}"
                if host.startswith("cur"):
                    check(dbid, "current", applied=3, last_version="2024-01-03_c", pending=[])
                    assert by[dbid]["last_apply_utc"].endswith("Z")
                elif host.startswith("pend"):
                    partly = dbid in ("sqlite.pend1", "postgresql.pend0", "redis.pend0")
                    check(dbid, "pending", applied=1 if partly else 0,
                          pending=(["2024-01-02_b", "2024-01-03_c"] if partly else ["2024-01-01_a", "2024-01-02_b", "2024-01-03_c"]))
                elif host.startswith("fail"):
                    if driver in ("mysql", "redis"):  # no rollback there: the failure is recorded and blocks the set
                        check(dbid, "failed", applied=1)
                        assert "2024-02-02_broken failed at statement 2" in by[dbid]["error"]
                        assert f"orchestrator resolve {cfg} {dbid} bad 2024-02-02_broken" in by[dbid]["error"]
                    else:  # rolled back with its ledger write: simply still pending
                        check(dbid, "pending", applied=1, pending=["2024-02-02_broken"])
                elif host.startswith("drift"):
                    check(dbid, "drift", applied=1)
                    assert "drifty/2024-03-01_x/" in by[dbid]["error"] and "changed since it was applied" in by[dbid]["error"]
                elif host.startswith("lock"):
                    check(dbid, "locked", pending=["2024-01-01_a", "2024-01-02_b", "2024-01-03_c"])
                    assert by[dbid]["holder"] is not None and "locked" in by[dbid]["error"]
                else:
                    check(dbid, "unreachable")
                    assert by[dbid]["error"].startswith(f"{dbid}: ")
        assert doc["summary"]["unreachable"] == 4 and doc["summary"]["locked"] == 3

        # The same in the table people read.
        code, out, _ = orchestrator("status", cfg)
        assert code == 1
        rows = {line.split()[1]: line.split()[2] for line in out.splitlines()[1:-1]}
        assert rows["mysql.fail0"] == "failed" and rows["redis.lock0"] == "locked"
        assert rows["postgresql.down0"] == "unreachable" and rows["sqlite.drift0"] == "drift"
        assert rows["sqlite.pend0"] == "pending" and rows["redis.cur1"] == "current"

        # Catch-up while the locks are held: everything it can do, done; the rest reported.
        code, out, err = orchestrator("catch-up", cfg, "--json", "--lock-wait", "0.2", "--workers", "8")
        assert code == 1, err
        by = {b["target"]: b for b in json.loads(out)["bindings"]}
        for dbid, b in by.items():
            host = dbid.split(".")[1]
            expected = {"cur": "current", "pend": "current", "drift": "drift", "lock": "locked", "down": "unreachable",
                        "fail": "failed"}[host.rstrip("0123456789")]
            assert b["state"] == expected, (dbid, b)
        assert by["sqlite.pend1"]["applied_now"] == ["2024-01-02_b", "2024-01-03_c"]
        assert by["mysql.pend0"]["applied_now"] == ["2024-01-01_a", "2024-01-02_b", "2024-01-03_c"]
        assert by["mysql.fail0"]["applied_now"] == by["redis.fail0"]["applied_now"] == []  # blocked: never retried unasked
        assert "statement 2" in by["postgresql.fail0"]["error"]

    # Each migration recorded once and run once.
    for dbid in [d for d in entries if d.split(".")[1][:3] in ("cur", "pen")]:
        assert ledger_versions(config, dbid, "app") == [
            ("2024-01-01_a", "applied"), ("2024-01-02_b", "applied"), ("2024-01-03_c", "applied")]
        driver = dbid.split(".")[0]
        if driver != "redis":
            assert sql_count(driver, entries[dbid], "app_a") == 1
    # Locks released: the locked targets catch up now, and the no-op pass changes nothing.
    report = fleet.catch_up(config, target="*.lock*", lock_wait=1)
    assert {b.state for b in report.bindings} == {"current"}
    report = fleet.catch_up(config, target="*.cur*")
    assert {b.state for b in report.bindings} == {"current"} and not any(b.applied_now for b in report.bindings)


# -- connections cut in the middle of a run ---------------------------------------------


def test_postgresql_cut_mid_migration_loses_and_repeats_nothing(project: Any, pg_db: Any, proxy: Any,
                                                                orchestrator: Any) -> None:
    p = proxy(pg_db["ip"], pg_db["port"])
    project.add_target("postgresql", "p", {**pg_db, "port": p.port, "connection_timeout": 2})
    project.add_target("sqlite", "s", {"path": "var/s.db"})
    versions = write_set(project, "app", [
        ("2024-01-01_a", "CREATE TABLE hits (n INTEGER);\n", "SET x 1\n"),
        ("2024-01-02_b", "INSERT INTO hits VALUES (2);\n", "SET x 1\n"),
        ("2024-01-03_c", "INSERT INTO hits VALUES (3);\nSELECT 'cut-here-3';\n", "SET x 1\n"),
        ("2024-01-04_d", "INSERT INTO hits VALUES (4);\n", "SET x 1\n"),
    ])
    project.add_set("app", ["postgresql.p", "sqlite.s"])
    write_set(project, "later", [("2024-05-01_z", "CREATE TABLE later (n INTEGER);\n", "SET y 1\n")])
    project.add_set("later", ["postgresql.p"])
    cfg = project.config
    p.cut_on("cut-here-3")
    code, out, err = orchestrator("catch-up", cfg, "--json")
    assert code == 3, err
    by = {(b["set"], b["target"]): b for b in json.loads(out)["bindings"]}
    assert by[("app", "postgresql.p")]["state"] == "unreachable"
    assert by[("app", "postgresql.p")]["applied_now"] == versions[:2]
    assert by[("later", "postgresql.p")]["state"] == "unreachable"  # not tried on a dead connection
    assert by[("app", "sqlite.s")]["state"] == "current"  # the other target is not held up
    assert "Traceback" not in err
    # Down: still unreachable, nothing else happens.
    assert orchestrator("catch-up", cfg)[0] == 3
    with pg_connect(pg_db["dbname"]) as conn:
        assert conn.execute("SELECT n FROM hits ORDER BY n").fetchall() == [(2,)]  # c rolled back with its row
    p.restore()
    code, out, err = orchestrator("catch-up", cfg, "--json")
    assert code == 0, err
    by = {(b["set"], b["target"]): b for b in json.loads(out)["bindings"]}
    assert by[("app", "postgresql.p")]["applied_now"] == versions[2:]
    with pg_connect(pg_db["dbname"]) as conn:
        assert conn.execute("SELECT n FROM hits ORDER BY n").fetchall() == [(2,), (3,), (4,)]
        rows = conn.execute("SELECT set_id, version FROM migration ORDER BY set_id, version").fetchall()
    assert rows == [("app", v) for v in versions] + [("later", "2024-05-01_z")]


def test_mysql_cut_between_and_within_migrations(project: Any, mysql_db: Any, proxy: Any, orchestrator: Any) -> None:
    p = proxy(mysql_db["ip"], mysql_db["port"])
    project.add_target("mysql", "m", {**mysql_db, "port": p.port, "connection_timeout": 2})
    versions = write_set(project, "app", [
        ("2024-01-01_a", "CREATE TABLE hits (n INTEGER);\n", "SET x 1\n"),
        ("2024-01-02_b_cutpoint", "INSERT INTO hits VALUES (2);\n", "SET x 1\n"),
        ("2024-01-03_c", "INSERT INTO hits VALUES (3);\nSELECT 'cut-inside-c';\n", "SET x 1\n"),
        ("2024-01-04_d", "INSERT INTO hits VALUES (4);\n", "SET x 1\n"),
    ])
    project.add_set("app", ["mysql.m"])
    cfg = project.config
    config = load(cfg)
    # Cut when the runner claims b: before b runs, nothing of it is written.
    p.cut_on("2024-01-02_b_cutpoint")
    (b,) = fleet.catch_up(config).bindings
    assert (b.state, b.applied_now) == ("unreachable", versions[:1])
    p.restore()
    # Cut inside c: its first statement committed (MySQL has no transactional DDL), so it stays
    # recorded as interrupted and blocks the set instead of running twice.
    p.cut_on("cut-inside-c")
    (b,) = fleet.catch_up(config).bindings
    assert (b.state, b.applied_now) == ("unreachable", ["2024-01-02_b_cutpoint"])
    p.restore()
    (b,) = fleet.catch_up(config).bindings
    assert b.state == "failed" and "2024-01-03_c was interrupted" in (b.error or "") and b.applied_now == []
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT n FROM hits ORDER BY n")
        assert cur.fetchall() == ((2,), (3,))
    # The operator checked c by hand: marking it applied lets catch-up finish, each migration once.
    assert orchestrator("resolve", cfg, "mysql.m", "app", "2024-01-03_c", "--mark-applied")[0] == 0
    (b,) = fleet.catch_up(config).bindings
    assert (b.state, b.applied_now) == ("current", ["2024-01-04_d"])
    assert ledger_versions(config, "mysql.m", "app") == [(v, "applied") for v in versions]
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT n FROM hits ORDER BY n")
        assert cur.fetchall() == ((2,), (3,), (4,))


# -- status and plan change nothing ------------------------------------------------


def _pg_snapshot(dbname: str) -> Any:
    with pg_connect(dbname) as conn:
        catalog = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2").fetchall()
        ledgers = {}
        for schema, name, kind in catalog:
            if name == "migration" and kind == "r":
                ledgers[schema] = conn.execute(f'SELECT * FROM "{schema}".migration ORDER BY set_id, version').fetchall()
        # pg_locks is server-wide: count only this database's advisory locks, not other runs' on the server
        locks = conn.execute("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                             "WHERE l.locktype = 'advisory' AND d.datname = current_database()").fetchone()
    return catalog, ledgers, locks


def _mysql_snapshot(dbname: str) -> Any:
    with mysql_connect(dbname) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name, column_name, column_type FROM information_schema.columns "
                    "WHERE table_schema = %s ORDER BY 1, 2", (dbname,))
        catalog = cur.fetchall()
        rows = ()
        if any(t == "migration" for t, _, _ in catalog):
            cur.execute("SELECT * FROM migration ORDER BY set_id, version")
            rows = cur.fetchall()
    return catalog, rows


def _redis_snapshot(prefix: str) -> Any:
    client = redis_connect()
    return {key: (client.type(key), client.dump(key), client.pttl(key)) for key in sorted(client.scan_iter(match=f"{prefix}*"))}


def _sqlite_snapshot(folder: Path) -> Any:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.db"))}


def test_status_plan_and_validate_leave_every_target_as_found(project: Any, pg_db: Any, mysql_db: Any,
                                                              redis_prefix: Any, tmp_path: Path,
                                                              orchestrator: Any) -> None:
    key = redis_prefix["prefix"]
    project.add_target("sqlite", "done", {"path": str(tmp_path / "done.db")})
    project.add_target("sqlite", "fresh", {"path": str(tmp_path / "fresh.db")})
    project.add_target("postgresql", "done", {**pg_db, "schema": "done"})
    project.add_target("postgresql", "fresh", {**pg_db, "schema": "fresh"})
    project.add_target("mysql", "m", mysql_db)
    project.add_target("redis", "done", {**redis_prefix, "prefix": f"{key}done:"})
    project.add_target("redis", "fresh", {**redis_prefix, "prefix": f"{key}fresh:"})
    project.add_set("app", ["sqlite.*", "postgresql.*", "mysql.m", "redis.*"])
    write_set(project, "app", [("2024-01-01_a", "CREATE TABLE a (id INTEGER);\n", f"SET {key}a 1\n")])
    cfg = project.config
    assert fleet.catch_up(load(cfg), target="*.done").exit_code == 0
    write_set(project, "app", [("2024-01-02_b", "CREATE TABLE b (id INTEGER);\n", f"SET {key}b 1\n")])

    def snapshot() -> Any:
        return (_sqlite_snapshot(tmp_path), _pg_snapshot(pg_db["dbname"]), _mysql_snapshot(mysql_db["dbname"]),
                _redis_snapshot(key))

    before = snapshot()
    assert before[0].keys() == {"done.db"}
    for argv in (("status",), ("status", "--json"), ("plan",), ("plan", "--json"), ("validate",)):
        code, out, err = orchestrator(*argv, cfg)
        assert code == 0, (argv, out, err)
        assert snapshot() == before, argv
    doc = json.loads(orchestrator("plan", cfg, "--json")[1])
    assert {b["target"]: b["pending"] for b in doc["bindings"]} == {
        "sqlite.done": ["2024-01-02_b"], "sqlite.fresh": ["2024-01-01_a", "2024-01-02_b"],
        "postgresql.done": ["2024-01-02_b"], "postgresql.fresh": ["2024-01-01_a", "2024-01-02_b"],
        "mysql.m": ["2024-01-01_a", "2024-01-02_b"],
        "redis.done": ["2024-01-02_b"], "redis.fresh": ["2024-01-01_a", "2024-01-02_b"]}
    assert not (tmp_path / "fresh.db").exists()


def test_a_migration_in_flight_reads_as_locked_not_interrupted(project: Any, mysql_db: Any, redis_prefix: Any,
                                                              tmp_path: Path, orchestrator: Any) -> None:
    # MySQL and Redis record a running row while a migration runs; with its runner alive (the lock held) status
    # must not tell a person to resolve it.
    started, release = tmp_path / "started", tmp_path / "release"
    project.add_target("mysql", "m", mysql_db)
    project.add_target("redis", "r", redis_prefix)
    project.add_set("app", ["mysql.m", "redis.r"])
    project.write("app", "2024-01-01_wait.py", (
        "import pathlib, time\n"
        "def up(db):\n"
        f"    pathlib.Path({str(started)!r}, db.driver).touch()\n"
        "    deadline = time.monotonic() + 20\n"
        f"    while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:\n"
        "        time.sleep(0.02)\n"))
    started.mkdir()
    config = load(project.config)
    run = threading.Thread(target=lambda: reports.append(fleet.catch_up(config, workers=2)))
    reports: list[Any] = []
    run.start()
    try:
        deadline = time.monotonic() + 15
        while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        code, out, err = orchestrator("status", project.config, "--json")
        by = {b["target"]: b for b in json.loads(out)["bindings"]}
        for dbid in ("mysql.m", "redis.r"):
            assert by[dbid]["state"] == "locked", by[dbid]
            assert by[dbid]["holder"] and "resolve" not in by[dbid]["error"], by[dbid]
        assert code == 1, err
    finally:
        release.touch()
        run.join(30)
    assert {b.state for b in reports[0].bindings} == {"current"}
    for dbid in ("mysql.m", "redis.r"):
        assert ledger_versions(config, dbid, "app") == [("2024-01-01_wait", "applied")]


def test_secrets_never_reach_status_output(project: Any, orchestrator: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FLEET_TEST_PW", "pw-Secret-4711")
    for driver in ("postgresql", "mysql", "redis"):
        entry = {"ip": "127.0.0.1", "port": CLOSED_PORT, "password": "${FLEET_TEST_PW}", "connection_timeout": 1}
        if driver != "redis":
            entry["dbname"] = "x"
        project.add_target(driver, "down", entry)
    project.add_set("app", ["postgresql.down", "mysql.down", "redis.down"])
    write_set(project, "app", [("2024-01-01_a", "CREATE TABLE a (id INTEGER);\n", "SET a 1\n")])
    for argv in (("status",), ("status", "--json"), ("catch-up",), ("catch-up", "--json"), ("plan",), ("validate",)):
        code, out, err = orchestrator(*argv, project.config, "-v")
        assert code == 3, (argv, out, err)
        assert "pw-Secret-4711" not in out + err
        assert "Traceback" not in err


def test_redis_cut_before_exec_loses_and_repeats_nothing(project: Any, redis_prefix: Any, proxy: Any,
                                                         monkeypatch: Any) -> None:
    from orchestrator import defaults

    # The cut runner cannot release its lock; it expires after the TTL, shortened here.
    monkeypatch.setattr(defaults, "REDIS_LOCK_TTL_MS", 400)
    p = proxy(redis_prefix["ip"], redis_prefix["port"])
    key = redis_prefix["prefix"]
    project.add_target("redis", "r", {**redis_prefix, "port": p.port, "connection_timeout": 2})
    versions = write_set(project, "app", [
        ("2024-01-01_a", "-", f"INCR {key}count\nSET {key}a 1\n"),
        ("2024-01-02_b", "-", f"INCR {key}count\nSET {key}cut-here-b 1\n"),
        ("2024-01-03_c", "-", f"INCR {key}count\n"),
    ])
    project.add_set("app", ["redis.r"])
    config = load(project.config)
    p.cut_on("cut-here-b")  # the MULTI ... EXEC of b never reaches the server
    (b,) = fleet.catch_up(config).bindings
    assert (b.state, b.applied_now) == ("unreachable", versions[:1])
    assert fleet.status(config).exit_code == 3
    p.restore()
    client = redis_connect()
    lock_key = f"{key}migration:app:lock"
    assert client.pttl(lock_key) > 0  # left behind by the cut runner, expiring by itself
    deadline = time.monotonic() + 10
    while client.exists(lock_key):
        assert time.monotonic() < deadline, "the lock never expired"
        time.sleep(0.05)
    (b,) = fleet.status(config).bindings
    assert (b.state, b.pending) == ("pending", versions[1:])
    (b,) = fleet.catch_up(config).bindings
    assert (b.state, b.applied_now) == ("current", versions[1:])
    assert redis_connect().get(f"{key}count") == b"3"
    assert ledger_versions(config, "redis.r", "app") == [(v, "applied") for v in versions]
