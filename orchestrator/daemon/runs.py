"""One set's run: a fleet catch-up (or status refresh) of the set, with failing targets held back by backoff.

A failing or unreachable (set, target) waits for its retry time while the set's other
targets keep running; a failure the ledger records (MySQL) is re-read, never re-run,
until ``orchestrator resolve`` clears it. Each run's results go into the snapshot and
the metrics as they come. The scheduler calls :meth:`Runs.tick`; a trigger that
arrives while the set runs makes the set run once more afterwards, never alongside.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator import fleet, render, waves
from orchestrator.daemon.common import hms, iso, shard_targets
from orchestrator.errors import OrchestratorError
from orchestrator.notify import Notifier, Once
from orchestrator.redact import redact
from orchestrator.serverslots import ServerSlots
from orchestrator.state import BindingStatus, FleetReport

if TYPE_CHECKING:
    from orchestrator.backoff import Backoff, Clock
    from orchestrator.cluster.mode import ClusterMode
    from orchestrator.config import Config
    from orchestrator.daemon.metrics import Metrics
    from orchestrator.daemon.snapshot import Snapshot
    from orchestrator.watcher import Watcher

__all__ = ["Outcome", "Runs", "SetRuns", "stronger"]

log = logging.getLogger("daemon")

_REASON_RANK = {"retry": 0, "start": 1}


def stronger(held: str | None, new: str) -> str:
    """Of two triggers waiting for one run, the one asking for more: a catch-up beats a status refresh beats a retry."""
    if held is None or _REASON_RANK.get(new, 2) > _REASON_RANK.get(held, 2):
        return new
    return held


@dataclass
class SetRuns:
    """Run control of one set, under ``guard``: the run in progress and the triggers waiting for the next one."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    again: str | None = None  # a trigger that arrived during a run: one more run right after it
    wanted: str | None = None  # why the set's job was brought forward (see scheduling), due at wanted_at
    wanted_at: datetime | None = None

    def want(self, reason: str, at: datetime) -> None:
        """Merge a trigger into the one waiting for the set's job (call under ``guard``)."""
        self.wanted = stronger(self.wanted, reason)
        self.wanted_at = at if self.wanted_at is None else min(self.wanted_at, at)

    def take(self, now: datetime) -> str:
        """Why the set's job runs now (call under ``guard``): the trigger that brought it forward, else its schedule."""
        if self.wanted is None or self.wanted_at is None or self.wanted_at > now:
            return "schedule"
        reason, self.wanted, self.wanted_at = self.wanted, None, None
        return reason


@dataclass
class Outcome:
    """What one run of a set produced."""

    set_id: str
    reason: str
    mode: str  # "catch-up", "status", "deferred" or "queued" (cluster mode)
    report: FleetReport | None = None
    skipped: frozenset[str] = frozenset()
    started: datetime | None = None
    seconds: float = 0.0
    error: str | None = None


class Runs:
    """Runs of the daemon's sets: one at a time per set, sharing one budget of open targets."""

    def __init__(self, config: Config, shard: tuple[int, int] | None, clock: Clock, *, snapshot: Snapshot,
                 metrics: Metrics, backoff: Backoff, watcher: Watcher, stopping: threading.Event,
                 on_retry: Callable[[str, datetime | None], None]):
        self.config = config
        self.shard = shard
        self.clock = clock
        self.snapshot = snapshot
        self.metrics = metrics
        self.backoff = backoff
        self.watcher = watcher
        self._stopping = stopping
        self._on_retry = on_retry  # (set, when) asks for a retry run; (set, None) says none is needed
        self._states: dict[str, SetRuns] = {}
        self._states_lock = threading.Lock()
        # Sets run side by side on the scheduler's pool; one budget of daemon.workers open
        # targets across all of them keeps the daemon from holding workers² connections.
        self.slots = threading.BoundedSemaphore(config.daemon.workers)
        self.cluster: ClusterMode | None = None  # cluster mode: a run queues its targets' work instead
        self.on_soak: Callable[[str, datetime], None] | None = None  # (set, when a rollout's soak ends): run it then
        # Webhooks: one notifier for all runs (rebuilt when a reload changes notify[]), events once per new condition.
        self.notices = Once()
        self.servers = ServerSlots(config.per_server)  # per_server slots shared by the sets' concurrent runs
        self._notify_lock = threading.Lock()
        self._notifier = Notifier(config.notify)
        self._undelivered_before = 0
        metrics.undelivered.set_function(lambda: self._undelivered_before + self._notifier.undelivered)

    def state(self, name: str) -> SetRuns:
        with self._states_lock:
            return self._states.setdefault(name, SetRuns())

    def running(self, name: str) -> bool:
        return self.state(name).running

    def tick(self, name: str, reason: str | None = None, started: Callable[[], None] | None = None) -> list[Outcome]:
        """Run the set, and again while triggers arrived meanwhile; [] when a run of the set is in progress.

        ``reason`` None means the set's job fired: the trigger that brought it forward, else its schedule.
        ``started`` is called (under the set's guard) once the run is marked running and has taken its trigger.
        """
        state = self.state(name)
        with state.guard:
            if state.running:
                if reason is not None:
                    state.again = stronger(state.again, reason)
                return []
            state.running = True
            if reason is None:
                reason = state.take(self.clock())
        outcomes = []
        try:
            if started is not None:
                with state.guard:
                    started()
            while not self._stopping.is_set():
                outcome = self.run_once(name, reason)
                self.commit(outcome)
                outcomes.append(outcome)
                with state.guard:
                    if state.again is None or self._stopping.is_set():
                        break
                    reason, state.again = state.again, None
        finally:
            with state.guard:
                state.running = False
        return outcomes

    def run_once(self, name: str, reason: str) -> Outcome:
        """One run of the set: catch-up, or a status refresh for ``apply: "report"`` sets (and cron sets' start)."""
        config = self.config
        spec = config.sets.get(name)
        started, clock_start = self.clock(), time.monotonic()
        if spec is None:
            return Outcome(name, reason, "deferred", started=started)
        status_only = spec.apply == "report" or (reason == "start" and spec.cron is not None)
        if not status_only and not self.watcher.settled(name):
            log.info("%s: migration files are still changing; the run waits until they settle", name)
            return Outcome(name, reason, "deferred", started=started)
        if self.cluster is not None and not status_only:
            return self._queue(name, reason, started, clock_start)
        skipped: set[str] = set()
        workers = config.daemon.workers
        try:
            if status_only:
                report = fleet.status(config, name, workers=workers, shard=self.shard, slots=self.slots)
            else:
                skipped = self._hold_back(config, name, reason)
                report = waves.catch_up(config, name, workers=workers, shard=self.shard, slots=self.slots,
                                        on_result=lambda binding: self._live(binding, skipped),
                                        should_stop=self._stopping.is_set, skip=lambda _set, dbid: dbid in skipped,
                                        servers=self._servers(config), notifier=self._notifier_for(config),
                                        notices=self.notices, finished="changes")
                self._note_failures(name, report, skipped)
                self._after_soak(name, report)
        except OrchestratorError as exc:  # the set itself is unusable (bad file, duplicate version): every binding shows it
            message = redact(str(exc))
            log.error("%s: %s", name, message)
            report = FleetReport([BindingStatus(name, dbid, "failed", error=message, set_error=True)
                                        for dbid in shard_targets(config, name, self.shard)])
            return Outcome(name, reason, "catch-up", report, frozenset(), started, time.monotonic() - clock_start, message)
        return Outcome(name, reason, "status" if status_only else "catch-up", report, frozenset(skipped), started,
                       time.monotonic() - clock_start)

    def _queue(self, name: str, reason: str, started: datetime, clock_start: float) -> Outcome:
        """Cluster mode: the run becomes one job per target in the control store; any replica's worker takes it."""
        from orchestrator.cluster.store import StoreUnavailable

        assert self.cluster is not None
        try:
            queued = self.cluster.queue_set(name, reason)
        except StoreUnavailable as exc:
            log.warning("%s: run (%s) not queued: %s; the next run queues it", name, reason, exc)
            return Outcome(name, reason, "deferred", started=started, error=str(exc))
        if queued:
            log.info("%s: %d target(s) queued (%s)", name, queued, reason)
        return Outcome(name, reason, "queued", started=started, seconds=time.monotonic() - clock_start)

    def record_result(self, binding: BindingStatus) -> None:
        """A binding this replica's worker just caught up (cluster mode): snapshot, log line and counters."""
        self._live(binding, set())
        if binding.applied_now:
            self.metrics.applied.labels(binding.set_id, binding.dbid).inc(len(binding.applied_now))
        if binding.state == "failed":
            self.metrics.failed.labels(binding.set_id, binding.dbid).inc()

    def _notifier_for(self, config: Config) -> Notifier:
        """The webhooks' notifier; a reload that changed notify[] replaces it (the old one's queue is given up)."""
        with self._notify_lock:
            if tuple(config.notify) != self._notifier.hooks:
                old, self._notifier = self._notifier, Notifier(config.notify)
                old.close()
                self._undelivered_before += old.undelivered
            return self._notifier

    def _servers(self, config: Config) -> ServerSlots:
        if config.per_server != self.servers.per_server:
            self.servers = ServerSlots(config.per_server)  # a reload changed migrations.per_server
        return self.servers

    def _after_soak(self, name: str, report: FleetReport) -> None:
        """A rollout waiting for a soak: run the set again the moment it ends."""
        ends = [b.soak_until for b in report.bindings if b.state == "held" and b.soak_until]
        if ends and self.on_soak is not None:
            at = datetime.fromtimestamp(min(ends), UTC)
            log.info("%s: rollout soaking; next run at %s", name, hms(at))
            self.on_soak(name, at)

    def close(self, wait: float = 0.0) -> None:
        """Stop the notifier, giving queued events up to ``wait`` seconds."""
        self._notifier.close(wait)

    def refresh_all(self) -> None:
        """The first status read of every binding, before any run."""
        config = self.config
        try:
            report = fleet.status(config, workers=config.daemon.workers, shard=self.shard)
        except OrchestratorError as exc:
            log.error("first status refresh: %s", redact(str(exc)))
            return
        self.snapshot.put_report(report.bindings, self.clock())

    def refresh_unpublished(self, published: Callable[[], set[tuple[str, str]]], chunk: int = 100) -> None:
        """Cluster mode's first reading of the bindings no replica has published yet (the fleet view has the rest).

        It runs beside the work, not before it: on one thread, from the end of the fleet while
        the queue is worked from its start, a chunk at a time, each leaving out what got
        published meanwhile, so a fresh cluster does not read its whole fleet once per replica."""
        config = self.config
        keys = [(spec.name, dbid) for spec, dbid in reversed(config.bindings())]
        for start in range(0, len(keys), chunk):
            if self._stopping.is_set():
                return
            done = published()
            wanted = {key for key in keys[start:start + chunk] if key not in done}
            if not wanted:
                continue
            def skip(set_name: str, dbid: str, wanted: set[tuple[str, str]] = wanted) -> bool:
                return (set_name, dbid) not in wanted

            try:
                report = fleet.status(config, workers=1, slots=self.slots, skip=skip)
            except OrchestratorError as exc:
                log.error("first status read: %s", redact(str(exc)))
                return
            self.snapshot.put_report(report.bindings, self.clock())

    def commit(self, outcome: Outcome) -> None:
        """Fold a run's outcome into the snapshot (its bindings, the set's last run) and the metrics."""
        last: dict[str, Any] = {"at": iso(outcome.started), "reason": outcome.reason, "mode": outcome.mode,
                                "duration_ms": int(outcome.seconds * 1000)}
        if outcome.error:
            last["error"] = outcome.error
        report = outcome.report
        mine = [b for b in report.bindings if b.dbid not in outcome.skipped] if report is not None else []
        if report is not None:
            last["exit_code"] = report.exit_code
            last["applied"] = sum(len(b.applied_now) for b in mine)
            self.metrics.runs.labels(outcome.set_id).observe(outcome.seconds)
            self.snapshot.put_report(mine, self.clock())
        self.snapshot.record_run(outcome.set_id, last, counted=outcome.mode != "deferred")
        for binding in mine if outcome.mode == "catch-up" else []:
            if binding.applied_now:
                self.metrics.applied.labels(binding.set_id, binding.dbid).inc(len(binding.applied_now))
            if binding.state == "failed":
                self.metrics.failed.labels(binding.set_id, binding.dbid).inc()

    def _hold_back(self, config: Config, name: str, reason: str) -> set[str]:
        """Targets this catch-up leaves alone: failing ones still waiting, and ledger-recorded failures."""
        skipped = set()
        for dbid in shard_targets(config, name, self.shard):
            entry = self.backoff.get(name, dbid)
            if entry is None:
                if reason == "retry":
                    skipped.add(dbid)  # a retry run is for the failing targets only
                continue
            # A changed file may be the fix for a failed migration: try it now rather than at the next retry.
            if not self.backoff.due(name, dbid) and not (reason == "change" and entry.state == "failed"):
                skipped.add(dbid)
                continue
            if entry.state == "failed":
                # A failure the ledger records (MySQL) blocks the set until 'orchestrator resolve':
                # re-read it (one connect, one ledger read), never re-run it.
                check = fleet.status(config, name, target=dbid, workers=1, shard=self.shard)
                fresh = next((b for b in check.bindings if b.dbid == dbid), None)
                if fresh is not None and fresh.state == "failed":
                    retry = self.backoff.fail(name, dbid, "failed", fresh.error or entry.error)
                    log.info("%s/%s: still failed in its ledger; waiting for 'orchestrator resolve' (next look at %s)",
                             dbid, name, hms(retry.next_at))
                    self.snapshot.put(fresh)
                    skipped.add(dbid)
        return skipped

    def _note_failures(self, name: str, report: FleetReport, skipped: set[str]) -> None:
        for binding in report.bindings:
            if binding.dbid in skipped or binding.set_error:
                continue  # an unreadable set is re-read on every run, and the watcher sees its fix
            if binding.state in ("failed", "unreachable"):
                retry = self.backoff.fail(name, binding.dbid, binding.state, binding.error)
                log.warning("%s/%s: %s; retrying at %s (attempt %d)", binding.dbid, name, binding.state,
                            hms(retry.next_at), retry.failures + 1)
            elif binding.state != "locked" and self.backoff.succeed(name, binding.dbid):
                log.info("%s/%s: %s again", binding.dbid, name, binding.state)
        pending = [r for r in self.backoff.entries() if r.set_id == name]
        self._on_retry(name, min(r.next_at for r in pending) if pending else None)

    def _live(self, binding: BindingStatus, skipped: set[str]) -> None:
        """Show a binding's result as soon as catch-up reports it, before the whole set is done."""
        if binding.dbid in skipped:
            return
        before = self.snapshot.put(binding)
        # Say what changed, not the same drift or lock again at every tick.
        if binding.applied_now or before is None or (before.state, before.error) != (binding.state, binding.error):
            render.binding_line(binding, "catch-up")
