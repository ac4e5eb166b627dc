"""Reading one inventory source: its raw rows, not yet validated.

Each kind talks to its origin directly (a catalog through its driver, a file, a
command, an HTTP endpoint) and returns :class:`Row` objects: the driver, where
the row came from (``row 3``, ``postgresql[2]``) for messages, the fields the
source gave and, for ``databases``/``schemas``, the base fields of the listed
server's entry. Any failure of the source as a whole is one :class:`SourceError`
line, with secrets masked; the caller then keeps the source's last good list.
"""

from __future__ import annotations

import glob as globbing
import json
import math
import os
import sqlite3
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import DRIVERS, DatabaseConfig, MysqlConfig, PostgresqlConfig, SqliteConfig
from orchestrator.inventory.sources import Source
from orchestrator.redact import redact

__all__ = ["Row", "SourceError", "fetch"]

_MAX_BYTES = 64 * 1024 * 1024  # a runaway command or endpoint must not eat the daemon's memory


class SourceError(Exception):
    """The source as a whole could not be read (one line, secrets masked)."""


@dataclass
class Row:
    driver: str
    where: str
    fields: dict[str, Any]
    base: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # the row is unusable as it stands (not a JSON object)


def fetch(source: Source, catalogs: Mapping[str, DatabaseConfig], folder: Path) -> list[Row]:
    """Read ``source``; ``catalogs`` are the configured targets a sql/databases/schemas source may name."""
    try:
        if source.glob is not None:
            return _glob(source, folder)
        if source.file is not None:
            return _file(source, folder)
        if source.command is not None:
            return _command(source, folder)
        if source.url is not None:
            return _url(source)
        return _catalog(source, catalogs)
    except SourceError as exc:
        raise SourceError(redact(str(exc))) from None


# -- catalogs ------------------------------------------------------------------

_LIST_SQL = {
    "databases.postgresql": "SELECT datname FROM pg_database WHERE datname LIKE %s AND NOT datistemplate "
                            "AND datallowconn ORDER BY datname",
    "databases.mysql": "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s "
                       "AND schema_name NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') "
                       "ORDER BY schema_name",
    "schemas.postgresql": "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s AND nspname NOT LIKE 'pg\\_%%' "
                          "AND nspname <> 'information_schema' ORDER BY nspname",
}


def _catalog(source: Source, catalogs: Mapping[str, DatabaseConfig]) -> list[Row]:
    dbid = source.catalog or ""
    db = catalogs.get(dbid)
    if db is None:
        raise SourceError(f"{source.kind}.dbid: {dbid!r} is not a target declared in databases")
    if source.sql is not None:
        names, rows = _query(db, source.sql.query, (), source.timeout)
        out = []
        for i, values in enumerate(rows, 1):
            fields = {k: v for k, v in zip(names, values, strict=True) if v is not None}
            driver = fields.pop("driver", None) or source.driver  # a driver column lets one catalog list every engine
            out.append(Row(str(driver or ""), f"row {i}", fields,
                           problem=None if driver else "no driver: add a driver column or give the source a 'driver'"))
        return out
    listing = source.databases or source.schemas
    assert listing is not None
    _, rows = _query(db, _LIST_SQL[f"{source.kind}.{db.driver}"], (listing.like,), source.timeout)
    base = _entry_fields(db)
    name_field = "schema" if source.schemas is not None else "dbname"
    base.pop(name_field, None)
    return [Row(db.driver, f"{name_field} {r[0]!r}", {"host_id": r[0], name_field: r[0]}, base) for r in rows]


def _entry_fields(db: DatabaseConfig) -> dict[str, Any]:
    fields = db.model_dump(by_alias=True, exclude={"host_id"}, exclude_defaults=True)
    if "password" in fields:
        fields["password"] = db.password.get_secret_value()  # type: ignore[union-attr]
    return fields


def _query(db: DatabaseConfig, query: str, params: tuple[Any, ...], timeout: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of one read-only query on a configured SQL target."""
    where = db.dbid
    try:
        if isinstance(db, PostgresqlConfig):
            return _pg_query(db, query, params, timeout)
        if isinstance(db, MysqlConfig):
            return _mysql_query(db, query, params, timeout)
        if isinstance(db, SqliteConfig):
            return _sqlite_query(db, query, params, timeout)
    except SourceError:
        raise
    except Exception as exc:  # each driver's error tree: the message is all the caller needs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SourceError(f"{where}: {first}") from None
    raise SourceError(f"{where}: a {db.driver} target cannot be queried as a catalog")


def _pg_query(db: PostgresqlConfig, query: str, params: tuple[Any, ...], timeout: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    import psycopg

    kwargs: dict[str, Any] = {}
    if db.sslmode:
        kwargs["sslmode"] = db.sslmode
    if db.pooling == "transaction":
        kwargs["prepare_threshold"] = None
    with psycopg.connect(host=db.ip, port=db.port, user=db.user or None, password=db.password.get_secret_value() or None,
                         dbname=db.dbname, autocommit=True, connect_timeout=max(2, math.ceil(timeout)),
                         options=f"-c statement_timeout={int(timeout * 1000)} -c default_transaction_read_only=on",
                         **kwargs) as conn:
        cur = conn.execute(query, params or None)
        return [c.name for c in cur.description or ()], cur.fetchall()


def _mysql_query(db: MysqlConfig, query: str, params: tuple[Any, ...], timeout: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    import pymysql

    seconds = max(1, math.ceil(timeout))
    conn = pymysql.connect(host=db.ip, port=db.port, user=db.user or None, password=db.password.get_secret_value().encode(),
                           database=db.dbname, charset=db.charset, connect_timeout=seconds, read_timeout=seconds,
                           write_timeout=seconds, autocommit=True, ssl={} if db.tls else None,
                           init_command="SET SESSION TRANSACTION READ ONLY")
    try:
        with conn.cursor() as cur:
            cur.execute(query, params or None)
            return [c[0] for c in cur.description or ()], list(cur.fetchall())
    finally:
        conn.close()


def _sqlite_query(db: SqliteConfig, query: str, params: tuple[Any, ...], timeout: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    if not Path(db.path).is_file():
        raise SourceError(f"{db.dbid}: {db.path} does not exist")
    conn = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True, timeout=timeout)
    try:
        cur = conn.execute(query, params)
        return [c[0] for c in cur.description or ()], cur.fetchall()
    finally:
        conn.close()


# -- files, commands, URLs -------------------------------------------------------

def _glob(source: Source, folder: Path) -> list[Row]:
    pattern = os.path.join(folder, os.path.expanduser(source.glob or ""))
    paths = sorted(p for p in globbing.glob(pattern) if os.path.isfile(p))
    return [Row("sqlite", f"file {os.path.relpath(p, folder)!r}", {"host_id": Path(p).stem, "path": p}) for p in paths]


def _file(source: Source, folder: Path) -> list[Row]:
    path = folder / Path(source.file or "").expanduser()
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _shaped(data, str(path))


def _command(source: Source, folder: Path) -> list[Row]:
    argv = source.command or []
    shown = " ".join(argv[:1])
    try:
        done = subprocess.run(argv, cwd=folder, capture_output=True, timeout=source.timeout, stdin=subprocess.DEVNULL,
                              check=False)
    except FileNotFoundError:
        raise SourceError(f"command {shown!r} not found") from None
    except PermissionError:
        raise SourceError(f"command {shown!r} is not executable") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"command {shown!r} gave no answer within {source.timeout:g} s") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SourceError(f"command {shown!r} exited with {done.returncode}" + (f": {said[-1][:300]}" if said else ""))
    return _shaped(done.stdout, f"command {shown!r}")


def _url(source: Source) -> list[Row]:
    # Here, not at the top: urllib.request brings http.client and email in, on every command otherwise.
    import urllib.error
    import urllib.parse
    import urllib.request

    url = source.url or ""
    parts = urllib.parse.urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"  # no query, no userinfo
    request = urllib.request.Request(url, headers={"Accept": "application/json", **source.headers})
    try:
        with urllib.request.urlopen(request, timeout=source.timeout) as response:
            data = response.read(_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"{shown}: HTTP {exc.code} {exc.reason}") from None
    except TimeoutError:
        raise SourceError(f"{shown}: no answer within {source.timeout:g} s") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise SourceError(f"{shown}: no answer within {source.timeout:g} s") from None
        raise SourceError(f"{shown}: {reason}") from None
    return _shaped(data, shown)


def _shaped(data: bytes, where: str) -> list[Row]:
    """Rows of one JSON object in the shape of the databases section."""
    if len(data) > _MAX_BYTES:
        raise SourceError(f"{where}: more than {_MAX_BYTES // (1024 * 1024)} MB of output")
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{where}: invalid JSON: {getattr(exc, 'msg', exc)}") from None
    except RecursionError:
        raise SourceError(f"{where}: invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise SourceError(f'{where}: expected a JSON object such as {{"postgresql": [...], "sqlite": [...]}}')
    unknown = [k for k in doc if k not in DRIVERS]
    if unknown:
        raise SourceError(f"{where}: {unknown[0]!r} is not a driver (drivers: {', '.join(DRIVERS)})")
    rows: list[Row] = []
    for driver, entries in doc.items():
        if not isinstance(entries, list):
            raise SourceError(f"{where}: {driver}: expected a JSON list of entries")
        rows.extend(Row(driver, f"{driver}[{i}]", entry) if isinstance(entry, dict)
                    else Row(driver, f"{driver}[{i}]", {}, problem="expected a JSON object")
                    for i, entry in enumerate(entries))
    return rows
