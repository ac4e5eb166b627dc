"""One replica of a cluster: its entry in the control store, its worker, and its copy of the fleet view.

:class:`Replica` creates or upgrades the store's schema, registers itself, and runs a
small loop (every half second) that publishes the bindings this replica worked on,
renews its heartbeat every ``lease / 3`` s and re-reads the whole fleet view every
``view_interval`` s. Requests are served from that last copy, so a control store that
goes away leaves the page and ``/status`` as they were (marked with the error) and
results published meanwhile wait in memory until it answers again: nothing is lost.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from orchestrator import __version__
from orchestrator.cluster import control, store
from orchestrator.cluster.engine import Engine, Handler
from orchestrator.cluster.store import StoreUnavailable

if TYPE_CHECKING:
    from orchestrator.config import PostgresqlConfig

__all__ = ["Replica", "View"]

log = logging.getLogger("cluster")


class View:
    """The last fleet view read from the store: binding rows, when they were read, and the last error."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.read_at: float | None = None  # time.time() of the last good read
        self.error: str | None = None


class Replica:
    """This process's membership of the cluster (see the module docstring)."""

    def __init__(self, db: PostgresqlConfig, handler: Handler, *, workers: int, lease: float,
                 view_interval: float = 2.0):
        self.db = db
        self.lease = lease
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host} pid {self.pid}"
        self.id: int | None = None
        self.engine = Engine(db, handler, workers=workers, lease=lease, name=self.owner)
        self.view = View()
        self.view_interval = view_interval
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = 0.0
        self._last_view = 0.0

    def start(self) -> None:
        """Create/upgrade the store's schema, register, start the worker and the loop. StoreUnavailable if unreachable."""
        store.migrate(self.db)
        with store.session(self.db) as conn:
            self.id = control.register(conn, self.host, self.pid, __version__)
        self._last_beat = time.monotonic()
        self.refresh_view()
        self.engine.start()
        self._thread = threading.Thread(target=self._loop, name="cluster-replica", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the jobs in flight end, hand the rest back, publish what is left and leave the cluster."""
        self._mark_stopping()
        self.engine.stop()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.flush()
            if self.id is not None:
                with store.session(self.db) as conn:
                    control.unregister(conn, self.id)
        except StoreUnavailable as exc:
            log.warning("leaving the cluster: %s", exc)

    def _mark_stopping(self) -> None:
        try:
            self._beat(stopping=True)
        except StoreUnavailable:
            pass

    # -- the fleet view ----------------------------------------------------------------

    def publish(self, bindings: list[dict[str, Any]]) -> None:
        """Queue bindings (``BindingStatus.to_json()``) for the store; the loop sends them within half a second."""
        with self._guard:
            for b in bindings:
                self._pending[(b["set"], b["target"])] = b

    def flush(self) -> int:
        with self._guard:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            with store.session(self.db) as conn:
                return control.publish(conn, self.owner, batch.values())
        except StoreUnavailable:
            with self._guard:  # newer results that came in meanwhile win
                self._pending = {**batch, **self._pending}
            raise

    def refresh_view(self) -> None:
        try:
            with store.session(self.db) as conn:
                rows = control.read_view(conn)
        except StoreUnavailable as exc:
            self.view.error = str(exc)
            raise
        self.view.rows, self.view.read_at, self.view.error = rows, time.time(), None

    # -- the loop ----------------------------------------------------------------------

    def _beat(self, stopping: bool = False) -> None:
        if self.id is None:
            return
        with store.session(self.db) as conn:
            self.id = control.heartbeat(conn, self.id, self.host, self.pid, __version__, self.engine.worker_id,
                                        stopping)

    def _loop(self) -> None:
        failing = False
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            try:
                self.flush()
                if now - self._last_beat >= self.lease / 3:
                    self._beat(self.engine.stopping)
                    self._last_beat = now
                if now - self._last_view >= self.view_interval:
                    self.refresh_view()
                    self._last_view = now
                if failing:
                    log.info("control store %s answers again", self.db.dbid)
                failing = False
            except StoreUnavailable as exc:
                self.view.error = str(exc)
                if not failing:
                    log.warning("%s; serving the last fleet view, results wait here", exc)
                failing = True
            except Exception as exc:  # the loop must outlive any one bad round
                log.error("cluster loop: %s: %s", type(exc).__name__, exc)
