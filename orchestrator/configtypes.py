"""The validated config as the rest of the code sees it, and the rules both config readers share.

Nothing here imports pydantic: :mod:`orchestrator.config` (the models, every
field) and :mod:`orchestrator.plainconfig` (a plain config read without them, for
a quick start) both end in a :class:`Config`, and bind sets to targets with the
same :func:`bind_set`.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config import DaemonConfig, DatabaseConfig
    from orchestrator.notify import Hook
    from orchestrator.rollout import Rollout

__all__ = [
    "CHARSET",
    "DRIVERS",
    "HOST_ID",
    "IDENT",
    "SECTIONS",
    "SET_NAME",
    "Caps",
    "Config",
    "SetSpec",
    "bind_set",
    "check_dbid",
    "sets_directory",
]

DRIVERS = ("postgresql", "mysql", "redis", "sqlite")
SECTIONS = ("databases", "migrations", "daemon", "inventory", "notify")  # of config.json that orchestrator reads
IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
HOST_ID = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
SET_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
CHARSET = r"^[A-Za-z0-9_]+$"
C_SETS_DIRECTORY = "migrations"  # under the working directory: the C tool reads ./migrations/<set>


@dataclass(frozen=True)
class Caps:
    """``until`` (no target gets a newer version) and ``pins`` ((dbid glob, version): those targets stop there)."""

    until: str | None = None
    pins: tuple[tuple[str, str], ...] = ()

    def cap_for(self, dbid: str) -> str | None:
        """The newest version a target may have (the lowest of the cap and its matching pins), None: no cap."""
        caps = [v for pattern, v in self.pins if fnmatch.fnmatchcase(dbid, pattern)]
        if self.until is not None:
            caps.append(self.until)
        return min(caps) if caps else None

    def __bool__(self) -> bool:
        return self.until is not None or bool(self.pins)


@dataclass(frozen=True)
class SetSpec:
    """One migration set bound to its targets."""

    name: str
    folder: Path
    patterns: tuple[str, ...]
    targets: tuple[str, ...]
    every: float | None = None
    cron: str | None = None
    apply: str = "auto"
    rollout: Rollout | None = None  # waves, failure budget, soak
    caps: Caps = field(default_factory=Caps)  # until and pins


@dataclass
class Config:
    """A validated config.json: targets by dbid, sets by name, daemon settings."""

    path: Path
    databases: dict[str, DatabaseConfig]
    sets: dict[str, SetSpec]
    table: str
    sets_directory: Path
    daemon: DaemonConfig
    per_server: int | None = None  # migrations.per_server
    workers: int | None = None  # daemon.workers as written in the file; None: not written (each caller's default)
    notify: tuple[Hook, ...] = ()
    inventory: list[dict[str, Any]] = field(default_factory=list)  # source declarations, as written
    inventory_refresh: float = defaults.INVENTORY_REFRESH
    origin: dict[str, str] = field(default_factory=dict)  # dbid -> "databases" or the inventory source that gave it

    @property
    def folder(self) -> Path:
        return self.path.parent

    def database(self, dbid: str) -> DatabaseConfig:
        """The target named ``dbid``; a ConfigError naming the known ones otherwise."""
        try:
            return self.databases[dbid]
        except KeyError:
            known = ", ".join(sorted(self.databases)) or "none"
            if any(c in dbid for c in "*?["):
                raise ConfigError(f"{dbid!r}: a single target is expected here, not a pattern (declared: {known})") from None
            check_dbid(dbid, "")
            raise ConfigError(f"{self.path.name}: unknown target {dbid!r} (declared: {known})") from None

    def with_databases(self, databases: dict[str, DatabaseConfig], origin: dict[str, str]) -> Config:
        """This config over another set of targets (static plus discovered), each set bound again by its patterns."""
        sets = {}
        for name, spec in self.sets.items():
            targets: list[str] = []
            for pattern in spec.patterns:
                targets.extend(d for d in sorted(databases) if fnmatch.fnmatchcase(d, pattern) and d not in targets)
            sets[name] = replace(spec, targets=tuple(targets))
        return replace(self, databases=databases, sets=sets, origin=origin)

    def bindings(self, set_name: str | None = None, target_pattern: str | None = None) -> list[tuple[SetSpec, str]]:
        """(set, dbid) pairs, optionally filtered by set name and a dbid glob."""
        if set_name is not None and set_name not in self.sets:
            raise ConfigError(f"{self.path.name}: unknown set {set_name!r} (configured: {', '.join(sorted(self.sets)) or 'none'})")
        pairs = []
        for spec in self.sets.values():
            if set_name is not None and spec.name != set_name:
                continue
            for dbid in spec.targets:
                if target_pattern is None or fnmatch.fnmatchcase(dbid, target_pattern):
                    pairs.append((spec, dbid))
        return pairs


def check_dbid(dbid: str, where: str) -> None:
    driver, dot, host = dbid.partition(".")
    prefix = f"{where}: " if where else ""
    if not dot or not host or not driver:
        raise ConfigError(f"{prefix}bad dbid {dbid!r}: expected <driver>.<host_id>, e.g. postgresql.p1")
    # A target pattern may glob the driver too ("*.main"), as long as it can match one.
    if driver not in DRIVERS and not any(fnmatch.fnmatchcase(d, driver) for d in DRIVERS):
        raise ConfigError(f"{prefix}unknown driver {driver!r} in {dbid!r} (drivers: {', '.join(DRIVERS)})")


def sets_directory(folder: Path, name: str, directory: str | None, source_directory: str | None) -> Path:
    """Where the sets live: ``directory``, or its C Web Framework alias ``source_directory``.

    With neither: ``sets`` beside the config if that folder exists, else ``migrations``
    under the working directory, where the C tool looks (``./migrations/<set>``).
    """
    if directory is not None and source_directory is not None:
        raise ConfigError(f"{name}: migrations.source_directory: give either 'directory' or 'source_directory' "
                          "(the C Web Framework's name for it), not both")
    given = directory if directory is not None else source_directory
    if given is not None:
        return (folder / Path(given).expanduser()).resolve()
    beside = folder / defaults.SETS_DIRECTORY
    return beside if beside.is_dir() else (Path.cwd() / C_SETS_DIRECTORY).resolve()


def bind_set(where: str, config_folder: Path, path: str | None, in_sets_directory: Path, patterns: list[str],
             databases: dict[str, Any], directory_field: str, discovered: bool) -> tuple[Path, list[str]]:
    """A set's folder (``path`` from the config's folder, else ``in_sets_directory``) and its targets.

    ``where`` is ``<file>: migrations.sets.<name>``. A missing folder, a bad dbid or a
    pattern that matches no declared database (unless an inventory may add one later,
    ``discovered``) is a ConfigError.
    """
    set_folder = (config_folder / Path(path).expanduser()).resolve() if path else in_sets_directory
    if not set_folder.is_dir():
        problem = "is not a folder" if set_folder.exists() else "does not exist"
        raise ConfigError(f"{where}{'.path' if path else ''}: set folder {set_folder} {problem}; "
                          f"create it or fix {'the path' if path else directory_field}")
    targets: list[str] = []
    for i, pattern in enumerate(patterns):
        check_dbid(pattern, f"{where}.targets[{i}]")
        matched = sorted(d for d in databases if fnmatch.fnmatchcase(d, pattern))
        if not matched and not discovered:  # with an inventory, the match may come at resolution
            raise ConfigError(f"{where}.targets[{i}]: {pattern!r} matches no declared database")
        targets.extend(d for d in matched if d not in targets)
    return set_folder, targets


def resolve_file(folder: Path, given: str, folders: dict[str, str], where: str) -> str:
    """``str((folder / Path(given).expanduser()).resolve())``, for thousands of files in a few folders.

    A fleet's SQLite entries are often a thousand files in one folder: the folder is
    resolved once per config load (``folders`` holds what this load resolved; each
    resolution is an lstat per path component), and each file costs one lstat to
    see whether it is a symlink itself. Anything unusual takes the general path. A
    symlink loop is a ConfigError naming ``where`` (the file and JSON path).
    """
    joined = os.path.join(folder, os.path.expanduser(given))
    parent, name = os.path.split(joined)
    try:
        if name in ("", ".", "..") or "//" in joined or "/./" in joined or not os.path.isabs(joined):
            return str(Path(joined).resolve())
        try:
            if stat.S_ISLNK(os.lstat(joined).st_mode):
                return str(Path(joined).resolve())
        except OSError:
            pass  # not there yet: resolved as its folder is
        if parent not in folders:
            folders[parent] = str(Path(parent).resolve())
    except RuntimeError:  # pathlib's word for a symlink loop
        raise ConfigError(f"{where}: {given!r} cannot be resolved: a symlink loop") from None
    return os.path.join(folders[parent], name)
