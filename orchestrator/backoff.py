"""Exponential retry delays for failing (set, target) bindings of the daemon.

A binding that failed or was unreachable waits ``first`` seconds, then twice as
long after each further failure, up to ``cap``; a success forgets it. Times come
from the clock passed in, so tests need not patch ``datetime``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from orchestrator import defaults

__all__ = ["Backoff", "Clock", "Retry"]

Clock = Callable[[], datetime]


@dataclass
class Retry:
    """A failing (set, target): how often it failed in a row and when it may be tried again."""

    set_id: str
    dbid: str
    state: str  # "failed" or "unreachable"
    failures: int
    next_at: datetime
    error: str | None = None


class Backoff:
    """Exponential retry delays per (set, target): ``first``, 2×, 4×, … capped at ``cap`` seconds; forgotten on success."""

    def __init__(self, clock: Clock, first: float = defaults.RETRY_MIN, cap: float = defaults.RETRY_MAX):
        self.clock = clock
        self.first, self.cap = first, max(cap, first)
        self._entries: dict[tuple[str, str], Retry] = {}
        self._lock = threading.Lock()

    def configure(self, first: float, cap: float) -> None:
        self.first, self.cap = first, max(cap, first)

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        return min(self.cap, self.first * 2.0 ** min(max(failures - 1, 0), 60))

    def fail(self, set_id: str, dbid: str, state: str, error: str | None) -> Retry:
        with self._lock:
            previous = self._entries.get((set_id, dbid))
            failures = (previous.failures if previous else 0) + 1
            entry = Retry(set_id, dbid, state, failures, self.clock() + timedelta(seconds=self.delay(failures)), error)
            self._entries[(set_id, dbid)] = entry
            return entry

    def succeed(self, set_id: str, dbid: str) -> Retry | None:
        """Forget a (set, target)'s failures; returns the entry it had, if any."""
        with self._lock:
            return self._entries.pop((set_id, dbid), None)

    def get(self, set_id: str, dbid: str) -> Retry | None:
        with self._lock:
            return self._entries.get((set_id, dbid))

    def due(self, set_id: str, dbid: str) -> bool:
        """True when the (set, target) may run now: never failed, or its wait is over."""
        entry = self.get(set_id, dbid)
        return entry is None or self.clock() >= entry.next_at

    def entries(self) -> list[Retry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda r: (r.set_id, r.dbid))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
