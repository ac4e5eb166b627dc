"""A client-side deadline for blocking calls on a socket whose driver has no read timeout (psycopg).

``with deadline.bound(seconds, fd):`` runs a call; if it is still blocked when the
time is up, one shared watchdog thread shuts the socket down, so the blocked call
returns at once with a connection error and ``deadline.expired`` is true. A
server-side ``statement_timeout`` cannot do this: a stalled link or a frozen
server never delivers its answer. One thread serves every connection of the
process and sleeps while no call is bounded; arming costs one lock, not a thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

__all__ = ["Deadline"]

_TICK = 0.05  # seconds: how late past its deadline a call may be cut
_guard = threading.Lock()
_armed: set[Deadline] = set()
_wake = threading.Event()
_thread: threading.Thread | None = None


class Deadline:
    """The deadline of one connection's current call (one call at a time, as a connection is used)."""

    def __init__(self) -> None:
        self.expired = False
        self._until = 0.0
        self._fd = -1

    @contextlib.contextmanager
    def bound(self, seconds: float, fd: int) -> Iterator[None]:
        global _thread
        with _guard:
            self._until, self._fd = time.monotonic() + seconds, fd
            _armed.add(self)
            if _thread is None:
                _thread = threading.Thread(target=_watch, name="orchestrator-deadline", daemon=True)
                _thread.start()
            _wake.set()
        try:
            yield
        finally:
            with _guard:  # under the guard: the watchdog never cuts a call that has already returned
                _armed.discard(self)

    def _cut(self) -> None:
        self.expired = True
        try:
            # A duplicate of the descriptor: shutting it down ends the connection for the driver's
            # blocked poll too, and closing the duplicate leaves the driver's own descriptor to it.
            with socket.socket(fileno=os.dup(self._fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone: the blocked call ends on its own


def _watch() -> None:
    while True:
        _wake.wait()
        time.sleep(_TICK)
        now = time.monotonic()
        with _guard:
            for deadline in [d for d in _armed if d._until <= now]:
                _armed.discard(deadline)
                deadline._cut()
            if not _armed:
                _wake.clear()
