"""The daemon's life cycle: start, serve until a signal, reload on SIGHUP, stop; and ``--once``.

:class:`Daemon` puts the parts together: the runs (:mod:`.runs`), the scheduler
(:mod:`.scheduling`), the set-folder watcher, the snapshot the status server reads
(:mod:`.snapshot`) and the metrics. SIGTERM/SIGINT stop new work and let the
migration in flight finish (a second one exits at once); SIGHUP reloads the config,
keeping the running one when the new one is bad. Signal handlers only set flags;
the work happens in :meth:`Daemon.serve`'s loop.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestrator import __version__, defaults, render, waves
from orchestrator import config as config_module
from orchestrator.backoff import Backoff
from orchestrator.cluster.shard import resolve_shard
from orchestrator.daemon.common import shard_targets, utcnow
from orchestrator.daemon.discovery import Discovery
from orchestrator.daemon.metrics import Metrics
from orchestrator.daemon.runs import Runs
from orchestrator.daemon.scheduling import Scheduling
from orchestrator.daemon.snapshot import Snapshot
from orchestrator.errors import ConfigError
from orchestrator.http import StatusServer, check_http_config, is_loopback
from orchestrator.notify import Notifier
from orchestrator.redact import redact
from orchestrator.watcher import Watcher

if TYPE_CHECKING:
    from orchestrator.backoff import Clock
    from orchestrator.cluster.mode import ClusterMode
    from orchestrator.config import Config
    from orchestrator.state import BindingStatus

__all__ = ["Daemon", "check_cluster_rollouts", "command", "parse_shard", "run_once"]

log = logging.getLogger("daemon")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` → (I, N) with 0 <= I < N; None when not given; ConfigError otherwise."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"daemon: --shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/2 and 1/2 for two replicas")
    return int(m.group(1)), int(m.group(2))


class Daemon:
    """Scheduler + watcher + retries around fleet catch-up, with a status snapshot for the HTTP server."""

    def __init__(self, config: Config, shard: tuple[int, int] | None = None, clock: Clock = utcnow):
        check_cluster_rollouts(config)
        self.shard = shard
        self.clock = clock
        self.started_at = clock()
        self._stopping = threading.Event()
        self.discovery = Discovery(config)  # the config as loaded; runs work on it over the inventory's targets
        config = self.discovery.resolve()
        self._inventory_guard = threading.Lock()
        self._inventory_thread: threading.Thread | None = None
        self._ready = False
        self.backoff = Backoff(clock, config.daemon.retry_min, config.daemon.retry_max)
        self.watcher = Watcher({name: spec.folder for name, spec in config.sets.items()})
        self.snapshot = Snapshot(self, self.backoff)
        self.metrics = Metrics(self.snapshot, shard)
        self.runs = Runs(config, shard, clock, snapshot=self.snapshot, metrics=self.metrics, backoff=self.backoff,
                         watcher=self.watcher, stopping=self._stopping, on_retry=lambda name, at: self.scheduling.retry(name, at))
        self.scheduling = Scheduling(self.runs, self.snapshot, self.metrics, clock, self._stopping)
        self.runs.on_soak = lambda name, at: self.scheduling.request(name, "soak", at)
        self._record_inventory()
        self.cluster = _cluster_mode(self, config)
        self._server: StatusServer | None = None
        self._watch_thread: threading.Thread | None = None
        self._stop_signal = 0
        self._hups = 0

    # -- what the snapshot reads (snapshot.DaemonView) ------------------------------

    @property
    def config(self) -> Config:
        """The configuration runs use; a reload replaces it."""
        return self.runs.config

    @config.setter
    def config(self, config: Config) -> None:
        self.runs.config = config

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def ready(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            return False, "stopping"
        if not self._ready:
            return False, "first status refresh not done yet"
        if not self.scheduling.running:
            return False, "scheduler not running"
        return True, ""

    def next_run(self, name: str) -> datetime | None:
        return self.scheduling.next_run(name)

    def next_retry(self, name: str) -> datetime | None:
        return self.scheduling.next_retry(name)

    def running(self, name: str) -> bool:
        return self.runs.running(name)

    def status(self) -> dict[str, Any]:
        """The /status document (see :meth:`Snapshot.status`)."""
        return self.snapshot.status()

    def rows(self) -> list[tuple[BindingStatus, dict[str, Any]]]:
        return self.snapshot.rows()

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Serve HTTP, take the first status snapshot, start the scheduler and the watcher."""
        config = self.config
        check_http_config(config.daemon.http, str(config.path))
        http = config.daemon.http
        self._server = StatusServer(self.snapshot, self.metrics, http.host, http.port, self._token)
        self._server.start()
        shard = f", shard {self.shard[0]}/{self.shard[1]}" if self.shard else ""
        log.info("orchestrator %s daemon: %d sets, %d workers%s; status on %s", __version__, len(config.sets),
                 config.daemon.workers, shard, self._server.url)
        if self.cluster is not None:
            self.cluster.start()  # the control store's schema, this replica's entry and its worker
            log.info("cluster mode: control store %s, lease %gs, replica %s", self.cluster.db.dbid,
                     self.cluster.lease, self.cluster.owner)
        if self.cluster is None:
            self.runs.refresh_all()
            self.scheduling.start(config)
        else:
            # The start's work is queued first; the fleet view read at start stands in for the first
            # status read, and this replica reads what the view lacks beside the work.
            self.scheduling.start(config)
            threading.Thread(target=self.runs.refresh_unpublished, args=(self.cluster.published,),
                             name="orchestrator-first-read", daemon=True).start()
        self._watch_thread = threading.Thread(target=self._watch_loop, name="orchestrator-watch", daemon=True)
        self._watch_thread.start()
        if self.discovery.active:
            self._inventory_thread = threading.Thread(target=self._inventory_loop, name="orchestrator-inventory",
                                                      daemon=True)
            self._inventory_thread.start()
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
            log.info("%s: stopping; runs in progress finish their current migration (send %s again to exit at once)",
                     name, name)
        # Wait for the runs in flight here, not in the scheduler's shutdown: it holds the job store
        # lock while it waits, and a finishing run still settles its job's next time through that lock.
        self.scheduling.wait_idle()
        self.scheduling.shutdown()
        if self.cluster is not None:
            # Jobs in flight end after their current set; the sets they did not start go back to the queue.
            self.cluster.stop()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
        self.runs.close(wait=defaults.NOTIFY_FLUSH)  # webhook events still queued get a few seconds
        if self._server is not None:
            self._server.stop()
            self._server = None
        if first:
            log.info("stopped")

    def reload(self) -> bool:
        """Re-read config.json; a bad new config is logged (one line) and the running one kept."""
        old = self.config
        try:
            with self._inventory_guard:
                new = self.discovery.reload(config_module.load(old.path))
            check_http_config(new.daemon.http, str(new.path))
            check_cluster_rollouts(new)
            host = self._server.address[0] if self._server is not None else None
            if host is not None and not is_loopback(host) and not _secret(new.daemon.http.token):
                raise ConfigError(f"{new.path}: daemon.http.token is required while serving on {host}")
        except ConfigError as exc:
            message = redact(str(exc))
            log.error("reload failed, keeping the running configuration: %s", message)
            self.snapshot.record_reload(self.clock(), message)
            return False
        if (new.daemon.http.host, new.daemon.http.port, new.daemon.workers) != (
                old.daemon.http.host, old.daemon.http.port, old.daemon.workers):
            log.warning("reload: daemon.http.host, daemon.http.port and daemon.workers take effect at the next restart")
        self.config = new
        self.backoff.configure(new.daemon.retry_min, new.daemon.retry_max)
        self.backoff.clear()  # an operator reloading (e.g. after 'resolve') wants failing targets tried now
        self.watcher.set_folders({name: spec.folder for name, spec in new.sets.items()})
        keep = {(name, dbid) for name in new.sets for dbid in shard_targets(new, name, self.shard)}
        self.snapshot.keep_only(keep | self.snapshot.removed_keys(self.discovery.removed()))
        self._record_inventory()
        self.scheduling.schedule(new, startup=False)
        self.snapshot.record_reload(self.clock(), None)
        log.info("reloaded %s: %d sets, %d bindings", new.path.name, len(new.sets), len(keep))
        return True

    def refresh_inventory(self) -> None:
        """Re-read the inventory: new targets are caught up now, vanished ones shown as removed and left alone."""
        with self._inventory_guard:
            old = self.config
            new = self.discovery.resolve()
            self.config = new
            keep = {(name, dbid) for name in new.sets for dbid in shard_targets(new, name, self.shard)}
            self.snapshot.keep_only(keep | self.snapshot.removed_keys(self.discovery.removed()))
            self._record_inventory()
        for name, spec in new.sets.items():
            added = set(spec.targets) - set(old.sets[name].targets if name in old.sets else ())
            if added and not self._stopping.is_set():
                shown = ", ".join(sorted(added)[:5]) + (f" and {len(added) - 5} more" if len(added) > 5 else "")
                log.info("%s: %d new target(s) from the inventory (%s); running the set", name, len(added), shown)
                self.scheduling.request(name, "inventory")

    def _record_inventory(self) -> None:
        if not self.discovery.active:
            return
        sources = self.discovery.sources()
        self.snapshot.record_inventory(sources, self.discovery.problems())
        for source in sources:
            self.metrics.inventory_up.labels(source=source["name"]).set(1 if source["up"] else 0)
        self.snapshot.mark_removed(self.discovery.removed())

    def _inventory_loop(self) -> None:
        while not self._stopping.wait(self.discovery.interval):
            try:
                self.refresh_inventory()
            except Exception as exc:  # the refresh must outlive any one bad read
                log.error("inventory refresh: %s: %s", type(exc).__name__, redact(str(exc)))

    def _token(self) -> str | None:
        return _secret(self.config.daemon.http.token) or None

    def _watch_loop(self) -> None:
        while not self._stopping.wait(self.config.daemon.watch_interval):
            try:
                for name in self.watcher.scan():
                    if name in self.config.sets and not self._stopping.is_set():
                        log.info("%s: new or changed migration files; running the set", name)
                        self.scheduling.request(name, "change")
            except Exception as exc:  # the watcher must outlive any one bad scan
                log.error("watcher: %s: %s", type(exc).__name__, redact(str(exc)))

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


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def _exit_now(signum: int) -> None:
    name = signal.Signals(signum).name
    log.warning("%s again: exiting now; migrations in flight are cut off (PostgreSQL, SQLite and Redis roll them back)",
                name)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    os._exit(128 + signum)


def check_cluster_rollouts(config: Config) -> None:
    """Cluster mode's per-target jobs do not go through the rollout gate yet: refuse a gated set rather than ignore it."""
    if config.daemon.cluster is None:
        return
    for name, spec in config.sets.items():
        field = "rollout" if spec.rollout is not None else "until" if spec.caps.until is not None else \
            "pins" if spec.caps.pins else None
        if field is not None:
            raise ConfigError(f"{config.path.name}: migrations.sets.{name}.{field}: not supported with daemon.cluster "
                              "(cluster mode does not gate its jobs by rollouts, caps or pins yet); run this set "
                              "without daemon.cluster (a daemon, daemon --once or catch-up) or drop its "
                              f"{field}")


def _cluster_mode(daemon: Daemon, config: Config) -> ClusterMode | None:
    """Cluster mode's handle when ``daemon.cluster`` names a control store, wired into the runs and the snapshot."""
    spec = config.daemon.cluster
    if spec is None:
        return None
    from orchestrator.cluster.mode import ClusterMode
    from orchestrator.config import PostgresqlConfig

    store = config.database(spec.store)
    assert isinstance(store, PostgresqlConfig)  # config checks daemon.cluster.store names one
    mode = ClusterMode(store, lambda: daemon.config, workers=config.daemon.workers, lease=spec.lease,
                       should_stop=daemon._stopping.is_set, on_result=daemon.runs.record_result,
                       slots=daemon.runs.slots)
    daemon.runs.cluster = mode
    daemon.snapshot.cluster = mode
    return mode


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
    notifier = Notifier(config.notify)
    try:
        report = waves.catch_up(config, workers=config.daemon.workers, shard=shard, should_stop=stop.is_set,
                                on_result=lambda binding: render.binding_line(binding, "catch-up"), notifier=notifier)
    finally:
        notifier.close(wait=defaults.NOTIFY_FLUSH)
    render.report(report, sys.stdout)
    return report.exit_code


def _log_format(config: Config, args: Any) -> None:
    """daemon.log_format, unless --log-format was given."""
    wanted = config.daemon.log_format
    if getattr(args, "log_format", None) is None and (wanted == "json" or (wanted == "auto" and not sys.stderr.isatty())):
        from orchestrator.log import setup_logging

        setup_logging(-1 if args.quiet else args.verbose, log_format="json")


def command(args: Any) -> int:
    """``orchestrator daemon CONFIG [--once] [--shard I/N]``."""
    config = config_module.load(args.config)
    _log_format(config, args)
    shard = parse_shard(resolve_shard(args.shard) if args.shard is not None else None)
    if shard is not None and config.daemon.cluster is not None:
        raise ConfigError(f"daemon: --shard {args.shard} and daemon.cluster in {config.path.name} do not go together: "
                          "in cluster mode the replicas share the targets through the control store")
    if args.once:
        return run_once(Discovery(config).resolve(), shard)
    check_http_config(config.daemon.http, str(config.path))
    return Daemon(config, shard).serve()
