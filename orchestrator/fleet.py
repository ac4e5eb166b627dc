"""Many bindings at once: catch-up, status, plan and validate over the whole fleet.

A binding is one (set, target) pair from config.json. Work is grouped per
target: one task per target on a bounded thread pool, one connection per target
for the whole run, and that target's sets run one after the other on it (so a
fleet run never opens more than ``workers`` connections, and two sets of one
database never contend for it). A failed, locked or unreachable target costs
only its own worker for its own timeout. Every answer is read from the ledgers
in the targets themselves; status and plan open targets read-only and change
nothing. Rendering (tables, progress, summary) lives in :mod:`orchestrator.render`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from orchestrator import defaults
from orchestrator.errors import ConfigError, LockHeld, OrchestratorError, SetError, TargetUnreachable

if TYPE_CHECKING:
    from orchestrator.config import Config, SetSpec
    from orchestrator.sets import MigrationSet, Script
    from orchestrator.targets import Applied, LedgerRow, Target

__all__ = ["BindingStatus", "FleetReport", "status", "plan", "catch_up", "validate", "validation", "shard_of", "command",
           "STATES"]

log = logging.getLogger("fleet")

STATES = ("current", "pending", "failed", "drift", "unreachable", "locked")
_SEVERITY = {"current": 0, "pending": 0, "unreachable": 3, "locked": 1, "drift": 1, "failed": 1}


@dataclass
class BindingStatus:
    """The state of one (set, target) binding, as status/plan/catch-up report it."""

    set_id: str
    dbid: str
    state: str  # one of STATES
    applied: int = 0  # migrations of the set recorded as applied in the target
    pending: list[str] = field(default_factory=list)  # versions still to apply, in apply order
    out_of_order: list[str] = field(default_factory=list)  # pending versions older than the newest applied
    last_version: str | None = None  # newest applied version
    last_apply_time: int | None = None  # Unix seconds of the most recent apply
    error: str | None = None  # one redacted line
    drift: list[str] = field(default_factory=list)  # one line per finding
    applied_now: list[str] = field(default_factory=list)  # versions this run applied (catch-up)
    duration_ms: int = 0
    driver: str = ""
    apply: str = "auto"  # the set's apply mode: "auto" or "report" (catch-up only reports pending)
    holder: str | None = None  # who holds the (target, set) lock, when state is locked
    set_error: bool = False  # the set itself is unreadable (a config problem, exit 2)
    waiting: bool = False  # a pending file holds nothing to run (e.g. an untouched template): nothing applied until it changes

    @property
    def exit_code(self) -> int:
        return 2 if self.set_error else _SEVERITY[self.state]

    def to_json(self) -> dict[str, Any]:
        from orchestrator.render import utc

        return {
            "set": self.set_id, "target": self.dbid, "driver": self.driver, "apply": self.apply, "state": self.state,
            "applied": self.applied, "pending": list(self.pending), "out_of_order": list(self.out_of_order),
            "last_version": self.last_version, "last_apply_time": self.last_apply_time,
            "last_apply_utc": utc(self.last_apply_time), "applied_now": list(self.applied_now),
            "drift": list(self.drift), "holder": self.holder, "error": self.error, "waiting": self.waiting,
            "duration_ms": self.duration_ms,
        }


@dataclass
class FleetReport:
    """Every selected binding's outcome, in config order, plus the run's wall time."""

    bindings: list[BindingStatus]
    wall_ms: int = 0
    command: str = "status"

    @property
    def exit_code(self) -> int:
        """Worst binding wins, in this precedence: 2 (a set unreadable) > 1 (failed, drift, locked) > 3 (unreachable) > 0."""
        codes = {b.exit_code for b in self.bindings}
        if self.command == "plan" and any(b.state == "pending" and b.error and b.apply == "auto" for b in self.bindings):
            codes.add(1)  # catch-up would fail there: a pending migration has no usable file for the engine
        if self.command == "catch-up" and any(b.state == "pending" and b.waiting for b in self.bindings):
            codes.add(1)  # a pending file holds nothing to run: it was not applied
        for code in (2, 1, 3):
            if code in codes:
                return code
        return 0

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(b.dbid for b in self.bindings))

    def counts(self) -> dict[str, int]:
        """Bindings per state, plus ``applied`` (bindings that applied something and ended well) and ``migrations_applied``."""
        out = {state: 0 for state in STATES}
        for b in self.bindings:
            out[b.state] += 1
        out["applied"] = sum(1 for b in self.bindings if b.applied_now and b.state in ("current", "pending", "drift"))
        out["migrations_applied"] = sum(len(b.applied_now) for b in self.bindings)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command, "exit_code": self.exit_code, "wall_ms": self.wall_ms,
            "targets": len(self.targets), "summary": self.counts(), "bindings": [b.to_json() for b in self.bindings],
        }


def shard_of(dbid: str, shards: int) -> int:
    """Stable shard index in ``range(shards)`` of a target (same on every replica and Python run)."""
    if shards < 1:
        raise ValueError(f"shard count must be at least 1, not {shards}")
    # sha1 rather than hash(): str hashes are salted per process.
    return int.from_bytes(hashlib.sha1(dbid.encode("utf-8")).digest()[:8], "big") % shards


# -- what the sets hold, computed once per run ---------------------------------


class _SetInfo:
    """One set as discovered for this run, with per-engine scripts and checksums cached for all workers."""

    def __init__(self, spec: SetSpec):
        from orchestrator.sets import discover

        self.spec = spec
        self.error: str | None = None
        self.mset: MigrationSet | None = None
        self._scripts: dict[tuple[str, str], tuple[Script | None, str | None]] = {}
        self._expected: dict[str, dict[str, str | None]] = {}
        self._guard = threading.Lock()
        self.versions: frozenset[str] = frozenset()
        try:
            self.mset = discover(spec.name, spec.folder)
            self.versions = frozenset(self.mset.versions)
        except SetError as exc:
            self.error = _line(exc)

    def expected(self, driver: str) -> dict[str, str | None]:
        """version -> checksum of the file an engine runs (None: no usable file); computed once per run."""
        hit = self._expected.get(driver)
        if hit is None:
            with self._guard:  # taken once per engine; later reads are plain dict reads
                hit = self._expected.get(driver)
                if hit is None:
                    hit = {}
                    for version in (self.mset.versions if self.mset else ()):
                        script, _ = self.script(driver, version)
                        hit[version] = script.checksum if script else None
                    self._expected[driver] = hit
        return hit

    def empty(self, driver: str, version: str) -> str | None:
        """One line when a version's file holds nothing to run on an engine (see Script.emptiness), else None."""
        script, _ = self.script(driver, version)
        if script is None:
            return None
        try:
            reason = script.emptiness(driver)
        except OrchestratorError:
            return None  # an unreadable file is reported by the run that reads it
        return f"{script.label}: {reason}" if reason else None

    def script(self, driver: str, version: str) -> tuple[Script | None, str | None]:
        """(script, None) or (None, one-line reason) for a version on an engine; checksum read once."""
        key = (driver, version)
        hit = self._scripts.get(key)  # no lock: a dict read is atomic, a race only computes twice
        if hit is not None:
            return hit
        migration = self.mset.get(version) if self.mset else None
        result: tuple[Script | None, str | None]
        if migration is None:
            result = (None, f"{self.spec.name}/{version}: not in the set")
        else:
            try:
                script = migration.script_for(driver)
                script.inspect()
                result = (script, None)
            except OrchestratorError as exc:
                result = (None, _line(exc))
        self._scripts[key] = result
        return result


def _line(exc: BaseException) -> str:
    from orchestrator.redact import redact

    text = str(exc).strip() or type(exc).__name__
    return redact(" ".join(text.split()))


def _assess(info: _SetInfo, dbid: str, driver: str, rows: dict[str, LedgerRow], holder: str | None,
            config_name: str) -> BindingStatus:
    """A binding's state from its ledger rows and the set's files (pure: no I/O beyond cached file checksums)."""
    from orchestrator.runner import blocking_row, pending_migrations

    spec = info.spec
    st = BindingStatus(spec.name, dbid, "current", driver=driver, apply=spec.apply)
    assert info.mset is not None
    in_set = info.versions
    expected = info.expected(driver)
    done = [r for v, r in rows.items() if r.status == "applied" and (not r.legacy or v in in_set)]
    st.applied = len(done)
    if done:
        st.last_version = max(r.version for r in done)
        st.last_apply_time = max(r.apply_time for r in done) or None
    pending, st.out_of_order = pending_migrations(info.mset, rows)
    st.pending = [m.version for m in pending]
    for version in st.pending:
        if expected[version] is None:
            st.error = f"would fail: {info.script(driver, version)[1]}"
            break
        if (empty := info.empty(driver, version)) is not None:
            # Never applied or recorded: the binding waits for the file to change (the daemon's watcher sees it).
            st.error, st.waiting = f"waiting: {empty}", True
            break
    for version, row in rows.items():
        if row.legacy or row.status != "applied":
            continue  # adopted C-tool rows are not this set's to judge
        if version not in in_set:
            st.drift.append(f"{spec.name}/{version}: applied on {dbid} but missing from the set")
        elif row.checksum and expected[version] != row.checksum:  # a baseline without a file has none
            script, problem = info.script(driver, version)
            if script is None:
                st.drift.append(f"{problem} (applied on {dbid})")
            else:
                st.drift.append(f"{script.label}: changed since it was applied on {dbid} "
                                f"(checksum {row.checksum[:12]}, file now {script.checksum[:12]})")
    blocked = blocking_row(rows)
    if blocked is not None and blocked.status == "running" and holder is not None:
        blocked = None  # a live runner holds the lock: the migration is in flight, not interrupted
    if blocked is not None:
        st.state = "failed"
        what = "failed" if blocked.status == "failed" else "was interrupted (state running)"
        where = f" at statement {blocked.statement}" if blocked.statement else ""
        reason = f": {blocked.error}" if blocked.error else ""
        st.error = _line(Exception(
            f"{dbid}/{spec.name}: {blocked.version} {what}{where}{reason}; fix the database, then run "
            f"'orchestrator resolve {config_name} {dbid} {spec.name} {blocked.version} --retry|--mark-applied|--forget'"))
    elif st.drift:
        st.state = "drift"
        st.error = st.drift[0] + (f" (and {len(st.drift) - 1} more)" if len(st.drift) > 1 else "")
    elif holder is not None:
        st.state = "locked"
        st.holder = holder
        st.error = f"{dbid}/{spec.name} locked" + (f" by {holder}" if holder else "") + "; another runner is applying this set"
    elif st.pending:
        st.state = "pending"
    return st


# -- running over the fleet ----------------------------------------------------


@dataclass
class _Run:
    """What every worker of one fleet run shares."""

    config: Config
    infos: dict[str, _SetInfo]
    groups: dict[str, list[str]]  # dbid -> set names bound to it, in config order
    config_name: str
    on_result: Callable[[BindingStatus], None] | None = None
    should_stop: Callable[[], bool] | None = None
    slots: threading.Semaphore | None = None  # shared by concurrent runs (the daemon's sets): one per open target
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop_requested(self) -> bool:
        return self.stopping.is_set() or bool(self.should_stop and self.should_stop())

    def emit(self, st: BindingStatus) -> None:
        if self.on_result is not None:
            try:
                self.on_result(st)
            except Exception:  # a listener's bug must not lose the other bindings' results
                log.exception("result listener failed for %s/%s", st.dbid, st.set_id)


def _load(config: Any) -> Config:
    from orchestrator.config import Config, load

    return config if isinstance(config, Config) else load(config)


def _prepare(config: Config, set_name: str | None, target: str | None, shard: tuple[int, int] | None,
             skip: Callable[[str, str], bool] | None, **kw: Any) -> _Run:
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"bad shard {shard[0]}/{shard[1]}: expected I/N with 0 <= I < N")
    groups: dict[str, list[str]] = {}
    infos: dict[str, _SetInfo] = {}
    for spec, dbid in config.bindings(set_name, target):
        if shard is not None and shard_of(dbid, shard[1]) != shard[0]:
            continue
        if skip is not None and skip(spec.name, dbid):
            continue
        if spec.name not in infos:
            infos[spec.name] = _SetInfo(spec)
        groups.setdefault(dbid, []).append(spec.name)
    return _Run(config, infos, groups, kw.pop("config_name", None) or str(config.path.name), **kw)


def _fan_out(run: _Run, work: Callable[[_Run, str], list[BindingStatus]], workers: int | None,
             command: str) -> FleetReport:
    """Run ``work`` once per target on a bounded pool; results come back in config order."""
    started = time.monotonic()
    order = {(spec.name, dbid): i for i, (spec, dbid) in enumerate(run.config.bindings())}
    results: list[BindingStatus] = []
    count = max(1, min(workers or run.config.daemon.workers, len(run.groups) or 1))
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="fleet")
    try:
        futures = [pool.submit(_in_slot, run, work, dbid) for dbid in run.groups]
        for future in futures:
            results.extend(future.result())
    except BaseException:
        # Ctrl-C: start nothing new; migrations already running finish on their own.
        run.stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    results.sort(key=lambda b: order.get((b.set_id, b.dbid), 0))
    return FleetReport(results, int((time.monotonic() - started) * 1000), command)


def _in_slot(run: _Run, work: Callable[[_Run, str], list[BindingStatus]], dbid: str) -> list[BindingStatus]:
    if run.slots is None:
        return work(run, dbid)
    with run.slots:
        return work(run, dbid)


def _failure_state(dbid: str, target: Target | None, exc: BaseException) -> tuple[str, str]:
    """(state, message) for an exception met while working on a target."""
    if isinstance(exc, TargetUnreachable):
        return "unreachable", _line(exc)
    if isinstance(exc, LockHeld):
        return "locked", _line(exc)
    if isinstance(exc, OrchestratorError):
        return ("unreachable" if _connection_lost(target, exc) else "failed"), _line(exc)
    if _connection_lost(target, exc):
        return "unreachable", f"{dbid}: connection lost: {_line(exc)}"
    return "failed", f"{dbid}: {type(exc).__name__}: {_line(exc)}"


def _connection_lost(target: Any, exc: BaseException) -> bool:
    """Best effort: did the session die (network cut, server gone) rather than the statement fail?"""
    conn = getattr(target, "connection", None)
    if conn is not None:
        if getattr(conn, "broken", False) or getattr(conn, "closed", False) is True:
            return True  # psycopg
        if getattr(conn, "open", True) is False:
            return True  # PyMySQL drops its socket on a lost connection
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ in ("ConnectionError", "TimeoutError", "ConnectionResetError", "BrokenPipeError"):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _open(run: _Run, dbid: str, readonly: bool) -> Target:
    from orchestrator.targets import open_target

    target = open_target(run.config.databases[dbid], run.config.table)
    target.connect(readonly=readonly)
    return target


def _per_binding(run: _Run, dbid: str, readonly: bool,
                 body: Callable[[Target, _SetInfo, str], BindingStatus]) -> list[BindingStatus]:
    """Connect once, then ``body`` per set of this target; a lost or refused connection marks the rest unreachable."""
    driver = dbid.split(".", 1)[0]
    out: list[BindingStatus] = []

    def finish(st: BindingStatus, started: float) -> None:
        st.duration_ms = int((time.monotonic() - started) * 1000)
        out.append(st)
        run.emit(st)

    if run.stop_requested():
        return out
    target: Target | None = None
    started = time.monotonic()
    down: tuple[str, str] | None = None
    try:
        target = _open(run, dbid, readonly)
    except Exception as exc:  # every failure to connect becomes this target's state
        down = _failure_state(dbid, None, exc)
    try:
        for set_name in run.groups[dbid]:
            info = run.infos[set_name]
            if down is None and run.stop_requested():
                break
            st_started = time.monotonic()
            if info.error is not None:
                finish(BindingStatus(set_name, dbid, "failed", error=info.error, driver=driver, apply=info.spec.apply,
                                     set_error=True), st_started)
                continue
            if down is not None:
                finish(BindingStatus(set_name, dbid, down[0], error=down[1], driver=driver, apply=info.spec.apply),
                       started if not out else st_started)
                continue
            assert target is not None
            try:
                st = body(target, info, driver)
            except Exception as exc:
                state, message = _failure_state(dbid, target, exc)
                st = BindingStatus(set_name, dbid, state, error=message, driver=driver, apply=info.spec.apply)
            if st.state == "unreachable":
                # Each further attempt would wait out the timeout again; the next run retries.
                down = ("unreachable", f"{dbid}: not tried: the connection was lost earlier in this run")
            finish(st, st_started)
    finally:
        if target is not None:
            target.close()
    return out


def _ledger_and_holder(target: Target, set_id: str) -> tuple[dict[str, LedgerRow], str | None]:
    """The ledger rows and the lock's holder, read so that a live runner's ``running`` row is never taken for an interrupted one.

    A ``running`` row with the lock held is work in progress. Seen with the lock free,
    it may be a run that finished between the two reads: the ledger is read again
    after the lock was seen free, and the holder once more if the row is still there
    (a new run may have started meanwhile).
    """
    from orchestrator.runner import blocking_row

    rows = target.applied(set_id)
    holder = target.holder(set_id)
    blocked = blocking_row(rows)
    if holder is None and blocked is not None and blocked.status == "running":
        rows = target.applied(set_id)
        blocked = blocking_row(rows)
        if blocked is not None and blocked.status == "running":
            holder = target.holder(set_id)
    return rows, holder


def _read_binding(run: _Run, target: Target, info: _SetInfo, driver: str) -> BindingStatus:
    rows, holder = _ledger_and_holder(target, info.spec.name)
    return _assess(info, target.dbid, driver, rows, holder, run.config_name)


def status(config: Any, set_name: str | None = None, target: str | None = None, workers: int | None = None,
           shard: tuple[int, int] | None = None, on_result: Callable[[BindingStatus], None] | None = None,
           skip: Callable[[str, str], bool] | None = None, config_name: str | None = None,
           slots: threading.Semaphore | None = None) -> FleetReport:
    """Read every binding's ledger (read-only, nothing created or changed).

    ``config`` is a loaded Config or a path to config.json. ``shard=(i, n)`` keeps
    the targets with ``shard_of(dbid, n) == i``. ``on_result`` is called from the
    worker threads as each binding is read.
    """
    config = _load(config)
    run = _prepare(config, set_name, target, shard, skip, on_result=on_result, config_name=config_name, slots=slots)
    return _status_of(run, workers)


def _status_of(run: _Run, workers: int | None) -> FleetReport:
    return _fan_out(run, lambda r, dbid: _per_binding(r, dbid, True, lambda t, i, d: _read_binding(r, t, i, d)),
                    workers, "status")


def plan(config: Any, set_name: str | None = None, target: str | None = None, workers: int | None = None,
         shard: tuple[int, int] | None = None, on_result: Callable[[BindingStatus], None] | None = None,
         config_name: str | None = None) -> FleetReport:
    """What catch-up would apply per binding (``pending``, flagged ``out_of_order``); touches nothing."""
    report = status(config, set_name, target, workers, shard, on_result, config_name=config_name)
    report.command = "plan"
    return report


class _Recorder:
    """Passes every call to the target and notes what ``apply`` committed, so a run that fails
    midway still reports exactly what it applied, without re-reading the ledger."""

    def __init__(self, target: Target):
        self._target = target
        self.driver = target.driver
        self.dbid = target.dbid
        self.applied_now: list[Applied] = []

    def applied(self, set_id: str) -> dict[str, LedgerRow]:
        return self._target.applied(set_id)

    def lock(self, set_id: str, wait: float) -> Any:
        return self._target.lock(set_id, wait)

    def holder(self, set_id: str) -> str | None:
        return self._target.holder(set_id)

    def ensure_ledger(self) -> None:
        self._target.ensure_ledger()

    def apply(self, script: Script) -> Applied | None:
        result = self._target.apply(script)
        if result is not None:
            self.applied_now.append(result)
        return result

    def record(self, set_id: str, version: str, checksum: str | None) -> None:
        self._target.record(set_id, version, checksum)

    def forget(self, set_id: str, version: str) -> None:
        self._target.forget(set_id, version)

    def connect(self, readonly: bool = False) -> None:
        self._target.connect(readonly)

    def close(self) -> None:
        self._target.close()




def _catch_up_binding(run: _Run, target: Target, info: _SetInfo, driver: str, lock_wait: float) -> BindingStatus:
    from orchestrator.runner import blocking_row
    from orchestrator.runner import run as run_set
    from orchestrator.targets import LedgerRow

    set_id = info.spec.name
    rows = target.applied(set_id)
    blocked = blocking_row(rows)
    in_flight = blocked is not None and blocked.status == "running"
    if in_flight:
        # Another runner's migration in progress, or an interrupted one: only the lock can tell.
        # A report-only set reads the holder; the others let the runner decide under the lock,
        # which waits --lock-wait for the holder and then reports the binding locked.
        if info.spec.apply == "report":
            return _read_binding(run, target, info, driver)
    else:
        before = _assess(info, target.dbid, driver, rows, None, run.config_name)
        # Nothing pending, a blocked set, a report-only set, or a pending file with nothing to run
        # (waiting for the user to fill it in, not a failure to retry): one ledger read was all it took.
        if not before.pending or before.state == "failed" or info.spec.apply == "report" or before.waiting:
            return before
    recorder = _Recorder(target)
    failure: tuple[str, str] | None = None
    assert info.mset is not None
    try:
        run_set(recorder, info.mset, lock_wait=lock_wait, config_name=run.config_name,  # type: ignore[arg-type]
                prefix=f"{target.dbid}/{set_id}: ", should_stop=run.stop_requested)
    except Exception as exc:
        failure = _failure_state(target.dbid, target, exc)
    if in_flight and failure is None:
        # The running row seen first was another runner's, finished since: the ledger as it is now.
        rows = target.applied(set_id)
    # The ledger as it is now, without reading it again: what was there plus what this run committed.
    now = int(time.time())
    merged = dict(rows)
    for a in recorder.applied_now:
        script, _ = info.script(driver, a.version)
        merged[a.version] = LedgerRow(a.version, now, set_id, script.checksum if script else None, a.duration_ms)
    st = _assess(info, target.dbid, driver, merged, None, run.config_name)
    st.applied_now = [a.version for a in recorder.applied_now]
    if failure is not None:
        st.state, st.error = failure
    return st


def catch_up(config: Any, set_name: str | None = None, target: str | None = None, workers: int | None = None,
             shard: tuple[int, int] | None = None, on_result: Callable[[BindingStatus], None] | None = None,
             should_stop: Callable[[], bool] | None = None, skip: Callable[[str, str], bool] | None = None,
             lock_wait: float = defaults.LOCK_WAIT, config_name: str | None = None,
             slots: threading.Semaphore | None = None) -> FleetReport:
    """Apply everything pending on every selected binding, concurrently, isolating failures.

    One task per target on ``workers`` threads (default ``daemon.workers``); the
    sets bound to a target run one after the other on its one connection. Sets
    with ``apply: "report"`` only report what is pending. A binding with drift is
    still caught up (the files that run are intact) and ends ``drift``.
    ``should_stop`` is polled before each target and each set (nothing new starts
    once it returns True; a running migration finishes; bindings not started are
    left out of the report); ``skip(set, dbid)`` leaves a binding out; ``slots``, a
    semaphore shared by concurrent runs, caps the targets open across all of them. Never raises
    for a target's failure: each binding carries its own state.
    """
    config = _load(config)
    run = _prepare(config, set_name, target, shard, skip, on_result=on_result, should_stop=should_stop,
                   config_name=config_name, slots=slots)
    return _fan_out(run, lambda r, dbid: _per_binding(
        r, dbid, False, lambda t, i, d: _catch_up_binding(r, t, i, d, lock_wait)), workers, "catch-up")


# -- validate (the checks themselves live in orchestrator.checks) ---------------


def validation(config: Any, set_name: str | None = None, target: str | None = None, workers: int | None = None,
               config_name: str | None = None) -> Any:
    """A :class:`orchestrator.checks.Validation`: the sets' files and every reachable ledger checked; changes nothing."""
    from orchestrator.checks import validation as check

    return check(config, set_name, target, workers, config_name)


def validate(config: Any, set_name: str | None = None, target: str | None = None) -> list[str]:
    """One line per finding (file problems, drift, failed rows, unreachable targets); empty when clean."""
    result = validation(config, set_name, target)
    return result.findings + result.unreachable


# -- the CLI commands ------------------------------------------------------------


def command(args: Any) -> int:
    """``catch-up``, ``status``, ``plan`` and ``validate`` from parsed CLI arguments; returns the exit code."""
    import sys

    from orchestrator import render

    config = _load(args.config)
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise ConfigError(f"usage: --workers must be at least 1, not {workers}")
    if args.target is not None and not config.bindings(args.set_name, args.target):
        # As with an unknown --set: a filter that selects nothing is a mistake, not a clean run.
        bound = sorted({dbid for _, dbid in config.bindings(args.set_name)})
        where = f"set {args.set_name!r}" if args.set_name else "any set"
        shown = ", ".join(bound[:10]) + (f" and {len(bound) - 10} more" if len(bound) > 10 else "")
        raise ConfigError(f"{config.path.name}: --target {args.target!r} matches no target bound to {where} "
                          f"(bound: {shown or 'none'})")
    if args.command == "validate":
        result = validation(config, args.set_name, args.target, workers, config_name=args.config)
        render.validation(result, sys.stdout, as_json=args.json)
        return result.exit_code
    selected: dict[str, int] = {}
    for _, dbid in config.bindings(args.set_name, args.target):
        selected[dbid] = selected.get(dbid, 0) + 1
    with render.progress(len(selected), args.command, enabled=not args.json) as advance:
        done: dict[str, int] = {}
        guard = threading.Lock()

        def on_result(st: BindingStatus) -> None:
            render.binding_line(st, args.command)
            with guard:
                done[st.dbid] = done.get(st.dbid, 0) + 1
                finished = done[st.dbid] == selected.get(st.dbid, 0)
            if finished:
                advance()

        common: dict[str, Any] = {"workers": workers, "on_result": on_result, "config_name": args.config}
        if args.command == "catch-up":
            lock_wait = getattr(args, "lock_wait", None)
            report = catch_up(config, args.set_name, args.target,
                              lock_wait=defaults.LOCK_WAIT if lock_wait is None else lock_wait, **common)  # type: ignore[arg-type]
        elif args.command == "plan":
            report = plan(config, args.set_name, args.target, **common)  # type: ignore[arg-type]
        else:
            report = status(config, args.set_name, args.target, **common)  # type: ignore[arg-type]
    render.report(report, sys.stdout, as_json=args.json)
    return report.exit_code
