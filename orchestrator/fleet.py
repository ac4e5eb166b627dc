"""Many bindings at once: catch-up, status, plan and validate over the whole fleet.

(API skeleton; the implementation lands with the fleet commands.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["BindingStatus", "FleetReport", "status", "plan", "catch_up", "validate", "shard_of", "command", "STATES"]

STATES = ("current", "pending", "failed", "drift", "unreachable", "locked")


@dataclass
class BindingStatus:
    """The state of one (set, target) binding, as status/plan/catch-up report it."""

    set_id: str
    dbid: str
    state: str  # one of STATES
    applied: int = 0  # migrations of the set recorded in the target
    pending: list[str] = field(default_factory=list)  # versions still to apply
    out_of_order: list[str] = field(default_factory=list)
    last_version: str | None = None
    last_apply_time: int | None = None  # Unix seconds
    error: str | None = None  # one redacted line
    drift: list[str] = field(default_factory=list)  # one line per finding
    applied_now: list[str] = field(default_factory=list)  # versions this run applied (catch-up)
    duration_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class FleetReport:
    bindings: list[BindingStatus]
    wall_ms: int = 0

    @property
    def exit_code(self) -> int:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


def shard_of(dbid: str, shards: int) -> int:
    """Stable shard index of a target (same on every replica and Python run)."""
    raise NotImplementedError


def status(config: Any, set_name: str | None = None, target: str | None = None, workers: int | None = None,
           shard: tuple[int, int] | None = None) -> FleetReport:
    """Read every binding's ledger (read-only, nothing created or changed)."""
    raise NotImplementedError


def plan(config: Any, set_name: str | None = None, target: str | None = None, workers: int | None = None) -> FleetReport:
    raise NotImplementedError


def catch_up(config: Any, set_name: str | None = None, target: str | None = None, workers: int | None = None,
             shard: tuple[int, int] | None = None, on_result: Callable[[BindingStatus], None] | None = None,
             should_stop: Callable[[], bool] | None = None, skip: Callable[[str, str], bool] | None = None) -> FleetReport:
    """Apply everything pending on every selected binding, concurrently, isolating failures."""
    raise NotImplementedError


def validate(config: Any, set_name: str | None = None, target: str | None = None) -> list[str]:
    raise NotImplementedError


def command(args: Any) -> int:
    raise NotImplementedError
