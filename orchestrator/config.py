"""Load and validate config.json.

The ``databases`` section keeps the C Web Framework's shape (one list of entries
per driver, each with a ``host_id``), so an existing config works unchanged;
``migrations`` binds sets to targets and ``daemon`` configures the service.
``${NAME}`` (or ``${NAME:-default}``) in any string expands from the environment.
Every fault becomes one :class:`ConfigError` line naming the file and the JSON
path (``config.json: databases.mysql[0].port: ...``); reading the file, expanding
and wording errors live in :mod:`orchestrator.configfile`. Passwords are
``SecretStr`` (hidden in reprs) and registered with :mod:`orchestrator.redact`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator import defaults
from orchestrator.configfile import Expanded, expand, one_line_error, read_json
from orchestrator.configtypes import (
    CHARSET,
    DRIVERS,
    HOST_ID,
    IDENT,
    SET_NAME,
    Config,
    SetSpec,
    bind_set,
    resolve_file,
    sets_directory,
)
from orchestrator.durations import parse_duration
from orchestrator.errors import ConfigError
from orchestrator.policyconfig import NotifyEntry, RolloutEntry, caps_of, hooks_of, rollout_of
from orchestrator.redact import register_secret

__all__ = [
    "DRIVERS",
    "ClusterConfig",
    "Config",
    "DaemonConfig",
    "DatabaseConfig",
    "MysqlConfig",
    "PostgresqlConfig",
    "RedisConfig",
    "SetSpec",
    "SqliteConfig",
    "json_schema",
    "load",
    "parse_duration",
]

_IDENT, _HOST_ID, _SET_NAME, _CHARSET = IDENT, HOST_ID, SET_NAME, CHARSET


def _int_not_bool(value: Any) -> Any:
    # JSON true would otherwise pass as 1, and "5432" as 5432: a number must be a JSON
    # number, unless it came from ${ENV} expansion, where only strings exist.
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, Expanded) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, str):
        raise ValueError(f"expected an integer, not a string (write {value.strip()} without quotes)"
                         if value.strip().lstrip("-").isdigit() else "expected an integer, not a string")
    return value


def _bool_strict(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, Expanded) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError("expected true or false")


Int = Annotated[int, BeforeValidator(_int_not_bool)]
Bool = Annotated[bool, BeforeValidator(_bool_strict)]
Port = Annotated[int, BeforeValidator(_int_not_bool), Field(ge=1, le=65535)]
Duration = Annotated[float, BeforeValidator(lambda v: parse_duration(v) if isinstance(v, str) else _int_not_bool(v)), Field(gt=0),
                     # the schema says what the file may hold: seconds, or text such as "5m" or "1h30m"
                     WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                               {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?(ms|s|m|h|d)\s*)+$"}]})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, hide_input_in_errors=True)


def _lock_duration(value: Any) -> Any:
    # "off" (or 0) means wait as long as it takes: stored as 0 seconds.
    if isinstance(value, str):
        return 0.0 if value.strip().lower() == "off" else parse_duration(value)
    return _int_not_bool(value)


LockDuration = Annotated[float, BeforeValidator(_lock_duration), Field(ge=0)]
_LOCK_SETTINGS = ("lock_timeout", "lock_retries", "statement_timeout")


class _LockSettings(BaseModel):
    """Safe DDL: how long one attempt may wait for a lock, how often it is retried, how long one statement may run.

    On a database entry None means "as migrations says"; :func:`_build` fills them in.
    """

    lock_timeout: LockDuration | None = None
    lock_retries: Annotated[Int, Field(ge=0, le=1000)] | None = None
    statement_timeout: LockDuration | None = None


class _Server(_Strict):
    host_id: Annotated[str, Field(pattern=_HOST_ID)]
    ip: str = "127.0.0.1"
    user: str = ""
    password: SecretStr = SecretStr("")
    connection_timeout: Annotated[Int, Field(ge=1, le=600)] | None = None

    @property
    def timeout(self) -> int:
        return self.connection_timeout or defaults.CONNECT_TIMEOUT[self.driver]  # type: ignore[attr-defined]

    @property
    def dbid(self) -> str:
        return f"{self.driver}.{self.host_id}"  # type: ignore[attr-defined]


class PostgresqlConfig(_Server, _LockSettings):
    driver: ClassVar[str] = "postgresql"
    port: Port = 5432
    dbname: Annotated[str, Field(min_length=1)]
    schema_: Annotated[str, Field(alias="schema", min_length=1)] = "public"
    pooling: Literal["session", "transaction"] = "session"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    keepalive: Annotated[Int, Field(ge=0, le=7200)] = defaults.KEEPALIVE
    tcp_user_timeout: Annotated[Int, Field(ge=0, le=7200)] = defaults.TCP_USER_TIMEOUT

    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)


class MysqlConfig(_Server, _LockSettings):
    driver: ClassVar[str] = "mysql"
    port: Port = 3306
    dbname: Annotated[str, Field(min_length=1)]
    charset: Annotated[str, Field(pattern=_CHARSET)] = "utf8mb4"
    tls: Bool = False
    keepalive: Annotated[Int, Field(ge=0, le=7200)] = defaults.KEEPALIVE
    tcp_user_timeout: Annotated[Int, Field(ge=0, le=7200)] = defaults.TCP_USER_TIMEOUT
    online_alter: Bool | None = None  # None: as migrations.mysql_online_alter says


class RedisConfig(_Server):
    driver: ClassVar[str] = "redis"
    port: Port = 6379
    dbindex: Annotated[Int, Field(ge=0, le=1023)] = 0
    prefix: str = ""
    tls: Bool = False


class SqliteConfig(_Strict, _LockSettings):
    driver: ClassVar[str] = "sqlite"
    host_id: Annotated[str, Field(pattern=_HOST_ID)]
    path: Annotated[str, Field(min_length=1)]
    journal_mode: Literal["WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY", "OFF", "wal", "delete", "truncate", "persist", "memory", "off"] = "WAL"
    busy_timeout: Annotated[Int, Field(ge=0)] = defaults.SQLITE_BUSY_TIMEOUT

    @property
    def dbid(self) -> str:
        return f"sqlite.{self.host_id}"


DatabaseConfig = PostgresqlConfig | MysqlConfig | RedisConfig | SqliteConfig


class _Databases(_Strict):
    postgresql: list[PostgresqlConfig] = []
    mysql: list[MysqlConfig] = []
    redis: list[RedisConfig] = []
    sqlite: list[SqliteConfig] = []


class _Schedule(_Strict):
    every: Duration | None = None
    cron: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> _Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' or 'cron'")
        return self

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger  # only configs with a cron pay for it

            try:
                CronTrigger.from_crontab(value, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value


class _SetEntry(_Strict):
    targets: Annotated[list[str], Field(min_length=1)]
    schedule: _Schedule | None = None
    apply: Literal["auto", "report"] = "auto"
    path: str | None = None
    rollout: RolloutEntry | None = None
    until: str | None = None  # no target of the set gets a newer version (a fleet freeze)
    pins: dict[str, str] = {}  # dbid glob -> the version those targets stop at


class _Migrations(_Strict):
    directory: str | None = None
    source_directory: str | None = None  # the C Web Framework's name for it
    table: Annotated[str, Field(pattern=_IDENT, max_length=63)] = defaults.LEDGER_TABLE
    lock_timeout: LockDuration = defaults.LOCK_TIMEOUT
    lock_retries: Annotated[Int, Field(ge=0, le=1000)] = defaults.LOCK_RETRIES
    statement_timeout: LockDuration = 0.0
    mysql_online_alter: Bool = False  # add ALGORITHM=INPLACE, LOCK=NONE to MySQL ALTER TABLE: refused rather than copied
    sets: dict[Annotated[str, Field(pattern=_SET_NAME, max_length=100)], _SetEntry] = {}
    per_server: Annotated[Int, Field(ge=1, le=512)] | None = None  # targets of one server worked on at once
    inventory_refresh: Duration = defaults.INVENTORY_REFRESH


class HttpConfig(_Strict):
    host: str = defaults.HTTP_HOST
    port: Annotated[Int, Field(ge=0, le=65535)] = defaults.HTTP_PORT
    token: SecretStr | None = None


class ClusterConfig(_Strict):
    """``daemon.cluster``: replicas share the fleet through a control store (see orchestrator.cluster)."""

    store: Annotated[str, Field(pattern=r"^postgresql\.[A-Za-z0-9_-]+$")]
    lease: Duration = defaults.CLUSTER_LEASE


class DaemonConfig(_Strict):
    workers: Annotated[Int, Field(ge=1, le=512)] = defaults.WORKERS
    watch_interval: Duration = defaults.WATCH_INTERVAL
    retry_min: Duration = defaults.RETRY_MIN
    retry_max: Duration = defaults.RETRY_MAX
    http: HttpConfig = HttpConfig()
    cluster: ClusterConfig | None = None
    # Log lines of the daemon: "json" always, "auto" JSON when stderr is not a terminal (a container's
    # log collector), "text" the C tool's lines. --log-format on the command line wins.
    log_format: Literal["text", "json", "auto"] = "text"


class _File(_Strict):
    # The C Web Framework's config.json also holds main, servers, mimetypes, ...: a
    # section orchestrator does not read is ignored; the ones it reads stay strict.
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    databases: _Databases = _Databases()
    migrations: _Migrations = _Migrations()
    daemon: DaemonConfig = DaemonConfig()
    inventory: list[dict[str, Any]] = []  # validated and resolved by orchestrator.inventory
    notify: list[NotifyEntry] = []


_PATTERN_HELP = {
    _IDENT: "expected a SQL identifier: a letter or '_', then letters, digits or '_'",
    _HOST_ID: "expected letters, digits, '_' and '-' (no dots: the dbid is <driver>.<host_id>)",
    _SET_NAME: "expected letters, digits, '_', '.' and '-' (a set name is also a folder name)",
    _CHARSET: "expected a charset name such as utf8mb4",
}
def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read, expand and validate a config file; raise ConfigError on any fault."""
    path = Path(path)
    name = str(path)
    data = read_json(path, name)
    _check_sections(data, name)
    try:
        expanded = expand(data, dict(os.environ) if env is None else env, name)
        raw = _File.model_validate(expanded)
    except ValidationError as exc:
        raise one_line_error(exc, name, _File, _PATTERN_HELP) from None
    except RecursionError:  # parsed, but deeper than any config: a value nested hundreds of levels
        raise ConfigError(f"{name}: invalid config: nested too deeply") from None
    return _build(path.resolve(), name, raw)


def _check_sections(data: dict[str, Any], name: str) -> None:
    """Other sections are the application's, but a misspelt one of ours must not be ignored silently."""
    import difflib

    ours = list(_File.model_fields)
    for key in data:
        if key not in ours and (close := difflib.get_close_matches(str(key), ours, n=1, cutoff=0.8)):
            raise ConfigError(f"{name}: {key}: unknown field (did you mean {close[0]!r}?)")


def _build(path: Path, name: str, raw: _File) -> Config:
    folder = path.parent
    databases: dict[str, DatabaseConfig] = {}
    folders: dict[str, str] = {}  # resolved once per load (see resolve_file)
    for driver in DRIVERS:
        for i, entry in enumerate(getattr(raw.databases, driver)):
            if entry.dbid in databases:
                raise ConfigError(f"{name}: databases.{driver}[{i}].host_id: duplicate host_id {entry.host_id!r}")
            # Redis never waits for a lock (MULTI/EXEC); SQLite has no statement timeout.
            if not isinstance(entry, RedisConfig):
                for setting in ("lock_timeout", "lock_retries") if isinstance(entry, SqliteConfig) else _LOCK_SETTINGS:
                    if getattr(entry, setting) is None:
                        setattr(entry, setting, getattr(raw.migrations, setting))
                if isinstance(entry, MysqlConfig) and entry.online_alter is None:
                    entry.online_alter = raw.migrations.mysql_online_alter
            if isinstance(entry, SqliteConfig):
                entry.path = resolve_file(folder, entry.path, folders, f"{name}: databases.sqlite[{i}].path") if entry.path != ":memory:" else entry.path
            else:
                register_secret(entry.password.get_secret_value())
            databases[entry.dbid] = entry
    if raw.daemon.http.token is not None:
        register_secret(raw.daemon.http.token.get_secret_value())
    if raw.daemon.cluster is not None and raw.daemon.cluster.store not in databases:
        known = ", ".join(d for d in databases if d.startswith("postgresql.")) or "none"
        raise ConfigError(f"{name}: daemon.cluster.store: {raw.daemon.cluster.store!r} is not a configured PostgreSQL "
                          f"database (declared: {known})")

    sets_folder = sets_directory(folder, name, raw.migrations.directory, raw.migrations.source_directory)
    directory_field = "migrations.source_directory" if raw.migrations.source_directory is not None else "migrations.directory"
    sets: dict[str, SetSpec] = {}
    for set_name, entry in raw.migrations.sets.items():
        where = f"{name}: migrations.sets.{set_name}"
        set_folder, targets = bind_set(where, folder, entry.path, sets_folder / set_name, entry.targets, databases,
                                       directory_field, bool(raw.inventory))
        sets[set_name] = SetSpec(
            name=set_name,
            folder=set_folder,
            patterns=tuple(entry.targets),
            targets=tuple(targets),
            every=entry.schedule.every if entry.schedule else None,
            cron=entry.schedule.cron if entry.schedule else None,
            apply=entry.apply,
            rollout=rollout_of(entry.rollout, targets, where, bool(raw.inventory)),
            caps=caps_of(entry.until, entry.pins, targets, where, bool(raw.inventory)),
        )
    return Config(
        path=path,
        databases=databases,
        sets=sets,
        table=raw.migrations.table,
        sets_directory=sets_folder,
        daemon=raw.daemon,
        inventory=raw.inventory,
        inventory_refresh=raw.migrations.inventory_refresh,
        origin=dict.fromkeys(databases, "databases"),
        per_server=raw.migrations.per_server,
        workers=raw.daemon.workers if "workers" in raw.daemon.model_fields_set else None,
        notify=hooks_of(raw.notify),
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of config.json, generated from the models (``orchestrator config-schema``).

    Sections of the C Web Framework's config.json that orchestrator does not read
    stay allowed, as :func:`load` ignores them.
    """
    schema = _File.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orchestrator config.json"
    return schema
