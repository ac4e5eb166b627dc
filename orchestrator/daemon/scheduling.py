"""When sets run: APScheduler 3 with ONE job per set (id ``set:<name>``).

The job's trigger is the set's ``schedule`` (``every`` → interval, ``cron`` → crontab,
UTC); a set without one gets a one-shot job only when something asks it to run. A
file change, a start-up or a retry does not add a job: it brings the set's one job
forward (``next_run_time``), so ``max_instances=1`` serialises all runs of a set and
``coalesce`` folds the fire times a busy set missed into one. Why the job runs (the
strongest trigger waiting, else "schedule") is kept in the set's :class:`SetRuns`;
after a brought-forward run an interval job goes back to its own phase. A trigger that
arrives while the set runs is kept there too and becomes one more run right after.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.daemon.common import hms
from orchestrator.daemon.runs import stronger
from orchestrator.redact import redact

if TYPE_CHECKING:
    from orchestrator.backoff import Clock
    from orchestrator.config import Config
    from orchestrator.daemon.metrics import Metrics
    from orchestrator.daemon.runs import Runs, SetRuns
    from orchestrator.daemon.snapshot import Snapshot

__all__ = ["Scheduling", "job_id"]

log = logging.getLogger("daemon")


def job_id(name: str) -> str:
    """The id of a set's one job."""
    return f"set:{name}"


def _scheduled(job: Any) -> bool:
    """Whether a job runs on the set's schedule (interval or cron), not once for a trigger."""
    from apscheduler.triggers.date import DateTrigger

    return not isinstance(job.trigger, DateTrigger)


def _drop_max_instances_warning(record: logging.LogRecord) -> bool:
    """Logging filter: APScheduler's "maximum number of running instances reached" line (the daemon logs its own)."""
    return "maximum number of running instances reached" not in record.getMessage()


class Scheduling:
    """The scheduler of the daemon's sets: one job per set, brought forward by triggers, retries included."""

    def __init__(self, runs: Runs, snapshot: Snapshot, metrics: Metrics, clock: Clock, stopping: threading.Event):
        self.runs = runs
        self.snapshot = snapshot
        self.metrics = metrics
        self.clock = clock
        self._stopping = stopping
        self._scheduler: Any = None
        # Lock order: a set's guard, then this lock, then APScheduler's job store lock.
        self._lock = threading.RLock()
        self._inflight = 0  # job bodies running; wait_idle() waits for them
        self._idle = threading.Condition()

    @property
    def running(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running)

    def start(self, config: Config) -> None:
        """Start the scheduler (a pool of ``daemon.workers`` threads) and schedule every set."""
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(config.daemon.workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": int(defaults.MISFIRE_GRACE)},
            timezone=UTC,
        )
        # Our listener says it in one line; APScheduler's own warning would repeat it.
        logging.getLogger("apscheduler.scheduler").addFilter(_drop_max_instances_warning)
        self._scheduler.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._scheduler.start()
        self.schedule(config, startup=True)

    def wait_idle(self) -> None:
        """Wait for the job bodies in flight (call after setting ``stopping``)."""
        with self._idle:
            while self._inflight:
                self._idle.wait(0.2)

    def shutdown(self) -> None:
        if self.running:
            self._scheduler.shutdown(wait=True)

    def schedule(self, config: Config, startup: bool) -> None:
        """Give every set of ``config`` its job; drop the jobs of sets it no longer has."""
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        run_now = []
        with self._lock:
            for job in self._scheduler.get_jobs():
                spec = config.sets.get(job.id.partition(":")[2])
                if spec is None or (spec.every is None and spec.cron is None and _scheduled(job)):
                    job.remove()
            for name, spec in config.sets.items():
                if spec.every is not None:
                    # An interval set runs at once, then every interval.
                    self._scheduler.add_job(self._fire, IntervalTrigger(seconds=spec.every, timezone=UTC), args=[name],
                                            id=job_id(name), name=f"set {name}", replace_existing=True,
                                            next_run_time=self.clock())
                elif spec.cron is not None:
                    self._scheduler.add_job(self._fire, CronTrigger.from_crontab(spec.cron, timezone=UTC), args=[name],
                                            id=job_id(name), name=f"set {name}", replace_existing=True)
                    if not startup:
                        run_now.append(name)  # a cron set waits for its hour; a reload only refreshes its status
                else:
                    run_now.append(name)
        for name in run_now:
            self.request(name, "start")

    def request(self, name: str, reason: str, at: datetime | None = None) -> None:
        """Run a set now (or at ``at``) by bringing its job forward; during a run of the set, run it once more after."""
        if self._stopping.is_set() or self._scheduler is None:
            return
        state = self.runs.state(name)
        with state.guard:
            if state.running and at is None:
                state.again = stronger(state.again, reason)
                return
            state.want(reason, at or self.clock())
            if not state.running:  # else the run settles its job when it ends (see _fire)
                self._settle(name, state)

    def retry(self, name: str, at: datetime | None) -> None:
        """The runs' word on a set's failing targets: try them at ``at``, or (None) none is left to retry."""
        if at is not None:
            self.request(name, "retry", at)
            return
        state = self.runs.state(name)
        with state.guard:
            if state.wanted == "retry":
                state.wanted = state.wanted_at = None
                if not state.running:
                    self._settle(name, state)

    def job_ids(self) -> list[str]:
        """The scheduler's jobs: at most one per set."""
        with self._lock:
            return sorted(job.id for job in self._scheduler.get_jobs()) if self.running else []

    def next_run(self, name: str) -> datetime | None:
        """When the set's job runs next, if the set has a schedule."""
        job = self._job(name)
        return job.next_run_time if job is not None and _scheduled(job) else None

    def next_retry(self, name: str) -> datetime | None:
        state = self.runs.state(name)
        with state.guard:
            return state.wanted_at if state.wanted == "retry" else None

    # -- the job -------------------------------------------------------------------

    def _fire(self, name: str) -> None:
        """The body of a set's job: run the set, then settle the job's next run time."""
        with self._idle:
            if self._stopping.is_set():
                return
            self._inflight += 1
        try:
            state = self.runs.state(name)
            # Once the run has taken the trigger that brought the job forward, the job goes back to its schedule.
            self.runs.tick(name, started=lambda: self._settle(name, state))
            with state.guard:
                if not state.running and not self._stopping.is_set():
                    self._settle(name, state)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _job(self, name: str) -> Any:
        if not self.running:
            return None
        with self._lock:
            return self._scheduler.get_job(job_id(name))

    def _settle(self, name: str, state: SetRuns) -> None:
        """Set the job's next run time from the set's schedule and the trigger waiting, whichever comes first
        (call under the set's guard). A stale time is made now: an old one would count as missed.

        After a run that a trigger brought forward, an interval job so keeps its own phase instead of
        counting from that run. A set without a schedule has a one-shot job while a trigger waits.
        """
        now = self.clock()
        wanted = max(state.wanted_at, now) if state.wanted is not None and state.wanted_at is not None else None
        with self._lock:
            job = self._scheduler.get_job(job_id(name))
            if job is not None and _scheduled(job):
                natural = job.trigger.get_next_fire_time(None, datetime.now(UTC))
                due = min(natural, wanted) if natural is not None and wanted is not None else natural or wanted
                if due is not None and job.next_run_time != due:
                    job.modify(next_run_time=due)
            elif state.running:
                return  # the run settles the one-shot job when it ends
            elif wanted is None:
                if job is not None:
                    job.remove()
            elif job is None:
                self._scheduler.add_job(self._fire, "date", run_date=wanted, args=[name], id=job_id(name),
                                        name=f"set {name}")
            elif job.next_run_time != wanted:
                job.modify(next_run_time=wanted)

    def _on_event(self, event: Any) -> None:
        """Job listener: count and log missed runs, runs skipped as the set still runs, and crashed job bodies."""
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        name = event.job_id.partition(":")[2]
        kind = {EVENT_JOB_ERROR: "errors", EVENT_JOB_MISSED: "missed", EVENT_JOB_MAX_INSTANCES: "skipped_still_running"}
        self.snapshot.count_event(kind[event.code])
        self.metrics.events.labels(kind[event.code]).inc()
        if event.code == EVENT_JOB_ERROR:  # a bug: run failures are bindings' states, never exceptions
            log.error("%s: run crashed: %s: %s", name, type(event.exception).__name__, redact(str(event.exception)))
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            # A submission event: it carries every due time it skipped (scheduled_run_times, plural).
            due = ", ".join(hms(t) for t in getattr(event, "scheduled_run_times", None) or ()) or "now"
            log.info("%s: run due at %s skipped: the previous run of the set is still going", name, due)
        else:  # APScheduler itself logs a warning for a missed run; it is counted in /status and /metrics
            log.debug("%s: run due at %s was missed", name, hms(event.scheduled_run_time))
