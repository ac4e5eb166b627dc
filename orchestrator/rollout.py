"""Rollouts: which version each (set, target) binding may get now.

A set's targets are split into waves (canary first, then a slice, then the rest).
A wave gets a version only once every earlier wave has it on all its targets but
at most ``max_failures``, and ``soak`` seconds have passed since the last of those
applies. Version caps (``until``) and pins stop targets at a version for good.

Everything here is pure: the state of a rollout is derived from the ledgers the
caller read (versions applied and their ``apply_time``), never kept elsewhere, so
every replica and every run sees the same thing and a restart loses nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.configtypes import Caps  # a set's until and pins live with the config: see there

__all__ = [
    "Budget",
    "Caps",
    "FailureBudget",
    "Gate",
    "Rollout",
    "RolloutPlan",
    "TargetView",
    "Wave",
    "WaveStatus",
    "parse_budget",
    "plan",
    "split_waves",
    "wave_hash",
]

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Wave:
    """One wave: ``targets`` (dbid globs), or ``percent`` of all the set's targets, or (neither) the rest."""

    name: str
    targets: tuple[str, ...] | None = None
    percent: float | None = None

    def __post_init__(self) -> None:
        if self.targets is not None and self.percent is not None:
            raise ValueError(f"wave {self.name!r}: give 'targets' or 'percent', not both")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise ValueError(f"wave {self.name!r}: percent must be above 0 and at most 100, not {self.percent}")


@dataclass(frozen=True)
class Budget:
    """How many targets of a wave may fail a version: a count, or a percentage of the wave (rounded down)."""

    count: int | None = 0
    percent: float | None = None

    def allowed(self, size: int) -> int:
        if self.percent is not None:
            return math.floor(size * self.percent / 100 + 1e-9)
        return self.count or 0

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count or 0)


def parse_budget(value: object) -> Budget:
    """``2`` or ``"2%"`` -> Budget; ValueError with one line otherwise."""
    if isinstance(value, bool):
        raise ValueError("max_failures: expected a count or a percentage such as \"2%\", not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"max_failures: must not be negative, not {value}")
        return Budget(count=value)
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if m and float(m.group(1)) <= 100:
            return Budget(count=None, percent=float(m.group(1)))
        if value.strip().isdigit():
            return Budget(count=int(value.strip()))
    raise ValueError(f"max_failures: expected a count or a percentage such as \"2%\", not {value!r}")


@dataclass(frozen=True)
class Rollout:
    """A set's rollout policy. No waves: one wave of every target (the budget still stops a run)."""

    waves: tuple[Wave, ...] = ()
    max_failures: Budget = field(default_factory=Budget)
    soak: float = 0.0  # seconds


def wave_hash(dbid: str) -> int:
    """Stable order key of a target for percent waves: the same in every process, replica and run."""
    # sha1 rather than hash(): str hashes are salted per process.
    return int.from_bytes(hashlib.sha1(dbid.encode("utf-8")).digest()[:8], "big")


def split_waves(rollout: Rollout, dbids: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(wave name, its targets in the order given) for each wave; leftovers form an implicit last wave ``rest``.

    Membership depends only on the set of dbids, never on their order.
    """
    left = list(dict.fromkeys(dbids))
    total = len(left)
    out: list[tuple[str, list[str]]] = []
    for wave in rollout.waves:
        if wave.targets is not None:
            taken = {d for d in left if any(fnmatch.fnmatchcase(d, p) for p in wave.targets)}
        elif wave.percent is not None:
            share = math.ceil(total * wave.percent / 100 - 1e-9)
            taken = set(sorted(left, key=lambda d: (wave_hash(d), d))[:share])
        else:
            taken = set(left)
        out.append((wave.name, [d for d in left if d in taken]))
        left = [d for d in left if d not in taken]
    if left or not out:
        names = {name for name, _ in out}
        out.append(("rest" if "rest" not in names else f"wave {len(out) + 1}", left))
    return out


@dataclass(frozen=True)
class TargetView:
    """What a target's ledger says about a set: applied versions with their ``apply_time``; None: not readable."""

    dbid: str
    applied: Mapping[str, int] | None
    failed: frozenset[str] = frozenset()  # versions known to have failed there (a failed row, or this run)


@dataclass(frozen=True)
class Gate:
    """One binding's rollout verdict: what it may get now, what waits, what is capped, and why."""

    dbid: str
    wave: str
    allowed: tuple[str, ...] = ()  # pending versions it may get now, in apply order
    held: tuple[str, ...] = ()  # pending versions the rollout holds back
    capped: tuple[str, ...] = ()  # pending versions past its cap or pin: never applied while it stands
    cap: str | None = None
    reason: str | None = None  # why held[0] waits
    until: float | None = None  # Unix seconds when the soak holding held[0] ends


@dataclass(frozen=True)
class WaveStatus:
    """One wave's progress on one version."""

    name: str
    version: str
    size: int  # targets of the wave that may get the version (pins and caps excluded)
    applied: int
    failed: int
    budget: int
    open: bool  # the wave may get the version now
    reason: str | None = None  # why not, when closed


@dataclass
class RolloutPlan:
    """The rollout of one set: each binding's gate and each wave's state on the version in flight."""

    waves: list[tuple[str, list[str]]]
    gates: dict[str, Gate]
    progress: list[WaveStatus]  # per wave, for the oldest version not yet everywhere (empty when done)
    wave_of: dict[str, str]

    @property
    def next_soak_end(self) -> float | None:
        """The earliest soak end that holds a binding back (when a run would make progress), else None."""
        ends = [g.until for g in self.gates.values() if g.until is not None and g.held]
        return min(ends) if ends else None

    def summary(self) -> str:
        """One line: the version in flight and each wave's applied/failed/held counts."""
        if not self.progress:
            return "done"
        version = self.progress[0].version
        parts = []
        for w in self.progress:
            held = "" if w.open else " held"
            failed = f", {w.failed} failed" if w.failed else ""
            parts.append(f"{w.name} {w.applied}/{w.size}{failed}{held}")
        return f"{version}: " + "; ".join(parts)


def _when(ts: float, now: float) -> str:
    fmt = "%H:%M:%SZ" if time.gmtime(ts)[:3] == time.gmtime(now)[:3] else "%Y-%m-%dT%H:%M:%SZ"
    return time.strftime(fmt, time.gmtime(ts))


def plan(rollout: Rollout | None, caps: Caps | None, versions: Sequence[str], views: Iterable[TargetView],
         now: float | None = None) -> RolloutPlan:
    """Every binding's gate for one set from its targets' ledgers (pure).

    ``versions`` are the set's versions in apply (name) order. A target whose
    ledger could not be read counts as not having any version.
    """
    now = time.time() if now is None else now
    rollout = rollout or Rollout()
    caps = caps or Caps()
    views = list(views)
    by_id = {v.dbid: v for v in views}
    waves = split_waves(rollout, [v.dbid for v in views])
    wave_of = {dbid: name for name, members in waves for dbid in members}
    cap_of = {v.dbid: caps.cap_for(v.dbid) for v in views}
    # Per version: index of the first wave that may not get it yet, with the reason and soak end.
    closed: dict[str, tuple[int, str, float | None]] = {}
    progress: list[WaveStatus] = []
    for version in versions:
        last_apply: float | None = None
        statuses: list[WaveStatus] = []
        blocked: tuple[int, str, float | None] | None = None
        for index, (name, members) in enumerate(waves):
            is_open = blocked is None
            eligible = [d for d in members if cap_of[d] is None or version <= cap_of[d]]  # type: ignore[operator]
            have = [d for d in eligible if (by_id[d].applied or {}).get(version) is not None]
            failed = sum(1 for d in eligible if version in by_id[d].failed and d not in have)
            budget = rollout.max_failures.allowed(len(eligible))
            statuses.append(WaveStatus(name, version, len(eligible), len(have), failed, budget, is_open,
                                       None if is_open else blocked[1] if blocked else None))
            if blocked is not None:
                continue
            missing = len(eligible) - len(have)
            if missing > budget:
                if failed > budget:
                    why = f"waiting for wave {name}: {failed} of {len(eligible)} failed {version}"
                else:
                    why = f"waiting for wave {name}: {len(have)} of {len(eligible)} have {version}"
                blocked = (index + 1, why, None)
                continue
            times = [by_id[d].applied[version] for d in have]  # type: ignore[index]
            if times:
                last_apply = max([*times, last_apply] if last_apply is not None else times)
            if rollout.soak > 0 and last_apply is not None and now < last_apply + rollout.soak:
                end = last_apply + rollout.soak
                blocked = (index + 1, f"soak until {_when(end, now)} (after wave {name})", end)
        if blocked is not None:
            closed[version] = blocked
        everywhere = all(s.applied == s.size for s in statuses)
        if not progress and not everywhere:
            progress = statuses
    index_of = {name: i for i, (name, _) in enumerate(waves)}
    gates: dict[str, Gate] = {}
    for view in views:
        gates[view.dbid] = _gate(view, versions, wave_of[view.dbid], index_of[wave_of[view.dbid]], cap_of[view.dbid],
                                 closed)
    return RolloutPlan(waves, gates, progress, wave_of)


def _gate(view: TargetView, versions: Sequence[str], wave: str, index: int, cap: str | None,
          closed: Mapping[str, tuple[int, str, float | None]]) -> Gate:
    applied = view.applied or {}
    allowed: list[str] = []
    held: list[str] = []
    capped: list[str] = []
    reason: str | None = None
    until: float | None = None
    for version in versions:
        if version in applied:
            continue
        if cap is not None and version > cap:
            capped.append(version)
            continue
        gate = closed.get(version)
        if held or (gate is not None and index >= gate[0]):
            if not held and gate is not None:
                reason, until = gate[1], gate[2]
            held.append(version)  # migrations apply in order: nothing after a held version may run
        else:
            allowed.append(version)
    return Gate(view.dbid, wave, tuple(allowed), tuple(held), tuple(capped), cap, reason, until)


class FailureBudget:
    """Counts failures per (wave, version) within one run; once a wave's count exceeds its budget,
    no further target of that wave starts that version in the run. Thread-safe."""

    def __init__(self, rollout_plan: RolloutPlan, budget: Budget):
        self._wave_of = dict(rollout_plan.wave_of)
        self._size = {name: len(members) for name, members in rollout_plan.waves}
        self._budget = budget
        self._failed: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    def may_start(self, dbid: str, version: str) -> bool:
        wave = self._wave_of.get(dbid, "")
        with self._lock:
            count = len(self._failed.get((wave, version), ()))
        return count <= self._budget.allowed(self._size.get(wave, 0))

    def failed(self, dbid: str, version: str) -> bool:
        """Count a failure; True when it is the one that took the wave over its budget for that version."""
        wave = self._wave_of.get(dbid, "")
        with self._lock:
            seen = self._failed.setdefault((wave, version), set())
            before = len(seen)
            seen.add(dbid)
            after = len(seen)
        limit = self._budget.allowed(self._size.get(wave, 0))
        return before <= limit < after

    def stopped(self) -> list[tuple[str, str]]:
        """(wave, version) pairs whose budget this run exhausted."""
        with self._lock:
            return sorted(k for k, v in self._failed.items() if len(v) > self._budget.allowed(self._size.get(k[0], 0)))
