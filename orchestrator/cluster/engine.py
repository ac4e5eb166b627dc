"""The work queue of a cluster: procrastinate jobs in the control store, one job per target.

A run of a set becomes one job per target (``orchestrator.migrate_target``, args
``dbid``, ``sets``, ``reason``, ``attempt``), deferred with two procrastinate locks:
``queueing_lock`` = the target and its sets, so a run noticed by N replicas is queued
once while it waits; ``lock`` = the target, so one replica at a time works on a
target. Each replica runs a procrastinate worker (``daemon.workers`` jobs at a time)
on its own event loop thread; the worker claims jobs with ``SKIP LOCKED`` and
heartbeats. Every ``lease / 3`` s each replica also hands stalled jobs back to the
queue: those of workers whose heartbeat is older than the lease (killed, frozen or
cut off) and those a worker dropped when it stopped. A store that goes away stops
the worker; it starts again (claiming nothing meanwhile) when the store answers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator.cluster.control import QUEUE, TASK
from orchestrator.cluster.store import StoreUnavailable, conninfo_params
from orchestrator.redact import redact

if TYPE_CHECKING:
    from orchestrator.config import PostgresqlConfig

__all__ = ["Engine", "Handler", "queueing_lock"]

log = logging.getLogger("cluster")

# handler(dbid, sets, reason, attempt): catch up those sets of that target (the daemon's side of a job).
Handler = Callable[[str, list[str], str, int], object]

# Work handed back by a stopping replica or taken from a silent one goes before the rest of the queue.
URGENT = 10
BATCH = 500  # jobs deferred in one statement when a set's run queues its targets
ANALYZE_AFTER = 200  # jobs queued at once after which the job table's statistics are refreshed


def queueing_lock(dbid: str, sets: list[str]) -> str:
    """At most one waiting job per target and set list: the same run noticed twice is queued once."""
    return f"{dbid}|{','.join(sets)}"


class Engine:
    """This replica's side of the queue: defer jobs, run a worker, hand stalled jobs back."""

    def __init__(self, db: PostgresqlConfig, handler: Handler, *, workers: int, lease: float, name: str):
        self.db = db
        self.handler = handler
        self.workers = workers
        self.lease = lease
        self.name = name
        self.worker_id: int | None = None  # procrastinate's id of this replica's current worker
        self.connected = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: Any = None
        self._defer_app: Any = None
        self._defer_lock = threading.Lock()

    # -- deferring (any thread) --------------------------------------------------------

    def enqueue(self, dbid: str, sets: list[str], reason: str, attempt: int = 0, delay: float = 0.0) -> bool:
        """Queue one target's work; False when the same work already waits. :class:`StoreUnavailable` if cut off."""
        from procrastinate.exceptions import AlreadyEnqueued

        job = self._job_for(dbid, sets, reason, attempt, delay)
        try:
            self._deferrer().job_manager.defer_job(job)
        except AlreadyEnqueued:
            return False
        except Exception as exc:  # procrastinate's ConnectorException, psycopg and pool errors alike
            raise self._unavailable(exc) from None
        return True

    def enqueue_many(self, work: list[tuple[str, list[str]]], reason: str) -> int:
        """Queue many targets' work (dbid, sets) in a few round trips; returns how many were queued.

        Work that already waits (same target and sets) is left out, as :meth:`enqueue` does:
        the waiting jobs are read first, the rest deferred in batches. A batch that meets work
        another replica queued meanwhile is deferred again one job at a time."""
        from procrastinate.exceptions import AlreadyEnqueued

        if not work:
            return 0
        queued = 0
        try:
            app = self._deferrer()
            rows = app.connector.execute_query_all(
                "SELECT queueing_lock FROM procrastinate_jobs WHERE status = 'todo' AND queueing_lock = ANY(%(locks)s)",
                locks=[queueing_lock(dbid, sets) for dbid, sets in work])
            waiting = {row["queueing_lock"] for row in rows}
            jobs = [self._job_for(dbid, sets, reason) for dbid, sets in work if queueing_lock(dbid, sets) not in waiting]
            for start in range(0, len(jobs), BATCH):
                batch = jobs[start:start + BATCH]
                try:
                    app.job_manager.batch_defer_jobs(batch)
                    queued += len(batch)
                except AlreadyEnqueued:  # the whole batch is rolled back; the ones still missing go one by one
                    for job in batch:
                        try:
                            app.job_manager.defer_job(job)
                            queued += 1
                        except AlreadyEnqueued:
                            pass
            if queued >= ANALYZE_AFTER:
                # Fresh statistics let the planner take a claim by index (see store's job lock index);
                # without them, claims from a queue this deep cost a scan each until autovacuum comes by.
                try:
                    app.connector.execute_query("ANALYZE procrastinate_jobs")
                except Exception as exc:
                    log.debug("ANALYZE procrastinate_jobs: %s", redact(str(exc)))
        except Exception as exc:  # procrastinate's ConnectorException, psycopg and pool errors alike
            raise self._unavailable(exc) from None
        return queued

    def _job_for(self, dbid: str, sets: list[str], reason: str, attempt: int = 0, delay: float = 0.0) -> Any:
        from procrastinate.jobs import Job

        return Job(id=None, queue=QUEUE, task_name=TASK, lock=dbid, queueing_lock=queueing_lock(dbid, sets),
                   priority=URGENT if reason == "handback" else 0,
                   scheduled_at=datetime.now(UTC) + timedelta(seconds=delay) if delay > 0 else None,
                   task_kwargs={"dbid": dbid, "sets": list(sets), "reason": reason, "attempt": attempt})

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"control store {self.db.dbid}: {redact(' '.join(str(exc).split()))}")

    def _deferrer(self) -> Any:
        from procrastinate import App, SyncPsycopgConnector

        with self._defer_lock:
            if self._defer_app is None:
                connector = SyncPsycopgConnector(kwargs=conninfo_params(self.db, f"orchestrator {self.name}"),
                                                 min_size=0, max_size=4, timeout=float(self.db.timeout))
                app = App(connector=connector)
                try:
                    app.open()
                except Exception as exc:
                    raise StoreUnavailable(f"control store {self.db.dbid}: {redact(str(exc))}") from None
                self._defer_app = app
            return self._defer_app

    # -- the worker (its own thread and event loop) -----------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="cluster-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Claim nothing new, let the jobs in flight end (they hand back what they did not do), unregister."""
        self._stopping.set()
        worker = self._worker
        if worker is not None:
            worker.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._defer_lock:
            if self._defer_app is not None:
                try:
                    self._defer_app.close()
                except Exception:
                    pass
                self._defer_app = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _main(self) -> None:
        wait = 0.5
        while not self._stopping.is_set():
            try:
                asyncio.run(self._serve())
                wait = 0.5
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("control store %s: %s; claiming nothing until it answers", self.db.dbid,
                                redact(" ".join(str(exc).split()) or type(exc).__name__))
            self.connected = False
            self.worker_id = None
            self._worker = None
            if self._stopping.wait(wait):
                break
            wait = min(wait * 2, max(1.0, self.lease / 3))

    async def _serve(self) -> None:
        from procrastinate import App, PsycopgConnector
        from procrastinate.worker import Worker

        connector = PsycopgConnector(kwargs=conninfo_params(self.db, f"orchestrator {self.name}"),
                                     min_size=1, max_size=self.workers + 3, timeout=float(self.db.timeout))
        app = App(connector=connector)
        app.task(name=TASK, queue=QUEUE, pass_context=True)(self._job)
        # Jobs are sync functions run on the loop's default executor, which has only cpu + 4 threads;
        # give it one per concurrent job so daemon.workers jobs really run at once.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=self.workers + 2, thread_name_prefix="cluster-job"))
        async with app.open_async():
            worker = Worker(app, queues=[QUEUE], name=f"orchestrator {self.name}", concurrency=self.workers,
                            install_signal_handlers=False, update_heartbeat_interval=max(0.5, self.lease / 3),
                            stalled_worker_timeout=self.lease, delete_jobs="successful",
                            fetch_job_polling_interval=max(0.5, min(5.0, self.lease / 3)),
                            abort_job_polling_interval=max(0.5, min(5.0, self.lease / 3)))
            self._worker = worker
            if self._stopping.is_set():
                return
            side = asyncio.create_task(self._reap(app, worker))
            try:
                await worker.run()  # type: ignore[no-untyped-call]
            finally:
                side.cancel()
                await asyncio.gather(side, return_exceptions=True)

    async def _reap(self, app: Any, worker: Any) -> None:
        """Every lease/3: hand back the jobs of dead workers; note this worker's id once registered."""
        interval = max(0.5, self.lease / 3)
        for _ in range(100):  # the worker registers itself right after it starts
            if worker.worker_id is not None:
                break
            await asyncio.sleep(0.05)
        while True:
            if worker.worker_id is not None:
                self.worker_id = worker.worker_id
                self.connected = True
            try:
                await app.job_manager.prune_stalled_workers(self.lease)
                for job in await app.job_manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=self.lease):
                    try:
                        await app.job_manager.retry_job(job, priority=URGENT)
                        log.info("%s: claim of a replica gone silent handed back to the queue",
                                 job.task_kwargs.get("dbid", "?"))
                    except Exception:
                        pass  # another replica handed it back first
            except Exception as exc:
                log.debug("stalled-job check failed: %s", redact(str(exc)))
            await asyncio.sleep(interval)

    def _job(self, context: Any, dbid: str, sets: list[str], reason: str = "schedule", attempt: int = 0) -> None:
        self.handler(dbid, list(sets), reason, attempt)
