"""A job's body: catch up one target's sets, publish each binding, queue a retry or hand back the rest.

The sets run one after the other on the target's one connection, in config order, as
a catch-up does. A binding that ends failed, unreachable or locked is queued again for
that target after a backoff (``retry_min`` doubling per attempt up to ``retry_max``);
sets not started because the replica is stopping go straight back to the queue, so
another replica does them at once.

A job costs the target's own work and little else: the sets are read once per replica
and kept while their files stay the same (:class:`SetCache`), and the job runs on the
worker's thread without walking the fleet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator import fleet
from orchestrator.cluster.store import StoreUnavailable
from orchestrator.state import SetInfo
from orchestrator.watcher import signature

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.state import BindingStatus

__all__ = ["RETRY_STATES", "SetCache", "TargetWork", "retry_delay"]

log = logging.getLogger("cluster")

RETRY_STATES = ("failed", "unreachable", "locked")
Requeue = Callable[[str, list[str], str, int, float], bool]  # (dbid, sets, reason, attempt, delay) -> queued


def retry_delay(attempt: int, retry_min: float, retry_max: float) -> float:
    """Backoff before retry number ``attempt`` (1, 2, ...): retry_min, doubling, at most retry_max."""
    return float(min(retry_max, retry_min * 2 ** max(0, attempt - 1)))


class SetCache:
    """The sets as this replica last read them, shared by its jobs.

    A set is read again when the config object changes (a reload or an inventory refresh
    makes a new one) or when a stat of its files (the watcher's signature: names, sizes,
    mtimes) differs from the one taken when it was read. The stat is taken for every job,
    so a job never runs a file older than the one on disk when it started, as before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._config: Config | None = None
        self._entries: dict[str, tuple[Any, SetInfo]] = {}

    def get(self, config: Config, name: str) -> SetInfo:
        spec = config.sets[name]
        seen = signature(spec.folder)
        with self._lock:
            if config is not self._config:
                self._config, self._entries = config, {}
            entry = self._entries.get(name)
        if entry is not None and seen is not None and entry[0] == seen and entry[1].spec is spec:
            return entry[1]
        info = SetInfo(spec)  # outside the lock: reading a big set must not hold up the other jobs
        with self._lock:
            if config is self._config and seen is not None:
                self._entries[name] = (seen, info)
        return info


class TargetWork:
    """Callable as the engine's handler: ``work(dbid, sets, reason, attempt)``."""

    def __init__(self, config: Callable[[], Config], publish: Callable[[list[dict[str, Any]]], None],
                 requeue: Requeue, should_stop: Callable[[], bool],
                 on_result: Callable[[BindingStatus], None] | None = None,
                 slots: threading.Semaphore | None = None):
        self.config = config
        self.publish = publish
        self.requeue = requeue
        self.should_stop = should_stop
        self.on_result = on_result
        self.slots = slots
        self.sets = SetCache()

    def __call__(self, dbid: str, sets: list[str], reason: str, attempt: int) -> list[BindingStatus]:
        config = self.config()
        wanted = [name for name in sets if name in config.sets and dbid in config.sets[name].targets]
        results: list[BindingStatus] = []

        def result(binding: BindingStatus) -> None:
            results.append(binding)
            self.publish([binding.to_json()])
            if self.on_result is not None:
                self.on_result(binding)

        if wanted:
            # In config order, as a catch-up runs a target's sets.
            ordered = [name for name in config.sets if name in wanted]
            fleet.catch_up_target(config, dbid, [self.sets.get(config, name) for name in ordered],
                                  on_result=result, should_stop=self.should_stop, slots=self.slots)
        stopped = self.should_stop()
        # Stopping: a set not started, or stopped between two migrations, goes back to the queue.
        done = {b.set_id for b in results if not (stopped and b.state == "pending" and b.apply == "auto")}
        left = [name for name in wanted if name not in done]
        failing = [b.set_id for b in results if b.state in RETRY_STATES]
        if left:
            self._again(dbid, left, "handback", attempt, 0.0)
        if failing:
            delay = retry_delay(attempt + 1, config.daemon.retry_min, config.daemon.retry_max)
            self._again(dbid, failing, "retry", attempt + 1, delay)
        return results

    def _again(self, dbid: str, sets: list[str], reason: str, attempt: int, delay: float) -> None:
        try:
            self.requeue(dbid, sets, reason, attempt, delay)
        except StoreUnavailable as exc:  # the set's next run queues it again
            log.warning("%s: %s not queued again (%s): %s", dbid, ", ".join(sets), reason, exc)
