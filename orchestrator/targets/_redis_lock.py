"""The Redis lock's value and its keeper: who holds it, whether that process still exists, renewing its TTL.

The value is ``<random>[.<scope>] <since> <host> pid <N>``; ``<scope>`` names the
boot and PID namespace the pid belongs to, so that a lock whose process is gone
can be taken over at once instead of after its TTL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from orchestrator.targets._where import one_line

__all__ = ["Heartbeat", "holder_for_error", "holder_state", "holder_text", "process_scope"]

log = logging.getLogger("migrations")


class Heartbeat:
    """Renews one lock's TTL every third of it until stopped; notes when the lock is gone."""

    def __init__(self, renew: Callable[..., Any], dbid: str, set_id: str, key: str, token: str, ttl_ms: int):
        self.key, self.token, self.ttl_ms = key, token, ttl_ms
        self.lost = False
        self._renew, self._dbid, self._set_id = renew, dbid, set_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lock-heartbeat {dbid}/{set_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = max(self.ttl_ms / 3000, 0.005)
        while not self._stop.wait(interval):
            try:
                renewed = self._renew(keys=[self.key], args=[self.token, self.ttl_ms])
            except Exception as exc:  # a network blip: the TTL leaves room for the next beat
                log.warning("%s/%s: renewing the lock failed: %s", self._dbid, self._set_id, one_line(exc))
                continue
            if not renewed:
                self.lost = True
                log.warning("%s/%s: the lock expired or was taken over while held", self._dbid, self._set_id)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


LOCK_VALUE = re.compile(r"^[0-9a-f]+(?:\.(?P<scope>[0-9a-f]+))? (?P<since>\d+) (?P<host>.+) pid (?P<pid>\d+)$")
_scope: list[str | None] = []


def process_scope() -> str | None:
    """Boot and PID namespace of this process (Linux), hashed; None where they cannot be read.

    A pid means one process only within one boot of one PID namespace: two containers
    sharing a host name must never judge each other's pids.
    """
    if not _scope:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                boot = f.read().strip()
            namespace = os.readlink("/proc/self/ns/pid")
            _scope.append(hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:12])
        except OSError:
            _scope.append(None)
    return _scope[0]


def holder_text(value: str) -> str:
    """``host pid N since HH:MM:SSZ`` from a lock value ("" for a value another tool wrote)."""
    parts = value.split(" ", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return ""
    since = datetime.fromtimestamp(int(parts[1]), UTC).strftime("%H:%M:%SZ")
    return f"{parts[2]} since {since}"


def holder_state(value: str) -> str:
    """``gone``: its process is known to have exited (same host, boot and PID namespace, no such pid);
    ``gone?``: same host, no such pid, but its namespace is unknown; else ``alive`` or ``unknown``."""
    m = LOCK_VALUE.match(value)
    if m is None or m.group("host") != socket.gethostname():
        return "unknown"
    pid = int(m.group("pid"))
    if pid == os.getpid():
        return "alive"  # another run of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        scope = process_scope()
        return "gone" if scope is not None and m.group("scope") == scope else "gone?"
    except OSError:  # EPERM: it exists, another user's
        return "alive"
    return "alive"


def holder_for_error(value: str, state: str, pttl: int) -> str:
    """The holder for a LockHeld message; a holder known to be gone comes with when its lock expires."""
    text = holder_text(value)
    if pttl and pttl > 0:
        expires = datetime.fromtimestamp(time.time() + pttl / 1000, UTC).strftime("%H:%M:%SZ")
        if state == "gone":
            text += f" (that process no longer exists; its lock expires at {expires})"
        else:
            text += (f" (no such process here, though it may run in another container or boot of this host; "
                     f"its lock expires at {expires} unless renewed)")
    return text
