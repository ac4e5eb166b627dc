"""Inventory sources resolved against real catalogs, files, commands and an HTTP server.

Each source kind produces entries of the databases shape; bad rows and duplicate
dbids are one line each and skipped; a failing source keeps its last good list.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import MYSQL, PG, mysql_connect, pg_connect, unique
from netproxy import StallProxy

from orchestrator.config import MysqlConfig, PostgresqlConfig, SqliteConfig
from orchestrator.errors import ConfigError
from orchestrator.inventory import Inventory, parse_sources
from orchestrator.redact import redact


def inventory(folder: Path, *sources: dict[str, Any], **kw: Any) -> Inventory:
    return Inventory(parse_sources(list(sources), "config.json"), folder, **kw)


def pg_entry(host_id: str, dbname: str, **extra: Any) -> PostgresqlConfig:
    return PostgresqlConfig.model_validate({"host_id": host_id, "ip": PG["ip"], "port": PG["port"], "user": PG["user"],
                                            "password": PG["password"], "dbname": dbname, **extra})


def my_entry(host_id: str, dbname: str) -> MysqlConfig:
    return MysqlConfig.model_validate({"host_id": host_id, "ip": MYSQL["ip"], "port": MYSQL["port"],
                                       "user": MYSQL["user"], "password": MYSQL["password"], "dbname": dbname})


@pytest.fixture
def catalog(pg_db: dict[str, Any]) -> dict[str, Any]:
    """A PostgreSQL catalog database with an empty tenants table."""
    with pg_connect(pg_db["dbname"]) as conn:
        conn.execute("CREATE TABLE tenants (host_id text, driver text, path text, ip text, port integer, "
                     "dbname text, password text, active boolean DEFAULT true)")
    return pg_db


def test_sql_source_on_postgresql_catalog(tmp_path: Path, catalog: dict[str, Any]) -> None:
    with pg_connect(catalog["dbname"]) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO tenants (host_id, path) VALUES (%s, %s)",
                        [(f"t{i:03d}", f"data/t{i:03d}.db") for i in range(200)])
        cur.execute("INSERT INTO tenants (host_id, path, active) VALUES ('gone', 'x.db', false)")
    static = {"postgresql.catalog": pg_entry("catalog", catalog["dbname"])}
    inv = inventory(tmp_path, {"name": "tenants", "driver": "sqlite", "defaults": {"busy_timeout": 1234},
                               "sql": {"dbid": "postgresql.catalog",
                                       "query": "SELECT host_id, path FROM tenants WHERE active ORDER BY host_id"}})
    res = inv.resolve(static)
    assert res.problems == []
    assert [s.up for s in res.sources] == [True]
    discovered = [d for d, o in res.origin.items() if o == "tenants"]
    assert len(discovered) == 200 and discovered[0] == "sqlite.t000"
    entry = res.databases["sqlite.t007"]
    assert isinstance(entry, SqliteConfig)
    assert entry.path == str(tmp_path / "data" / "t007.db") and entry.busy_timeout == 1234
    assert list(res.databases)[0] == "postgresql.catalog"  # static entries come first


def test_sql_driver_column_mixes_engines_and_source_value_wins(tmp_path: Path, catalog: dict[str, Any],
                                                                mysql_db: dict[str, Any]) -> None:
    with pg_connect(catalog["dbname"]) as conn:
        conn.execute("INSERT INTO tenants (host_id, driver, ip, port, dbname) VALUES "
                     "('pgt', 'postgresql', %s, %s, %s), ('myt', 'mysql', %s, %s, %s), ('lite', 'sqlite', NULL, NULL, NULL)",
                     (PG["ip"], PG["port"], catalog["dbname"], MYSQL["ip"], MYSQL["port"], mysql_db["dbname"]))
        conn.execute("UPDATE tenants SET path = 'lite.db' WHERE driver = 'sqlite'")
    inv = inventory(tmp_path, {"name": "mixed", "defaults": {"user": "root", "connection_timeout": 7, "port": 1},
                               "sql": {"dbid": "postgresql.catalog",
                                       "query": "SELECT host_id, driver, path, ip, port, dbname FROM tenants"}})
    res = inv.resolve({"postgresql.catalog": pg_entry("catalog", catalog["dbname"])})
    assert res.problems == [], res.problems
    pgt, myt = res.databases["postgresql.pgt"], res.databases["mysql.myt"]
    assert (pgt.port, pgt.user, pgt.timeout) == (PG["port"], "root", 7)  # the row's port wins over the default
    assert (myt.port, myt.dbname) == (MYSQL["port"], mysql_db["dbname"])
    assert "sqlite.lite" in res.databases


def test_sql_source_on_mariadb_and_sqlite_catalogs(tmp_path: Path, mysql_db: dict[str, Any]) -> None:
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE tenants (host_id VARCHAR(40), path VARCHAR(200))")
        cur.execute("INSERT INTO tenants VALUES ('a', 'a.db'), ('b', 'b.db')")
    import sqlite3

    lite = tmp_path / "catalog.db"
    with sqlite3.connect(lite) as conn:
        conn.execute("CREATE TABLE tenants (host_id TEXT, path TEXT)")
        conn.execute("INSERT INTO tenants VALUES ('c', 'c.db')")
    conn.close()
    static = {"mysql.cat": my_entry("cat", mysql_db["dbname"]),
              "sqlite.cat": SqliteConfig(host_id="cat", path=str(lite))}
    inv = inventory(tmp_path, {"name": "my", "driver": "sqlite", "sql": {"dbid": "mysql.cat", "query": "SELECT * FROM tenants"}},
                    {"name": "lite", "driver": "sqlite", "sql": {"dbid": "sqlite.cat", "query": "SELECT * FROM tenants"}})
    res = inv.resolve(static)
    assert res.problems == []
    assert {d: o for d, o in res.origin.items() if o != "databases"} == {"sqlite.a": "my", "sqlite.b": "my", "sqlite.c": "lite"}


def test_bad_rows_and_duplicates_one_line_each(tmp_path: Path, catalog: dict[str, Any]) -> None:
    secret = unique("pw_s3cret")
    with pg_connect(catalog["dbname"]) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO tenants (host_id, ip, dbname, port, password) VALUES (%s, '127.0.0.1', 'app', %s, %s)",
                        [("ok1", 5432, secret), (None, 5432, secret), ("bad.dot", 5432, secret), ("ok2", 0, secret),
                         ("catalog", 5432, secret), ("ok3", 5432, secret)])
        cur.execute("ALTER TABLE tenants ADD COLUMN schema integer")  # wrong type: schema must be a string
        cur.execute("INSERT INTO tenants (host_id, ip, dbname, schema) VALUES ('numschema', '127.0.0.1', 'app', 5)")
    static = {"postgresql.catalog": pg_entry("catalog", catalog["dbname"])}
    query = "SELECT host_id, ip, dbname, port, password, schema FROM tenants ORDER BY ctid"
    inv = inventory(tmp_path,
                    {"name": "tenants", "driver": "postgresql", "sql": {"dbid": "postgresql.catalog", "query": query}},
                    {"name": "again", "driver": "postgresql", "sql": {"dbid": "postgresql.catalog",
                                                                       "query": "SELECT 'ok3' AS host_id, 'app' AS dbname"}})
    res = inv.resolve(static)
    assert res.problems == [
        "inventory tenants: row 2: host_id: required field is missing; skipped",
        "inventory tenants: row 3 (host_id 'bad.dot'): host_id: expected letters, digits, '_' and '-' (no dots: the dbid is <driver>.<host_id>); skipped",
        "inventory tenants: row 4 (host_id 'ok2'): port: Input should be greater than or equal to 1; skipped",
        "inventory tenants: row 5 (host_id 'catalog'): dbid postgresql.catalog is also given by databases.postgresql; kept that one",
        "inventory tenants: row 7 (host_id 'numschema'): schema: expected a string; skipped",
        "inventory again: row 1 (host_id 'ok3'): dbid postgresql.ok3 is also given by inventory tenants row 6 (host_id 'ok3'); kept that one",
    ]
    assert {d for d, o in res.origin.items() if o == "tenants"} == {"postgresql.ok1", "postgresql.ok3"}
    assert res.origin["postgresql.catalog"] == "databases"
    assert res.databases["postgresql.ok1"].password.get_secret_value() == secret  # type: ignore[union-attr]
    assert secret not in repr(res.databases["postgresql.ok1"]) and redact(f"x {secret} y") == "x ******** y"


def test_databases_source_on_postgresql_and_mariadb(tmp_path: Path) -> None:
    prefix = unique("inv")
    pg_names, my_names = [f"{prefix}_p{i}" for i in range(3)], [f"{prefix}_m{i}" for i in range(2)]
    with pg_connect() as conn:
        for name in pg_names:
            conn.execute(f'CREATE DATABASE "{name}"')
    with mysql_connect() as conn, conn.cursor() as cur:
        for name in my_names:
            cur.execute(f"CREATE DATABASE `{name}`")
    try:
        static = {"postgresql.server": pg_entry("server", "postgres", connection_timeout=9),
                  "mysql.server": my_entry("server", "mysql")}
        inv = inventory(tmp_path,
                        {"name": "pgdbs", "databases": {"dbid": "postgresql.server", "like": f"{prefix}_p%"},
                         "defaults": {"pooling": "session"}},
                        {"name": "mydbs", "databases": {"dbid": "mysql.server", "like": f"{prefix}_m%"}})
        res = inv.resolve(static)
        assert res.problems == []
        assert [d for d, o in res.origin.items() if o == "pgdbs"] == [f"postgresql.{n}" for n in pg_names]
        assert [d for d, o in res.origin.items() if o == "mydbs"] == [f"mysql.{n}" for n in my_names]
        one = res.databases[f"postgresql.{pg_names[1]}"]
        assert (one.dbname, one.port, one.timeout, one.user) == (pg_names[1], PG["port"], 9, PG["user"])  # type: ignore[union-attr]
        assert res.databases[f"mysql.{my_names[0]}"].dbname == my_names[0]  # type: ignore[union-attr]
    finally:
        with pg_connect() as conn:
            for name in pg_names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with mysql_connect() as conn, conn.cursor() as cur:
            for name in my_names:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_schemas_source_and_their_locks_do_not_collide(tmp_path: Path, pg_db: dict[str, Any]) -> None:
    with pg_connect(pg_db["dbname"]) as conn:
        for i in range(50):
            conn.execute(f'CREATE SCHEMA "t_{i:02d}"')
        conn.execute("CREATE SCHEMA other")
    static = {"postgresql.p1": pg_entry("p1", pg_db["dbname"])}
    res = inventory(tmp_path, {"name": "tenants", "schemas": {"dbid": "postgresql.p1", "like": "t\\_%"}}).resolve(static)
    found = [d for d, o in res.origin.items() if o == "tenants"]
    assert len(found) == 50 and found[0] == "postgresql.t_00"
    a, b = res.databases["postgresql.t_00"], res.databases["postgresql.t_01"]
    assert (a.schema_, a.dbname, b.schema_) == ("t_00", pg_db["dbname"], "t_01")  # type: ignore[union-attr]

    from orchestrator.targets import open_target

    first, second = open_target(a, "migration"), open_target(b, "migration")
    first.connect()
    second.connect()
    try:
        with first.lock("s1", 0), second.lock("s1", 0):  # both held at once: keyed by schema
            assert first.holder("s1") is not None and second.holder("s1") is not None
    finally:
        first.close()
        second.close()


def test_glob_file_and_command_sources(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for name in ("acme", "beta"):
        (tmp_path / "data" / f"{name}.db").touch()
    (tmp_path / "targets.json").write_text(json.dumps({"sqlite": [{"host_id": "f1", "path": "f1.db"}],
                                                       "redis": [{"host_id": "r1", "prefix": "a:"}]}))
    script = tmp_path / "list-targets"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      "print(json.dumps({'postgresql': [{'host_id': 'c1', 'dbname': sys.argv[1]}]}))\n")
    script.chmod(0o755)
    inv = inventory(tmp_path,
                    {"name": "files", "glob": "data/*.db", "defaults": {"journal_mode": "DELETE"}},
                    {"name": "json", "file": "targets.json", "defaults": {"busy_timeout": 77, "password": "${X}"}},
                    {"name": "cmd", "command": ["./list-targets", "appdb"], "defaults": {"user": "svc"}})
    res = inv.resolve({})
    assert res.problems == []
    assert res.origin == {"sqlite.acme": "files", "sqlite.beta": "files", "sqlite.f1": "json", "redis.r1": "json",
                          "postgresql.c1": "cmd"}
    assert res.databases["sqlite.acme"].journal_mode == "DELETE"  # type: ignore[union-attr]
    assert res.databases["sqlite.f1"].busy_timeout == 77  # type: ignore[union-attr]
    assert res.databases["redis.r1"].password.get_secret_value() == "${X}"  # type: ignore[union-attr]
    assert (res.databases["postgresql.c1"].dbname, res.databases["postgresql.c1"].user) == ("appdb", "svc")  # type: ignore[union-attr]


class _Endpoint:
    """A local HTTP server whose answer a test changes: JSON, an error status, or a hang."""

    def __init__(self) -> None:
        self.body: Any = {}
        self.status = 200
        self.hang = threading.Event()
        self.release = threading.Event()
        self.headers: list[dict[str, str]] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.headers.append(dict(self.headers))
                if endpoint.hang.is_set():
                    endpoint.release.wait(30)
                    return
                data = json.dumps(endpoint.body).encode()
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/targets?key=abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Any:
    e = _Endpoint()
    yield e
    e.close()


def test_url_source_failures_keep_the_last_list(tmp_path: Path, endpoint: _Endpoint) -> None:
    token = unique("tok")
    endpoint.body = {"sqlite": [{"host_id": "u1", "path": "u1.db"}, {"host_id": "u2", "path": "u2.db"}]}
    clock = iter(range(100, 10000, 10))
    inv = inventory(tmp_path, {"name": "api", "url": endpoint.url, "timeout": "1s",
                               "headers": {"Authorization": f"Bearer {token}"}}, clock=lambda: float(next(clock)))
    first = inv.resolve({})
    assert list(first.databases) == ["sqlite.u1", "sqlite.u2"] and first.sources[0].up
    assert endpoint.headers[-1]["Authorization"] == f"Bearer {token}"

    endpoint.status = 500
    down = inv.resolve({})
    assert list(down.databases) == ["sqlite.u1", "sqlite.u2"] and down.removed == {}
    status = down.sources[0]
    assert (status.up, status.targets, status.last_ok_at, status.down_since) == (False, 2, 100.0, 110.0)
    assert status.error == f"inventory api: http://127.0.0.1:{endpoint.server.server_address[1]}/targets: HTTP 500 Internal Server Error"

    endpoint.hang.set()
    hung = inv.resolve({})
    assert list(hung.databases) == ["sqlite.u1", "sqlite.u2"]
    assert hung.sources[0].error is not None and hung.sources[0].error.endswith("no answer within 1 s")
    assert hung.sources[0].down_since == 110.0  # still down since the first failure
    assert token not in str(hung.sources[0].error) and "key=abc" not in str(hung.sources[0].error)

    endpoint.hang.clear()
    endpoint.status = 200
    endpoint.body = {"sqlite": [{"host_id": "u2", "path": "u2.db"}]}
    back = inv.resolve({})
    assert back.sources[0].up and list(back.databases) == ["sqlite.u2"]
    assert {d: r.source for d, r in back.removed.items()} == {"sqlite.u1": "api"}


def test_command_failing_keeps_the_last_list(tmp_path: Path) -> None:
    script = tmp_path / "list.py"
    script.write_text("import json, pathlib, sys\n"
                      "if pathlib.Path('fail').exists():\n    print('catalog says no', file=sys.stderr); sys.exit(1)\n"
                      "print(json.dumps({'sqlite': [{'host_id': 'c1', 'path': 'c1.db'}]}))\n")
    inv = inventory(tmp_path, {"name": "cmd", "command": [sys.executable, "list.py"]})
    assert list(inv.resolve({}).databases) == ["sqlite.c1"]
    (tmp_path / "fail").touch()
    res = inv.resolve({})
    assert list(res.databases) == ["sqlite.c1"]
    assert res.sources[0].error == f"inventory cmd: command {sys.executable!r} exited with 1: catalog says no"


def test_catalog_stopped_through_a_proxy_keeps_the_last_list(tmp_path: Path, catalog: dict[str, Any]) -> None:
    with pg_connect(catalog["dbname"]) as conn:
        conn.execute("INSERT INTO tenants (host_id, path) VALUES ('a', 'a.db'), ('b', 'b.db')")
    with StallProxy(PG["ip"], PG["port"]) as proxy:
        static = {"postgresql.catalog": pg_entry("catalog", catalog["dbname"], port=proxy.port)}
        inv = inventory(tmp_path, {"name": "tenants", "driver": "sqlite", "timeout": "2s",
                                   "sql": {"dbid": "postgresql.catalog", "query": "SELECT host_id, path FROM tenants"}})
        assert [d for d in inv.resolve(static).databases if d.startswith("sqlite.")] == ["sqlite.a", "sqlite.b"]
        proxy.cut()
        res = inv.resolve(static)
        assert [d for d in res.databases if d.startswith("sqlite.")] == ["sqlite.a", "sqlite.b"]
        assert res.removed == {}
        assert not res.sources[0].up and res.sources[0].error is not None
        assert res.sources[0].error.startswith("inventory tenants: postgresql.catalog: ")


def test_failing_source_without_a_last_list_gives_nothing_and_says_so(tmp_path: Path) -> None:
    inv = inventory(tmp_path, {"name": "json", "file": "missing.json"}, {"name": "g", "glob": "*.db"})
    (tmp_path / "x.db").touch()
    res = inv.resolve({})
    assert list(res.databases) == ["sqlite.x"]
    assert [s.error for s in res.failed] == [f"inventory json: cannot read {tmp_path / 'missing.json'}: No such file or directory"]


def test_removed_targets_expire(tmp_path: Path) -> None:
    now = [1000.0]
    (tmp_path / "a.db").touch()
    (tmp_path / "b.db").touch()
    inv = inventory(tmp_path, {"name": "g", "glob": "*.db"}, clock=lambda: now[0], removed_keep=60)
    inv.resolve({})
    (tmp_path / "a.db").unlink()
    now[0] = 1010.0
    res = inv.resolve({})
    assert list(res.removed) == ["sqlite.a"] and res.removed["sqlite.a"].since == 1010.0
    now[0] = 1050.0
    assert list(inv.resolve({}).removed) == ["sqlite.a"]
    now[0] = 1080.0
    assert inv.resolve({}).removed == {}


@pytest.mark.parametrize(("source", "message"), [
    ({"name": "x"}, "config.json: inventory[0]: give exactly one of sql, databases, schemas, glob, file, command, url"),
    ({"name": "x", "glob": "*.db", "file": "a.json"}, "config.json: inventory[0]: give exactly one of sql, databases, "
                                                       "schemas, glob, file, command, url (got glob, file)"),
    ({"name": "x", "file": "a.json", "driver": "sqlite"},
     "config.json: inventory[0]: a file source needs no 'driver': its JSON names the driver of each list"),
    ({"name": "x", "databases": {"dbid": "sqlite.a"}},
     "config.json: inventory[0]: databases.dbid: 'sqlite.a' is a sqlite target; this source reads postgresql or mysql"),
    ({"name": "x", "schemas": {"dbid": "mysql.a"}},
     "config.json: inventory[0]: schemas.dbid: 'mysql.a' is a mysql target; this source reads postgresql"),
    ({"name": "x", "glob": "*.db", "defaults": {"password": "p"}},
     "config.json: inventory[0]: defaults.password: not a field of a sqlite entry"),
    ({"name": "x", "glob": "*.db", "defaults": {"host_id": "p"}},
     "config.json: inventory[0]: defaults.host_id: each target's host_id comes from the source, not from defaults"),
    ({"name": "x", "sql": {"dbid": "postgresql.c"}}, "config.json: inventory[0].sql.query: required field is missing"),
    ({"name": "x", "url": "ftp://a"}, "config.json: inventory[0].url: String should match pattern '^https?://'"),
    ({"name": "x", "glob": "*", "headers": {"a": "b"}}, "config.json: inventory[0]: 'headers' only applies to a url source"),
    ({"name": "x", "glob": "*", "timeout": "soon"}, "config.json: inventory[0].timeout: invalid duration 'soon': use a "
                                                    "number with ms, s, m, h or d, e.g. '5m' or '1h30m'"),
    ({"name": "x", "glob": "*", "typo": 1}, "config.json: inventory[0].typo: unknown field"),
])
def test_bad_declarations(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_sources([source], "config.json")
    assert str(exc.value) == message


def test_duplicate_source_names() -> None:
    with pytest.raises(ConfigError, match=r"inventory\[1\].name: source name 'a' is used twice"):
        parse_sources([{"name": "a", "glob": "*"}, {"name": "a", "glob": "*"}], "config.json")


def test_bad_json_from_a_source_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"sqlite": [{"host_id": "ok", "path": "p"}, 5], "oracle": []}')
    (tmp_path / "b.json").write_text('{"sqlite": [{"host_id": "ok2", "path": "p"}, 5, {"path": "q"}]}')
    res = inventory(tmp_path, {"name": "a", "file": "a.json"}, {"name": "b", "file": "b.json"}).resolve({})
    assert res.failed[0].error == f"inventory a: {tmp_path / 'a.json'}: 'oracle' is not a driver (drivers: postgresql, mysql, redis, sqlite)"
    assert res.problems == ["inventory b: sqlite[1]: expected a JSON object; skipped",
                            "inventory b: sqlite[2]: host_id: required field is missing; skipped"]
    assert list(res.databases) == ["sqlite.ok2"]


def test_catalog_query_runs_read_only(tmp_path: Path, catalog: dict[str, Any], mysql_db: dict[str, Any]) -> None:
    with pg_connect(catalog["dbname"]) as conn:
        conn.execute("INSERT INTO tenants (host_id, path) VALUES ('a', 'a.db')")
    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE tenants (host_id VARCHAR(40), path VARCHAR(200))")
    static = {"postgresql.catalog": pg_entry("catalog", catalog["dbname"]), "mysql.cat": my_entry("cat", mysql_db["dbname"])}
    res = inventory(tmp_path,
                    {"name": "pg", "driver": "sqlite", "sql": {"dbid": "postgresql.catalog",
                                                                "query": "DELETE FROM tenants RETURNING host_id, path"}},
                    {"name": "my", "driver": "sqlite", "sql": {"dbid": "mysql.cat",
                                                                "query": "INSERT INTO tenants VALUES ('x', 'x.db')"}}).resolve(static)
    assert [s.up for s in res.sources] == [False, False]
    assert "read-only" in (res.sources[0].error or "") and "READ ONLY" in (res.sources[1].error or "")
    with pg_connect(catalog["dbname"]) as conn:
        assert conn.execute("SELECT count(*) FROM tenants").fetchone() == (1,)
