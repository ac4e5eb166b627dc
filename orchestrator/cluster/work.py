"""A job's body: catch up one target's sets, publish each binding, queue a retry or hand back the rest.

The sets run one after the other on the target's one connection, in config order, as
a catch-up does. A binding that ends failed, unreachable or locked is queued again for
that target after a backoff (``retry_min`` doubling per attempt up to ``retry_max``);
sets not started because the replica is stopping go straight back to the queue, so
another replica does them at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator import fleet
from orchestrator.cluster.store import StoreUnavailable

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.state import BindingStatus

__all__ = ["RETRY_STATES", "TargetWork", "retry_delay"]

log = logging.getLogger("cluster")

RETRY_STATES = ("failed", "unreachable", "locked")
Requeue = Callable[[str, list[str], str, int, float], bool]  # (dbid, sets, reason, attempt, delay) -> queued


def retry_delay(attempt: int, retry_min: float, retry_max: float) -> float:
    """Backoff before retry number ``attempt`` (1, 2, ...): retry_min, doubling, at most retry_max."""
    return float(min(retry_max, retry_min * 2 ** max(0, attempt - 1)))


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
            fleet.catch_up(config, target=dbid, skip=lambda name, _dbid: name not in wanted, workers=1,
                           should_stop=self.should_stop, on_result=result, slots=self.slots)
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
