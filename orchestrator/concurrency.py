"""How many targets a fleet run works on at once: one budget for SQLite files, one for servers.

SQLite work is CPU in this process: on a small machine more threads only trade the
GIL, and the benchmark's fleet of files ran faster on fewer. A server target mostly
waits for its replies: with the servers 10 ms away, eight threads leave a 200-target
pass waiting on round trips. One pool sized for either starves or floods the other,
so a command-line run without an explicit count gets two pools side by side:
``defaults.WORKERS`` threads for SQLite files and ``defaults.SERVER_WORKERS`` for server
targets. An explicit count (``--workers``, or ``daemon.workers`` written in the
config) is one budget shared by every target, as it always was: the way to cap the
connections a run opens.
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator import defaults

__all__ = ["budgets"]


def budgets(targets: Iterable[tuple[str, str]], workers: int | None) -> list[tuple[int, list[str]]]:
    """(threads, dbids) per pool for ``targets`` ((dbid, driver) pairs, in work order).

    ``workers`` set: one pool of that many threads for all. None: SQLite files on
    ``defaults.WORKERS`` threads, server targets on ``defaults.SERVER_WORKERS``. A pool never
    has more threads than targets; empty pools are left out.
    """
    items = list(targets)
    if workers is not None:
        groups = [(workers, [dbid for dbid, _ in items])]
    else:
        groups = [(defaults.WORKERS, [dbid for dbid, driver in items if driver == "sqlite"]),
                  (defaults.SERVER_WORKERS, [dbid for dbid, driver in items if driver != "sqlite"])]
    return [(max(1, min(size, len(dbids))), dbids) for size, dbids in groups if dbids]
