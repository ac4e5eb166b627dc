"""Inventory sources as config.json declares them (the ``inventory`` list).

Each source has a ``name``, usually a ``driver``, ``defaults`` (fields every
entry it produces gets; a value from the source wins) and exactly one kind:
``sql`` (rows of a catalog query), ``databases`` / ``schemas`` (names on a
server matching a LIKE pattern), ``glob`` (SQLite files), or ``file`` /
``command`` / ``url`` (one JSON object in the shape of the ``databases``
section). A fault in a declaration is one :class:`ConfigError` line naming the
JSON path; faults in what a source produces are found later, at resolution.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.config import (
    DRIVERS,
    Duration,
    MysqlConfig,
    PostgresqlConfig,
    RedisConfig,
    SqliteConfig,
)
from orchestrator.errors import ConfigError
from orchestrator.redact import register_secret

__all__ = ["DEFAULT_TIMEOUT", "KINDS", "MODELS", "Source", "parse_sources"]

KINDS = ("sql", "databases", "schemas", "glob", "file", "command", "url")
MODELS: dict[str, type[BaseModel]] = {
    "postgresql": PostgresqlConfig, "mysql": MysqlConfig, "redis": RedisConfig, "sqlite": SqliteConfig}
DEFAULT_TIMEOUT = 10.0
"""Seconds a source may take (connect plus query, command run, HTTP response) before it counts as failed."""

_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
_SQL_DRIVERS = ("postgresql", "mysql", "sqlite")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class CatalogQuery(_Strict):
    dbid: Annotated[str, Field(min_length=3)]
    query: Annotated[str, Field(min_length=1)]


class ServerListing(_Strict):
    dbid: Annotated[str, Field(min_length=3)]
    like: Annotated[str, Field(min_length=1)] = "%"


class Source(_Strict):
    """One declared source; ``kind`` says which of the exclusive fields is set."""

    name: Annotated[str, Field(pattern=_NAME, max_length=100)]
    driver: Literal["postgresql", "mysql", "redis", "sqlite"] | None = None
    defaults: dict[str, Any] = {}
    timeout: Duration = DEFAULT_TIMEOUT
    sql: CatalogQuery | None = None
    databases: ServerListing | None = None
    schemas: ServerListing | None = None
    glob: Annotated[str, Field(min_length=1)] | None = None
    file: Annotated[str, Field(min_length=1)] | None = None
    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    headers: dict[str, str] = {}

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def catalog(self) -> str | None:
        """The configured target this source reads (sql, databases, schemas), else None."""
        spec = self.sql or self.databases or self.schemas
        return spec.dbid if spec is not None else None

    @model_validator(mode="after")
    def _shape(self) -> Source:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)}" + (f" (got {', '.join(given)})" if given else ""))
        kind = given[0]
        if self.headers and kind != "url":
            raise ValueError("'headers' only applies to a url source")
        if kind in ("file", "command", "url"):
            if self.driver is not None:
                raise ValueError(f"a {kind} source needs no 'driver': its JSON names the driver of each list")
        elif kind == "sql":
            _check_dbid(self.sql.dbid, _SQL_DRIVERS, "sql.dbid")  # type: ignore[union-attr]
        elif kind == "glob":
            self._implied("sqlite")
        else:
            allowed = ("postgresql", "mysql") if kind == "databases" else ("postgresql",)
            dbid = self.catalog or ""
            _check_dbid(dbid, allowed, f"{kind}.dbid")
            self._implied(dbid.partition(".")[0])
        self._check_defaults()
        return self

    def _implied(self, driver: str) -> None:
        if self.driver not in (None, driver):
            raise ValueError(f"a {self.kind} source produces {driver} targets; drop 'driver' or set it to {driver!r}")
        self.driver = driver  # type: ignore[assignment]  # checked against the dbid above

    def _check_defaults(self) -> None:
        drivers = [self.driver] if self.driver else list(DRIVERS)
        known = {f.alias or n for d in drivers for n, f in MODELS[d].model_fields.items()}
        for key, value in self.defaults.items():
            if key == "host_id":
                raise ValueError("defaults.host_id: each target's host_id comes from the source, not from defaults")
            if key not in known:
                raise ValueError(f"defaults.{key}: not a field of a {' or '.join(drivers)} entry")
            if key == "password" and isinstance(value, str):
                register_secret(value)


def _check_dbid(dbid: str, allowed: tuple[str, ...], where: str) -> None:
    driver, dot, host = dbid.partition(".")
    if not dot or not host:
        raise ValueError(f"{where}: bad dbid {dbid!r}: expected <driver>.<host_id>, e.g. postgresql.catalog")
    if driver not in allowed:
        raise ValueError(f"{where}: {dbid!r} is a {driver} target; this source reads {' or '.join(allowed)}")


def parse_sources(raw: Any, name: str) -> list[Source]:
    """Validate config.json's ``inventory`` value; one ConfigError line on the first fault."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{name}: inventory: expected a JSON list of sources")
    sources: list[Source] = []
    for i, item in enumerate(raw):
        where = f"{name}: inventory[{i}]"
        headers = item.get("headers") if isinstance(item, dict) else None
        for value in headers.values() if isinstance(headers, dict) else ():
            if isinstance(value, str):  # tokens ride in headers: none of them is ever printed
                register_secret(value)
        try:
            source = Source.model_validate(item)
        except ValidationError as exc:
            raise ConfigError(f"{where}{_error_text(exc)}") from None
        if any(s.name == source.name for s in sources):
            raise ConfigError(f"{where}.name: source name {source.name!r} is used twice; names must be unique")
        sources.append(source)
    return sources


def _error_text(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "literal_error" and err["loc"] == ("driver",):
        msg = f"unknown driver (drivers: {', '.join(DRIVERS)})"
    return f"{loc}: {msg}"
