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
from collections.abc import Hashable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator import __version__
from orchestrator.daemon.common import describe_seconds, iso, shard_targets
from orchestrator.state import FleetReport

if TYPE_CHECKING:
    from orchestrator.backoff import Backoff
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
            if notes:  # a failing binding: when it is tried next
                item["next_retry"] = iso(datetime.fromtimestamp(notes["next_retry"], UTC))
                item["failures"] = notes["failures"]
        data["daemon"] = self.info()
        return data

    def version(self) -> Hashable:
        """Equal between two calls only when status() and rows() are: the binding write count and the
        daemon section (retries, runs, schedules). Cheap next to status(), so the status server builds
        its /status body once per version instead of once per request."""
        return self._changes, json.dumps(self.info(), sort_keys=True, default=str)

    def info(self) -> dict[str, Any]:
        """The daemon section of /status: identity, schedules, next runs, retries, last reload."""
        daemon = self._daemon
        config, shard = daemon.config, daemon.shard
        with self._lock:
            runs, last = dict(self._runs), dict(self._last)
            refreshed_at, reload, events = self._refreshed_at, self._reload, dict(self._events)
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
        }
