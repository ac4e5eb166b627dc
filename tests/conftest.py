"""Shared fixtures: real servers, each test with its own database, schema or key prefix.

Server addresses come from environment variables with local defaults, so the
suite also runs against the servers of deploy/compose.yaml. A server that is
not there fails the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from orchestrator import cli

PG = {"ip": os.environ.get("TEST_PG_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_PG_PORT", "5432")),
      "user": os.environ.get("TEST_PG_USER", "postgres"), "password": os.environ.get("TEST_PG_PASSWORD", "")}
MYSQL = {"ip": os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_MYSQL_PORT", "3306")),
         "user": os.environ.get("TEST_MYSQL_USER", "root"), "password": os.environ.get("TEST_MYSQL_PASSWORD", "")}
REDIS = {"ip": os.environ.get("TEST_REDIS_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_REDIS_PORT", "6379")),
         "password": os.environ.get("TEST_REDIS_PASSWORD", "")}
ENGINES = ("sqlite", "postgresql", "mysql", "redis")
REALWORLD = Path(os.environ.get("ORCHESTRATOR_REALWORLD", Path(__file__).resolve().parent / "realworld"))
"""Real migration sets of other projects, kept in the repository with their source and license notices."""


def realworld(name: str) -> Path:
    """A real-world set folder; a missing one fails the test (it is part of the suite's fixtures)."""
    folder = REALWORLD / name
    if not folder.is_dir():
        pytest.fail(f"{folder} not found: set ORCHESTRATOR_REALWORLD to the folder holding the real-world sets")
    return folder


def unique(prefix: str = "orch") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def pg_connect(dbname: str = "postgres", **kw: Any):
    import psycopg

    return psycopg.connect(host=PG["ip"], port=PG["port"], user=PG["user"], password=PG["password"] or None,
                           dbname=dbname, autocommit=True, connect_timeout=5, **kw)


def mysql_connect(dbname: str | None = None):
    import pymysql

    return pymysql.connect(host=MYSQL["ip"], port=MYSQL["port"], user=MYSQL["user"], password=MYSQL["password"],
                           database=dbname, autocommit=True, connect_timeout=5, charset="utf8mb4")


def redis_connect(db: int = 0):
    import redis

    return redis.Redis(host=REDIS["ip"], port=REDIS["port"], password=REDIS["password"] or None, db=db, socket_timeout=5)


def pytest_report_header(config: Any) -> list[str]:
    lines = []
    for name, probe in (("postgresql", lambda: pg_connect().execute("select version()").fetchone()[0].split(" on ")[0]),
                        ("mysql", lambda: _mysql_version()),
                        ("redis", lambda: "Redis " + redis_connect().info("server")["redis_version"])):
        try:
            lines.append(f"{name}: {probe()}")
        except Exception as exc:  # the header only reports; the tests fail on their own
            lines.append(f"{name}: NOT REACHABLE ({type(exc).__name__}: {exc})")
    import sqlite3

    lines.append(f"sqlite: {sqlite3.sqlite_version}")
    return lines


def _mysql_version() -> str:
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        return "MariaDB/MySQL " + cur.fetchone()[0]


@pytest.fixture
def pg_db() -> Any:
    """A fresh PostgreSQL database; yields its config entry (without host_id); dropped afterwards."""
    name = unique("orch_pg")
    with pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield {"ip": PG["ip"], "port": PG["port"], "user": PG["user"], "password": PG["password"], "dbname": name}
    with pg_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mysql_db() -> Any:
    """A fresh MariaDB database; yields its config entry (without host_id); dropped afterwards."""
    name = unique("orch_my")
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    yield {"ip": MYSQL["ip"], "port": MYSQL["port"], "user": MYSQL["user"], "password": MYSQL["password"], "dbname": name}
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def redis_prefix() -> Any:
    """A fresh key prefix on Redis db 0; yields its config entry (without host_id); its keys are deleted afterwards."""
    prefix = unique("orch_rd") + ":"
    yield {"ip": REDIS["ip"], "port": REDIS["port"], "password": REDIS["password"], "dbindex": 0, "prefix": prefix}
    client = redis_connect()
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Any:
    return {"path": str(tmp_path / "target.db"), "busy_timeout": 5000}


@pytest.fixture(params=ENGINES)
def engine_entry(request: Any) -> tuple[str, dict[str, Any]]:
    """(driver, config entry) for each engine: the parametrized target of the contract suite."""
    fixture = {"sqlite": "sqlite_db", "postgresql": "pg_db", "mysql": "mysql_db", "redis": "redis_prefix"}[request.param]
    return request.param, request.getfixturevalue(fixture)


class Project:
    """A temporary project folder: config.json plus sets, built by the test."""

    def __init__(self, root: Path):
        self.root = root
        self.databases: dict[str, list[dict[str, Any]]] = {}
        self.sets: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    def add_target(self, driver: str, host_id: str, entry: dict[str, Any]) -> str:
        self.databases.setdefault(driver, []).append({"host_id": host_id, **entry})
        return f"{driver}.{host_id}"

    def add_set(self, name: str, targets: list[str], **options: Any) -> Path:
        folder = self.root / "sets" / name
        folder.mkdir(parents=True, exist_ok=True)
        self.sets[name] = {"targets": targets, **options}
        return folder

    def write(self, set_name: str, filename: str, content: str | bytes) -> Path:
        path = self.root / "sets" / set_name / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    @property
    def config(self) -> Path:
        path = self.root / "config.json"
        data = {"databases": self.databases, "migrations": {"directory": "sets", "sets": self.sets}, **self.extra}
        path.write_text(json.dumps(data, indent=2))
        return path


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture
def orchestrator(capsys: Any) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""

    def invoke(*argv: Any) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def race(runners: int, open_target: Callable[[], Any], migration_set: Any, **run_options: Any) -> list[BaseException]:
    """Start ``runners`` threads at once, each running the set on its own connected target; return what they raised."""
    import threading

    from orchestrator.runner import run

    barrier, errors = threading.Barrier(runners), []

    def runner() -> None:
        target = open_target()
        try:
            barrier.wait()
            run(target, migration_set, **run_options)
        except BaseException as exc:  # collected for the test to assert on
            errors.append(exc)
        finally:
            target.close()

    threads = [threading.Thread(target=runner) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors
