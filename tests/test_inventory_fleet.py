"""Discovered targets through every command and the daemon, against real servers.

A PostgreSQL catalog lists SQLite files and real PostgreSQL/MariaDB databases;
`databases` and `schemas` sources list what a server holds; the daemon picks up
new tenants, shows deleted ones as removed, and keeps a failing source's last list.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import MYSQL, PG, mysql_connect, pg_connect, unique
from netproxy import StallProxy

MIGRATION = "CREATE TABLE widgets (id INTEGER PRIMARY KEY, name VARCHAR(40));\nINSERT INTO widgets (id, name) VALUES (1, 'a');\n"
VERSION = "2024-01-01_00-00-00_widgets"


def poll(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


def ledger(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT version FROM migration")]
    finally:
        conn.close()


@pytest.fixture
def catalog(pg_db: dict[str, Any]) -> dict[str, Any]:
    with pg_connect(pg_db["dbname"]) as conn:
        conn.execute("CREATE TABLE tenants (host_id text PRIMARY KEY, driver text NOT NULL DEFAULT 'sqlite', path text, "
                     "ip text, port integer, dbname text, password text, active boolean NOT NULL DEFAULT true)")
    return pg_db


def with_catalog(project: Any, catalog: dict[str, Any], **source: Any) -> None:
    project.add_target("postgresql", "catalog", catalog)
    project.extra["inventory"] = [{"name": "tenants", "sql": {
        "dbid": "postgresql.catalog",
        "query": "SELECT host_id, driver, path, ip, port, dbname, password FROM tenants WHERE active ORDER BY host_id"},
        **source}]


@pytest.fixture
def databases() -> Any:
    """Creates real PostgreSQL/MariaDB databases on demand; drops them afterwards."""
    made: list[tuple[str, str]] = []

    def make(driver: str, name: str) -> str:
        if driver == "postgresql":
            with pg_connect() as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        else:
            with mysql_connect() as conn, conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}`")
        made.append((driver, name))
        return name

    yield make
    for driver, name in made:
        if driver == "postgresql":
            with pg_connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            with mysql_connect() as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_catalog_of_200_files_and_10_servers_catch_up_and_every_command(project: Any, catalog: dict[str, Any],
                                                                         databases: Any, orchestrator: Any) -> None:
    secret = unique("col_pw")
    prefix = unique("invt")
    rows = [(f"f{i:03d}", "sqlite", f"data/f{i:03d}.db", None, None, None, None) for i in range(200)]
    for i in range(5):
        rows.append((f"pg{i}", "postgresql", None, PG["ip"], PG["port"], databases("postgresql", f"{prefix}_p{i}"), None))
        rows.append((f"my{i}", "mysql", None, MYSQL["ip"], MYSQL["port"], databases("mysql", f"{prefix}_m{i}"), secret))
    with pg_connect(catalog["dbname"]) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO tenants (host_id, driver, path, ip, port, dbname, password) VALUES (%s,%s,%s,%s,%s,%s,%s)", rows)
    (project.root / "data").mkdir()
    with_catalog(project, catalog, defaults={"user": "root", "connection_timeout": 5})
    # MariaDB accepts any password for root over TCP here only when it is empty: the column's secret is for show.
    with pg_connect(catalog["dbname"]) as conn:
        conn.execute("UPDATE tenants SET password = NULL WHERE driver = 'mysql'")
        conn.execute("UPDATE tenants SET password = %s WHERE driver = 'postgresql'", (secret,))
    project.add_set("s1", ["sqlite.*", "postgresql.pg*", "mysql.*"])
    project.write("s1", f"{VERSION}.sql", MIGRATION)
    config = project.config

    code, out, err = orchestrator("catch-up", config, "--json")
    assert code == 0, err
    assert ledger(project.root / "data" / "f000.db") == [VERSION] and ledger(project.root / "data" / "f199.db") == [VERSION]
    for i in range(5):
        with pg_connect(f"{prefix}_p{i}") as conn:
            assert conn.execute("SELECT version FROM migration").fetchall() == [(VERSION,)]
        with mysql_connect(f"{prefix}_m{i}") as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM widgets")
            assert cur.fetchall() == (("a",),)

    code, out, err = orchestrator("status", config, "--json")
    assert code == 0, err
    states = {(b["set"], b["target"]): b["state"] for b in json.loads(out)["bindings"]}
    assert len(states) == 210 and set(states.values()) == {"current"}
    for command in (("plan", config), ("validate", config), ("status", config, "--target", "sqlite.f00*")):
        code, out, err = orchestrator(*command)
        assert code == 0, (command, err)
    project.write("s1", "2024-01-02_00-00-00_more.sql", "CREATE TABLE more_widgets (id INTEGER);\n")
    code, out, err = orchestrator("up", config, "sqlite.f042", "s1")
    assert code == 0, err
    assert ledger(project.root / "data" / "f042.db") == [VERSION, "2024-01-02_00-00-00_more"]

    code, out, err = orchestrator("targets", config, "--json")
    assert code == 0, err
    listed = {t["dbid"]: t for t in json.loads(out)["targets"]}
    assert listed["sqlite.f007"]["source"] == "tenants" and listed["sqlite.f007"]["sets"] == ["s1"]
    assert listed["postgresql.catalog"]["source"] == "databases" and listed["postgresql.catalog"]["sets"] == []
    assert len(listed) == 211
    code, text, err = orchestrator("targets", config)
    assert code == 0 and "sqlite.f007" in text and "tenants" in text
    everything = out + text + err
    assert secret not in everything and secret not in config.read_text()


def test_bad_rows_are_one_line_each_and_the_rest_run(project: Any, catalog: dict[str, Any], orchestrator: Any) -> None:
    with pg_connect(catalog["dbname"]) as conn:
        conn.execute("INSERT INTO tenants (host_id, path) VALUES ('good', 'good.db'), ('bad.name', 'b.db'), "
                     "('catalog', NULL)")
        conn.execute("INSERT INTO tenants (host_id, driver, path, port) VALUES ('typed', 'postgresql', NULL, 0)")
    with_catalog(project, catalog)
    project.extra["inventory"][0]["sql"]["query"] = (
        "SELECT host_id, driver, path, port FROM tenants UNION ALL SELECT NULL, 'sqlite', 'x.db', NULL ORDER BY 1")
    project.add_set("s1", ["sqlite.*"])
    project.write("s1", f"{VERSION}.sql", MIGRATION)
    code, out, err = orchestrator("catch-up", project.config)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "inventory tenants" in line]
    assert len(lines) == 4, err
    assert any("(host_id 'bad.name'): host_id:" in line for line in lines)
    assert any("(host_id 'typed'):" in line and "port: Input should be greater than or equal to 1 (and 1 more)" in line for line in lines), lines
    assert any("host_id: required field is missing" in line for line in lines)
    assert any("(host_id 'catalog'): path: required field is missing" in line for line in lines)
    assert ledger(project.root / "good.db") == [VERSION]


def test_databases_and_50_schemas_each_get_their_own_ledger(project: Any, pg_db: dict[str, Any], mysql_db: dict[str, Any],
                                                            databases: Any, orchestrator: Any) -> None:
    prefix = unique("invd")
    pg_names = [databases("postgresql", f"{prefix}_{i}") for i in range(2)]
    my_names = [databases("mysql", f"{prefix}_{i}") for i in range(2)]
    with pg_connect(pg_db["dbname"]) as conn:
        for i in range(50):
            conn.execute(f'CREATE SCHEMA "t_{i:02d}"')
    project.add_target("postgresql", "server", {**pg_db, "dbname": "postgres"})
    project.add_target("mysql", "server", {**mysql_db})
    project.add_target("postgresql", "tenants", pg_db)
    project.extra["inventory"] = [
        {"name": "pgdbs", "databases": {"dbid": "postgresql.server", "like": f"{prefix}\\_%"}},
        {"name": "mydbs", "databases": {"dbid": "mysql.server", "like": f"{prefix}\\_%"}},
        {"name": "schemas", "schemas": {"dbid": "postgresql.tenants", "like": "t\\_%"}},
    ]
    project.add_set("s1", [f"postgresql.{prefix}_*", f"mysql.{prefix}_*", "postgresql.t_*"])
    project.write("s1", f"{VERSION}.sql", MIGRATION)
    code, out, err = orchestrator("catch-up", project.config, "--workers", "8")
    assert code == 0, err
    for name in pg_names:
        with pg_connect(name) as conn:
            assert conn.execute("SELECT version FROM public.migration").fetchall() == [(VERSION,)]
    for name in my_names:
        with mysql_connect(name) as conn, conn.cursor() as cur:
            cur.execute("SELECT version FROM migration")
            assert [r[0] for r in cur.fetchall()] == [VERSION]
    with pg_connect(pg_db["dbname"]) as conn:
        ledgers = conn.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = 'migration' "
                               "ORDER BY 1").fetchall()
        assert [r[0] for r in ledgers] == [f"t_{i:02d}" for i in range(50)]
        widgets = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'widgets'").fetchone()
        assert widgets == (50,)
        assert conn.execute("SELECT name FROM t_17.widgets").fetchall() == [("a",)]


def test_a_failing_source_in_a_command_is_one_line_and_exit_3(project: Any, sqlite_db: Any, orchestrator: Any) -> None:
    project.add_target("sqlite", "static", sqlite_db)
    project.extra["inventory"] = [{"name": "script", "command": [sys.executable, "-c", "import sys; sys.exit(1)"]}]
    project.add_set("s1", ["sqlite.*"])
    project.write("s1", f"{VERSION}.sql", MIGRATION)
    code, out, err = orchestrator("catch-up", project.config)
    assert code == 3
    assert f"inventory script: command {sys.executable!r} exited with 1" in err
    assert ledger(Path(sqlite_db["path"])) == [VERSION]  # the static target still ran


# -- the daemon ------------------------------------------------------------------------


class Daemon:
    def __init__(self, config: Path):
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "daemon", str(config)], cwd=config.parent,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self) -> None:
        def found() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited:\n" + "\n".join(self.lines))
            m = re.search(r"status on (http://\S+/)", "\n".join(self.lines))
            return m.group(1) if m else None

        self.url = poll(found, what="the status server")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=5) as response:
            return response.read().decode()

    def binding(self, dbid: str) -> dict[str, Any] | None:
        for item in json.loads(self.get("/status"))["bindings"]:
            if item["target"] == dbid:
                return item
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_daemon_refreshes_the_catalog_new_removed_and_down(project: Any, catalog: dict[str, Any]) -> None:
    secret = unique("pw_daemon")
    with pg_connect(catalog["dbname"]) as conn:
        conn.execute("INSERT INTO tenants (host_id, path) VALUES ('a', 'a.db'), ('b', 'b.db')")
    with StallProxy(PG["ip"], PG["port"]) as proxy:
        with_catalog(project, {**catalog, "port": proxy.port}, defaults={"busy_timeout": 3000}, timeout="2s")
        project.add_target("postgresql", "other", {**catalog, "password": secret})
        project.add_set("s1", ["sqlite.*"], schedule={"every": "1h"})
        project.write("s1", f"{VERSION}.sql", MIGRATION)
        config = project.config
        data = json.loads(config.read_text())
        data["migrations"]["inventory_refresh"] = "300ms"
        data["daemon"] = {"watch_interval": "200ms", "http": {"host": "127.0.0.1", "port": 0}}
        config.write_text(json.dumps(data))
        daemon = Daemon(config)
        try:
            daemon.wait_ready()
            poll(lambda: (daemon.binding("sqlite.b") or {}).get("state") == "current", what="b current")
            with pg_connect(catalog["dbname"]) as conn:
                conn.execute("INSERT INTO tenants (host_id, path) VALUES ('c', 'c.db')")
            poll(lambda: (project.root / "c.db").exists() and ledger(project.root / "c.db") == [VERSION], what="c caught up")
            with pg_connect(catalog["dbname"]) as conn:
                conn.execute("DELETE FROM tenants WHERE host_id = 'a'")
            removed = poll(lambda: (b := daemon.binding("sqlite.a")) and b["state"] == "removed" and b, what="a removed")
            assert removed["removed_at"]
            status = json.loads(daemon.get("/status"))
            source = next(s for s in status["daemon"]["inventory"]["sources"] if s["name"] == "tenants")
            assert source["up"] is True and source["targets"] == 2
            assert 'orchestrator_inventory_up{source="tenants"} 1.0' in daemon.get("/metrics")

            proxy.cut()
            down = poll(lambda: [s for s in json.loads(daemon.get("/status"))["daemon"]["inventory"]["sources"] if not s["up"]], what="source down")
            assert down[0]["name"] == "tenants" and down[0]["error"].startswith("inventory tenants: postgresql.catalog:")
            assert 'orchestrator_inventory_up{source="tenants"} 0.0' in daemon.get("/metrics")
            assert 'data-inventory="tenants">inventory tenants: postgresql.catalog:' in daemon.get("/")
            assert (daemon.binding("sqlite.b") or {}).get("state") == "current"  # nothing dropped
            assert (daemon.binding("sqlite.c") or {}).get("state") == "current"
            proxy.restore()
            poll(lambda: all(s["up"] for s in json.loads(daemon.get("/status"))["daemon"]["inventory"]["sources"]), what="source back")
            with pg_connect(catalog["dbname"]) as conn:
                conn.execute("INSERT INTO tenants (host_id, path) VALUES ('d', 'd.db')")
            daemon.proc.send_signal(signal.SIGHUP)
            poll(lambda: (project.root / "d.db").exists() and ledger(project.root / "d.db") == [VERSION], what="d caught up")
            everything = "\n".join(daemon.lines) + daemon.get("/status") + daemon.get("/metrics") + daemon.get("/")
            assert secret not in everything
        finally:
            daemon.close()
