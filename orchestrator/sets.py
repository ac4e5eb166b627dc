"""Migration sets: what to run, never where.

A set is a folder; each entry is one migration, ordered by name in byte order.
Its version is the entry name without extension. An entry is a ``.sql`` file
(any SQL engine), a ``.py`` file (``def up(db)``), a ``.redis`` command file, or
a folder holding one file per engine (``postgresql.sql``, ``mysql.sql``,
``sqlite.sql``, ``redis.redis``, ``up.py``, ``up.sql``). This module finds,
orders, checksums and parses those files; it imports no database client.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from orchestrator import defaults, directives
from orchestrator.errors import MigrationError, SetError
from orchestrator.pymigration import does_nothing, load_up
from orchestrator.redissplit import split_redis_args

__all__ = ["ENGINE_FILES", "Migration", "MigrationSet", "Script", "discover", "numeric_order_warning", "split_redis_args"]

log = logging.getLogger("sets")

_SUFFIXES = ((".up.sql", "sql"), (".sql", "sql"), (".py", "py"), (".redis", "redis"))
ENGINE_FILES = {
    "postgresql": ("postgresql.sql", "up.py", "up.sql"),
    "mysql": ("mysql.sql", "up.py", "up.sql"),
    "sqlite": ("sqlite.sql", "up.py", "up.sql"),
    "redis": ("redis.redis", "up.py"),
}
"""Files a per-engine folder may hold, in the order a target of that engine looks for them."""
_KIND_ENGINES = {"sql": ("postgresql", "mysql", "sqlite"), "py": ("postgresql", "mysql", "sqlite", "redis"), "redis": ("redis",)}
_DIRECTIVE = re.compile(r"^\s*(?:--|#)\s*orchestrator\s*:\s*(.*?)\s*$", re.I)
# "-- orchestrator no-transaction": a directive with its colon missing, not prose.
_DIRECTIVE_NO_COLON = re.compile(r"^\s*(?:--|#)\s*orchestrator\s+([a-z]+(?:[-_][a-z]+)+)\s*$", re.I)
C_MIGRATION_HINT = ("a C Web Framework migration cannot run here; convert it with 'orchestrator import-c SRC_DIR DEST_DIR' "
                    "(its dbquery SQL becomes a .sql file of the same version) or rewrite it as .sql or .py")
_CHUNK = 1 << 20
_T = TypeVar("_T")
_warned: set[tuple[str, str]] = set()
_inspect_cache: dict[tuple[str, int, int], tuple[str, bool]] = {}
_cache_guard = threading.Lock()


def _warn_once(message: str, folder: Path | str = "", into: list[str] | None = None) -> None:
    # The daemon rescans sets every few seconds; say each thing once (per set folder),
    # but keep it in the MigrationSet's warnings every time, for status and validate.
    if into is not None:
        into.append(message)
    key = (str(folder), message)
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


@dataclass(frozen=True)
class Script:
    """The one file of a migration that a given engine runs."""

    set_id: str
    version: str
    path: Path
    kind: str  # "sql" | "py" | "redis"
    label: str  # what messages call it: "s1/<version>.sql" or "s1/<version>/mysql.sql"
    # A Script is a snapshot taken once per discover(): a fleet run applying one file to a
    # thousand targets stats, reads and splits it once (each syscall also hands the GIL around).
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def _stat_key(self) -> tuple[str, int, int]:
        key: tuple[str, int, int] | None = self._memo.get("stat")
        if key is not None:
            return key
        try:
            st = self.path.stat()
        except OSError as exc:
            raise SetError(f"{self.label}: cannot read: {exc.strerror}") from None
        key = self._memo["stat"] = (str(self.path), st.st_mtime_ns, st.st_size)
        return key

    def inspect(self) -> tuple[str, bool]:
        """(sha256 of the content, no-transaction directive), checked without keeping the file in memory.

        Raises SetError for an unreadable or non-UTF-8 file or a misspelled directive.
        """
        hit: tuple[str, bool] | None = self._memo.get("inspect")
        if hit:
            return hit
        key = self._stat_key()
        with _cache_guard:
            hit = _inspect_cache.get(key)
        if hit:
            self._memo["inspect"] = hit
            return hit
        digest = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")()
        head = ""
        offset = 0
        try:
            with self.path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    try:
                        text = decoder.decode(chunk)
                    except UnicodeDecodeError as exc:
                        raise SetError(f"{self.label}: not UTF-8 (byte {offset + exc.start})") from None
                    if len(head) < 65536:
                        head += text[:65536]
                    offset += len(chunk)
                try:
                    decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    raise SetError(f"{self.label}: not UTF-8 (truncated character at the end)") from None
        except OSError as exc:
            raise SetError(f"{self.label}: cannot read: {exc.strerror}") from None
        result = (digest.hexdigest(), self._directives(head))
        with _cache_guard:
            _inspect_cache[key] = result
        self._memo["inspect"] = result
        return result

    def derived(self, key: str, compute: Callable[[], _T]) -> _T:
        """``compute()``, once per discovery for this key: what an engine makes of the file (it never changes within one)."""
        key = "derived:" + key
        if key in self._memo:
            hit: _T = self._memo[key]
            return hit
        value = self._memo[key] = compute()
        return value

    @property
    def size(self) -> int:
        """The file's size in bytes, as seen by this discovery."""
        return self._stat_key()[2]

    @property
    def checksum(self) -> str:
        return self.inspect()[0]

    @property
    def no_transaction(self) -> bool:
        return self.inspect()[1]

    @property
    def directives(self) -> directives.Directives:
        """The leading block's directives (no-transaction, lock-timeout, lock-retries, allow); checked by inspect()."""
        hit: directives.Directives | None = self._memo.get("directives")
        if hit is None:
            self.inspect()
            hit = self._memo["directives"] = directives.leading(self.text()[:65536], self.kind)[0]
        return hit

    def _directives(self, head: str) -> bool:
        no_transaction = False
        comment = "#" if self.kind in ("py", "redis") else "--"
        leading = True
        for number, line in enumerate(head.lstrip("\ufeff").splitlines(), 1):
            stripped = line.strip()
            if not stripped:
                continue
            if leading and not stripped.startswith(comment):
                leading = False  # directives live in the leading comment block only
            if "orchestrator" not in stripped.lower():
                continue
            m = _DIRECTIVE.match(stripped)
            if m and not leading and re.fullmatch(r"[a-z]+(?:[-_][a-z]+)*", m.group(1), re.I):
                raise SetError(f"{self.label}:{number}: directive {m.group(1)!r} after the first statement has no effect; "
                               "move it to the comment block at the top of the file")
            if m and leading:
                try:
                    no_transaction = directives.parse(m.group(1)).no_transaction or no_transaction
                except directives.DirectiveError as exc:
                    raise SetError(f"{self.label}:{number}: {exc}") from None
            elif leading and (bad := _DIRECTIVE_NO_COLON.match(stripped)):
                raise SetError(f"{self.label}:{number}: directive {bad.group(1)!r} lacks its colon; "
                               f"write '{comment} orchestrator: {bad.group(1)}'")
        return no_transaction

    def text(self) -> str:
        """The whole file as text (BOM removed); SetError if unreadable."""
        hit: str | None = self._memo.get("text")
        if hit is not None:
            return hit
        try:
            text = self.path.read_text(encoding="utf-8").lstrip("\ufeff")
            if self._stat_key()[2] <= _CHUNK:  # big files are streamed, never kept
                self._memo["text"] = text
            return text
        except UnicodeDecodeError as exc:
            raise SetError(f"{self.label}: not UTF-8 (byte {exc.start})") from None
        except OSError as exc:
            raise SetError(f"{self.label}: cannot read: {exc.strerror}") from None

    def statements(self, dialect: str) -> Iterator[Any]:
        """Statements of a SQL script in file order (see :mod:`orchestrator.sqlsplit`)."""
        from orchestrator.sqlsplit import split

        hit = self._memo.get("statements:" + dialect)
        if hit is not None:
            return iter(hit)
        if self._stat_key()[2] > _CHUNK:
            return split(self.text(), dialect)
        statements = self._memo["statements:" + dialect] = list(split(self.text(), dialect))
        return iter(statements)

    def prepare(self) -> None:
        """Check everything that can be checked before anything runs: readable, UTF-8, directives, Python syntax."""
        self.inspect()
        if self.kind == "redis":
            self.redis_commands()
        if self.kind == "py":
            try:
                compile(self.text(), str(self.path), "exec")
            except SyntaxError as exc:
                raise MigrationError(self.label, f"syntax error: {exc.msg}", line=exc.lineno) from None

    def emptiness(self, driver: str) -> str | None:
        """Why this file would change nothing on ``driver``, or None when it holds work.

        A SQL file with no statement (only comments or blanks), a ``.redis`` file with no
        command, or a Python ``up`` whose body is only ``pass``, ``...`` or a docstring:
        the untouched templates of ``orchestrator create`` are all of these. Such a file
        is never applied or recorded, so filling it in later runs the real change.
        """
        key = "empty:" + driver
        if key in self._memo:
            known: str | None = self._memo[key]
            return known
        reason = None
        if self.kind == "sql":
            if next(iter(self.statements(driver)), None) is None:
                reason = "holds no SQL statement (only comments or blanks)"
        elif self.kind == "redis":
            if not self.redis_commands():
                reason = "holds no Redis command (only comments or blanks)"
        elif self.kind == "py" and does_nothing(self.text(), self.path):
            reason = "its up(db) does nothing (only pass, ... or a docstring)"
        if reason is not None:
            reason += "; not applied or recorded until it holds the change (an untouched 'orchestrator create' template?)"
        self._memo[key] = reason
        return reason

    def load_up(self) -> Callable[[Any], Any]:
        """Compile a Python migration and return its ``up(db)`` (see :mod:`orchestrator.pymigration`)."""
        return load_up(self.label, self.path, self.text(), f"orchestrator_migration_{self.set_id}_{self.version}")

    def redis_commands(self) -> list[tuple[int, list[str | bytes]]]:
        """(line, argv) for each command of a ``.redis`` file, quoted as in redis-cli (see :func:`split_redis_args`).

        Blank lines and lines starting with ``#`` are skipped; MigrationError names
        the command number and line of a quoting fault. The list is shared by every
        target that runs the file: read it, never change it.
        """
        hit: list[tuple[int, list[str | bytes]]] | None = self._memo.get("redis_commands")
        if hit is not None:
            return hit
        commands: list[tuple[int, list[str | bytes]]] = []
        for number, line in enumerate(self.text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                argv = split_redis_args(stripped)
            except ValueError as exc:
                raise MigrationError(self.label, f"cannot parse command: {exc}", len(commands) + 1, number) from None
            commands.append((number, argv))
        if self._stat_key()[2] <= _CHUNK:  # as text(): big files are never kept
            self._memo["redis_commands"] = commands
        return commands


@dataclass(frozen=True)
class Migration:
    """One entry of a set: a single file, or a folder with one file per engine."""

    set_id: str
    version: str
    path: Path
    kind: str  # "sql" | "py" | "redis" | "folder" | "c" (a C Web Framework source: never run, see C_MIGRATION_HINT)
    files: tuple[str, ...] = ()  # for folders: the engine files present
    _scripts: dict[str, Script] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @property
    def label(self) -> str:
        return f"{self.set_id}/{self.path.name}"

    def script_for(self, driver: str) -> Script:
        """The file a target of ``driver`` runs; MigrationError if this migration has none for it."""
        script = self._scripts.get(driver)
        if script is not None:
            return script
        if self.kind == "c":
            raise MigrationError(self.label, C_MIGRATION_HINT)
        if self.kind != "folder":
            if driver not in _KIND_ENGINES[self.kind]:
                raise MigrationError(self.label, f"no file for {driver} ({self.kind} migrations run on {', '.join(_KIND_ENGINES[self.kind])})")
            script = self._scripts[driver] = Script(self.set_id, self.version, self.path, self.kind, self.label)
            return script
        for name in ENGINE_FILES[driver]:
            if name in self.files:
                kind = name.rsplit(".", 1)[1]
                script = self._scripts[driver] = Script(self.set_id, self.version, self.path / name, kind, f"{self.label}/{name}")
                return script
        raise MigrationError(self.label, f"no file for {driver} (has {', '.join(self.files)}; add {ENGINE_FILES[driver][0]} or {ENGINE_FILES[driver][1]})")


@dataclass(frozen=True)
class MigrationSet:
    """A set's migrations in apply order."""

    name: str
    folder: Path
    migrations: tuple[Migration, ...]
    warnings: tuple[str, ...] = field(default=())
    _index: dict[str, Migration] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @property
    def versions(self) -> list[str]:
        return [m.version for m in self.migrations]

    def get(self, version: str) -> Migration | None:
        index = self._index
        if not index and self.migrations:  # built on first use; status asks once per ledger row
            index.update((m.version, m) for m in self.migrations)
        return index.get(version)


_ENGINE_FILE_NAMES = frozenset(n for names in ENGINE_FILES.values() for n in names)


def _classify(entry: os.DirEntry[str], set_name: str, warnings: list[str]) -> tuple[str, str, tuple[str, ...]] | None:
    """(version, kind, files) for a usable entry; None (after a warning) otherwise."""
    name = entry.name
    where = f"{set_name}/{name}"
    folder = Path(entry.path).parent
    if entry.is_dir():
        if any(name.endswith(suffix) for suffix, _ in _SUFFIXES):
            raise SetError(f"{where}: is a folder where a migration file is expected; "
                           "a per-engine migration folder's name has no extension")
        files = set()
        try:
            children = sorted(os.scandir(entry.path), key=lambda c: c.name)
        except OSError as exc:
            raise SetError(f"{where}: cannot read migration folder: {exc.strerror}") from None
        for child in children:
            if child.name.startswith(".") or child.name == "__pycache__":
                continue
            if child.name in _ENGINE_FILE_NAMES:
                # An engine file that cannot be read must not fall back to up.sql silently.
                if not child.is_file():
                    kind = "a folder" if child.is_dir() else "not a readable file"
                    raise SetError(f"{where}/{child.name}: {kind}; an engine file must be a regular file")
                files.add(child.name)
            else:
                _warn_once(f"{where}/{child.name}: ignored (a migration folder holds {', '.join(sorted(_ENGINE_FILE_NAMES))})",
                           folder, warnings)
        if not files:
            raise SetError(f"{where}: migration folder holds no migration file")
        if "up.py" in files and "up.sql" in files:
            raise SetError(f"{where}: holds both up.py and up.sql; keep one generic file")
        return name, "folder", tuple(sorted(files))
    if name.endswith(".down.sql"):
        _warn_once(f"{where}: ignored (migrations are forward-only; down files are not run)", folder, warnings)
        return None
    for suffix, kind in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind, ()
    if name.endswith(".c") and len(name) > 2:
        # A C Web Framework migration keeps its place (and version) in the set: one the C
        # tool applied counts as applied; a pending one stops the run, saying how to port it.
        return name[:-2], "c", ()
    if name.startswith("lib") and name.endswith(".so"):  # what the C tool's build puts in ./migrations/<set>
        _warn_once(f"{where}: ignored (a compiled C migration cannot run here; convert its .c source with "
                   "'orchestrator import-c SRC_DIR DEST_DIR')", folder, warnings)
        return None
    _warn_once(f"{where}: ignored (unknown extension; use .sql, .py, .redis or a folder)", folder, warnings)
    return None


def discover(name: str, folder: Path) -> MigrationSet:
    """Read a set folder: its migrations in byte order of their names.

    Raises SetError for a missing folder, duplicate versions or an over-long version.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name.encode("utf-8", "surrogateescape"))
    except OSError as exc:
        raise SetError(f"{folder}: cannot read set {name!r}: {exc.strerror}") from None
    # Every name is checked before anything runs: a name that is not UTF-8 cannot be a version,
    # a ledger value or a log line, and must not stop a run after earlier migrations applied.
    for entry in entries:
        _check_name(name, entry.name)
        if entry.is_dir() and not entry.name.startswith("."):
            try:
                children = [child.name for child in os.scandir(entry.path)]
            except OSError:
                continue  # _classify reports an unreadable migration folder
            for child in children:
                _check_name(name, f"{entry.name}/{child}")
    migrations: list[Migration] = []
    seen: dict[str, str] = {}
    warnings: list[str] = []
    for entry in entries:
        if entry.name.startswith("."):
            _warn_once(f"{name}/{entry.name}: ignored (hidden)", folder, warnings)
            continue
        if entry.name == "__pycache__":
            continue
        classified = _classify(entry, name, warnings)
        if classified is None:
            continue
        version, kind, files = classified
        if version in seen:
            raise SetError(f"{name}/{entry.name}: duplicate version {version!r} (also {name}/{seen[version]})")
        if len(version) > defaults.VERSION_MAX_LENGTH:
            raise SetError(f"{name}/{entry.name}: version is longer than {defaults.VERSION_MAX_LENGTH} characters")
        seen[version] = entry.name
        migrations.append(Migration(name, version, Path(entry.path), kind, files))
    warning = numeric_order_warning(MigrationSet(name, folder, tuple(migrations)))
    if warning:
        _warn_once(warning, folder, warnings)
    return MigrationSet(name, folder, tuple(migrations), tuple(warnings))


def _check_name(set_name: str, name: str) -> None:
    """SetError for a file name that is not valid UTF-8 (os.scandir keeps its bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise SetError(f"{set_name}/{shown}: file name is not valid UTF-8; rename it (nothing was applied)") from None


_NUMERIC_PREFIX = re.compile(r"^(\d+)")


def numeric_order_warning(migration_set: MigrationSet) -> str | None:
    """A warning when numeric version prefixes are not zero-padded, so name order differs from numeric order."""
    numbers = []
    for m in migration_set.migrations:
        match = _NUMERIC_PREFIX.match(m.version)
        if not match:
            return None
        numbers.append(int(match.group(1)))
    for migration, number, previous in zip(migration_set.migrations[1:], numbers[1:], numbers, strict=False):
        if number < previous:
            return (
                f"{migration_set.name}: numeric version prefixes are not zero-padded, so name order is not numeric order "
                f"({migration.version!r} sorts after a larger number); rename them with zero padding or timestamps"
            )
    return None
