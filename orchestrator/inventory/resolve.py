"""Turning inventory sources into targets, again and again, without losing any.

:class:`Inventory` reads every source (in parallel), merges each row over the
source's ``defaults`` (and, for ``databases``/``schemas``, over the listed
server's entry), validates it with the same entry models as config.json's
``databases`` and returns a :class:`Resolution`: static entries first, then
each source's in order. A bad row or a dbid given twice is one line in
``problems`` and is skipped; the rest still load. A source that fails keeps its
last good list (its status says so), so a catalog that is briefly down drops
nothing from the fleet. A discovered target that is gone from a source that
answered is kept in ``removed`` (with when) for ``removed_keep`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.config import DatabaseConfig, SqliteConfig
from orchestrator.errors import EXIT_UNREACHABLE, worst_exit_code
from orchestrator.inventory.fetch import Row, SourceError, fetch
from orchestrator.inventory.sources import MODELS, Source
from orchestrator.redact import redact, register_secret

__all__ = ["REMOVED_KEEP", "STATIC", "Inventory", "Removed", "Resolution", "SourceStatus"]

STATIC = "databases"
"""The origin name of entries written in config.json's ``databases`` section."""

REMOVED_KEEP = 3600.0
"""Seconds a target gone from its source is still shown as ``removed``."""


@dataclass(frozen=True)
class SourceStatus:
    """How one source answered at the last resolution."""

    name: str
    kind: str
    up: bool
    targets: int  # in its current list (the last good one while it is down)
    checked_at: float
    last_ok_at: float | None = None
    down_since: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Removed:
    dbid: str
    source: str
    since: float


@dataclass
class Resolution:
    """Every target (static and discovered) by dbid, where each came from, and what went wrong."""

    databases: dict[str, DatabaseConfig]
    origin: dict[str, str]
    problems: list[str] = field(default_factory=list)
    sources: list[SourceStatus] = field(default_factory=list)
    removed: dict[str, Removed] = field(default_factory=dict)

    @property
    def failed(self) -> list[SourceStatus]:
        return [s for s in self.sources if not s.up]

    def exit_code(self, code: int) -> int:
        """A command's exit code given this resolution: a source not read left targets out, as a target down (3)."""
        return worst_exit_code({code, EXIT_UNREACHABLE}) if self.failed else code


@dataclass
class _Listing:
    rows: list[tuple[str, DatabaseConfig | str]]  # (where in the source, entry or what is wrong with it), in order
    ok_at: float

    @property
    def targets(self) -> int:
        return sum(not isinstance(entry, str) for _, entry in self.rows)


class Inventory:
    """The declared sources plus each one's last good list; one per config, kept by the daemon across refreshes."""

    def __init__(self, sources: list[Source], folder: Path, clock: Callable[[], float] = time.time,
                 removed_keep: float = REMOVED_KEEP):
        self.sources = sources
        self.folder = folder
        self.clock = clock
        self.removed_keep = removed_keep
        self._last: dict[str, _Listing] = {}
        self._down_since: dict[str, float] = {}
        self._discovered: dict[str, str] = {}  # dbid -> source, as of the last resolution
        self._removed: dict[str, Removed] = {}

    def adopt(self, old: Inventory) -> None:
        """Carry an older instance's last good lists and removals over (a reloaded config, same source names)."""
        names = {s.name for s in self.sources}
        self._last = {k: v for k, v in old._last.items() if k in names}
        self._down_since = {k: v for k, v in old._down_since.items() if k in names}
        self._discovered = {k: v for k, v in old._discovered.items() if v in names}
        self._removed = dict(old._removed)

    def resolve(self, static: Mapping[str, DatabaseConfig]) -> Resolution:
        """Read every source now; ``static`` are config.json's own entries (also the catalogs sources may read)."""
        now = self.clock()
        outcomes = self._fetch_all(static)
        result = Resolution(databases=dict(static), origin=dict.fromkeys(static, STATIC))
        where_of = {dbid: f"databases.{db.driver}" for dbid, db in static.items()}
        answered: set[str] = set()
        for source, outcome in zip(self.sources, outcomes, strict=True):
            if isinstance(outcome, SourceError):
                listing = self._last.get(source.name)
                since = self._down_since.setdefault(source.name, now)
                result.sources.append(SourceStatus(
                    source.name, source.kind, False, listing.targets if listing else 0, now,
                    listing.ok_at if listing else None, since, f"inventory {source.name}: {outcome}"))
                if listing is None:
                    continue
            else:
                answered.add(source.name)
                listing = self._validate(source, outcome, now)
                self._last[source.name] = listing
                self._down_since.pop(source.name, None)
                result.sources.append(SourceStatus(source.name, source.kind, True, listing.targets, now, now))
            for where, entry in listing.rows:
                if isinstance(entry, str):
                    result.problems.append(entry)
                    continue
                dbid = entry.dbid
                if dbid in result.databases:
                    result.problems.append(f"inventory {source.name}: {where}: dbid {dbid} is also given by "
                                           f"{_named(result.origin[dbid], where_of[dbid])}; kept that one")
                    continue
                result.databases[dbid] = entry
                result.origin[dbid] = source.name
                where_of[dbid] = where
        self._track_removals(result, answered, now)
        return result

    # -- steps -------------------------------------------------------------------

    def _fetch_all(self, static: Mapping[str, DatabaseConfig]) -> list[list[Row] | SourceError]:
        def one(source: Source) -> list[Row] | SourceError:
            try:
                return fetch(source, static, self.folder)
            except SourceError as exc:
                return exc

        if len(self.sources) <= 1:
            return [one(s) for s in self.sources]
        with ThreadPoolExecutor(max_workers=min(8, len(self.sources)), thread_name_prefix="inventory") as pool:
            return list(pool.map(one, self.sources))

    def _validate(self, source: Source, rows: list[Row], now: float) -> _Listing:
        out: list[tuple[str, DatabaseConfig | str]] = []
        for row in rows:
            label = _label(row)
            if row.problem is not None:
                out.append((label, f"inventory {source.name}: {label}: {row.problem}; skipped"))
                continue
            model = MODELS.get(row.driver)
            if model is None:  # a sql source's driver column may name anything
                out.append((label, f"inventory {source.name}: {label}: unknown driver {row.driver!r} "
                                    f"(drivers: {', '.join(MODELS)}); skipped"))
                continue
            fields = {**row.base, **_defaults_for(source, row.driver), **row.fields}
            try:
                entry: Any = model.model_validate(fields)
            except ValidationError as exc:
                out.append((label, f"inventory {source.name}: {label}: {_row_error(exc)}; skipped"))
                continue
            if isinstance(entry, SqliteConfig):
                if entry.path != ":memory:":
                    entry.path = str((self.folder / Path(entry.path).expanduser()).resolve())
            else:
                register_secret(entry.password.get_secret_value())
            out.append((label, entry))
        return _Listing(out, now)

    def _track_removals(self, result: Resolution, answered: set[str], now: float) -> None:
        current = {dbid: origin for dbid, origin in result.origin.items() if origin != STATIC}
        for dbid, source in self._discovered.items():
            # Only a source that answered can say a target is gone; a failing one kept its list.
            if dbid not in current and source in answered and dbid not in self._removed:
                self._removed[dbid] = Removed(dbid, source, now)
        for dbid in list(self._removed):
            if dbid in result.databases or now - self._removed[dbid].since > self.removed_keep:
                del self._removed[dbid]
        self._discovered = current
        result.removed = dict(self._removed)


def _defaults_for(source: Source, driver: str) -> dict[str, Any]:
    if source.driver is not None and source.driver == driver:
        return source.defaults
    # file/command/url (and a sql source with a driver column) mix drivers: a default applies to the entries whose driver has that field
    fields = MODELS[driver].model_fields
    known = {f.alias or n for n, f in fields.items()}
    return {k: v for k, v in source.defaults.items() if k in known}


def _label(row: Row) -> str:
    host = row.fields.get("host_id")
    if isinstance(host, str) and row.where.startswith(("row ", "postgresql[", "mysql[", "redis[", "sqlite[")):
        return f"{row.where} (host_id {host!r})"
    return row.where


def _named(origin: str, where: str) -> str:
    return where if origin == STATIC else f"inventory {origin} {where}"


def _row_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(row)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "string_pattern_mismatch" and loc == "host_id":
        msg = "expected letters, digits, '_' and '-' (no dots: the dbid is <driver>.<host_id>)"
    elif err["type"] in ("string_type", "int_type", "bool_type"):
        msg = {"string_type": "expected a string", "int_type": "expected an integer", "bool_type": "expected true or false"}[err["type"]]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return redact(f"{loc}: {msg}{more}")
