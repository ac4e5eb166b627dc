"""Prometheus metrics of the daemon, in their own registry.

Counters are fed by the runs and the scheduler's listener; gauges are computed from
the status source at scrape time, so they can never drift from /status. Labels are
set and target ids only (``s1``, ``postgresql.p1``): never a host, DSN or user.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from orchestrator.state import STATES

if TYPE_CHECKING:
    from orchestrator.http import StatusSource

__all__ = ["Metrics"]

_RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The daemon's counters and the snapshot's gauges; ``render()`` is the /metrics body."""

    def __init__(self, source: StatusSource, shard: tuple[int, int] | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.applied = Counter("orchestrator_migrations_applied", "Migrations this process applied.",
                               ["set", "target"], registry=self.registry)
        self.failed = Counter("orchestrator_migration_failures", "Catch-ups of a (set, target) that ended failed.",
                              ["set", "target"], registry=self.registry)
        self.runs = Histogram("orchestrator_run_duration_seconds", "Wall time of one run of a set (catch-up or status).",
                              ["set"], buckets=_RUN_BUCKETS, registry=self.registry)
        self.events = Counter("orchestrator_scheduler_events",
                              "Scheduler events: missed runs, runs skipped as still running, job errors.",
                              ["event"], registry=self.registry)
        self.registry.register(_SnapshotCollector(source))
        self.registry.register(_LockCollector())
        self.undelivered = Gauge("orchestrator_notifications_undelivered",
                                 "Webhook events given up on (receiver down past the retries, or queue full) since start.",
                                 registry=self.registry)
        self.inventory_up = Gauge("orchestrator_inventory_up", "1 when the inventory source answered at its last read, "
                                  "else 0 (its last good list is kept).", ["source"], registry=self.registry)
        # This replica's --shard I/N (0 of 1 without one), so replicas that disagree on N can be alerted on.
        Gauge("orchestrator_shard_count", "N of this replica's --shard I/N (1 without sharding).",
              registry=self.registry).set(shard[1] if shard else 1)
        Gauge("orchestrator_shard_index", "I of this replica's --shard I/N (0 without sharding).",
              registry=self.registry).set(shard[0] if shard else 0)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _LockCollector:
    """Lock timeouts, retries and time spent waiting for locks, per engine, from :data:`orchestrator.locktimeout.COUNTERS`."""

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        from orchestrator.locktimeout import COUNTERS

        counts = COUNTERS.snapshot()
        families = []
        for key, name, text in (
                ("lock_timeouts", "orchestrator_lock_timeouts", "Migration attempts that timed out waiting for a lock."),
                ("lock_retries", "orchestrator_lock_retries", "Attempts run again after a lock timeout."),
                ("lock_retries_exhausted", "orchestrator_lock_retries_exhausted",
                 "Migrations failed after their last lock-timeout retry."),
                ("lock_wait_seconds", "orchestrator_lock_wait_seconds", "Seconds migrations spent waiting for locks that timed out.")):
            family = CounterMetricFamily(name, text, labels=["engine"])
            for engine, value in sorted(counts[key].items()):
                family.add_metric([engine], float(value))
            families.append(family)
        return families


class _SnapshotCollector:
    """Gauges computed from the snapshot on each scrape."""

    def __init__(self, source: StatusSource):
        self._source = source

    def describe(self) -> Iterable[Any]:
        return []  # unchecked collector: its families depend on the fleet

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        pending = GaugeMetricFamily("orchestrator_pending_migrations", "Migrations not yet applied, per set and target.",
                                    labels=["set", "target"])
        state = GaugeMetricFamily("orchestrator_binding_state", "1 for the state a (set, target) is in, 0 for the others.",
                                  labels=["set", "target", "state"])
        last = GaugeMetricFamily("orchestrator_last_apply_timestamp_seconds", "Unix time of the newest applied migration.",
                                 labels=["set", "target"])
        retry = GaugeMetricFamily("orchestrator_next_retry_timestamp_seconds",
                                  "Unix time of the next retry of a failing (set, target).", labels=["set", "target"])
        up = GaugeMetricFamily("orchestrator_target_up", "0 when the last attempt could not reach the target, else 1.",
                               labels=["target"])
        stale = GaugeMetricFamily("orchestrator_binding_stale",
                                  "Cluster mode: 1 when no replica refreshed the (set, target) for twice its interval.",
                                  labels=["set", "target"])
        targets: dict[str, int] = {}
        for binding, notes in self._source.rows():
            labels = [binding.set_id, binding.dbid]
            pending.add_metric(labels, len(binding.pending))
            for name in STATES:
                state.add_metric([*labels, name], 1.0 if binding.state == name else 0.0)
            if binding.last_apply_time:
                last.add_metric(labels, float(binding.last_apply_time))
            if notes.get("next_retry") is not None:
                retry.add_metric(labels, float(notes["next_retry"]))
            if "stale" in notes:
                stale.add_metric(labels, 1.0 if notes["stale"] else 0.0)
            targets[binding.dbid] = min(targets.get(binding.dbid, 1), 0 if binding.state == "unreachable" else 1)
        for dbid, value in sorted(targets.items()):
            up.add_metric([dbid], value)
        ready, _ = self._source.ready()
        ready_gauge = GaugeMetricFamily("orchestrator_ready", "1 once the first status refresh is done and the scheduler runs.",
                                        value=1 if ready else 0)
        return [pending, state, last, retry, up, stale, ready_gauge]
