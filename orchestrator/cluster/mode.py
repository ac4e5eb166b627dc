"""Cluster mode as the daemon uses it: queue a set's run, run jobs, and read the whole fleet's bindings.

The daemon's scheduler still decides when a set is due; :meth:`ClusterMode.queue_set`
turns that into one job per target (deduplicated across replicas: a schedule tick or a
start is queued by the first replica to notice it in its window, and a target's work
that already waits is not queued twice). Jobs run through :class:`TargetWork` on this
replica's worker. :meth:`ClusterMode.bindings` is the fleet view for /status,
/metrics and the page: every binding any replica published, each with ``owner``,
``updated`` and ``stale``, and this replica's own reading for a binding no replica has
published yet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.cluster import control, store
from orchestrator.cluster.replica import Replica
from orchestrator.cluster.store import StoreUnavailable
from orchestrator.cluster.work import TargetWork
from orchestrator.state import BindingStatus

if TYPE_CHECKING:
    from orchestrator.config import Config, PostgresqlConfig

__all__ = ["ClusterMode", "StoreUnavailable", "binding_from_json", "ensure_reachable", "queue_window"]

log = logging.getLogger("cluster")

_FIELDS = ("applied", "pending", "out_of_order", "last_version", "last_apply_time", "error", "drift", "applied_now",
           "duration_ms", "driver", "apply", "holder", "waiting")


def binding_from_json(item: dict[str, Any]) -> BindingStatus:
    """A binding back from its JSON form (``BindingStatus.to_json()``), as the fleet view stores it."""
    kwargs = {name: item[name] for name in _FIELDS if name in item and item[name] is not None}
    return BindingStatus(item["set"], item["target"], item["state"], **kwargs)


def queue_window(reason: str, every: float | None, lease: float) -> float | None:
    """For how long the first replica's queueing of a set's run stands for all (None: no set-level dedup).

    A schedule tick: half the interval (a minute for cron); a start: the lease. A change
    or a retry is deduplicated per target by the queueing lock instead."""
    if reason == "schedule":
        return every / 2 if every else 60.0
    if reason == "start":
        return lease
    return None


class ClusterMode:
    """The daemon's handle on the cluster (see the module docstring)."""

    def __init__(self, store_db: PostgresqlConfig, config: Callable[[], Config], *, workers: int, lease: float,
                 should_stop: Callable[[], bool], on_result: Callable[[BindingStatus], None] | None = None,
                 slots: threading.Semaphore | None = None, view_interval: float = 2.0):
        self.db = store_db
        self.lease = lease
        self.config = config
        self.work = TargetWork(config, self._publish, self._requeue, should_stop, on_result, slots)
        self.replica = Replica(store_db, self.work, workers=workers, lease=lease, view_interval=view_interval)
        self.owner = self.replica.owner

    def start(self) -> None:
        self.replica.start()

    def stop(self) -> None:
        self.replica.stop()

    def _publish(self, bindings: list[dict[str, Any]]) -> None:
        self.replica.publish(bindings)

    def _requeue(self, dbid: str, sets: list[str], reason: str, attempt: int, delay: float) -> bool:
        return self.replica.engine.enqueue(dbid, sets, reason, attempt, delay)

    # -- queueing ----------------------------------------------------------------------

    def queue_set(self, name: str, reason: str, dbids: list[str] | None = None) -> int:
        """Queue the set's targets (each with its due sets); returns how many jobs this replica queued.

        0 when another replica already queued this run. StoreUnavailable when the store is cut off
        (nothing is claimed then; the set's next tick queues it)."""
        config = self.config()
        spec = config.sets.get(name)
        if spec is None:
            return 0
        window = queue_window(reason, spec.every, self.lease)
        if window is not None:
            with store.session(self.db) as conn:
                if not control.claim_set_run(conn, name, reason, window, self.owner):
                    log.debug("%s: run (%s) already queued by another replica", name, reason)
                    return 0
        targets = dbids if dbids is not None else list(spec.targets)
        return self.replica.engine.enqueue_many([(dbid, [name]) for dbid in targets], reason)

    def queue_targets(self, groups: dict[str, list[str]], reason: str) -> int:
        """Queue each target once with all its given sets (config order), as a catch-up runs them."""
        return self.replica.engine.enqueue_many(list(groups.items()), reason)

    # -- the fleet view ----------------------------------------------------------------

    def bindings(self, local: dict[tuple[str, str], BindingStatus], local_at: datetime | None,
                 now: datetime | None = None) -> list[tuple[BindingStatus, dict[str, Any]]]:
        """Every binding of the configured fleet: the store's last word on it, else this replica's own reading.

        Each comes with ``owner``, ``updated`` (UTC ISO 8601) and ``stale``."""
        config = self.config()
        now = now or datetime.now(UTC)
        published = {(row["set"], row["target"]): row for row in self.replica.view.rows}
        local_iso = local_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if local_at else None
        out = []
        for spec, dbid in config.bindings():
            key = (spec.name, dbid)
            row = published.get(key)
            mine = local.get(key)
            if row is not None:
                binding, owner, updated = binding_from_json(row), row["owner"], row["updated"]
            elif mine is not None:
                binding, owner, updated = mine, self.owner, local_iso
            else:
                continue
            out.append((binding, {"owner": owner, "updated": updated,
                                  "stale": control.is_stale(updated, now, spec.every)}))
        return out

    def published(self) -> set[tuple[str, str]]:
        """The (set, dbid) of every binding in the last fleet view read."""
        return {(row["set"], row["target"]) for row in self.replica.view.rows}

    def view_error(self) -> str | None:
        """Why the fleet view is not fresh (the store is cut off), else None."""
        return self.replica.view.error

    def status(self) -> dict[str, Any]:
        """The cluster section of /status: the store, this replica, the view's age."""
        view = self.replica.view
        read_at = datetime.fromtimestamp(view.read_at, UTC) if view.read_at else None
        return {"store": self.db.dbid, "lease_s": self.lease, "replica": self.owner,
                "connected": self.replica.engine.connected and view.error is None,
                "view_read_at": read_at.isoformat(timespec="seconds").replace("+00:00", "Z") if read_at else None,
                "error": view.error}


def ensure_reachable(db: PostgresqlConfig) -> None:
    """Raise StoreUnavailable with one line when the store does not answer (for a start-up check)."""
    with store.session(db) as conn:
        conn.execute("SELECT 1")

