"""config.json: the C Web Framework shape for all four drivers, ${ENV}, globs, relative paths, and one-line errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from orchestrator import config as config_module
from orchestrator.config import load, parse_duration
from orchestrator.errors import ConfigError

SECRET = "pa55-w0rd;with@odd:chars"

FULL = {
    "databases": {
        "postgresql": [{"host_id": "p1", "ip": "10.0.0.5", "port": 5432, "dbname": "app", "user": "postgres",
                        "password": "${PG_PASSWORD}", "connection_timeout": 3, "schema": "public"},
                       {"host_id": "p2", "ip": "10.0.0.6", "dbname": "app2", "user": "app"}],
        "mysql": [{"host_id": "m1", "ip": "127.0.0.1", "port": 3306, "dbname": "app", "user": "root", "password": "",
                   "charset": "utf8mb4", "connection_timeout": 5}],
        "redis": [{"host_id": "r1", "ip": "127.0.0.1", "port": 6379, "dbindex": 2, "user": "", "password": ""}],
        "sqlite": [{"host_id": "local", "path": "var/app.db", "journal_mode": "WAL", "busy_timeout": 5000},
                   {"host_id": "reports", "path": "var/reports.db", "journal_mode": "DELETE"}],
    },
    "migrations": {
        "directory": "sets",
        "table": "migration",
        "sets": {
            "s1": {"targets": ["postgresql.*", "mysql.m1", "sqlite.local"], "schedule": {"every": "5m"}},
            "s2": {"targets": ["redis.r1"], "schedule": {"cron": "0 3 * * *"}, "apply": "report"},
        },
    },
    "daemon": {"workers": 8, "watch_interval": "5s",
               "http": {"host": "127.0.0.1", "port": 8787, "token": "${ORCHESTRATOR_TOKEN}"}},
}


def write(folder: Path, data: Any, sets: tuple[str, ...] = ("s1", "s2")) -> Path:
    for name in sets:
        (folder / "sets" / name).mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2), encoding="utf-8")
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_PASSWORD", SECRET)
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "tok-" + SECRET)


def test_full_config_with_all_four_drivers(tmp_path: Path, env: None) -> None:
    config = load(write(tmp_path, FULL))
    assert sorted(config.databases) == ["mysql.m1", "postgresql.p1", "postgresql.p2", "redis.r1", "sqlite.local", "sqlite.reports"]
    p1, p2 = config.databases["postgresql.p1"], config.databases["postgresql.p2"]
    assert (p1.ip, p1.port, p1.dbname, p1.user, p1.schema_, p1.timeout) == ("10.0.0.5", 5432, "app", "postgres", "public", 3)
    assert p1.password.get_secret_value() == SECRET
    assert (p2.port, p2.schema_, p2.timeout, p2.password.get_secret_value()) == (5432, "public", 3, "")  # defaults
    m1 = config.databases["mysql.m1"]
    assert (m1.port, m1.dbname, m1.charset, m1.timeout, m1.tls) == (3306, "app", "utf8mb4", 5, False)
    r1 = config.databases["redis.r1"]
    assert (r1.port, r1.dbindex, r1.driver, r1.dbid) == (6379, 2, "redis", "redis.r1")
    local, reports = config.databases["sqlite.local"], config.databases["sqlite.reports"]
    assert local.path == str(tmp_path / "var" / "app.db")
    assert (local.journal_mode, local.busy_timeout) == ("WAL", 5000)
    assert (reports.journal_mode, reports.busy_timeout) == ("DELETE", 5000)
    s1, s2 = config.sets["s1"], config.sets["s2"]
    assert s1.targets == ("postgresql.p1", "postgresql.p2", "mysql.m1", "sqlite.local")
    assert s1.patterns == ("postgresql.*", "mysql.m1", "sqlite.local")
    assert (s1.every, s1.cron, s1.apply, s1.folder) == (300.0, None, "auto", tmp_path / "sets" / "s1")
    assert (s2.targets, s2.every, s2.cron, s2.apply) == (("redis.r1",), None, "0 3 * * *", "report")
    assert config.table == "migration"
    assert (config.daemon.workers, config.daemon.watch_interval) == (8, 5.0)
    assert (config.daemon.http.host, config.daemon.http.port) == ("127.0.0.1", 8787)
    assert config.daemon.http.token.get_secret_value() == "tok-" + SECRET
    assert config.bindings("s1", "postgresql.*") == [(s1, "postgresql.p1"), (s1, "postgresql.p2")]


def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, {"databases": {"sqlite": [{"host_id": "a", "path": "a.db"}]}}, sets=()))
    a = config.databases["sqlite.a"]
    assert (a.journal_mode, a.busy_timeout) == ("WAL", 5000)
    assert config.sets == {} and config.table == "migration"
    # no migrations.directory: 'sets' beside the config where it exists, else ./migrations as the C tool reads it
    assert config.sets_directory == Path.cwd() / "migrations"
    (tmp_path / "sets").mkdir()
    assert load(tmp_path / "config.json").sets_directory == tmp_path / "sets"
    assert (config.daemon.workers, config.daemon.http.port, config.daemon.http.token) == (8, 8787, None)


def test_env_expansion_defaults_and_literal_dollar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db.internal")
    monkeypatch.setenv("DB_PORT", "6543")
    monkeypatch.setenv("USE_TLS", "true")
    monkeypatch.delenv("DB_NAME", raising=False)
    monkeypatch.delenv("MAYBE", raising=False)
    data = {"databases": {
        "postgresql": [{"host_id": "p", "ip": "${DB_HOST}", "port": "${DB_PORT}", "dbname": "${DB_NAME:-app_dev}",
                        "user": "u_${DB_NAME:-x}_${DB_HOST}", "password": "$${NOT_EXPANDED}"}],
        "mysql": [{"host_id": "m", "dbname": "d", "tls": "${USE_TLS}", "port": "${MAYBE:-3307}", "password": "${MAYBE:-}"}],
    }}
    config = load(write(tmp_path, data, sets=()))
    p = config.databases["postgresql.p"]
    assert (p.ip, p.port, p.dbname, p.user) == ("db.internal", 6543, "app_dev", "u_x_db.internal")
    assert p.password.get_secret_value() == "${NOT_EXPANDED}"
    m = config.databases["mysql.m"]
    assert (m.tls, m.port, m.password.get_secret_value()) == (True, 3307, "")
    # An explicit env mapping replaces os.environ (used by the daemon's reload).
    config = load(tmp_path / "config.json", env={"DB_HOST": "h", "DB_PORT": "1", "USE_TLS": "0", "DB_NAME": "n"})
    assert (config.databases["postgresql.p"].ip, config.databases["postgresql.p"].dbname) == ("h", "n")
    assert config.databases["mysql.m"].tls is False


def test_globs_in_target_lists(tmp_path: Path) -> None:
    data = {"databases": {"sqlite": [{"host_id": h, "path": f"{h}.db"} for h in ("eu-1", "eu-2", "us-1", "main")],
                          "redis": [{"host_id": "main"}]},
            "migrations": {"sets": {"s1": {"targets": ["sqlite.eu-*", "sqlite.eu-1", "sqlite.?s-[0-9]"]},
                                    "s2": {"targets": ["*.main"]},
                                    "s3": {"targets": ["sqlite.*"]}}}}
    config = load(write(tmp_path, data, sets=("s1", "s2", "s3")))
    assert config.sets["s1"].targets == ("sqlite.eu-1", "sqlite.eu-2", "sqlite.us-1")  # each once, in pattern order
    assert config.sets["s2"].targets == ("redis.main", "sqlite.main")
    assert config.sets["s3"].targets == ("sqlite.eu-1", "sqlite.eu-2", "sqlite.main", "sqlite.us-1")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / "migrations" / "core").mkdir(parents=True)
    (project / "extra" / "reports").mkdir(parents=True)
    data = {"databases": {"sqlite": [{"host_id": "a", "path": "var/a.db"}, {"host_id": "b", "path": str(tmp_path / "abs.db")}]},
            "migrations": {"directory": "migrations",
                           "sets": {"core": {"targets": ["sqlite.a"]}, "rep": {"targets": ["sqlite.b"], "path": "extra/reports"}}}}
    (project / "config.json").write_text(json.dumps(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load(Path("..") / "project" / "config.json")
    assert config.databases["sqlite.a"].path == str(project / "var" / "a.db")
    assert config.databases["sqlite.b"].path == str(tmp_path / "abs.db")
    assert config.sets["core"].folder == project / "migrations" / "core"
    assert config.sets["rep"].folder == project / "extra" / "reports"
    assert config.path == project / "config.json"


def test_parse_duration() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    for bad in ("", "5", "5 m", "m5", "1x", "5m 3s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- bad configs: one line naming the file and the JSON path, exit 2 ---------------------------------

BASE = {"databases": {"sqlite": [{"host_id": "local", "path": "var/app.db"}]},
        "migrations": {"sets": {"s1": {"targets": ["sqlite.local"]}}}}


def mutate(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def sqlite0(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["databases"]["sqlite"][0].update(fields)


def add(driver: str, **entry: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["databases"].setdefault(driver, []).append(entry)


def set1(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["migrations"]["sets"]["s1"].update(fields)


BAD_CONFIGS: list[tuple[str, Any, str]] = [
    ("unknown field", mutate(sqlite0(jornal_mode="WAL")), "databases.sqlite[0].jornal_mode: unknown field (did you mean 'journal_mode'?)"),
    ("unknown top-level field", mutate(lambda d: d.update(databse={})), "databse: unknown field"),
    ("unknown driver section", mutate(lambda d: d["databases"].update(oracle=[])), "databases.oracle: unknown field"),
    ("duplicate host_id", mutate(add("sqlite", host_id="local", path="other.db")), "databases.sqlite[1].host_id: duplicate host_id 'local'"),
    ("duplicate JSON key", '{"databases": {"sqlite": []}, "databases": {}}', "databases: appears twice"),
    ("bad dbid", mutate(set1(targets=["sqlite"])), "migrations.sets.s1.targets[0]: bad dbid 'sqlite'"),
    ("unknown driver in dbid", mutate(set1(targets=["oracle.x"])), "migrations.sets.s1.targets[0]: unknown driver 'oracle'"),
    ("missing set folder", mutate(lambda d: d["migrations"]["sets"].update(s9={"targets": ["sqlite.local"]})),
     "migrations.sets.s9: set folder"),
    ("set path is a file", mutate(set1(path="config.json")), "migrations.sets.s1.path: set folder"),
    ("unset variable", mutate(sqlite0(path="${ORCH_TEST_UNSET_VAR}/app.db")),
     "databases.sqlite[0].path: environment variable ORCH_TEST_UNSET_VAR is not set"),
    ("string port", mutate(add("postgresql", host_id="p", dbname="x", port="5432")),
     "databases.postgresql[0].port: expected an integer, not a string"),
    ("non-numeric port", mutate(add("mysql", host_id="m", dbname="x", port="high")), "databases.mysql[0].port: expected an integer"),
    ("bool port", mutate(add("redis", host_id="r", port=True)), "databases.redis[0].port: expected an integer, not a boolean"),
    ("float port", mutate(add("redis", host_id="r", port=6379.5)), "databases.redis[0].port:"),
    ("negative port", mutate(add("postgresql", host_id="p", dbname="x", port=-1)), "databases.postgresql[0].port:"),
    ("port too large", mutate(add("mysql", host_id="m", dbname="x", port=70000)), "databases.mysql[0].port:"),
    ("list expected", mutate(lambda d: d["databases"].update(sqlite={"host_id": "x", "path": "x.db"})),
     "databases.sqlite: expected a JSON list"),
    ("targets not a list", mutate(set1(targets="sqlite.local")), "migrations.sets.s1.targets: expected a JSON list"),
    ("object expected", mutate(lambda d: d.update(daemon=[])), "daemon: expected a JSON object"),
    ("string where bool", mutate(add("mysql", host_id="m", dbname="x", tls="yes")), "databases.mysql[0].tls: expected true or false"),
    ("number where string", mutate(add("postgresql", host_id="p", dbname=5)), "databases.postgresql[0].dbname: expected a string"),
    ("missing required field", mutate(add("postgresql", host_id="p")), "databases.postgresql[0].dbname: required field is missing"),
    ("missing sqlite path", mutate(add("sqlite", host_id="b")), "databases.sqlite[1].path: required field is missing"),
    ("invalid JSON", '{\n  "databases": {\n    "sqlite": [,]\n  }\n}', ":3:16: invalid JSON"),
    ("trailing comma", '{"databases": {},}', ":1:18: invalid JSON"),
    ("empty file", "", ":1:1: invalid JSON"),
    ("bad journal_mode", mutate(sqlite0(journal_mode="FAST")), "databases.sqlite[0].journal_mode:"),
    ("negative busy_timeout", mutate(sqlite0(busy_timeout=-1)), "databases.sqlite[0].busy_timeout:"),
    ("both every and cron", mutate(set1(schedule={"every": "5m", "cron": "0 3 * * *"})),
     "migrations.sets.s1.schedule: give exactly one of 'every' or 'cron'"),
    ("empty schedule", mutate(set1(schedule={})), "migrations.sets.s1.schedule: give exactly one"),
    ("bad cron", mutate(set1(schedule={"cron": "61 * * * *"})), "migrations.sets.s1.schedule.cron: invalid cron expression '61 * * * *'"),
    ("cron with too few fields", mutate(set1(schedule={"cron": "daily"})), "migrations.sets.s1.schedule.cron: invalid cron expression"),
    ("bad duration", mutate(set1(schedule={"every": "5 minutes"})), "migrations.sets.s1.schedule.every: invalid duration '5 minutes'"),
    ("zero duration", mutate(set1(schedule={"every": "0s"})), "migrations.sets.s1.schedule.every:"),
    ("bad watch_interval", mutate(lambda d: d.update(daemon={"watch_interval": "soon"})), "daemon.watch_interval: invalid duration"),
    ("bad apply value", mutate(set1(apply="yes")), "migrations.sets.s1.apply: Input should be 'auto' or 'report'"),
    ("pattern matching nothing", mutate(set1(targets=["sqlite.eu-*"])), "migrations.sets.s1.targets[0]: 'sqlite.eu-*' matches no declared database"),
    ("empty targets list", mutate(set1(targets=[])), "migrations.sets.s1.targets:"),
    ("bad table name", mutate(lambda d: d["migrations"].update(table="migration; DROP TABLE users")), "migrations.table: expected a SQL identifier"),
    ("bad host_id", mutate(sqlite0(host_id="eu.1")), "databases.sqlite[0].host_id: expected letters, digits"),
    ("bad set name", mutate(lambda d: d["migrations"]["sets"].update({"../up": {"targets": ["sqlite.local"]}})),
     "migrations.sets.../up: expected letters, digits"),
    ("non-object top level", "[1, 2]", "(top level): expected a JSON object"),
    ("workers zero", mutate(lambda d: d.update(daemon={"workers": 0})), "daemon.workers:"),
    ("redis dbindex negative", mutate(add("redis", host_id="r", dbindex=-1)), "databases.redis[0].dbindex:"),
    ("NaN port", '{"databases": {"redis": [{"host_id": "r", "port": NaN}]}}', "databases.redis[0].port:"),
]


@pytest.mark.parametrize("data, expected", [pytest.param(d, e, id=i) for i, d, e in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_file_and_path(tmp_path: Path, orchestrator: Any, data: Any, expected: str) -> None:
    path = write(tmp_path, data, sets=("s1",))
    code, out, err = orchestrator("up", "all", path, "sqlite.local", "s1")
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1, err  # one line
    assert "Traceback" not in err
    assert " | ERROR | " in err
    assert f"{path}" in err, err  # names the file
    assert expected in err, err
    assert not (tmp_path / "var").exists()  # nothing was attempted


def test_many_distinct_bad_configs() -> None:
    assert len({e for _, _, e in BAD_CONFIGS}) >= 20


def test_missing_config_file(tmp_path: Path, orchestrator: Any) -> None:
    code, out, err = orchestrator("up", "all", tmp_path / "nope.json", "sqlite.local", "s1")
    assert code == 2
    assert err.count("\n") == 1 and f"{tmp_path / 'nope.json'}: config file not found" in err


def test_config_that_is_a_folder_or_not_utf8(tmp_path: Path, orchestrator: Any) -> None:
    code, _, err = orchestrator("up", "all", tmp_path, "sqlite.local", "s1")
    assert code == 2 and err.count("\n") == 1 and "cannot read config" in err
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"databases": {"sqlite": [{"host_id": "caf\xe9", "path": "a.db"}]}}'.encode("latin-1"))
    code, _, err = orchestrator("up", "all", bad, "sqlite.local", "s1")
    assert code == 2 and err.count("\n") == 1 and "latin1.json: cannot read config" in err


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff" + json.dumps(BASE), sets=("s1",))
    assert list(load(path).databases) == ["sqlite.local"]


def test_bad_config_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    # The same checks, but through `python -m orchestrator`, as a user or a CI job would run it.
    for data, expected in ((mutate(add("postgresql", host_id="p", dbname="x", port=True)), "databases.postgresql[0].port"),
                           ('{"databases": [', "invalid JSON")):
        path = write(tmp_path, data, sets=("s1",))
        proc = subprocess.run([sys.executable, "-m", "orchestrator", "up", "all", str(path), "sqlite.local", "s1"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr and "Traceback" not in proc.stderr


# -- secrets -------------------------------------------------------------------------------------------

def test_env_password_never_in_errors_or_repr(tmp_path: Path, env: None, orchestrator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load(write(tmp_path, FULL))
    for text in (repr(config), str(config), repr(config.databases), repr(config.databases["postgresql.p1"]),
                 str(config.databases["postgresql.p1"]), config.databases["postgresql.p1"].model_dump_json(),
                 repr(config.daemon), config.daemon.model_dump_json()):
        assert SECRET not in text
    # The secret sits next to each kind of fault; no message may carry it.
    faults = [
        mutate(add("postgresql", host_id="p", dbname="x", password="${PG_PASSWORD}", port="${PG_PASSWORD}")),
        mutate(add("postgresql", host_id="p", dbname="x", password="${PG_PASSWORD}", pasword="${PG_PASSWORD}")),
        mutate(add("postgresql", host_id="p", dbname="${PG_PASSWORD}", password=5)),
        mutate(add("mysql", host_id="m", dbname="x", password="${PG_PASSWORD}", charset="${PG_PASSWORD}")),
        mutate(add("redis", host_id="r", password="${PG_PASSWORD}", tls="${PG_PASSWORD}")),
        mutate(add("redis", host_id="r", password="${PG_PASSWORD}", user="${PG_PASSWORD}${UNSET_ORCH_VAR}")),
        mutate(lambda d: d.update(daemon={"http": {"token": "${PG_PASSWORD}", "port": "${PG_PASSWORD}"}})),
        mutate(sqlite0(host_id="${PG_PASSWORD}")),
        mutate(set1(targets=["sqlite.${PG_PASSWORD}"])),
    ]
    monkeypatch.delenv("UNSET_ORCH_VAR", raising=False)
    for data in faults:
        path = write(tmp_path, data, sets=("s1",))
        code, out, err = orchestrator("up", "all", path, "sqlite.local", "s1")
        assert code == 2, err
        assert err.count("\n") == 1
        assert SECRET not in err and SECRET not in out
        assert "pa55" not in err


def test_secret_is_masked_in_later_messages(tmp_path: Path, env: None) -> None:
    from orchestrator.redact import redact

    load(write(tmp_path, FULL))
    assert redact(f"connection failed for postgres:{SECRET}@10.0.0.5") == "connection failed for postgres:********@10.0.0.5"
    assert SECRET not in redact(f"password={SECRET}")


def test_unknown_dbid_and_set_on_the_command_line(tmp_path: Path, orchestrator: Any) -> None:
    path = write(tmp_path, BASE, sets=("s1",))
    for args, expected in ((("sqlite.nope", "s1"), "unknown target 'sqlite.nope' (declared: sqlite.local)"),
                           (("postgresql.local", "s1"), "unknown target 'postgresql.local'"),
                           (("nodot", "s1"), "bad dbid 'nodot'"),
                           (("oracle.x", "s1"), "unknown driver 'oracle'"),
                           (("sqlite.*", "s1"), "a single target is expected here, not a pattern"),
                           (("sqlite.local", "s7"), "unknown set 's7'")):
        code, out, err = orchestrator("up", "all", path, *args)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "var").exists()


def test_module_exports() -> None:
    for name in config_module.__all__:
        assert hasattr(config_module, name)
    assert os.path.basename(config_module.__file__) == "config.py"
    with pytest.raises(ConfigError):
        load("/nonexistent/config.json")
