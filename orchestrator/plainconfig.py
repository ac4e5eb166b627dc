"""A plain config.json read without the pydantic models, so a command on one SQLite file starts fast.

Importing pydantic and building the config models costs more than everything
else a no-op ``up`` does. Most configs use a small part of the schema: targets
with their connection fields, sets with their targets. :func:`load_plain` reads a
config that stays inside that part, checking every value as the models would, and
gives the same :class:`~orchestrator.configtypes.Config` the models give. For
anything else (another field, a value it is not sure of, a section such as
``daemon`` or ``inventory``, a fault of any kind) it returns None and the caller
loads the config with :func:`orchestrator.config.load`, which reads everything
and words every error: a config is never accepted here that the models refuse,
and no error is worded here (tests/test_plainconfig.py holds both readers to that).

Entries come out as small frozen dataclasses with the models' attribute names and
defaults (``password`` answers ``get_secret_value()`` as a ``SecretStr`` does), so
the targets read them as they read the models.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from orchestrator import defaults
from orchestrator.configfile import expand, read_json
from orchestrator.configtypes import (
    CHARSET,
    DRIVERS,
    HOST_ID,
    IDENT,
    SECTIONS,
    SET_NAME,
    Config,
    SetSpec,
    bind_set,
    resolve_file,
    sets_directory,
)
from orchestrator.durations import parse_duration
from orchestrator.errors import ConfigError
from orchestrator.redact import register_secret

__all__ = ["PlainMysql", "PlainPostgresql", "PlainRedis", "PlainSecret", "PlainSqlite", "load_plain"]

JOURNAL_MODES = ("WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY", "OFF", "wal", "delete", "truncate", "persist", "memory", "off")


class _NotPlain(Exception):
    """The config leaves the plain part: the models must read it."""


class PlainSecret:
    """A password as the models' ``SecretStr`` holds it: masked when shown, the value from ``get_secret_value()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __repr__(self) -> str:
        return f"SecretStr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlainSecret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_NO_PASSWORD = PlainSecret("")


@dataclass(frozen=True)
class _Entry:
    host_id: str
    lock_timeout: float | None = None
    lock_retries: int | None = None
    statement_timeout: float | None = None
    driver: ClassVar[str] = ""

    @property
    def dbid(self) -> str:
        return f"{self.driver}.{self.host_id}"


@dataclass(frozen=True)
class PlainSqlite(_Entry):
    """A SQLite entry as :class:`orchestrator.config.SqliteConfig` holds it after loading."""

    driver: ClassVar[str] = "sqlite"
    path: str = ""
    journal_mode: str = "WAL"
    busy_timeout: int = defaults.SQLITE_BUSY_TIMEOUT


@dataclass(frozen=True)
class _PlainServer(_Entry):
    ip: str = "127.0.0.1"
    user: str = ""
    password: PlainSecret = _NO_PASSWORD
    connection_timeout: int | None = None

    @property
    def timeout(self) -> int:
        return self.connection_timeout or defaults.CONNECT_TIMEOUT[self.driver]


@dataclass(frozen=True)
class _PlainSqlServer(_PlainServer):
    dbname: str = ""
    keepalive: int = defaults.KEEPALIVE
    tcp_user_timeout: int = defaults.TCP_USER_TIMEOUT


@dataclass(frozen=True)
class PlainPostgresql(_PlainSqlServer):
    driver: ClassVar[str] = "postgresql"
    port: int = 5432
    schema_: str = "public"
    pooling: str = "session"
    sslmode: str | None = None


@dataclass(frozen=True)
class PlainMysql(_PlainSqlServer):
    driver: ClassVar[str] = "mysql"
    port: int = 3306
    charset: str = "utf8mb4"
    tls: bool = False
    online_alter: bool | None = None


@dataclass(frozen=True)
class PlainRedis(_PlainServer):
    driver: ClassVar[str] = "redis"
    port: int = 6379
    dbindex: int = 0
    prefix: str = ""
    tls: bool = False


_CLASSES: dict[str, type[_Entry]] = {"postgresql": PlainPostgresql, "mysql": PlainMysql, "redis": PlainRedis,
                                     "sqlite": PlainSqlite}


# Per driver: the fields a plain entry may hold, each with its check (the model's type and constraints).
def _string(value: Any) -> str:
    if type(value) is not str:  # an ${ENV} expansion, a number, null...: the models decide
        raise _NotPlain
    return value


def _matching(pattern: str, longest: int | None = None) -> Any:
    compiled = re.compile(pattern)

    def check(value: Any) -> str:
        text = _string(value)
        if compiled.fullmatch(text) is None or (longest is not None and len(text) > longest):
            raise _NotPlain
        return text
    return check


def _non_empty(value: Any) -> str:
    text = _string(value)
    if not text:
        raise _NotPlain
    return text


def _integer(low: int, high: int | None = None) -> Any:
    def check(value: Any) -> int:
        if type(value) is not int or value < low or (high is not None and value > high):
            raise _NotPlain
        return value
    return check


def _one_of(*choices: str) -> Any:
    def check(value: Any) -> str:
        text = _string(value)
        if text not in choices:
            raise _NotPlain
        return text
    return check


def _lock_timeout(value: Any) -> float:
    if type(value) is int and value >= 0:
        return float(value)
    text = _string(value)
    if text.strip().lower() == "off":
        return 0.0
    try:
        return parse_duration(text)
    except ValueError:
        raise _NotPlain from None


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _NotPlain
    return value


_HOST = _matching(HOST_ID)
_LOCKS = {"lock_timeout": _lock_timeout, "lock_retries": _integer(0, 1000), "statement_timeout": _lock_timeout}
_SERVER = {"host_id": _HOST, "ip": _string, "user": _string, "password": _string, "port": _integer(1, 65535),
           "connection_timeout": _integer(1, 600)}
_TCP = {"keepalive": _integer(0, 7200), "tcp_user_timeout": _integer(0, 7200)}
_FIELDS: dict[str, dict[str, Any]] = {
    "postgresql": {**_SERVER, **_TCP, **_LOCKS, "dbname": _non_empty, "schema": _non_empty,
                   "pooling": _one_of("session", "transaction"),
                   "sslmode": _one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full")},
    "mysql": {**_SERVER, **_TCP, **_LOCKS, "dbname": _non_empty, "charset": _matching(CHARSET), "tls": _boolean,
              "online_alter": _boolean},
    "redis": {**_SERVER, "dbindex": _integer(0, 1023), "prefix": _string, "tls": _boolean},
    "sqlite": {"host_id": _HOST, "path": _non_empty, "journal_mode": _one_of(*JOURNAL_MODES),
               "busy_timeout": _integer(0), **_LOCKS},
}
_REQUIRED = {"postgresql": ("host_id", "dbname"), "mysql": ("host_id", "dbname"), "redis": ("host_id",),
             "sqlite": ("host_id", "path")}
_MIGRATIONS = {"directory": _string, "source_directory": _string, "table": _matching(IDENT, 63),
               "lock_timeout": _lock_timeout, "lock_retries": _integer(0, 1000), "statement_timeout": _lock_timeout,
               "mysql_online_alter": _boolean}
_SET_FIELDS = {"path": _string, "apply": _one_of("auto", "report")}
_SET_NAME_CHECK = _matching(SET_NAME, 100)
_DAEMON = {"workers": _integer(1, 512)}


def _checked(entry: Any, fields: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if type(entry) is not dict or any(key not in entry for key in required):
        raise _NotPlain
    out = {}
    for key, value in entry.items():
        check = fields.get(key)
        if check is None:
            raise _NotPlain
        out[key] = check(value)
    return out


def load_plain(path: str | os.PathLike[str], target: str | None = None) -> Config | None:
    """The config at ``path`` if it stays in the plain part and is valid; None: load it with the models.

    With ``target``, also None unless that dbid is one of its entries (the models word the error).
    """
    try:
        config = _load(Path(path))
    except (_NotPlain, ConfigError, RecursionError):
        return None
    if target is not None and target not in config.databases:
        return None
    return config


def _load(path: Path) -> Config:
    name = str(path)
    data = expand(read_json(path, name), os.environ, name)
    for key in data:
        if key in SECTIONS:
            if key not in ("databases", "migrations", "daemon"):
                raise _NotPlain
        else:
            import difflib  # only a config with the application's own sections pays for it

            if difflib.get_close_matches(str(key), list(SECTIONS), n=1, cutoff=0.8):
                raise _NotPlain  # a misspelt section: the models word it
    migrations = data.get("migrations", {})
    if type(migrations) is not dict:
        raise _NotPlain
    sets_entries = migrations.get("sets", {})
    settings = _checked({k: v for k, v in migrations.items() if k != "sets"}, _MIGRATIONS)
    daemon = _checked(data.get("daemon", {}), _DAEMON)  # workers only: the daemon command reads the rest with the models
    folder = path.resolve().parent
    databases = _databases(data.get("databases", {}), folder, settings)

    sets_folder = sets_directory(folder, name, settings.get("directory"), settings.get("source_directory"))
    directory_field = "migrations.source_directory" if "source_directory" in settings else "migrations.directory"
    if type(sets_entries) is not dict:
        raise _NotPlain
    sets: dict[str, SetSpec] = {}
    for set_name, raw in sets_entries.items():
        _SET_NAME_CHECK(set_name)
        targets_raw = raw.get("targets") if type(raw) is dict else None
        if type(targets_raw) is not list or not targets_raw:
            raise _NotPlain
        entry = _checked({k: v for k, v in raw.items() if k != "targets"}, _SET_FIELDS)
        patterns = [_string(t) for t in targets_raw]
        where = f"{name}: migrations.sets.{set_name}"
        set_folder, targets = bind_set(where, folder, entry.get("path") or None, sets_folder / set_name, patterns,
                                       databases, directory_field, False)
        sets[set_name] = SetSpec(name=set_name, folder=set_folder, patterns=tuple(patterns), targets=tuple(targets),
                                 apply=entry.get("apply", "auto"))
    return Config(path=path.resolve(), databases=databases, sets=sets, table=settings.get("table", defaults.LEDGER_TABLE),
                  sets_directory=sets_folder, daemon=None,  # type: ignore[arg-type]  # only the daemon reads it
                  origin=dict.fromkeys(databases, "databases"), workers=daemon.get("workers"))


def _databases(section: Any, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    if type(section) is not dict or any(driver not in DRIVERS for driver in section):
        raise _NotPlain
    databases: dict[str, Any] = {}
    folders: dict[str, str] = {}  # resolved once per load (see resolve_file)
    for driver in DRIVERS:
        entries = section.get(driver, [])
        if type(entries) is not list:
            raise _NotPlain
        for raw in entries:
            fields = _checked(raw, _FIELDS[driver], _REQUIRED[driver])
            dbid = f"{driver}.{fields['host_id']}"
            if dbid in databases:
                raise _NotPlain
            databases[dbid] = _entry(driver, fields, folder, settings, folders)
    return databases


def _entry(driver: str, fields: dict[str, Any], folder: Path, settings: dict[str, Any], folders: dict[str, str]) -> _Entry:
    """The entry with the defaults the models fill in (:func:`orchestrator.config._build` does the same)."""
    # Redis never waits for a lock (MULTI/EXEC); SQLite has no statement timeout.
    inherited = {"redis": (), "sqlite": ("lock_timeout", "lock_retries")}.get(
        driver, ("lock_timeout", "lock_retries", "statement_timeout"))
    for setting in inherited:
        fields.setdefault(setting, settings.get(setting, _MIGRATION_DEFAULTS[setting]))
    if driver == "mysql":
        fields.setdefault("online_alter", settings.get("mysql_online_alter", False))
    if driver == "sqlite":
        given = fields["path"]
        fields["path"] = resolve_file(folder, given, folders, "path") if given != ":memory:" else given
    else:
        register_secret(fields.get("password", ""))
        fields["password"] = PlainSecret(fields.get("password", ""))
    if "schema" in fields:
        fields["schema_"] = fields.pop("schema")
    return _CLASSES[driver](**fields)


_MIGRATION_DEFAULTS = {"lock_timeout": defaults.LOCK_TIMEOUT, "lock_retries": defaults.LOCK_RETRIES, "statement_timeout": 0.0}
