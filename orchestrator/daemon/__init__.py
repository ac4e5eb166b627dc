"""The long-running service: ``orchestrator daemon CONFIG [--once] [--shard I/N]``.

An APScheduler 3 BackgroundScheduler with a pool of ``daemon.workers`` threads runs
each set as one job (:mod:`.scheduling`); a run is a fleet catch-up of the set with
failing targets held back by backoff (:mod:`.runs`); every run's results go into an
in-memory snapshot that the status server serves (:mod:`.snapshot`, :mod:`.metrics`),
so no request touches a database; :mod:`.service` holds the life cycle, signals and
reload. Several replicas may serve one fleet: target-side locks make sure each
migration is applied once, and ``--shard I/N`` splits the targets between them.
"""

from __future__ import annotations

from orchestrator.daemon.service import Daemon, command, parse_shard, run_once

__all__ = ["Daemon", "command", "parse_shard", "run_once"]
