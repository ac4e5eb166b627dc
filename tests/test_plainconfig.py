"""The plain config reader against the models: never accepts what they refuse, and reads the same config when it accepts.

``load_plain`` exists so that ``up`` on a SQLite file need not import pydantic. It may
decline any config (the models then read it); what it must never do is accept a
config the models refuse, or read one differently. Crafted cases cover each field it
knows; a seeded random walk of mutations over a rich config covers their mixtures.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import _File, load
from orchestrator.configtypes import SECTIONS
from orchestrator.errors import ConfigError
from orchestrator.plainconfig import PlainSqlite, load_plain

BASE: dict[str, Any] = {
    "main": {"threads": 4},  # the C Web Framework's own sections are ignored
    "servers": [{"port": 8080}],
    "databases": {
        "postgresql": [{"host_id": "p1", "ip": "127.0.0.1", "port": 5432, "dbname": "app", "user": "u", "password": "pw-secret",
                        "schema": "tenant_1", "sslmode": "prefer", "keepalive": 30, "connection_timeout": 4,
                        "lock_timeout": "500ms"},
                       {"host_id": "p2", "dbname": "app2", "pooling": "transaction", "tcp_user_timeout": 0,
                        "statement_timeout": "1m", "lock_retries": 0}],
        "mysql": [{"host_id": "m1", "port": 3306, "dbname": "app", "charset": "utf8mb4", "tls": True, "online_alter": False}],
        "redis": [{"host_id": "r1", "dbindex": 2, "prefix": "app:", "password": "redis-pw", "user": "default"}],
        "sqlite": [{"host_id": "local", "path": "var/app.db", "journal_mode": "WAL", "busy_timeout": 5000},
                   {"host_id": "t-2", "path": "var/t2.db", "lock_timeout": "500ms", "lock_retries": 3}],
    },
    "migrations": {"directory": "sets", "table": "migration", "lock_timeout": 1, "lock_retries": 4,
                   "statement_timeout": "off", "mysql_online_alter": True,
                   "sets": {"s1": {"targets": ["sqlite.*", "postgresql.p1"]},
                            "s2": {"targets": ["sqlite.local", "mysql.*", "redis.r1"], "apply": "report", "path": "other/s2"}}},
    "daemon": {"workers": 6},
}

# Values a mutation may put anywhere: each is wrong somewhere and right somewhere else.
VALUES: list[Any] = [True, False, None, 0, -1, 1, 7, 5432, 65536, 1024, 1.5, 5.0, "", " ", "x", "a.b", "p1\n", "5432",
                     "off", "2s", "500ms", "-1s", "WAL", "wal", "walx", "utf8mb4", "utf-8", "auto", "report", "sqlite.local",
                     "sqlite.*", "nosuch.x", "sqlite.nope", "${HOME}", "$${X}", "é", "x" * 101, [], ["sqlite.local"], {},
                     {"x": 1}, "require", "transaction", "session", 7200, 601, 600]


@pytest.fixture(autouse=True)
def _own_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both readers register passwords for redaction; the mutated ones ("wal", "auto"...) must not outlive this module."""
    from orchestrator import redact

    monkeypatch.setattr(redact, "_secrets", set(redact._secrets))
    monkeypatch.setattr(redact, "_pattern", None)


def _write(root: Path, data: Any, text: str | None = None) -> Path:
    for folder in ("sets/s1", "other/s2", "sets/s2"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    path = root / "config.json"
    path.write_text(text if text is not None else json.dumps(data))
    return path


def _fields(entry: Any, names: Any) -> dict[str, Any]:
    out = {}
    for name in names:
        value = getattr(entry, name)
        out[name] = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return out


def _view(config: Any, full: Any = None) -> dict[str, Any]:
    """What the commands read from a loaded config, for comparing the two readers (field names: the models')."""
    models = (full or config).databases
    entries = {dbid: _fields(e, [*type(models[dbid]).model_fields, "dbid", "driver"]
                                 + (["timeout"] if e.driver != "sqlite" else []))
               for dbid, e in config.databases.items()}
    return {"path": config.path, "entries": entries, "table": config.table, "sets_directory": config.sets_directory,
            "sets": config.sets, "origin": config.origin, "inventory": config.inventory, "per_server": config.per_server,
            "notify": config.notify, "workers": config.workers}


def _both(path: Path) -> tuple[Any, Any]:
    """(the models' config or the ConfigError they raised, the plain reader's answer)."""
    try:
        full: Any = load(path)
    except ConfigError as exc:
        full = exc
    return full, load_plain(path)


def _agree(path: Path) -> Any:
    full, plain = _both(path)
    if isinstance(full, ConfigError):
        assert plain is None, f"the plain reader accepted what the models refuse: {full}"
    elif plain is not None:
        assert _view(plain, full) == _view(full)
    return plain


def test_the_plain_reader_knows_the_sections_the_models_read() -> None:
    assert SECTIONS == tuple(_File.model_fields)


def test_a_plain_config_is_read_as_the_models_read_it(tmp_path: Path) -> None:
    plain = _agree(_write(tmp_path, BASE))
    assert plain is not None  # the rich base config is plain: the quick start serves real configs
    assert plain.databases["sqlite.t-2"].lock_timeout == 0.5 and plain.databases["sqlite.local"].lock_timeout == 1.0
    assert plain.databases["postgresql.p1"].password.get_secret_value() == "pw-secret"
    assert "pw-secret" not in repr(plain.databases["postgresql.p1"]) and plain.workers == 6


@pytest.mark.parametrize("change", [
    {"daemon": {"workers": 4, "retry_min": "1m"}},
    {"inventory": []},
    {"notify": []},
    {"databse": {}},  # misspelt: the models say so
    {"migrations": {"sets": {"s1": {"targets": ["sqlite.local"], "schedule": {"every": "5m"}}}}},
    {"migrations": {"per_server": 2, "sets": {}}},
    {"databases": {"sqlite": [{"host_id": "local", "path": "a.db", "lock_timeout": 1.5}]}},
    {"databases": {"postgresql": [{"host_id": "p1", "dbname": "${HOME}"}]}},
])
def test_what_the_plain_reader_does_not_know_goes_to_the_models(tmp_path: Path, change: dict[str, Any]) -> None:
    data = {**copy.deepcopy(BASE), **change}
    assert load_plain(_write(tmp_path, data)) is None
    _agree(tmp_path / "config.json")


@pytest.mark.parametrize("text", ['{"databases": {}, "databases": {}}', "[1]", "{", '{"migrations": null}',
                                  '{"databases": {"sqlite": [{"host_id": "a", "path": "x.db"}, {"host_id": "a", "path": "y.db"}]}}',
                                  '{"databases": {"sqlite": [{"host_id": "a", "path": "${NO_SUCH_VARIABLE_HERE}"}]}}'])
def test_faulty_files_go_to_the_models(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, None, text)
    assert load_plain(path) is None
    with pytest.raises(ConfigError):
        load(path)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _mutate(data: Any, rng: random.Random) -> Any:
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(data)[1:])
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = rng.random()
        if action < 0.6:
            parent[path[-1]] = rng.choice(VALUES)
        elif action < 0.8 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(["port", "path", "targets", "ip", "host_id", "table", "busy_timeout", "extra", "apply"])] = rng.choice(VALUES)
    return data


def test_random_mutations_never_make_the_readers_disagree(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    accepted = refused = 0
    for i in range(600):
        root = tmp_path / str(i)
        root.mkdir()
        full, plain = _both(_write(root, _mutate(BASE, rng)))
        if isinstance(full, ConfigError):
            refused += 1
            assert plain is None, f"case {i}: the plain reader accepted what the models refuse: {full}"
        elif plain is not None:
            accepted += 1
            assert _view(plain, full) == _view(full), f"case {i}"
    assert accepted > 50 and refused > 100  # both sides of the line were walked


def _up(config: Path, dbid: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys\nfrom orchestrator.cli import main\ncode = main(sys.argv[1:])\n"
            "print('pydantic' in sys.modules)\nraise SystemExit(code)")
    return subprocess.run([sys.executable, "-c", code, "up", "all", str(config), dbid, "s1"], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(Path.cwd())}, timeout=120)


def _lines(stderr: str) -> list[str]:
    return [line.split(" | ", 1)[1] for line in stderr.splitlines()]  # without the time


def test_up_on_a_sqlite_file_with_a_plain_config_skips_the_models_and_says_the_same(tmp_path: Path) -> None:
    import sqlite3

    plain_root, full_root = tmp_path / "plain", tmp_path / "full"
    results = []
    for root, extra in ((plain_root, {}), (full_root, {"daemon": {"retry_min": "1m"}})):  # the models read that
        root.mkdir()
        config = _write(root, {**copy.deepcopy(BASE), **extra})
        (root / "sets/s1/001_init.sql").write_text("CREATE TABLE t (x int);\n")
        first, again = _up(config, "sqlite.local", root), _up(config, "sqlite.local", root)
        with sqlite3.connect(root / "var/app.db") as conn:
            rows = conn.execute("SELECT set_id, version, status FROM migration").fetchall()
        results.append((first, again, rows))
    (p_first, p_again, p_rows), (f_first, f_again, f_rows) = results
    assert p_first.stdout.strip() == "False" and p_again.stdout.strip() == "False"  # pydantic never imported
    assert f_first.stdout.strip() == "True"
    assert (p_first.returncode, p_again.returncode) == (f_first.returncode, f_again.returncode) == (0, 0)
    assert _lines(p_first.stderr) == [line.replace(str(full_root), str(plain_root)) for line in _lines(f_first.stderr)]
    assert _lines(p_again.stderr) == _lines(f_again.stderr) == ["INFO | migrations - no new migrations"]
    assert p_rows == f_rows == [("s1", "001_init", "applied")]


def test_up_on_an_unknown_target_takes_the_models_for_their_error(tmp_path: Path) -> None:
    config = _write(tmp_path, BASE)
    unknown = _up(config, "sqlite.nope", tmp_path)
    assert unknown.returncode == 2 and unknown.stdout.strip() == "True"
    assert "unknown target 'sqlite.nope'" in unknown.stderr


def test_a_fleet_catch_up_on_postgresql_and_sqlite_runs_from_a_plain_config(tmp_path: Path, pg_db: dict[str, Any]) -> None:
    import sqlite3

    from tests.conftest import pg_connect

    data = {"databases": {"postgresql": [{"host_id": "p1", **pg_db}], "sqlite": [{"host_id": "f1", "path": "var/f1.db"}]},
            "migrations": {"sets": {"s1": {"targets": ["postgresql.p1", "sqlite.f1"]}}}, "daemon": {"workers": 2}}
    config = _write(tmp_path, data)
    (tmp_path / "sets/s1/001_init.sql").write_text("CREATE TABLE plain_t (x int);\n")
    assert load_plain(config) is not None
    code = ("import sys\nfrom orchestrator.cli import main\ncode = main(sys.argv[1:])\n"
            "print('pydantic' in sys.modules)\nraise SystemExit(code)")
    done = subprocess.run([sys.executable, "-c", code, "catch-up", str(config)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path.cwd())}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"  # the fleet ran without the models
    with pg_connect(pg_db["dbname"]) as conn:
        assert conn.execute("SELECT set_id, version, status FROM migration").fetchall() == [("s1", "001_init", "applied")]
    with sqlite3.connect(tmp_path / "var/f1.db") as conn:
        assert conn.execute("SELECT set_id, version, status FROM migration").fetchall() == [("s1", "001_init", "applied")]


def test_a_file_path_resolves_as_pathlib_resolves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_file resolves each folder once per load; every path still comes out as Path.resolve() gives it."""
    from orchestrator.configtypes import resolve_file

    home, real, folder = tmp_path / "home", tmp_path / "real", tmp_path / "project"
    for d in (home, real / "sub", folder / "var"):
        d.mkdir(parents=True)
    (folder / "linked").symlink_to(real)  # a symlinked folder
    (real / "target.db").write_bytes(b"")
    (folder / "var" / "alias.db").symlink_to(real / "target.db")  # a symlinked file
    (folder / "var" / "loop.db").symlink_to(folder / "var" / "loop.db")  # a symlink loop: resolve() does not raise
    monkeypatch.setenv("HOME", str(home))
    folders: dict[str, str] = {}
    for given in ["var/a.db", "var/alias.db", "linked/target.db", "linked/sub/new.db", "../real/target.db", "~/t.db",
                  "./var/a.db", "var//a.db", "var/./a.db", "var/", ".", "..", "var/..", str(real / "target.db"),
                  "missing/dir/a.db", "linked/../project/var/a.db", "var/sub/../a.db"]:
        expected = str((folder / Path(given).expanduser()).resolve())
        assert resolve_file(folder, given, folders, "here") == expected, given
        assert resolve_file(folder, given, folders, "here") == expected, given  # again, from the folders already resolved
    with pytest.raises(ConfigError, match=r"^config.json: databases.sqlite\[0\].path: 'var/loop.db' cannot be resolved: a symlink loop$"):
        resolve_file(folder, "var/loop.db", folders, "config.json: databases.sqlite[0].path")


def test_a_symlink_loop_as_a_sqlite_path_is_one_config_error(tmp_path: Path) -> None:
    (tmp_path / "loop.db").symlink_to(tmp_path / "loop.db")
    path = _write(tmp_path, {"databases": {"sqlite": [{"host_id": "a", "path": "loop.db"}]}})
    assert load_plain(path) is None
    with pytest.raises(ConfigError, match=r"databases.sqlite\[0\].path: 'loop.db' cannot be resolved: a symlink loop$"):
        load(path)
