"""Times and target selection shared by the daemon's modules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from orchestrator import fleet

if TYPE_CHECKING:
    from orchestrator.config import Config

__all__ = ["describe_seconds", "hms", "iso", "shard_targets", "utcnow"]


def utcnow() -> datetime:
    """The default clock: an aware UTC datetime."""
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """``2030-01-01T12:00:30Z``, or None."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def hms(value: datetime) -> str:
    """``12:00:30Z``: a time of day for log lines."""
    return value.astimezone(UTC).strftime("%H:%M:%SZ")


def describe_seconds(seconds: float) -> str:
    """``5m``, ``1h``, ``90s``, ``300ms``: an interval as config.json spells it."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def shard_targets(config: Config, name: str, shard: tuple[int, int] | None) -> list[str]:
    """The dbids of a set that this daemon (its ``--shard I/N`` share) works on."""
    if name not in config.sets:
        return []
    dbids = [dbid for _, dbid in config.bindings(name)]
    if shard is None:
        return dbids
    index, count = shard
    return [dbid for dbid in dbids if fleet.shard_of(dbid, count) == index]
