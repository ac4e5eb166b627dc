"""What the status server shows, kept in memory: the status source of :mod:`orchestrator.http`.

Runs write each binding's latest status here as they learn it, with the sets' run
records, scheduler events and the last reload; the server only reads, so no request
opens a database connection. The daemon's live facts (readiness, next run times,
runs in progress) come from a :class:`DaemonView`, which the service implements.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator import __version__
from orchestrator.daemon.common import describe_seconds, iso, shard_targets
from orchestrator.state import FleetReport

if TYPE_CHECKING:
    from orchestrator.backoff import Backoff
    from orchestrator.cluster.mode import ClusterMode
    from orchestrator.config import Config
    from orchestrator.state import BindingStatus

__all__ = ["DaemonView", "Snapshot"]

Key = tuple[str, str]  # (set, dbid)


class DaemonView(Protocol):
    """The daemon's live facts the status needs besides the snapshot itself."""

    @property
    def config(self) -> Config: ...

    @property
    def shard(self) -> tuple[int, int] | None: ...

    @property
    def started_at(self) -> datetime: ...

    @property
    def stopping(self) -> bool: ...

    def ready(self) -> tuple[bool, str]: ...

    def next_run(self, name: str) -> datetime | None: ...

    def next_retry(self, name: str) -> datetime | None: ...

    def running(self, name: str) -> bool: ...


class Snapshot:
    """Bindings' latest statuses and the daemon's records, behind one lock; a :class:`orchestrator.http.StatusSource`."""

    def __init__(self, daemon: DaemonView, backoff: Backoff):
        self._daemon = daemon
        self._backoff = backoff
        self._lock = threading.Lock()
        self._bindings: dict[Key, BindingStatus] = {}
        self._changes = 0  # binding writes: part of version()
        self._runs: dict[str, int] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._refreshed_at: datetime | None = None
        self._reload: dict[str, Any] | None = None
        self._events = {"missed": 0, "skipped_still_running": 0, "errors": 0}
        self._inventory: dict[str, Any] | None = None  # the sources' last answers, when config.json has an inventory
        self.cluster: ClusterMode | None = None  # cluster mode: rows come from the fleet view of every replica

    # -- writes ------------------------------------------------------------------

    def put(self, binding: BindingStatus) -> BindingStatus | None:
        """Store a binding's status; returns the one it replaces."""
        key = (binding.set_id, binding.dbid)
        with self._lock:
            before = self._bindings.get(key)
            self._bindings[key] = binding
            self._changes += 1
        return before

    def put_report(self, bindings: Iterable[BindingStatus], at: datetime) -> None:
        """Store a whole run's or refresh's bindings, refreshed at ``at``."""
        with self._lock:
            for binding in bindings:
                self._bindings[(binding.set_id, binding.dbid)] = binding
                self._changes += 1
            self._refreshed_at = at

    def keep_only(self, keys: set[Key]) -> None:
        """Forget the bindings a new config no longer has."""
        with self._lock:
            for key in [k for k in self._bindings if k not in keys]:
                del self._bindings[key]
                self._changes += 1

    def mark_removed(self, removed: Mapping[str, tuple[str, str]]) -> None:
        """Bindings of targets gone from their source (dbid -> (source, since ISO)) become ``removed``, worked on no more."""
        with self._lock:
            for key, binding in list(self._bindings.items()):
                gone = removed.get(binding.dbid)
                if gone is not None and binding.state != "removed":
                    self._bindings[key] = replace(binding, state="removed", removed_at=gone[1], pending=[], holder=None,
                                                  error=f"no longer listed by inventory {gone[0]} (since {gone[1]})")
                    self._changes += 1

    def removed_keys(self, dbids: Iterable[str]) -> set[Key]:
        """The bindings of targets gone from their source: kept (shown ``removed``) while the inventory remembers them."""
        wanted = set(dbids)
        with self._lock:
            return {key for key, b in self._bindings.items() if b.dbid in wanted}

    def record_inventory(self, sources: list[dict[str, Any]], problems: list[str]) -> None:
        with self._lock:
            self._inventory = {"sources": sources, "problems": problems}

    def record_run(self, name: str, last: dict[str, Any], counted: bool) -> None:
        """A set's last run for /status; ``counted`` is False for a run that waited (files still changing)."""
        with self._lock:
            self._runs[name] = self._runs.get(name, 0) + counted
            self._last[name] = last

    def count_event(self, kind: str) -> None:
        with self._lock:
            self._events[kind] += 1

    def record_reload(self, at: datetime, error: str | None) -> None:
        with self._lock:
            self._reload = {"at": iso(at), "ok": error is None, "error": error}

    # -- the status source ---------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        return self._daemon.ready()

    def rows(self) -> list[tuple[BindingStatus, dict[str, Any]]]:
        if self.cluster is not None:
            with self._lock:
                local, at = dict(self._bindings), self._refreshed_at
            return self.cluster.bindings(local, at)
        retries = {(r.set_id, r.dbid): r for r in self._backoff.entries()}
        with self._lock:
            items = sorted(self._bindings.items())
        rows = []
        for key, binding in items:
            retry = retries.get(key)
            notes = {"next_retry": retry.next_at.timestamp(), "failures": retry.failures} if retry else {}
            rows.append((binding, notes))
        return rows

    def status(self) -> dict[str, Any]:
        rows = self.rows()
        data: dict[str, Any] = FleetReport([binding for binding, _ in rows]).to_json()
        for item, (_, notes) in zip(data["bindings"], rows, strict=True):
            if "next_retry" in notes:  # a failing binding: when it is tried next
                item["next_retry"] = iso(datetime.fromtimestamp(notes["next_retry"], UTC))
                item["failures"] = notes["failures"]
            if "owner" in notes:  # cluster mode: who last worked on it, when, and whether that is too long ago
                item.update(owner=notes["owner"], updated=notes["updated"], stale=notes["stale"])
        data["daemon"] = self.info()
        if self.cluster is not None:
            data["cluster"] = self.cluster.status()
        return data

    def version(self) -> Hashable:
        """Equal between two calls only when status() and rows() are: the binding write count and the
        daemon section (retries, runs, schedules). Cheap next to status(), so the status server builds
        its /status body once per version instead of once per request."""
        view = self.cluster.status() if self.cluster is not None else None
        return self._changes, json.dumps([self.info(), view], sort_keys=True, default=str)

    def info(self) -> dict[str, Any]:
        """The daemon section of /status: identity, schedules, next runs, retries, last reload."""
        daemon = self._daemon
        config, shard = daemon.config, daemon.shard
        with self._lock:
            runs, last = dict(self._runs), dict(self._last)
            refreshed_at, reload, events = self._refreshed_at, self._reload, dict(self._events)
            inventory = self._inventory
        sets = {}
        for name, spec in config.sets.items():
            schedule = (f"every {describe_seconds(spec.every)}" if spec.every
                        else f"cron {spec.cron} (UTC)" if spec.cron else None)
            sets[name] = {
                "schedule": schedule,
                "apply": spec.apply,
                "targets": shard_targets(config, name, shard),
                "next_run": iso(daemon.next_run(name)),
                "next_retry": iso(daemon.next_retry(name)),
                "running": daemon.running(name),
                "runs": runs.get(name, 0),
                "last_run": last.get(name),
            }
        return {
            "version": __version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "config": str(config.path),
            "started_at": iso(daemon.started_at),
            "ready": daemon.ready()[0],
            "stopping": daemon.stopping,
            "shard": f"{shard[0]}/{shard[1]}" if shard else None,
            "workers": config.daemon.workers,
            "watch_interval_s": config.daemon.watch_interval,
            "last_refresh": iso(refreshed_at),
            "sets": sets,
            "retries": [{"set_id": r.set_id, "dbid": r.dbid, "state": r.state, "failures": r.failures,
                         "next_retry": iso(r.next_at), "error": r.error} for r in self._backoff.entries()],
            "reload": reload,
            "events": events,
        } | ({"inventory": inventory} if inventory is not None else {})
