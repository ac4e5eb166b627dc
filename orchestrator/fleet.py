"""Many bindings at once: status, plan and catch-up over the whole fleet.

A binding is one (set, target) pair from config.json. Work is grouped per
target: one task per target on a bounded thread pool, one connection per target
for the whole run, and that target's sets run one after the other on it (so a
fleet run never opens more than ``workers`` connections, and two sets of one
database never contend for it). A failed, locked or unreachable target costs
only its own worker for its own timeout. Every answer is read from the ledgers
in the targets themselves; status and plan open targets read-only and change
nothing.

What a state means lives in :mod:`orchestrator.state`, how it looks in
:mod:`orchestrator.render`, the command line in :mod:`orchestrator.cli`, and
``validate`` in :mod:`orchestrator.checks` (built on :func:`prepare` and
:func:`read_status`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import defaults
from orchestrator.concurrency import FileSlots, budgets
from orchestrator.configtypes import Config
from orchestrator.errors import ConfigError, LockHeld, OrchestratorError, TargetUnreachable
from orchestrator.runner import blocking_row
from orchestrator.runner import run as run_set
from orchestrator.serverslots import ServerSlots, interleave, server_key
from orchestrator.state import STATES, BindingStatus, FleetReport, SetInfo, assess, one_line

if TYPE_CHECKING:
    from orchestrator.targets import Applied, LedgerRow, Target

__all__ = ["STATES", "BindingStatus", "FleetReport", "Run", "catch_up", "catch_up_target", "loaded", "plan", "prepare",
           "read_status", "shard_of", "status"]

log = logging.getLogger("fleet")

OnResult = Callable[[BindingStatus], None]
Allow = Callable[[str, str, list[str]], list[str]]  # (set, dbid, pending versions) -> those it may start now


def shard_of(dbid: str, shards: int) -> int:
    """Stable shard index in ``range(shards)`` of a target (same on every replica and Python run)."""
    if shards < 1:
        raise ValueError(f"shard count must be at least 1, not {shards}")
    # sha1 rather than hash(): str hashes are salted per process.
    return int.from_bytes(hashlib.sha1(dbid.encode("utf-8")).digest()[:8], "big") % shards


# -- one run: what its workers share --------------------------------------------


@dataclass
class Run:
    """The selected bindings of one fleet run and what every worker of it shares."""

    config: Config
    infos: dict[str, SetInfo]  # set name -> the set as read once for this run
    groups: dict[str, list[str]]  # dbid -> set names bound to it, in config order
    config_name: str
    on_result: OnResult | None = None
    should_stop: Callable[[], bool] | None = None
    slots: threading.Semaphore | None = None  # shared by concurrent runs (the daemon's sets): one per open target
    servers: ServerSlots | None = None  # migrations.per_server: targets of one server worked on at once
    allow: Allow | None = None  # a rollout's gate: which pending versions a binding may start now
    stopping: threading.Event = field(default_factory=threading.Event)
    files: FileSlots = field(default_factory=FileSlots)  # the processors' slots for SQLite files (see concurrency)

    def stop_requested(self) -> bool:
        return self.stopping.is_set() or bool(self.should_stop and self.should_stop())

    def emit(self, st: BindingStatus) -> None:
        if self.on_result is not None:
            try:
                self.on_result(st)
            except Exception:  # a listener's bug must not lose the other bindings' results
                log.exception("result listener failed for %s/%s", st.dbid, st.set_id)


def prepare(config: Config | str | Path, set_name: str | None = None, target: str | None = None,
            shard: tuple[int, int] | None = None, skip: Callable[[str, str], bool] | None = None, *,
            on_result: OnResult | None = None, should_stop: Callable[[], bool] | None = None,
            config_name: str | None = None, slots: threading.Semaphore | None = None,
            servers: ServerSlots | None = None, allow: Allow | None = None) -> Run:
    """Select the bindings of a run (by set, target glob, shard and ``skip(set, dbid)``) and read their sets once."""
    config = config if isinstance(config, Config) else loaded(config)
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"bad shard {shard[0]}/{shard[1]}: expected I/N with 0 <= I < N")
    groups: dict[str, list[str]] = {}
    infos: dict[str, SetInfo] = {}
    for spec, dbid in config.bindings(set_name, target):
        if shard is not None and shard_of(dbid, shard[1]) != shard[0]:
            continue
        if skip is not None and skip(spec.name, dbid):
            continue
        if spec.name not in infos:
            infos[spec.name] = SetInfo(spec)
        groups.setdefault(dbid, []).append(spec.name)
    # Servers in turn, so the pool's threads do not all queue on one server's per_server slots.
    groups = {dbid: groups[dbid] for dbid in interleave(groups, lambda d: server_key(config.databases[d]) or d)}
    return Run(config, infos, groups, config_name or str(config.path.name), on_result=on_result,
               should_stop=should_stop, slots=slots, allow=allow,
               servers=servers if servers is not None else ServerSlots(config.per_server))


def loaded(path: str | Path) -> Config:
    """A config file loaded with its models (imported here: a caller passing a Config never pays for them)."""
    from orchestrator.config import load

    return load(path)


# -- fan-out over the targets ----------------------------------------------------

Work = Callable[[Run, str], list[BindingStatus]]


def _fan_out(run: Run, work: Work, workers: int | None, command: str) -> FleetReport:
    """Run ``work`` once per target on a bounded pool; results come back in config order."""
    started = time.monotonic()
    order = {(spec.name, dbid): i for i, (spec, dbid) in enumerate(run.config.bindings())}
    results: list[BindingStatus] = []
    if workers is None and run.config.workers is not None:
        workers = run.config.workers  # written in the config: one budget for all, as given
    # Without a count, SQLite files and server targets get pools of their own (see orchestrator.concurrency).
    pools = [(ThreadPoolExecutor(max_workers=count, thread_name_prefix=_pool_name(workers, dbids)), dbids)
             for count, dbids in budgets(((dbid, dbid.split(".", 1)[0]) for dbid in run.groups), workers)]
    try:
        futures = [pool.submit(_in_slot, run, work, dbid) for pool, dbids in pools for dbid in dbids]
        for future in futures:
            results.extend(future.result())
    except BaseException:
        # Ctrl-C: start nothing new; migrations already running finish on their own.
        run.stopping.set()
        for pool, _ in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    for pool, _ in pools:
        pool.shutdown()
    results.sort(key=lambda b: order.get((b.set_id, b.dbid), 0))
    return FleetReport(results, int((time.monotonic() - started) * 1000), command)


def _pool_name(workers: int | None, dbids: list[str]) -> str:
    if workers is not None:
        return "fleet"
    return "fleet-files" if dbids[0].startswith("sqlite.") else "fleet-servers"


def _in_slot(run: Run, work: Work, dbid: str) -> list[BindingStatus]:
    servers = run.servers or ServerSlots(None)
    with servers.slot(server_key(run.config.databases[dbid])):
        if run.slots is None:
            return work(run, dbid)
        with run.slots:
            return work(run, dbid)


def _failure_state(dbid: str, exc: BaseException) -> tuple[str, str]:
    """(state, message) for an exception met while working on a target.

    Targets raise TargetUnreachable for a lost connection themselves, so no driver object is inspected here.
    """
    if isinstance(exc, TargetUnreachable):
        return "unreachable", one_line(exc)
    if isinstance(exc, LockHeld):
        return "locked", one_line(exc)
    if isinstance(exc, OrchestratorError):
        return "failed", one_line(exc)
    return "failed", f"{dbid}: {type(exc).__name__}: {one_line(exc)}"


# -- the per-target worker -------------------------------------------------------

Body = Callable[["Target", SetInfo, str], BindingStatus]


def _open(run: Run, dbid: str, readonly: bool) -> Target:
    from orchestrator.targets import open_target

    target = open_target(run.config.databases[dbid], run.config.table)
    target.connect(readonly=readonly)
    return target


def _per_binding(run: Run, dbid: str, readonly: bool, body: Body) -> list[BindingStatus]:
    """Connect once, then ``body`` per set of this target; a lost or refused connection marks the rest unreachable."""
    out: list[BindingStatus] = []
    if run.stop_requested():
        return out
    with run.files.thinking(dbid):
        return _per_binding_in_slot(run, dbid, readonly, body, out)


def _per_binding_in_slot(run: Run, dbid: str, readonly: bool, body: Body, out: list[BindingStatus]) -> list[BindingStatus]:
    target: Target | None = None
    started = time.monotonic()
    down: tuple[str, str] | None = None
    try:
        target = _open(run, dbid, readonly)
    except Exception as exc:  # every failure to connect becomes this target's state
        down = _failure_state(dbid, exc)
    try:
        for set_name in run.groups[dbid]:
            if down is None and run.stop_requested():
                break
            info = run.infos[set_name]
            # The first binding of a target that could not be opened carries the time spent trying.
            st_started = started if down is not None and info.error is None and not out else time.monotonic()
            st = _not_tried(info, dbid, down) or _one_binding(info, dbid, target, body)
            if st.state == "unreachable" and down is None:
                # Each further attempt would wait out the timeout again; the next run retries.
                down = ("unreachable", f"{dbid}: not tried: the connection was lost earlier in this run")
            st.duration_ms = int((time.monotonic() - st_started) * 1000)
            out.append(st)
            run.emit(st)
    finally:
        if target is not None:
            target.close()
    return out


def _not_tried(info: SetInfo, dbid: str, down: tuple[str, str] | None) -> BindingStatus | None:
    """The binding's state when its set is unreadable or its target is down; None when it is to be worked on."""
    driver = dbid.split(".", 1)[0]
    if info.error is not None:
        return BindingStatus(info.spec.name, dbid, "failed", error=info.error, driver=driver, apply=info.spec.apply,
                             set_error=True)
    if down is not None:
        return BindingStatus(info.spec.name, dbid, down[0], error=down[1], driver=driver, apply=info.spec.apply)
    return None


def _one_binding(info: SetInfo, dbid: str, target: Target | None, body: Body) -> BindingStatus:
    driver = dbid.split(".", 1)[0]
    assert target is not None, "a binding is worked on only with its target open"
    try:
        return body(target, info, driver)
    except Exception as exc:
        state, message = _failure_state(dbid, exc)
        return BindingStatus(info.spec.name, dbid, state, error=message, driver=driver, apply=info.spec.apply)


# -- status and plan -------------------------------------------------------------


def _ledger_and_holder(target: Target, set_id: str) -> tuple[dict[str, LedgerRow], str | None]:
    """The ledger rows and the lock's holder, read so that a live runner's ``running`` row is never taken for an interrupted one.

    A ``running`` row with the lock held is work in progress. Seen with the lock free,
    it may be a run that finished between the two reads: the ledger is read again
    after the lock was seen free, and the holder once more if the row is still there
    (a new run may have started meanwhile).
    """
    rows = target.applied(set_id)
    holder = target.holder(set_id)
    blocked = blocking_row(rows)
    if holder is None and blocked is not None and blocked.status == "running":
        rows = target.applied(set_id)
        blocked = blocking_row(rows)
        if blocked is not None and blocked.status == "running":
            holder = target.holder(set_id)
    return rows, holder


def _read_binding(run: Run, target: Target, info: SetInfo, driver: str) -> BindingStatus:
    rows, holder = _ledger_and_holder(target, info.spec.name)
    return assess(info, target.dbid, driver, rows, holder, run.config_name)


def read_status(run: Run, workers: int | None = None) -> FleetReport:
    """Read every binding of a prepared run (read-only)."""
    return _fan_out(run, lambda r, dbid: _per_binding(r, dbid, True, lambda t, i, d: _read_binding(r, t, i, d)),
                    workers, "status")


def status(config: Config | str | Path, set_name: str | None = None, target: str | None = None,
           workers: int | None = None, shard: tuple[int, int] | None = None, on_result: OnResult | None = None,
           skip: Callable[[str, str], bool] | None = None, config_name: str | None = None,
           slots: threading.Semaphore | None = None) -> FleetReport:
    """Read every binding's ledger (read-only, nothing created or changed).

    ``config`` is a loaded Config or a path to config.json. ``shard=(i, n)`` keeps
    the targets with ``shard_of(dbid, n) == i``. ``on_result`` is called from the
    worker threads as each binding is read.
    """
    run = prepare(config, set_name, target, shard, skip, on_result=on_result, config_name=config_name, slots=slots)
    return read_status(run, workers)


def plan(config: Config | str | Path, set_name: str | None = None, target: str | None = None,
         workers: int | None = None, shard: tuple[int, int] | None = None, on_result: OnResult | None = None,
         config_name: str | None = None) -> FleetReport:
    """What catch-up would apply per binding (``pending``, flagged ``out_of_order``); touches nothing."""
    report = status(config, set_name, target, workers, shard, on_result, config_name=config_name)
    report.command = "plan"
    return report


# -- catch-up --------------------------------------------------------------------


def _catch_up_binding(run: Run, target: Target, info: SetInfo, driver: str, lock_wait: float) -> BindingStatus:
    set_id = info.spec.name
    rows = target.applied(set_id)
    blocked = blocking_row(rows)
    if blocked is not None and blocked.status == "running":
        # Another runner's migration in progress, or an interrupted one: only the lock can tell.
        # A report-only set reads the holder; the others let the runner decide under the lock,
        # which waits --lock-wait for the holder and then reports the binding locked.
        if info.spec.apply == "report":
            return _read_binding(run, target, info, driver)
    else:
        before = assess(info, target.dbid, driver, rows, None, run.config_name)
        # Nothing pending, a blocked set, a report-only set, or a pending file with nothing to run
        # (waiting for the user to fill it in, not a failure to retry): one ledger read was all it took.
        if not before.pending or before.state == "failed" or info.spec.apply == "report" or before.waiting:
            return before
    applied: list[Applied] = []
    failure: tuple[str, str] | None = None
    assert info.mset is not None, "an unreadable set is never run"
    mset = info.mset
    if run.allow is not None:
        now = assess(info, target.dbid, driver, rows, None, run.config_name)
        allowed = set(run.allow(set_id, target.dbid, now.pending))
        if not allowed and now.pending:
            return now  # the rollout holds it back (the caller marks it held or capped)
        # Only what the gate allows is pending for the runner; applied versions stay for its out-of-order check.
        mset = replace(mset, migrations=tuple(m for m in mset.migrations if m.version in allowed or m.version in rows))
    try:
        with run.files.waiting(target.dbid):  # the disk's time: another file may be read meanwhile
            run_set(target, mset, lock_wait=lock_wait, config_name=run.config_name, prefix=f"{target.dbid}/{set_id}: ",
                    should_stop=run.stop_requested, on_applied=applied.append)
        rows = target.applied(set_id)  # the ledger as this run left it
    except Exception as exc:
        failure = _failure_state(target.dbid, exc)
    if failure is not None and failure[0] != "unreachable":
        rows, failure = _reread(target, set_id, rows, failure)
    return _after_run(run, info, target.dbid, driver, rows, [a.version for a in applied], failure)


def _reread(target: Target, set_id: str, rows: dict[str, LedgerRow],
            failure: tuple[str, str]) -> tuple[dict[str, LedgerRow], tuple[str, str]]:
    """The ledger after a failed run (a failed row, what was applied before it); the old rows if it cannot be read."""
    try:
        return target.applied(set_id), failure
    except Exception as exc:
        lost = _failure_state(target.dbid, exc)
        return rows, lost if lost[0] == "unreachable" else failure


def _after_run(run: Run, info: SetInfo, dbid: str, driver: str, rows: dict[str, LedgerRow], applied: list[str],
               failure: tuple[str, str] | None) -> BindingStatus:
    """The binding after a run: the ledger as read, or when it could not be read, the last read less what was applied."""
    st = assess(info, dbid, driver, rows, None, run.config_name)
    st.applied_now = applied
    missed = [v for v in applied if v not in rows]  # applied, but the target went away before the ledger was read
    if missed:
        st.applied += len(missed)
        st.pending = [v for v in st.pending if v not in missed]
        st.out_of_order = [v for v in st.out_of_order if v not in missed]
        st.last_version = max([*missed, *([st.last_version] if st.last_version else [])])
    if failure is not None:
        st.state, st.error = failure
        if st.state == "failed" and st.failed_version is None and st.pending:
            st.failed_version = st.pending[0]  # migrations run in order: the first still pending is the one that failed
    return st


def catch_up(config: Config | str | Path, set_name: str | None = None, target: str | None = None,
             workers: int | None = None, shard: tuple[int, int] | None = None, on_result: OnResult | None = None,
             should_stop: Callable[[], bool] | None = None, skip: Callable[[str, str], bool] | None = None,
             lock_wait: float = defaults.LOCK_WAIT, config_name: str | None = None,
             slots: threading.Semaphore | None = None, servers: ServerSlots | None = None,
             allow: Allow | None = None) -> FleetReport:
    """Apply everything pending on every selected binding, concurrently, isolating failures.

    One task per target on ``workers`` threads (default ``daemon.workers``); the
    sets bound to a target run one after the other on its one connection. Sets
    with ``apply: "report"`` only report what is pending. A binding with drift is
    still caught up (the files that run are intact) and ends ``drift``.
    ``should_stop`` is polled before each target and each set (nothing new starts
    once it returns True; a running migration finishes; bindings not started are
    left out of the report); ``skip(set, dbid)`` leaves a binding out; ``slots``, a
    semaphore shared by concurrent runs, caps the targets open across all of them; ``servers``
    (default: ``migrations.per_server``) caps the targets of one server worked on at once;
    ``allow(set, dbid, pending)`` (a rollout's gate) says which pending versions a binding may
    start now, the rest staying pending. Never raises
    for a target's failure: each binding carries its own state.
    """
    run = prepare(config, set_name, target, shard, skip, on_result=on_result, should_stop=should_stop,
                  config_name=config_name, slots=slots, servers=servers, allow=allow)
    return _fan_out(run, lambda r, dbid: _per_binding(
        r, dbid, False, lambda t, i, d: _catch_up_binding(r, t, i, d, lock_wait)), workers, "catch-up")


def catch_up_target(config: Config, dbid: str, infos: list[SetInfo], on_result: OnResult | None = None,
                    should_stop: Callable[[], bool] | None = None, lock_wait: float = defaults.LOCK_WAIT,
                    slots: threading.Semaphore | None = None, servers: ServerSlots | None = None) -> list[BindingStatus]:
    """Catch up one target's sets, in the given order, on one connection in the calling thread.

    For callers that handle one target at a time (a cluster replica's job): the sets come
    already read (``infos``, which the caller may keep across calls while their files stay
    the same), and nothing walks the whole fleet or starts a pool, so the cost per target
    is the target's own work. Otherwise as :func:`catch_up`.
    """
    run = Run(config, {info.spec.name: info for info in infos}, {dbid: [info.spec.name for info in infos]},
              str(config.path.name), on_result=on_result, should_stop=should_stop, slots=slots,
              servers=servers if servers is not None else ServerSlots(config.per_server))
    return _in_slot(run, lambda r, d: _per_binding(
        r, d, False, lambda t, i, drv: _catch_up_binding(r, t, i, drv, lock_wait)), dbid)
