"""What a binding's state is: the states, the fleet report, and ``assess``.

A binding is one (set, target) pair. :func:`assess` turns a target's ledger rows
and the set's files into a :class:`BindingStatus`; it does no I/O beyond the set's
file checksums, which :class:`SetInfo` reads once per run and shares between the
fleet's worker threads. Exit codes come from :mod:`orchestrator.errors`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    OrchestratorError,
    SetError,
    exit_code_for_state,
    worst_exit_code,
)
from orchestrator.redact import redact
from orchestrator.runner import blocking_row, pending_migrations

if TYPE_CHECKING:
    from orchestrator.config import SetSpec
    from orchestrator.sets import MigrationSet, Script
    from orchestrator.targets import LedgerRow

__all__ = ["STATES", "BindingStatus", "FleetReport", "SetInfo", "assess", "one_line", "utc"]

STATES = ("current", "pending", "failed", "drift", "unreachable", "locked", "held", "capped", "removed")


def one_line(exc: BaseException) -> str:
    """An error as one redacted line (its class name when it says nothing)."""
    text = str(exc).strip() or type(exc).__name__
    return redact(" ".join(text.split()))


def utc(ts: int | None) -> str | None:
    """Unix seconds as ``2024-05-01 10:02:11Z``; None (or 0, never applied) stays None."""
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


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
    removed_at: str | None = None  # state removed: when its inventory source stopped listing the target (ISO UTC)
    # Rollouts (see orchestrator.waves): the target's wave, versions held back or past a cap, and why.
    wave: str | None = None
    held: list[str] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)
    hold_reason: str | None = None
    soak_until: int | None = None  # Unix seconds when the soak holding it ends
    applied_at: dict[str, int] = field(default_factory=dict, repr=False)  # applied version -> apply_time (ledger)
    failed_version: str | None = None  # the version a failed binding is stuck at, when known

    @property
    def exit_code(self) -> int:
        return EXIT_USAGE if self.set_error else exit_code_for_state(self.state)

    def to_json(self) -> dict[str, Any]:
        """The binding as the JSON output, the daemon's /status and its page show it (schema in the README)."""
        return {
            "set": self.set_id, "target": self.dbid, "driver": self.driver, "apply": self.apply, "state": self.state,
            "applied": self.applied, "pending": list(self.pending), "out_of_order": list(self.out_of_order),
            "last_version": self.last_version, "last_apply_time": self.last_apply_time,
            "last_apply_utc": utc(self.last_apply_time), "applied_now": list(self.applied_now),
            "drift": list(self.drift), "holder": self.holder, "error": self.error, "waiting": self.waiting,
            "duration_ms": self.duration_ms, "wave": self.wave, "held": list(self.held),
            "capped": list(self.capped), "hold_reason": self.hold_reason, "soak_until": self.soak_until,
            "soak_until_utc": utc(self.soak_until), "failed_version": self.failed_version,
        } | ({"removed_at": self.removed_at} if self.removed_at else {})


@dataclass
class FleetReport:
    """Every selected binding's outcome, in config order, plus the run's wall time."""

    bindings: list[BindingStatus]
    wall_ms: int = 0
    command: str = "status"
    rollouts: dict[str, str] = field(default_factory=dict)  # set -> one-line rollout summary (gated sets only)

    @property
    def exit_code(self) -> int:
        """Worst binding wins (see :func:`orchestrator.errors.worst_exit_code`)."""
        codes = {b.exit_code for b in self.bindings}
        if self.command == "plan" and any(b.state == "pending" and b.error and b.apply == "auto" for b in self.bindings):
            codes.add(EXIT_FAILED)  # catch-up would fail there: a pending migration has no usable file for the engine
        if self.command == "catch-up" and any(b.state == "pending" and b.waiting for b in self.bindings):
            codes.add(EXIT_FAILED)  # a pending file holds nothing to run: it was not applied
        return worst_exit_code(codes)

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(b.dbid for b in self.bindings))

    def counts(self) -> dict[str, int]:
        """Bindings per state, plus ``applied`` (bindings that applied something and ended well) and ``migrations_applied``."""
        out = dict.fromkeys(STATES, 0)
        for b in self.bindings:
            out[b.state] += 1
        out["applied"] = sum(1 for b in self.bindings if b.applied_now and b.state in ("current", "pending", "drift"))
        out["migrations_applied"] = sum(len(b.applied_now) for b in self.bindings)
        return out

    def to_json(self) -> dict[str, Any]:
        """The report as ``--json`` prints it and the daemon serves it (schema in the README)."""
        return {
            "command": self.command, "exit_code": self.exit_code, "wall_ms": self.wall_ms,
            "targets": len(self.targets), "summary": self.counts(), "bindings": [b.to_json() for b in self.bindings],
            "rollouts": dict(self.rollouts),
        }


# -- what the sets hold, computed once per run ---------------------------------


class SetInfo:
    """One set as discovered for this run, with per-engine scripts and checksums cached for all workers.

    ``error`` is one line when the set cannot be read (then ``mset`` is None).
    """

    def __init__(self, spec: SetSpec):
        from orchestrator.sets import discover

        self.spec = spec
        self.error: str | None = None
        self.mset: MigrationSet | None = None
        self._scripts: dict[tuple[str, str], tuple[Script | None, str | None]] = {}
        self._expected: dict[str, dict[str, str | None]] = {}
        self._current: dict[str, dict[str, tuple[str | None, str, str]] | None] = {}
        self._guard = threading.Lock()
        self.versions: frozenset[str] = frozenset()
        try:
            self.mset = discover(spec.name, spec.folder)
            self.versions = frozenset(self.mset.versions)
        except SetError as exc:
            self.error = one_line(exc)

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

    def current_ledger(self, driver: str) -> dict[str, tuple[str | None, str, str]] | None:
        """version -> (checksum, "applied", set name) of every migration: the ledger of a current binding, to compare
        with in one step; None when a file has no checksum on this engine (then a binding is never current at a glance)."""
        if driver not in self._current:
            expected = self.expected(driver)
            self._current[driver] = None if None in expected.values() else {
                version: (checksum, "applied", self.spec.name) for version, checksum in expected.items()}
        return self._current[driver]

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
                result = (None, one_line(exc))
        self._scripts[key] = result
        return result


# -- assess: a binding's state from its ledger, in small steps ------------------


def assess(info: SetInfo, dbid: str, driver: str, rows: dict[str, LedgerRow], holder: str | None,
           config_name: str, glance: bool = True) -> BindingStatus:
    """A binding's state from its ledger rows and the set's files (pure: no I/O beyond cached file checksums).

    ``holder`` is who holds the (target, set) lock (None: free); ``config_name``
    goes into the ``resolve`` command a failed binding suggests. A ledger that holds
    exactly the set's migrations, applied with the files' checksums, is current at a
    glance (one comparison, what most bindings of a fleet are on most passes);
    ``glance=False`` always takes the steps (a test holds the two together).
    """
    st = BindingStatus(info.spec.name, dbid, "current", driver=driver, apply=info.spec.apply)
    if glance and holder is None and _current_at_a_glance(st, info, driver, rows):
        return st
    _count_applied(st, info, rows)
    _list_pending(st, info, driver, rows)
    st.drift = _drift(info, dbid, driver, rows)
    _settle(st, _blocker(rows, holder), holder, config_name)
    return st


def _current_at_a_glance(st: BindingStatus, info: SetInfo, driver: str, rows: dict[str, LedgerRow]) -> bool:
    """Fill in a current binding's counts when its ledger is exactly the set's; False (``st`` untouched) otherwise."""
    current = info.current_ledger(driver)
    if current is None or len(rows) != len(current) or not rows:
        return False
    if {v: (r.checksum, r.status, r.set_id) for v, r in rows.items()} != current:
        return False
    st.applied = len(rows)
    st.applied_at = {v: r.apply_time for v, r in rows.items()}
    st.last_version = max(rows)
    st.last_apply_time = max(st.applied_at.values()) or None
    return True


def _count_applied(st: BindingStatus, info: SetInfo, rows: dict[str, LedgerRow]) -> None:
    """How many of the set's migrations are applied, the newest and when; adopted C-tool rows count if in the set."""
    done = [r for v, r in rows.items() if r.status == "applied" and (not r.legacy or v in info.versions)]
    st.applied = len(done)
    st.applied_at = {r.version: r.apply_time for r in done}
    if done:
        st.last_version = max(r.version for r in done)
        st.last_apply_time = max(r.apply_time for r in done) or None


def _list_pending(st: BindingStatus, info: SetInfo, driver: str, rows: dict[str, LedgerRow]) -> None:
    """What is still to apply, which of it is out of order, and the first pending file that cannot run."""
    assert info.mset is not None, "assess needs a readable set"
    pending, st.out_of_order = pending_migrations(info.mset, rows)
    st.pending = [m.version for m in pending]
    expected = info.expected(driver)
    for version in st.pending:
        if expected[version] is None:
            st.error = f"would fail: {info.script(driver, version)[1]}"
            return
        if (empty := info.empty(driver, version)) is not None:
            # Never applied or recorded: the binding waits for the file to change (the daemon's watcher sees it).
            st.error, st.waiting = f"waiting: {empty}", True
            return


def _drift(info: SetInfo, dbid: str, driver: str, rows: dict[str, LedgerRow]) -> list[str]:
    """One line per applied version whose file is gone or changed since it was applied."""
    name, expected = info.spec.name, info.expected(driver)
    findings = []
    for version, row in rows.items():
        if row.legacy or row.status != "applied":
            continue  # adopted C-tool rows are not this set's to judge
        if version not in info.versions:
            findings.append(f"{name}/{version}: applied on {dbid} but missing from the set")
        elif row.checksum and expected[version] != row.checksum:  # a baseline without a file has none
            findings.append(_changed(info, driver, version, row.checksum, dbid))
    return findings


def _changed(info: SetInfo, driver: str, version: str, recorded: str, dbid: str) -> str:
    script, problem = info.script(driver, version)
    if script is None:
        return f"{problem} (applied on {dbid})"
    return (f"{script.label}: changed since it was applied on {dbid} "
            f"(checksum {recorded[:12]}, file now {script.checksum[:12]})")


def _blocker(rows: dict[str, LedgerRow], holder: str | None) -> LedgerRow | None:
    """The failed or interrupted row that blocks the set; a ``running`` row under a held lock is work in flight."""
    blocked = blocking_row(rows)
    if blocked is not None and blocked.status == "running" and holder is not None:
        return None
    return blocked


def _settle(st: BindingStatus, blocked: LedgerRow | None, holder: str | None, config_name: str) -> None:
    """The state, by precedence: failed (blocked), drift, locked, pending, else current."""
    if blocked is not None:
        st.state, st.error = "failed", _blocked_line(st, blocked, config_name)
        st.failed_version = blocked.version
    elif st.drift:
        st.state = "drift"
        st.error = st.drift[0] + (f" (and {len(st.drift) - 1} more)" if len(st.drift) > 1 else "")
    elif holder is not None:
        st.state, st.holder = "locked", holder
        st.error = f"{st.dbid}/{st.set_id} locked" + (f" by {holder}" if holder else "") + \
            "; another runner is applying this set"
    elif st.pending:
        st.state = "pending"


def _blocked_line(st: BindingStatus, blocked: LedgerRow, config_name: str) -> str:
    what = "failed" if blocked.status == "failed" else "was interrupted (state running)"
    where = f" at statement {blocked.statement}" if blocked.statement else ""
    reason = f": {blocked.error}" if blocked.error else ""
    return one_line(Exception(
        f"{st.dbid}/{st.set_id}: {blocked.version} {what}{where}{reason}; fix the database, then run "
        f"'orchestrator resolve {config_name} {st.dbid} {st.set_id} {blocked.version} --retry|--mark-applied|--forget'"))
