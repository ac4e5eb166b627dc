"""Per-server concurrency: at most ``per_server`` targets of one server worked on at once.

Targets share a server when they have the same driver, host and port (500 tenant
databases of one PostgreSQL server); SQLite files have no server and are never
limited. The fleet takes a target's slot around its whole piece of work, whatever
the worker count, and orders its work so that the pool's threads are spread over
servers rather than queueing on one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["ServerSlots", "interleave", "server_key"]

T = TypeVar("T")
ServerKey = tuple[str, str, int]


def server_key(db: Any) -> ServerKey | None:
    """(driver, host, port) of a target's config entry; None for SQLite (a file, not a server)."""
    driver = getattr(db, "driver", "")
    if driver == "sqlite" or getattr(db, "port", None) is None:
        return None
    return (str(driver), str(getattr(db, "ip", "")), int(db.port))


class ServerSlots:
    """One semaphore of ``per_server`` slots per server key; ``None`` (or 0) means unlimited."""

    def __init__(self, per_server: int | None):
        self.per_server = per_server or None
        self._sems: dict[ServerKey, threading.BoundedSemaphore] = {}
        self._guard = threading.Lock()

    def _sem(self, key: ServerKey) -> threading.BoundedSemaphore:
        with self._guard:
            sem = self._sems.get(key)
            if sem is None:
                assert self.per_server is not None
                sem = self._sems[key] = threading.BoundedSemaphore(self.per_server)
            return sem

    @contextmanager
    def slot(self, key: ServerKey | None) -> Iterator[None]:
        """Hold one of the server's slots for the block (no-op without a limit or a server)."""
        if key is None or self.per_server is None:
            yield
            return
        sem = self._sem(key)
        with sem:
            yield


def interleave(items: Iterable[T], key_of: Callable[[T], Hashable]) -> list[T]:
    """Round-robin over keys, keeping each key's order: a, a, a, b, b -> a, b, a, b, a."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key_of(item), []).append(item)
    out: list[T] = []
    queues = list(groups.values())
    depth = max((len(q) for q in queues), default=0)
    for i in range(depth):
        out.extend(q[i] for q in queues if i < len(q))
    return out
