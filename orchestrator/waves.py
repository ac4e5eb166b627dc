"""Rollouts over the fleet: gates read from the ledgers, catch-up wave by wave, ``--wait`` through soak times.

For a set with a ``rollout``, an ``until`` cap or ``pins``, every run first reads
the ledgers of all the set's targets (whatever ``--target`` or ``--shard`` selects:
the gate depends on the whole set), works out each binding's gate with
:func:`orchestrator.rollout.plan`, and lets catch-up apply only what the gate
allows. When a wave finishes within its failure budget, the next one opens in the
same run (after ``soak``, when the run waits for it). Bindings that end with
nothing allowed show as ``held`` (with the reason) or ``capped``. Sets without any
of these run as plain fleet catch-ups. Notifications for new failures, newly held
waves and the finished run go through :class:`orchestrator.notify.Notifier`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator import defaults, fleet
from orchestrator.configtypes import Config
from orchestrator.notify import Notifier, Once, event
from orchestrator.rollout import Budget, FailureBudget, Gate, RolloutPlan, TargetView, plan
from orchestrator.serverslots import ServerSlots
from orchestrator.state import BindingStatus, FleetReport

__all__ = ["catch_up", "catch_up_notifying", "gated_sets", "mark", "plans_for", "status"]

log = logging.getLogger("fleet")

Key = tuple[str, str]


def gated_sets(config: Config, set_name: str | None = None) -> list[str]:
    """The selected sets whose bindings a rollout, a cap or a pin gates."""
    return [name for name, spec in config.sets.items()
            if (set_name is None or name == set_name) and (spec.rollout is not None or spec.caps)]


def _view(b: BindingStatus, failed: str | None = None) -> TargetView:
    if b.set_error or b.state == "unreachable":
        return TargetView(b.dbid, None)
    known = {v for v in (b.failed_version, failed) if v}
    return TargetView(b.dbid, dict(b.applied_at), frozenset(known))


def plans_for(config: Config, bindings: dict[Key, BindingStatus], sets: Sequence[str],
              failed: dict[Key, str] | None = None, now: float | None = None) -> dict[str, RolloutPlan]:
    """Each gated set's plan from its bindings' ledgers (every target of the set must be in ``bindings``)."""
    failed = failed or {}
    out = {}
    for name in sets:
        spec = config.sets[name]
        infos = [bindings[(name, dbid)] for dbid in spec.targets if (name, dbid) in bindings]
        if any(b.set_error for b in infos):
            continue  # an unreadable set is reported as such; it has no versions to gate
        versions = sorted({*(v for b in infos for v in b.pending), *(v for b in infos for v in b.applied_at)})
        views = [_view(b, failed.get((name, b.dbid))) for b in infos]
        out[name] = plan(spec.rollout, spec.caps, versions, views, now)
    return out


def mark(b: BindingStatus, gate: Gate) -> None:
    """Put a binding's gate on it: what it may get now stays ``pending``; held or capped otherwise."""
    b.wave = gate.wave
    held, capped = set(gate.held), set(gate.capped)
    b.held = [v for v in b.pending if v in held]
    b.capped = [v for v in b.pending if v in capped]
    b.pending = [v for v in b.pending if v not in held and v not in capped]
    b.out_of_order = [v for v in b.out_of_order if v in b.pending]
    b.hold_reason = gate.reason if b.held else None
    b.soak_until = int(gate.until + 0.999) if b.held and gate.until is not None else None
    if b.state in ("pending", "current") and not b.pending:
        if b.held:
            b.state = "held"
        elif b.capped:
            b.state = "capped"


def _mark_all(report: FleetReport, plans: dict[str, RolloutPlan]) -> None:
    report.rollouts = {name: p.summary() for name, p in plans.items()}
    for b in report.bindings:
        p = plans.get(b.set_id)
        gate = p.gates.get(b.dbid) if p is not None else None
        if gate is not None:
            mark(b, gate)


def _read_all(config: Config, sets: Sequence[str], workers: int | None,
              slots: threading.Semaphore | None) -> dict[Key, BindingStatus]:
    wanted = set(sets)
    report = fleet.status(config, workers=workers, skip=lambda s, _d: s not in wanted, slots=slots)
    return {(b.set_id, b.dbid): b for b in report.bindings}


def status(config: Config | str | Path, set_name: str | None = None, target: str | None = None,
           workers: int | None = None, shard: tuple[int, int] | None = None,
           on_result: Callable[[BindingStatus], None] | None = None, config_name: str | None = None,
           command: str = "status") -> FleetReport:
    """``fleet.status`` (or plan) with rollout gates: held and capped bindings say so, ``pending`` is what catch-up would apply."""
    config = config if isinstance(config, Config) else fleet.loaded(config)
    report = fleet.status(config, set_name, target, workers, shard, on_result, config_name=config_name)
    report.command = command
    sets = gated_sets(config, set_name)
    if sets:
        whole = target is None and shard is None
        bindings = {(b.set_id, b.dbid): b for b in report.bindings} if whole else _read_all(config, sets, workers, None)
        _mark_all(report, plans_for(config, bindings, sets))
    return report


class _Rollout:
    """One catch-up's rollout state: the latest binding per key, failures of this run, budgets."""

    def __init__(self, config: Config, sets: list[str], bindings: dict[Key, BindingStatus]):
        self.config = config
        self.sets = sets
        self.latest = bindings
        self.failed: dict[Key, str] = {}
        self.lock = threading.Lock()
        self.plans = plans_for(config, bindings, sets)
        self.budgets = {name: FailureBudget(p, _budget_of(config, name)) for name, p in self.plans.items()}
        self.offered: dict[Key, tuple[str, ...]] = {}

    def replan(self, now: float | None = None) -> None:
        with self.lock:
            self.plans = plans_for(self.config, self.latest, self.sets, self.failed, now)

    def gate(self, key: Key) -> Gate | None:
        p = self.plans.get(key[0])
        return p.gates.get(key[1]) if p is not None else None

    def allow(self, set_id: str, dbid: str, pending: Sequence[str]) -> list[str]:
        """What a binding may start now: its gate, cut at the first version its wave's failures stopped."""
        if set_id not in self.plans:
            return list(pending)
        out = self._effective((set_id, dbid), warn=True)
        self.offered[(set_id, dbid)] = out
        return [v for v in pending if v in out]

    def _effective(self, key: Key, warn: bool = False) -> tuple[str, ...]:
        gate = self.gate(key)
        if gate is None:
            return ()
        budget = self.budgets[key[0]]
        out: list[str] = []
        for version in gate.allowed:
            if not budget.may_start(key[1], version):
                if warn:
                    log.warning("%s/%s: not starting %s: too many targets of wave %s failed it in this run", key[1],
                                key[0], version, gate.wave)
                break
            out.append(version)
        return tuple(out)

    def record(self, b: BindingStatus) -> None:
        """A binding's result: the next plan sees it; a failure counts against its wave's budget."""
        key = (b.set_id, b.dbid)
        with self.lock:
            self.latest[key] = b
        if b.state != "failed" or b.set_error or key[0] not in self.budgets:
            return
        version = b.failed_version or next((v for v in self.offered.get(key, ()) if v not in b.applied_now), None)
        if version is None:
            return
        with self.lock:
            self.failed[key] = version
        if self.budgets[key[0]].failed(b.dbid, version):
            gate = self.gate(key)
            log.error("%s: wave %s: more than %s of its targets failed %s; no further target of the wave starts it "
                      "in this run", b.set_id, gate.wave if gate else "?", _budget_of(self.config, b.set_id), version)

    def newly_allowed(self, selected: set[Key]) -> set[Key]:
        """Bindings of gated sets with work the gate did not offer them before (a wave just opened)."""
        out = set()
        for key in selected:
            if key in self.failed:
                continue
            now = self._effective(key)
            if now and now != self.offered.get(key, ()):
                out.add(key)
        return out

    def next_soak_end(self, selected: set[Key]) -> float | None:
        ends = [g.until for k in selected if (g := self.gate(k)) is not None and g.held and g.until is not None]
        return min(ends) if ends else None


def _budget_of(config: Config, name: str) -> Budget:
    """The set's failure budget; caps and pins alone stop nothing on failures."""
    rollout = config.sets[name].rollout
    return rollout.max_failures if rollout is not None else Budget(count=None, percent=100)


def catch_up(config: Config | str | Path, set_name: str | None = None, target: str | None = None,
             workers: int | None = None, shard: tuple[int, int] | None = None,
             on_result: Callable[[BindingStatus], None] | None = None, should_stop: Callable[[], bool] | None = None,
             skip: Callable[[str, str], bool] | None = None, lock_wait: float = defaults.LOCK_WAIT,
             config_name: str | None = None, slots: threading.Semaphore | None = None, wait: bool = False,
             notifier: Notifier | None = None, notices: Once | None = None, servers: ServerSlots | None = None,
             finished: str = "always", sleep: Callable[[float], None] = time.sleep) -> FleetReport:
    """``fleet.catch_up`` through the sets' rollouts: wave after wave, as far as the gates allow now.

    With ``wait``, the run sleeps through soak times until everything is applied or
    the rollout is stopped by failures (or ``should_stop`` says so). A binding that
    failed in this run is not tried again by it. ``notifier`` gets the run's events
    (``notices`` remembers what was sent, across runs in the daemon); ``finished`` is
    ``always`` (one run.finished per run) or ``changes`` (only when something was applied or failed).
    """
    started = time.monotonic()
    config = config if isinstance(config, Config) else fleet.loaded(config)
    notices = notices if notices is not None else Once()
    sets = gated_sets(config, set_name)
    common: dict[str, Any] = {"workers": workers, "shard": shard, "should_stop": should_stop, "lock_wait": lock_wait,
                              "config_name": config_name, "slots": slots, "servers": servers}
    if not sets:
        report = fleet.catch_up(config, set_name, target, on_result=on_result, skip=skip, **common)
        _notify(notifier, notices, report, {}, set_name, finished)
        return report
    state = _Rollout(config, sets, _read_all(config, sets, workers, slots))
    results: dict[Key, BindingStatus] = {}
    todo: set[Key] | None = None  # None: the first pass takes every selected binding
    selected: set[Key] = set()

    def record(b: BindingStatus) -> None:
        state.record(b)
        if on_result is not None and (b.applied_now or b.state not in ("pending", "current")):
            on_result(b)

    while True:
        chosen = todo

        def leave_out(s: str, d: str, chosen: set[Key] | None = chosen) -> bool:
            if skip is not None and skip(s, d):
                return True
            selected.add((s, d))
            return chosen is not None and (s, d) not in chosen

        report = fleet.catch_up(config, set_name, target, on_result=record, skip=leave_out, allow=state.allow, **common)
        for b in report.bindings:
            results[(b.set_id, b.dbid)] = b
        state.replan()
        todo = state.newly_allowed({k for k in selected if k[0] in sets})
        stop = should_stop is not None and should_stop()
        if todo and not stop:
            continue
        end = state.next_soak_end({k for k in selected if k[0] in sets})
        if not wait or end is None or stop:
            break
        log.info("rollout: waiting for the soak to end at %s", time.strftime("%H:%M:%SZ", time.gmtime(end)))
        while time.time() < end and not (should_stop is not None and should_stop()):
            sleep(min(1.0, max(0.0, end - time.time())))
        state.replan()
        todo = state.newly_allowed({k for k in selected if k[0] in sets})
    order = {(spec.name, dbid): i for i, (spec, dbid) in enumerate(config.bindings())}
    final = FleetReport([results[k] for k in sorted(results, key=lambda k: order.get(k, 0))],
                        int((time.monotonic() - started) * 1000), "catch-up")
    _mark_all(final, state.plans)
    _notify(notifier, notices, final, state.plans, set_name, finished)
    return final


def catch_up_notifying(config: Config | str | Path, *args: Any, **kw: Any) -> FleetReport:
    """:func:`catch_up` with the config's webhooks; at the end, queued events get ``defaults.NOTIFY_FLUSH`` seconds
    (a dead receiver costs at most that, said in one line)."""
    config = config if isinstance(config, Config) else fleet.loaded(config)
    notifier = Notifier(config.notify)
    try:
        return catch_up(config, *args, **{**kw, "notifier": notifier})
    finally:
        notifier.close(wait=defaults.NOTIFY_FLUSH)


def _notify(notifier: Notifier | None, notices: Once, report: FleetReport, plans: dict[str, RolloutPlan],
            set_name: str | None, finished: str) -> None:
    """binding.failed once per new failure, rollout.held once per newly held wave and version, run.finished."""
    if notifier is None or not notifier:
        return
    for b in report.bindings:
        key = ("failed", b.set_id, b.dbid)
        if b.state != "failed":
            if b.state != "unreachable" and b.state != "locked":
                notices.forget(key)
            continue
        if notices.first(key, b.failed_version or b.error or ""):
            notifier.send(event("binding.failed", b.set_id, b.dbid, b.failed_version, b.state, b.error))
    for name, p in plans.items():
        for w in p.progress:
            if w.open or w.reason is None:
                continue
            if notices.first(("held", name, w.name, w.version)):
                notifier.send(event("rollout.held", name, None, w.version, "held", w.reason, wave=w.name,
                                    text=f"orchestrator: set {name}: wave {w.name} held at {w.version}: {w.reason}"))
    counts = report.counts()
    if finished == "always" or counts["migrations_applied"] or counts["failed"]:
        notifier.send(event("run.finished", set_name, None, None, "failed" if report.exit_code else "ok", None,
                            text=f"orchestrator {report.command}: {len(report.targets)} targets, "
                                 f"{counts['migrations_applied']} migrations applied, {counts['failed']} failed, "
                                 f"{counts.get('held', 0)} held", summary=counts, exit_code=report.exit_code))
