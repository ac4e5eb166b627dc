"""Cluster mode: replicas share one fleet through a control store (PostgreSQL) and procrastinate's job queue.

:mod:`.store` creates and upgrades the control store's schema in numbered steps;
:mod:`.engine` queues one job per target and runs this replica's procrastinate worker
(claims with ``SKIP LOCKED``, heartbeats, stalled jobs handed back after the lease);
:mod:`.work` is a job's body; :mod:`.control` keeps the replicas, the fleet view and
the queued set runs; :mod:`.replica` ties them together for the daemon; :mod:`.status`
is ``orchestrator cluster status``.
"""

from __future__ import annotations

from orchestrator.cluster.engine import Engine
from orchestrator.cluster.replica import Replica, View
from orchestrator.cluster.store import StoreUnavailable
from orchestrator.cluster.work import TargetWork

__all__ = ["Engine", "Replica", "StoreUnavailable", "TargetWork", "View"]
