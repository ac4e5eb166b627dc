"""The dirty-flag sequence for migrations that cannot commit with their ledger entry.

MySQL (DDL commits implicitly), PostgreSQL's no-transaction files behind a
transaction pooler, and Redis' no-transaction and Python migrations claim the
version with a ``running`` entry first, run the body, then mark the entry
``applied``, or ``failed`` with the statement and message. A crash in between
leaves ``running``, which blocks the set until ``orchestrator resolve``: the
ledger may say "unknown", never a false "applied". A lost connection leaves the
entry as it is (the outcome is unknown); a failure is marked and re-raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from orchestrator.errors import LockHeld, MigrationError, OrchestratorError, TargetUnreachable
from orchestrator.targets import Applied

if TYPE_CHECKING:
    from orchestrator.sets import Script

__all__ = ["DirtyLedger", "apply_under_dirty_flag"]


class DirtyLedger(Protocol):
    """What a target provides for :func:`apply_under_dirty_flag`."""

    def dirty_claim(self, script: Script, checksum: str) -> bool:
        """Write the ``running`` entry; False when the ledger already holds the version (nothing written)."""

    def dirty_applied(self, script: Script, checksum: str, duration_ms: int) -> None:
        """Mark the entry ``applied``; raises when that fails (the entry stays ``running``)."""

    def dirty_failed(self, script: Script, checksum: str, duration_ms: int, failure: MigrationError) -> None:
        """Mark the entry ``failed`` (or drop it when nothing ran); logs, never raises over the failure."""


def apply_under_dirty_flag(ledger: DirtyLedger, script: Script, checksum: str, body: Callable[[], int]) -> Applied | None:
    """Claim, run ``body`` (returns the statement count), mark; None when another runner recorded the version first."""
    started = time.monotonic()
    if not ledger.dirty_claim(script, checksum):
        return None
    try:
        count = body()
    except (TargetUnreachable, LockHeld):
        raise  # outcome unknown: the entry stays 'running'
    except OrchestratorError as exc:
        failure = exc if isinstance(exc, MigrationError) else MigrationError(script.label, str(exc))
        ledger.dirty_failed(script, checksum, _ms(started), failure)
        raise
    duration = _ms(started)
    ledger.dirty_applied(script, checksum, duration)
    return Applied(script.version, count, duration)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
