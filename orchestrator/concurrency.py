"""How many targets a fleet run works on at once: one budget for SQLite files, one for servers.

SQLite work is CPU in this process plus the disk's syncs: files never get more
than ``FILE_THREADS_PER_CPU`` threads per processor this process may use, enough
to keep the disk's syncs overlapping; past that, threads only trade the GIL. A server target
mostly waits for its replies: with the servers 10 ms away, eight threads leave a
200-target pass waiting on round trips. One pool sized for either starves or floods
the other, so a run gets two pools side by side: without an explicit count,
``defaults.WORKERS`` threads for SQLite files (within the cap) and
``defaults.SERVER_WORKERS`` for server targets. An explicit count (``--workers``, or
``daemon.workers`` written in the config) is the budget for all: at most that many
targets are open at once, the files taking their capped share of it and the server
targets the rest (all of it when there are no files; a budget too small to split is
one pool). It is the way to cap the connections a run opens.

Within the files' pool, opening, reading and judging a file holds one of
:class:`FileSlots`' slots, one per processor, and applying its migrations lets go
of it: a no-op pass is CPU alone and ran fastest with a thread per core (1,000
files on two cores, in one process: 0.56 s on 2 threads, 0.77 s on 8, without the
slots), while a first catch-up mostly waits on the disk's syncs and runs faster
with more files at once. With the slots, 8 file threads beat 4 at both (the
1,060-target no-op pass 0.66 s against 0.73 s, status 0.65 s against 0.70 s).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from orchestrator import defaults

__all__ = ["FILE_THREADS_PER_CPU", "FileSlots", "budgets", "file_threads", "processors"]

FILE_THREADS_PER_CPU = 4


def processors() -> int:
    """The processors this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def file_threads() -> int:
    """The most threads SQLite files get: ``FILE_THREADS_PER_CPU`` per processor this process may run on."""
    return FILE_THREADS_PER_CPU * processors()


class FileSlots:
    """One slot per processor, held while a SQLite file is opened, read and judged, let go while it applies."""

    def __init__(self, slots: int | None = None):
        self._gate = threading.Semaphore(slots or processors())

    @contextmanager
    def thinking(self, dbid: str) -> Iterator[None]:
        if not dbid.startswith("sqlite."):
            yield
            return
        with self._gate:
            yield

    @contextmanager
    def waiting(self, dbid: str) -> Iterator[None]:
        """Inside :meth:`thinking`: the slot is someone else's until the block ends."""
        if not dbid.startswith("sqlite."):
            yield
            return
        self._gate.release()
        try:
            yield
        finally:
            self._gate.acquire()


def budgets(targets: Iterable[tuple[str, str]], workers: int | None) -> list[tuple[int, list[str]]]:
    """(threads, dbids) per pool for ``targets`` ((dbid, driver) pairs, in work order).

    ``workers`` None: SQLite files on ``defaults.WORKERS`` threads, server targets on
    ``defaults.SERVER_WORKERS``. ``workers`` set: at most that many in all, the files
    on their capped share and the servers on the rest; one pool of ``workers`` when
    the budget is too small to split. Files never get more than :func:`file_threads`.
    A pool never has more threads than targets; empty pools are left out.
    """
    items = list(targets)
    files = [dbid for dbid, driver in items if driver == "sqlite"]
    servers = [dbid for dbid, driver in items if driver != "sqlite"]
    cap = file_threads()
    if workers is None:
        groups = [(min(defaults.WORKERS, cap), files), (defaults.SERVER_WORKERS, servers)]
    elif not servers:
        groups = [(min(workers, cap), files)]
    elif files and workers > min(workers, cap, len(files)):
        share = min(workers, cap, len(files))
        groups = [(share, files), (workers - share, servers)]
    else:
        groups = [(workers, [dbid for dbid, _ in items])]
    return [(max(1, min(size, len(dbids))), dbids) for size, dbids in groups if dbids]
