"""``orchestrator wait``: block until the targets accept connections (dbmate's ``wait``).

For containers started together: the migration job waits for its databases
instead of failing on the first refused connection. Each selected target is
connected read-only (as ``status`` does: nothing is created, no ledger is read)
and closed again, retried every ``interval`` until it answers or ``timeout``
runs out. Targets are tried side by side, so the wait is as long as the slowest
one, not the sum.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError, TargetUnreachable
from orchestrator.targets import open_target

if TYPE_CHECKING:
    from orchestrator.config import Config

__all__ = ["select_targets", "wait_for"]

log = logging.getLogger("wait")

_MAX_THREADS = 64  # connection attempts mostly wait on the network: one thread per target, up to this many


def select_targets(config: Config, pattern: str | None) -> list[str]:
    """The dbids ``pattern`` (a glob, e.g. ``postgresql.*``) selects, in config order; ConfigError when none."""
    dbids = [dbid for dbid in config.databases if pattern is None or fnmatch.fnmatchcase(dbid, pattern)]
    if not dbids:
        known = ", ".join(config.databases) or "none"
        raise ConfigError(f"{config.path.name}: no target matches {pattern!r} (declared: {known})" if pattern
                          else f"{config.path.name}: no targets declared")
    return dbids


def _wait_one(config: Config, dbid: str, deadline: float, interval: float) -> str | None:
    """None once ``dbid`` accepted a connection; the last reason when the deadline passed first."""
    attempts = 0
    while True:
        attempts += 1
        target = open_target(config.database(dbid), config.table)
        try:
            target.connect(readonly=True)
        except TargetUnreachable as exc:
            reason = str(exc)
            if time.monotonic() + interval >= deadline:
                return reason
            log.debug("%s: not yet (%s); trying again in %.1fs", dbid, reason, interval)
            time.sleep(interval)
            continue
        finally:
            target.close()
        log.info("%s: accepts connections" + (f" (after {attempts} attempts)" if attempts > 1 else ""), dbid)
        return None


def wait_for(config: Config, pattern: str | None = None, timeout: float = 60.0, interval: float = 1.0) -> dict[str, str]:
    """Wait until every selected target accepts a connection; {dbid: last reason} of those that never did."""
    dbids = select_targets(config, pattern)
    deadline = time.monotonic() + timeout
    workers = min(len(dbids), _MAX_THREADS)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orchestrator-wait") as pool:
        outcomes = dict(zip(dbids, pool.map(lambda dbid: _wait_one(config, dbid, deadline, interval), dbids), strict=True))
    return {dbid: reason for dbid, reason in outcomes.items() if reason is not None}
