"""The long-running service: scheduler, set-folder watcher, retries, signals and the status snapshot.

``orchestrator daemon CONFIG`` runs an APScheduler 3 BackgroundScheduler whose thread
pool has ``daemon.workers`` threads. Each set gets one job from its ``schedule``
(``every`` → interval, ``cron`` → crontab, UTC; ``max_instances=1``, coalesced, with a
misfire grace time); a set without a schedule runs at start-up and when its files
change. A run is a fleet catch-up of the set (``apply: "report"`` sets only refresh
their status). A job listener folds every run's report into an in-memory snapshot
that the status server (:mod:`orchestrator.http`) serves, so no request touches a
database. A failing or unreachable (set, target) is retried with exponential
backoff; a failure the ledger records (MySQL) is re-read, never re-run, until
``orchestrator resolve`` clears it. SIGTERM/SIGINT stop new work and let the
migration in flight finish (a second one exits at once); SIGHUP reloads the
config, keeping the running one when the new one is bad. ``--once`` runs one
catch-up of every set and exits with its exit code. Times come from an injected
clock. Several replicas may serve one fleet: target-side locks make sure each
migration is applied once, and ``--shard I/N`` splits the targets between them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Hashable

from orchestrator import __version__, defaults, fleet, render
from orchestrator import config as config_module
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.backoff import Backoff, Clock
from orchestrator.http import Metrics, StatusServer, check_http_config, is_loopback
from orchestrator.watcher import Watcher
from orchestrator.redact import redact

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.fleet import BindingStatus, FleetReport

__all__ = ["Daemon", "command", "parse_shard", "run_once"]

log = logging.getLogger("daemon")


def utcnow() -> datetime:
    """The default clock: an aware UTC datetime."""
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def _hms(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%H:%M:%SZ")


def _describe_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


_REASON_RANK = {"retry": 0, "start": 1}


def _stronger(held: str | None, new: str) -> str:
    """Of two triggers waiting for one run, the one asking for more: a catch-up beats a status refresh beats a retry."""
    if held is None or _REASON_RANK.get(new, 2) > _REASON_RANK.get(held, 2):
        return new
    return held


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` → (I, N) with 0 <= I < N; None when not given; ConfigError otherwise."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"daemon: --shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/2 and 1/2 for two replicas")
    return int(m.group(1)), int(m.group(2))


# -- the daemon -------------------------------------------------------------------


class _Snapshot(dict):  # type: ignore[type-arg]
    """The bindings' latest statuses; ``changes`` counts writes (made under the daemon's lock)."""

    changes = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.changes += 1

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.changes += 1


@dataclass
class _SetRuns:
    """Run bookkeeping of one set; ``again`` keeps a trigger that arrived during a run so none is lost."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    again: str | None = None
    runs: int = 0
    last: dict[str, Any] | None = None


@dataclass
class _Outcome:
    """What one run of a set produced, handed to the job listener."""

    set_id: str
    reason: str
    mode: str  # "catch-up", "status" or "deferred"
    report: FleetReport | None = None
    skipped: frozenset[str] = frozenset()
    started: datetime | None = None
    seconds: float = 0.0
    error: str | None = None


class Daemon:
    """Scheduler + watcher + retries around fleet catch-up, with a status snapshot for the HTTP server."""

    def __init__(self, config: Config, shard: tuple[int, int] | None = None, clock: Clock = utcnow):
        self.config = config
        self.shard = shard
        self.clock = clock
        self.metrics = Metrics(self)
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards the snapshot and the bookkeeping below
        self._snapshot: dict[tuple[str, str], BindingStatus] = _Snapshot()
        self._runs: dict[str, _SetRuns] = {}
        self._refreshed_at: datetime | None = None
        self._reload: dict[str, Any] | None = None
        self._events = {"missed": 0, "skipped_still_running": 0, "errors": 0}
        self._backoff = Backoff(clock, config.daemon.retry_min, config.daemon.retry_max)
        # Sets run side by side on the scheduler's pool; one budget of daemon.workers open
        # targets across all of them keeps the daemon from holding workers² connections.
        self._slots = threading.BoundedSemaphore(config.daemon.workers)
        self._watcher = Watcher({name: spec.folder for name, spec in config.sets.items()})
        self._started_at = clock()
        self._ready = False
        self._scheduler: Any = None
        self._server: StatusServer | None = None
        self._watch_thread: threading.Thread | None = None
        self._stop_signal = 0
        self._hups = 0
        self._inflight = 0  # runs in progress; stop() waits for them before shutting the scheduler down
        self._idle = threading.Condition()

    # -- StatusSource ------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            return False, "stopping"
        if not self._ready:
            return False, "first status refresh not done yet"
        if self._scheduler is None or not self._scheduler.running:
            return False, "scheduler not running"
        return True, ""

    def rows(self) -> list[tuple[BindingStatus, dict[str, Any]]]:
        retries = {(r.set_id, r.dbid): r for r in self._backoff.entries()}
        with self._lock:
            items = sorted(self._snapshot.items())
        rows = []
        for key, binding in items:
            retry = retries.get(key)
            notes = {"next_retry": retry.next_at.timestamp(), "failures": retry.failures} if retry else {}
            rows.append((binding, notes))
        return rows

    def status(self) -> dict[str, Any]:
        rows = self.rows()
        data = fleet.FleetReport([binding for binding, _ in rows]).to_json()
        for item, (_, notes) in zip(data["bindings"], rows, strict=True):
            if notes:  # a failing binding: when it is tried next
                item["next_retry"] = _iso(datetime.fromtimestamp(notes["next_retry"], timezone.utc))
                item["failures"] = notes["failures"]
        data["daemon"] = self.info()
        return data

    def version(self) -> Hashable:
        """Equal between two calls only when status() and rows() are: the snapshot's write count and the
        daemon section (retries, runs, schedules). Cheap next to status(), so the status server builds
        its /status body once per version instead of once per request."""
        return self._snapshot.changes, json.dumps(self.info(), sort_keys=True, default=str)  # type: ignore[attr-defined]

    def info(self) -> dict[str, Any]:
        """The daemon section of /status: identity, schedules, next runs, retries, last reload."""
        config = self.config
        sets = {}
        for name, spec in config.sets.items():
            runs = self._runs.get(name) or _SetRuns()
            schedule = f"every {_describe_seconds(spec.every)}" if spec.every else f"cron {spec.cron} (UTC)" if spec.cron else None
            sets[name] = {
                "schedule": schedule,
                "apply": spec.apply,
                "targets": self._targets(config, name),
                "next_run": self._next_time(f"set:{name}"),
                "next_retry": self._next_time(f"retry:{name}"),
                "running": runs.running,
                "runs": runs.runs,
                "last_run": runs.last,
            }
        return {
            "version": __version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "config": str(config.path),
            "started_at": _iso(self._started_at),
            "ready": self.ready()[0],
            "stopping": self._stopping.is_set(),
            "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
            "workers": config.daemon.workers,
            "watch_interval_s": config.daemon.watch_interval,
            "last_refresh": _iso(self._refreshed_at),
            "sets": sets,
            "retries": [{"set_id": r.set_id, "dbid": r.dbid, "state": r.state, "failures": r.failures,
                         "next_retry": _iso(r.next_at), "error": r.error} for r in self._backoff.entries()],
            "reload": self._reload,
            "events": dict(self._events),
        }

    def _next_time(self, job_id: str) -> str | None:
        job = self._scheduler.get_job(job_id) if self._scheduler is not None and self._scheduler.running else None
        return _iso(getattr(job, "next_run_time", None)) if job else None

    def _token(self) -> str | None:
        token = self.config.daemon.http.token
        return token.get_secret_value() or None if token is not None else None

    # -- life cycle --------------------------------------------------------------

    def start(self) -> None:
        """Serve HTTP, take the first status snapshot, start the scheduler and the watcher."""
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        config = self.config
        check_http_config(config.daemon.http, str(config.path))
        http = config.daemon.http
        self._server = StatusServer(self, self.metrics, http.host, http.port, self._token)
        self._server.start()
        shard = f", shard {self.shard[0]}/{self.shard[1]}" if self.shard else ""
        log.info("orchestrator %s daemon: %d sets, %d workers%s; status on %s", __version__, len(config.sets),
                 config.daemon.workers, shard, self._server.url)
        self._refresh_all(config)
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(config.daemon.workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": int(defaults.MISFIRE_GRACE)},
            timezone=timezone.utc,
        )
        # Our listener says it in one line; APScheduler's own warning would repeat it.
        logging.getLogger("apscheduler.scheduler").addFilter(_drop_max_instances_warning)
        self._scheduler.add_listener(self._on_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._scheduler.start()
        self._schedule(config, startup=True)
        self._watch_thread = threading.Thread(target=self._watch_loop, name="orchestrator-watch", daemon=True)
        self._watch_thread.start()
        self._ready = True

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit code (0 after a clean stop)."""
        self._install_signals()
        try:
            self.start()
            while not self._stop_signal:
                if self._hups:
                    self._hups = 0
                    self.reload()
                time.sleep(0.1)  # signal handlers only set flags; the work happens here, outside them
        finally:
            self.stop()
        return 0

    def stop(self) -> None:
        """Start no new run, let the migrations in flight finish, then close the server."""
        first = not self._stopping.is_set()
        self._stopping.set()
        if first and self._stop_signal:
            name = signal.Signals(self._stop_signal).name
            log.info("%s: stopping; runs in progress finish their current migration (send %s again to exit at once)", name, name)
        # Wait for the runs in flight here, not in scheduler.shutdown(): it holds the job store
        # lock while it waits, and a finishing run still schedules its retry through that lock.
        with self._idle:
            while self._inflight:
                self._idle.wait(0.2)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
        if self._server is not None:
            self._server.stop()
            self._server = None
        if first:
            log.info("stopped")

    def _install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._hups += 1

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal or self._stopping.is_set():
            _exit_now(signum)
        self._stop_signal = signum

    def reload(self) -> bool:
        """Re-read config.json; a bad new config is logged (one line) and the running one kept."""
        old = self.config
        try:
            new = config_module.load(old.path)
            check_http_config(new.daemon.http, str(new.path))
            if self._server is not None and not is_loopback(self._server.address[0]) and not _secret(new.daemon.http.token):
                raise ConfigError(f"{new.path}: daemon.http.token is required while serving on {self._server.address[0]}")
        except ConfigError as exc:
            message = redact(str(exc))
            log.error("reload failed, keeping the running configuration: %s", message)
            self._reload = {"at": _iso(self.clock()), "ok": False, "error": message}
            return False
        if (new.daemon.http.host, new.daemon.http.port, new.daemon.workers) != (old.daemon.http.host, old.daemon.http.port, old.daemon.workers):
            log.warning("reload: daemon.http.host, daemon.http.port and daemon.workers take effect at the next restart")
        self.config = new
        self._backoff.configure(new.daemon.retry_min, new.daemon.retry_max)
        self._backoff.clear()  # an operator reloading (e.g. after 'resolve') wants failing targets tried now
        self._watcher.set_folders({name: spec.folder for name, spec in new.sets.items()})
        keep = {(name, dbid) for name in new.sets for dbid in self._targets(new, name)}
        with self._lock:
            for key in [k for k in self._snapshot if k not in keep]:
                del self._snapshot[key]
        self._schedule(new, startup=False)
        self._reload = {"at": _iso(self.clock()), "ok": True, "error": None}
        log.info("reloaded %s: %d sets, %d bindings", new.path.name, len(new.sets), len(keep))
        return True

    # -- scheduling --------------------------------------------------------------

    def _schedule(self, config: Config, startup: bool) -> None:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        for job in self._scheduler.get_jobs():
            kind, _, name = job.id.partition(":")
            spec = config.sets.get(name)
            if spec is None or (kind == "set" and spec.every is None and spec.cron is None):
                job.remove()
        for name, spec in config.sets.items():
            if spec.every is not None:
                # An interval set runs at once, then every interval.
                self._scheduler.add_job(self._tick, IntervalTrigger(seconds=spec.every, timezone=timezone.utc), args=[name, "schedule"],
                                        id=f"set:{name}", name=f"set {name}", replace_existing=True, next_run_time=self.clock())
            elif spec.cron is not None:
                self._scheduler.add_job(self._tick, CronTrigger.from_crontab(spec.cron, timezone=timezone.utc), args=[name, "schedule"],
                                        id=f"set:{name}", name=f"set {name}", replace_existing=True)
                if not startup:
                    self.request(name, "start")  # a cron set waits for its hour; a reload only refreshes its status
            else:
                self.request(name, "start")

    def request(self, name: str, reason: str, at: datetime | None = None) -> None:
        """Run a set now (or at ``at``); a trigger that arrives during a run of the set makes it run once more."""
        if self._stopping.is_set() or self._scheduler is None:
            return
        runs = self._runs_of(name)
        with runs.guard:
            if runs.running and at is None:
                runs.again = _stronger(runs.again, reason)
                return
        kind = "retry" if reason == "retry" else "now"
        self._scheduler.add_job(self._tick, "date", run_date=at or self.clock(), args=[name, reason], id=f"{kind}:{name}",
                                name=f"{kind} {name}", replace_existing=True)

    def _runs_of(self, name: str) -> _SetRuns:
        with self._lock:
            return self._runs.setdefault(name, _SetRuns())

    def _watch_loop(self) -> None:
        while not self._stopping.wait(self.config.daemon.watch_interval):
            try:
                for name in self._watcher.scan():
                    if name in self.config.sets and not self._stopping.is_set():
                        log.info("%s: new or changed migration files; running the set", name)
                        self.request(name, "change")
            except Exception as exc:  # the watcher must outlive any one bad scan
                log.error("watcher: %s: %s", type(exc).__name__, redact(str(exc)))

    # -- runs --------------------------------------------------------------------

    def _tick(self, name: str, reason: str) -> list[_Outcome]:
        """The job body: run the set, and again while triggers arrived meanwhile."""
        with self._idle:
            if self._stopping.is_set():
                return []
            self._inflight += 1
        try:
            return self._tick_runs(name, reason)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _tick_runs(self, name: str, reason: str) -> list[_Outcome]:
        runs = self._runs_of(name)
        with runs.guard:
            if runs.running:
                runs.again = _stronger(runs.again, reason)
                return []
            runs.running = True
        outcomes = []
        try:
            while not self._stopping.is_set():
                outcomes.append(self._run_once(name, reason))
                with runs.guard:
                    if runs.again is None or self._stopping.is_set():
                        break
                    reason, runs.again = runs.again, None
        finally:
            with runs.guard:
                runs.running = False
        return outcomes

    def _targets(self, config: Config, name: str) -> list[str]:
        if name not in config.sets:
            return []
        dbids = [dbid for _, dbid in config.bindings(name)]
        if self.shard is None:
            return dbids
        index, count = self.shard
        return [dbid for dbid in dbids if fleet.shard_of(dbid, count) == index]

    def _run_once(self, name: str, reason: str) -> _Outcome:
        config = self.config
        spec = config.sets.get(name)
        started, clock_start = self.clock(), time.monotonic()
        if spec is None:
            return _Outcome(name, reason, "deferred", started=started)
        status_only = spec.apply == "report" or (reason == "start" and spec.cron is not None)
        if not status_only and not self._watcher.settled(name):
            log.info("%s: migration files are still changing; the run waits until they settle", name)
            return _Outcome(name, reason, "deferred", started=started)
        skipped: set[str] = set()
        workers = config.daemon.workers
        try:
            if status_only:
                report = fleet.status(config, name, workers=workers, shard=self.shard, slots=self._slots)
            else:
                skipped = self._hold_back(config, name, reason)
                report = fleet.catch_up(config, name, workers=workers, shard=self.shard, slots=self._slots,
                                        on_result=lambda binding: self._live(binding, skipped),
                                        should_stop=self._stopping.is_set, skip=lambda _set, dbid: dbid in skipped)
                self._note_failures(name, report, skipped)
        except OrchestratorError as exc:  # the set itself is unusable (bad file, duplicate version): every binding shows it
            message = redact(str(exc))
            log.error("%s: %s", name, message)
            report = fleet.FleetReport([fleet.BindingStatus(name, dbid, "failed", error=message, set_error=True) for dbid in self._targets(config, name)])
            return _Outcome(name, reason, "catch-up", report, frozenset(), started, time.monotonic() - clock_start, message)
        return _Outcome(name, reason, "status" if status_only else "catch-up", report, frozenset(skipped), started,
                        time.monotonic() - clock_start)

    def _hold_back(self, config: Config, name: str, reason: str) -> set[str]:
        """Targets this catch-up leaves alone: failing ones still waiting, and ledger-recorded failures."""
        skipped = set()
        for dbid in self._targets(config, name):
            entry = self._backoff.get(name, dbid)
            if entry is None:
                if reason == "retry":
                    skipped.add(dbid)  # a retry run is for the failing targets only
                continue
            # A changed file may be the fix for a failed migration: try it now rather than at the next retry.
            if not self._backoff.due(name, dbid) and not (reason == "change" and entry.state == "failed"):
                skipped.add(dbid)
                continue
            if entry.state == "failed":
                # A failure the ledger records (MySQL) blocks the set until 'orchestrator resolve':
                # re-read it (one connect, one ledger read), never re-run it.
                check = fleet.status(config, name, target=dbid, workers=1, shard=self.shard)
                fresh = next((b for b in check.bindings if b.dbid == dbid), None)
                if fresh is not None and fresh.state == "failed":
                    retry = self._backoff.fail(name, dbid, "failed", fresh.error or entry.error)
                    log.info("%s/%s: still failed in its ledger; waiting for 'orchestrator resolve' (next look at %s)",
                             dbid, name, _hms(retry.next_at))
                    with self._lock:
                        self._snapshot[(name, dbid)] = fresh
                    skipped.add(dbid)
        return skipped

    def _note_failures(self, name: str, report: FleetReport, skipped: set[str]) -> None:
        for binding in report.bindings:
            if binding.dbid in skipped or binding.set_error:
                continue  # an unreadable set is re-read on every run, and the watcher sees its fix
            if binding.state in ("failed", "unreachable"):
                retry = self._backoff.fail(name, binding.dbid, binding.state, binding.error)
                log.warning("%s/%s: %s; retrying at %s (attempt %d)", binding.dbid, name, binding.state,
                            _hms(retry.next_at), retry.failures + 1)
            elif binding.state != "locked" and self._backoff.succeed(name, binding.dbid):
                log.info("%s/%s: %s again", binding.dbid, name, binding.state)
        pending = [r for r in self._backoff.entries() if r.set_id == name]
        if pending:
            self.request(name, "retry", at=min(r.next_at for r in pending))
        elif self._scheduler is not None and self._scheduler.get_job(f"retry:{name}") is not None:
            try:
                self._scheduler.remove_job(f"retry:{name}")
            except Exception:  # it fired meanwhile
                pass

    def _live(self, binding: BindingStatus, skipped: set[str]) -> None:
        """Show a binding's result as soon as catch-up reports it, before the whole set is done."""
        if binding.dbid in skipped:
            return
        with self._lock:
            before = self._snapshot.get((binding.set_id, binding.dbid))
            self._snapshot[(binding.set_id, binding.dbid)] = binding
        # Say what changed, not the same drift or lock again at every tick.
        if binding.applied_now or before is None or (before.state, before.error) != (binding.state, binding.error):
            render.binding_line(binding, "catch-up")

    def _refresh_all(self, config: Config) -> None:
        try:
            report = fleet.status(config, workers=config.daemon.workers, shard=self.shard)
        except OrchestratorError as exc:
            log.error("first status refresh: %s", redact(str(exc)))
            return
        with self._lock:
            for binding in report.bindings:
                self._snapshot[(binding.set_id, binding.dbid)] = binding
            self._refreshed_at = self.clock()

    def _on_event(self, event: Any) -> None:
        """Job listener: fold each run's report into the snapshot and the metrics; log missed and skipped runs."""
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        name = event.job_id.partition(":")[2]
        if event.code == EVENT_JOB_EXECUTED:
            for outcome in event.retval or []:
                self._commit(outcome)
            return
        kind = {EVENT_JOB_ERROR: "errors", EVENT_JOB_MISSED: "missed", EVENT_JOB_MAX_INSTANCES: "skipped_still_running"}[event.code]
        with self._lock:
            self._events[kind] += 1
        self.metrics.events.labels(kind).inc()
        if event.code == EVENT_JOB_ERROR:  # a bug: run failures are bindings' states, never exceptions
            log.error("%s: run crashed: %s: %s", name, type(event.exception).__name__, redact(str(event.exception)))
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            # A submission event: it carries every due time it skipped (scheduled_run_times, plural).
            due = ", ".join(_hms(t) for t in getattr(event, "scheduled_run_times", None) or ()) or "now"
            log.info("%s: run due at %s skipped: the previous run of the set is still going", name, due)
        else:  # APScheduler itself logs a warning for a missed run; it is counted in /status and /metrics
            log.debug("%s: run due at %s was missed", name, _hms(event.scheduled_run_time))

    def _commit(self, outcome: _Outcome) -> None:
        runs = self._runs_of(outcome.set_id)
        last: dict[str, Any] = {"at": _iso(outcome.started), "reason": outcome.reason, "mode": outcome.mode,
                                "duration_ms": int(outcome.seconds * 1000)}
        if outcome.error:
            last["error"] = outcome.error
        report = outcome.report
        if report is not None:
            last["exit_code"] = report.exit_code
            last["applied"] = sum(len(b.applied_now) for b in report.bindings if b.dbid not in outcome.skipped)
            self.metrics.runs.labels(outcome.set_id).observe(outcome.seconds)
        with self._lock:
            runs.runs += outcome.mode != "deferred"
            runs.last = last
            if report is not None:
                for binding in report.bindings:
                    if binding.dbid not in outcome.skipped:
                        self._snapshot[(binding.set_id, binding.dbid)] = binding
                self._refreshed_at = self.clock()
        for binding in report.bindings if report is not None and outcome.mode == "catch-up" else []:
            if binding.dbid in outcome.skipped:
                continue
            if binding.applied_now:
                self.metrics.applied.labels(binding.set_id, binding.dbid).inc(len(binding.applied_now))
            if binding.state == "failed":
                self.metrics.failed.labels(binding.set_id, binding.dbid).inc()


def _drop_max_instances_warning(record: logging.LogRecord) -> bool:
    """Logging filter: APScheduler's "maximum number of running instances reached" line (the daemon logs its own)."""
    return "maximum number of running instances reached" not in record.getMessage()


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def _exit_now(signum: int) -> None:
    name = signal.Signals(signum).name
    log.warning("%s again: exiting now; migrations in flight are cut off (PostgreSQL, SQLite and Redis roll them back)", name)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    os._exit(128 + signum)


def run_once(config: Config, shard: tuple[int, int] | None = None) -> int:
    """One catch-up of every set (report-only sets report), for CI/CD and Kubernetes Jobs; returns its exit code."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            _exit_now(signum)
        log.info("%s: stopping after the migrations in flight (send it again to exit at once)", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    report = fleet.catch_up(config, workers=config.daemon.workers, shard=shard, should_stop=stop.is_set,
                            on_result=lambda binding: render.binding_line(binding, "catch-up"))
    render.report(report, sys.stdout)
    return report.exit_code


def command(args: Any) -> int:
    """``orchestrator daemon CONFIG [--once] [--shard I/N]``."""
    config = config_module.load(args.config)
    shard = parse_shard(args.shard)
    if args.once:
        return run_once(config, shard)
    check_http_config(config.daemon.http, str(config.path))
    return Daemon(config, shard).serve()
