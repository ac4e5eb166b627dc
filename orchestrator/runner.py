"""One set on one target: the one place where "what to run" meets "where".

``run`` reads the target's ledger, works out what is pending, and applies it in
name order under the (target, set) lock, stopping at the first failure. The CLI's
``up``, fleet catch-up and the daemon all call it. ``baseline`` and ``resolve``
write the ledger without running migrations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from orchestrator import defaults
from orchestrator.errors import ConfigError, FailedState, MigrationError
from orchestrator.sets import Migration, MigrationSet, Script
from orchestrator.targets import Applied, LedgerRow, Target

__all__ = ["RunReport", "baseline", "blocking_row", "pending_migrations", "repair", "resolve", "run"]

log = logging.getLogger("migrations")


@dataclass
class RunReport:
    """What one run did on one (set, target)."""

    set_id: str
    dbid: str
    applied: list[Applied] = field(default_factory=list)
    already: int = 0
    pending: list[str] = field(default_factory=list)  # still pending when the run ended
    out_of_order: list[str] = field(default_factory=list)
    duration_ms: int = 0


def pending_migrations(migration_set: MigrationSet, rows: dict[str, LedgerRow]) -> tuple[list[Migration], list[str]]:
    """(pending migrations in name order, versions among them older than the newest applied)."""
    pending = [m for m in migration_set.migrations if m.version not in rows]
    applied_here = [v for v in rows if migration_set.get(v) is not None]
    newest = max(applied_here) if applied_here else None
    out_of_order = [m.version for m in pending if newest is not None and m.version < newest]
    return pending, out_of_order


def blocking_row(rows: dict[str, LedgerRow]) -> LedgerRow | None:
    """A ``failed`` or ``running`` row (engines without transactional DDL), which blocks the set."""
    for row in rows.values():
        if row.status != "applied":
            return row
    return None


def _raise_if_blocked(target: Target, set_id: str, rows: dict[str, LedgerRow], config_name: str) -> None:
    row = blocking_row(rows)
    if row is None:
        return
    what = "failed" if row.status == "failed" else "was interrupted (state running)"
    where = f" at statement {row.statement}" if row.statement else ""
    error = f": {row.error}" if row.error else ""
    raise FailedState(
        f"{target.dbid}/{set_id}: {row.version} {what}{where}{error}; fix the database by hand, then run "
        f"'orchestrator resolve {config_name} {target.dbid} {set_id} {row.version} --retry|--mark-applied|--forget'"
    )


def run(
    target: Target,
    migration_set: MigrationSet,
    limit: int | None = None,
    lock_wait: float = defaults.LOCK_WAIT,
    config_name: str = "CONFIG",
    prefix: str = "",
    should_stop: Callable[[], bool] | None = None,
    on_applied: Callable[[Applied], None] | None = None,
) -> RunReport:
    """Apply up to ``limit`` pending migrations (all when None) to a connected target.

    ``should_stop`` is asked before each migration: once it returns True the run
    starts no further migration (the daemon's graceful stop) and returns.
    ``on_applied`` is told of each migration as soon as the target has committed
    and recorded it, so a caller knows what was applied even when a later one raises.
    Raises MigrationError at the first failure (what was applied before it stays
    applied and recorded), FailedState, LockHeld or TargetUnreachable.
    """
    started = time.monotonic()
    set_id = migration_set.name
    report = RunReport(set_id, target.dbid)
    rows = target.applied(set_id)
    # A running row may be the lock holder's, still at work: only under the lock does it mean "interrupted".
    blocker = blocking_row(rows)
    if blocker is not None and blocker.status != "running":
        _raise_if_blocked(target, set_id, rows, config_name)
    _log_applied(migration_set, rows, prefix)
    pending, out_of_order = pending_migrations(migration_set, rows)
    report.already = len(migration_set.migrations) - len(pending)
    if not pending and blocker is None:
        log.info("%sno new migrations", prefix)
        report.duration_ms = int((time.monotonic() - started) * 1000)
        return report
    scripts = _checked_scripts(pending if limit is None else pending[:limit], target.driver)
    with target.lock(set_id, lock_wait):
        target.ensure_ledger()
        rows = target.applied(set_id)  # again, under the lock: another runner may have been first
        _raise_if_blocked(target, set_id, rows, config_name)
        _, out_of_order = pending_migrations(migration_set, rows)
        report.out_of_order = out_of_order
        for script in scripts:
            if script.version in rows:
                log.debug("%sskipping already applied: %s", prefix, script.version)
                continue
            if should_stop is not None and should_stop():
                log.info("%sstopping before %s: shutting down", prefix, script.version)
                break
            if script.version in out_of_order:
                log.warning("%sapplying out of order: %s is older than the newest applied migration", prefix, script.version)
            log.info("%sapplying: %s", prefix, script.version)
            result = target.apply(script)
            if result is None:
                log.info("%sskipping %s: another runner applied it meanwhile", prefix, script.version)
                rows = target.applied(set_id)  # it may have applied more: skip those without trying them
                continue
            report.applied.append(result)
            noun = "statement" if result.statements == 1 else "statements"
            log.info("%sapplied %s (%d %s, %d ms)", prefix, result.version, result.statements, noun, result.duration_ms)
            if on_applied is not None:
                on_applied(result)
    done = {a.version for a in report.applied}
    report.pending = [m.version for m in pending if m.version not in done and m.version not in rows]
    report.duration_ms = int((time.monotonic() - started) * 1000)
    return report


def _log_applied(migration_set: MigrationSet, rows: dict[str, LedgerRow], prefix: str) -> None:
    for m in migration_set.migrations:
        if m.version in rows:
            log.debug("%sskipping already applied: %s", prefix, m.version)


def _checked_scripts(selected: list[Migration], driver: str) -> list[Script]:
    """Every file this run will touch, checked before the first one runs, in name order (the first bad one is reported)."""
    scripts = []
    for m in selected:
        script = m.script_for(driver)
        script.prepare()
        empty = script.emptiness(driver)
        if empty is not None:
            raise MigrationError(script.label, empty)
        scripts.append(script)
    return scripts


def baseline(target: Target, migration_set: MigrationSet, version: str, lock_wait: float = defaults.LOCK_WAIT) -> list[str]:
    """Record every migration up to and including ``version`` as applied, without running it."""
    if migration_set.get(version) is None:
        raise ConfigError(f"{migration_set.name}: no migration with version {version!r}")
    recorded = []
    with target.lock(migration_set.name, lock_wait):
        target.ensure_ledger()
        rows = target.applied(migration_set.name)
        for m in migration_set.migrations:
            if m.version > version:
                break
            if m.version in rows:
                continue
            try:
                checksum = m.script_for(target.driver).checksum
            except MigrationError:
                checksum = None  # no file for this engine: recorded all the same, as asked
            target.record(migration_set.name, m.version, checksum)
            recorded.append(m.version)
            log.info("baselined: %s", m.version)
    return recorded


def resolve(target: Target, migration_set: MigrationSet, version: str, action: str, lock_wait: float = defaults.LOCK_WAIT,
            config_name: str = "CONFIG") -> RunReport | None:
    """Clear a failed or interrupted row: ``retry`` (forget it and apply again), ``mark-applied`` or ``forget``."""
    set_id = migration_set.name
    with target.lock(set_id, lock_wait):
        target.ensure_ledger()
        rows = target.applied(set_id)
        row = rows.get(version)
        if row is None:
            raise ConfigError(f"{target.dbid}/{set_id}: {version!r} is not in the ledger; nothing to resolve")
        if action != "forget" and row.status == "applied":
            raise ConfigError(f"{target.dbid}/{set_id}: {version} is applied, not failed; nothing to resolve")
        # Everything that can refuse is checked before the row is touched.
        migration = migration_set.get(version)
        if action == "retry" and migration is None:
            raise ConfigError(f"{set_id}: {version!r} is not in the set; use --forget")
        checksum = migration.script_for(target.driver).checksum if migration and action != "forget" else None
        target.forget(set_id, version)
        if action == "mark-applied":
            target.record(set_id, version, checksum)
            log.info("marked applied: %s", version)
        else:
            log.info("forgot: %s", version)
    if action == "retry" and migration is not None:  # checked above: a retry always has its migration
        # Exactly this version, even if an older out-of-order file is pending too.
        only = replace(migration_set, migrations=(migration,))
        return run(target, only, lock_wait=lock_wait, config_name=config_name)
    return None


def repair(target: Target, migration_set: MigrationSet, version: str, lock_wait: float = defaults.LOCK_WAIT) -> str:
    """Accept the file's current checksum for an applied version after a reviewed, harmless edit (Flyway's repair).

    Only the row's checksum changes; its ``applied_by`` gains who accepted it and when. Returns that note.
    """
    import getpass
    import socket
    from datetime import UTC, datetime

    set_id = migration_set.name
    migration = migration_set.get(version)
    if migration is None:
        raise ConfigError(f"{set_id}: {version!r} is not in the set; nothing to repair")
    checksum = migration.script_for(target.driver).checksum
    with target.lock(set_id, lock_wait):
        row = target.applied(set_id).get(version)
        if row is None or row.status != "applied":
            state = "not in the ledger" if row is None else f"{row.status}, not applied (see 'orchestrator resolve')"
            raise ConfigError(f"{target.dbid}/{set_id}: {version} is {state}; nothing to repair")
        if row.checksum == checksum:
            log.info("%s/%s: %s already has the file's checksum; nothing changed", target.dbid, set_id, version)
            return row.applied_by or ""
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        note = f"{row.applied_by or 'unknown'}; checksum {(row.checksum or 'none')[:12]} -> {checksum[:12]} accepted by " \
               f"{getpass.getuser()}@{socket.gethostname()} at {when}"
        if not target.accept_checksum(set_id, version, checksum, note):
            raise ConfigError(f"{target.dbid}/{set_id}: {version} left the ledger meanwhile; nothing repaired")
        log.info("%s/%s: %s now carries the file's checksum (%s)", target.dbid, set_id, version, note)
        return note
