"""Rollout logic (pure): wave split, gating from ledger rows, soak, caps and pins, failure budget."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from orchestrator.rollout import (Budget, Caps, FailureBudget, Rollout, TargetView, Wave, parse_budget, plan,
                                  split_waves)

V1, V2, V3 = "2024-01-01_a", "2024-02-01_b", "2024-03-01_c"


def views(applied: dict[str, dict[str, int]], dbids: list[str], failed: dict[str, set[str]] | None = None) -> list[TargetView]:
    failed = failed or {}
    return [TargetView(d, applied.get(d, {}), frozenset(failed.get(d, set()))) for d in dbids]


SQLITES = [f"sqlite.t{i:02d}" for i in range(60)]
CANARY = ["sqlite.canary-1", "sqlite.canary-2"]
THREE = Rollout((Wave("canary", targets=("sqlite.canary-*",)), Wave("early", percent=10), Wave("rest")))


# -- budget -------------------------------------------------------------------------


@pytest.mark.parametrize("value,size,expected", [(0, 10, 0), (2, 10, 2), ("2%", 100, 2), ("2%", 49, 0), ("50%", 5, 2),
                                                 ("3", 10, 3), ("100%", 7, 7), ("10.5%", 20, 2)])
def test_budget_is_a_count_or_a_percentage_rounded_down(value: object, size: int, expected: int) -> None:
    assert parse_budget(value).allowed(size) == expected


@pytest.mark.parametrize("value", [-1, True, "2 percent", "101%", "x", 1.5, None])
def test_bad_budget_is_one_line(value: object) -> None:
    with pytest.raises(ValueError, match="max_failures"):
        parse_budget(value)


def test_wave_with_targets_and_percent_is_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        Wave("w", targets=("a.*",), percent=5)
    with pytest.raises(ValueError, match="percent"):
        Wave("w", percent=0)


# -- split -------------------------------------------------------------------------


def test_waves_split_in_order_globs_then_percent_then_rest() -> None:
    dbids = ["postgresql.p1", *CANARY, *SQLITES]
    waves = split_waves(THREE, dbids)
    assert [name for name, _ in waves] == ["canary", "early", "rest"]
    assert waves[0][1] == CANARY
    assert len(waves[1][1]) == 7  # 10% of 63, rounded up
    assert not set(waves[1][1]) & set(CANARY)
    assert sorted(sum((m for _, m in waves), [])) == sorted(dbids)


def test_percent_wave_is_the_same_whatever_the_order_and_process() -> None:
    dbids = [*CANARY, *SQLITES]
    first = split_waves(THREE, dbids)
    shuffled = list(dbids)
    random.Random(7).shuffle(shuffled)
    second = split_waves(THREE, shuffled)
    assert sorted(first[1][1]) == sorted(second[1][1])
    # A separate interpreter (another str hash salt) picks the same targets.
    code = ("import sys, json; from orchestrator.rollout import *; "
            "r = Rollout((Wave('canary', targets=('sqlite.canary-*',)), Wave('early', percent=10), Wave('rest'))); "
            "print(json.dumps(sorted(split_waves(r, sys.argv[1:])[1][1])))")
    out = subprocess.run([sys.executable, "-c", code, *reversed(dbids)], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    import json

    assert json.loads(out.stdout) == sorted(first[1][1])


def test_leftovers_form_an_implicit_last_wave() -> None:
    waves = split_waves(Rollout((Wave("canary", targets=("sqlite.canary-*",)),)), [*CANARY, "sqlite.x"])
    assert waves == [("canary", CANARY), ("rest", ["sqlite.x"])]
    assert split_waves(Rollout(), ["a.b", "a.c"]) == [("rest", ["a.b", "a.c"])]


# -- gating ------------------------------------------------------------------------------


def test_first_wave_gets_everything_later_waves_wait() -> None:
    dbids = [*CANARY, *SQLITES]
    p = plan(THREE, None, [V1], views({}, dbids), now=1000)
    assert p.gates["sqlite.canary-1"].allowed == (V1,)
    later = p.gates["sqlite.t00"]
    assert later.allowed == () and later.held == (V1,)
    assert later.reason == f"waiting for wave canary: 0 of 2 have {V1}"
    assert p.summary().startswith(f"{V1}: canary 0/2;")


def test_wave_opens_when_the_earlier_one_is_done_and_closes_on_failures() -> None:
    dbids = [*CANARY, *SQLITES]
    done = {d: {V1: 900} for d in CANARY}
    p = plan(THREE, None, [V1], views(done, dbids), now=1000)
    early = [d for d in p.waves[1][1]]
    assert all(p.gates[d].allowed == (V1,) for d in early)
    rest = [d for d in p.waves[2][1]]
    assert all(p.gates[d].held == (V1,) and "waiting for wave early: 0 of 7" in (p.gates[d].reason or "")
               for d in rest)
    # One canary failed: over a budget of 0, everything later waits and says why.
    half = {CANARY[0]: {V1: 900}}
    p = plan(THREE, None, [V1], views(half, dbids, {CANARY[1]: {V1}}), now=1000)
    assert p.gates["sqlite.t05"].reason == f"waiting for wave canary: 1 of 2 failed {V1}"


def test_failure_budget_lets_the_rollout_go_on() -> None:
    r = Rollout((Wave("one", percent=50), Wave("two")), max_failures=Budget(count=1))
    dbids = ["a.1", "a.2", "a.3", "a.4"]
    one = split_waves(r, dbids)[0][1]
    applied = {one[0]: {V1: 5}}
    p = plan(r, None, [V1], views(applied, dbids, {one[1]: {V1}}), now=10)
    two = split_waves(r, dbids)[1][1]
    assert all(p.gates[d].allowed == (V1,) for d in two)
    assert p.gates[one[1]].allowed == (V1,)  # the failed one may try again


def test_soak_is_counted_from_the_last_apply_in_earlier_waves() -> None:
    r = Rollout((Wave("canary", targets=("sqlite.canary-*",)),), soak=60)
    dbids = [*CANARY, "sqlite.x"]
    applied = {CANARY[0]: {V1: 1000}, CANARY[1]: {V1: 1030}}
    p = plan(r, None, [V1], views(applied, dbids), now=1089)
    gate = p.gates["sqlite.x"]
    assert gate.held == (V1,) and gate.until == 1090
    assert gate.reason is not None and gate.reason.startswith("soak until 00:18:10Z")
    assert p.next_soak_end == 1090
    assert plan(r, None, [V1], views(applied, dbids), now=1090).gates["sqlite.x"].allowed == (V1,)


def test_versions_go_in_order_behind_a_held_one() -> None:
    dbids = [*CANARY, "sqlite.x"]
    r = Rollout((Wave("canary", targets=("sqlite.canary-*",)),))
    applied = {d: {V1: 1} for d in CANARY}
    p = plan(r, None, [V1, V2, V3], views(applied, dbids), now=10)
    assert p.gates["sqlite.x"].allowed == (V1,)
    assert p.gates["sqlite.x"].held == (V2, V3)
    assert p.gates[CANARY[0]].allowed == (V2, V3)


def test_unreadable_ledger_counts_as_missing() -> None:
    r = Rollout((Wave("canary", targets=("sqlite.canary-*",)),))
    vs = [TargetView(CANARY[0], {V1: 1}), TargetView(CANARY[1], None), TargetView("sqlite.x", {})]
    assert plan(r, None, [V1], vs, now=10).gates["sqlite.x"].held == (V1,)


# -- caps and pins -----------------------------------------------------------------------------


def test_until_caps_every_target_and_pins_stop_some() -> None:
    dbids = ["sqlite.a", "sqlite.b", "sqlite.pinned"]
    caps = Caps(until=V2, pins=(("sqlite.pin*", V1),))
    p = plan(None, caps, [V1, V2, V3], views({}, dbids), now=1)
    assert p.gates["sqlite.a"].allowed == (V1, V2) and p.gates["sqlite.a"].capped == (V3,)
    assert p.gates["sqlite.pinned"].allowed == (V1,) and p.gates["sqlite.pinned"].capped == (V2, V3)
    assert caps.cap_for("sqlite.pinned") == V1 and Caps().cap_for("x") is None


def test_a_pinned_target_does_not_hold_later_waves() -> None:
    r = Rollout((Wave("canary", targets=("sqlite.canary-*",)),))
    dbids = [*CANARY, "sqlite.x"]
    applied = {CANARY[0]: {V1: 1, V2: 2}, CANARY[1]: {V1: 1}}
    p = plan(r, Caps(pins=((CANARY[1], V1),)), [V1, V2], views(applied, dbids), now=10)
    assert p.gates["sqlite.x"].allowed == (V1, V2)


# -- the run's failure budget -------------------------------------------------------------------


def test_failure_budget_stops_a_wave_once_exceeded() -> None:
    r = Rollout((Wave("w", percent=100),), max_failures=Budget(count=1))
    dbids = ["a.1", "a.2", "a.3"]
    fb = FailureBudget(plan(r, None, [V1], views({}, dbids), now=1), r.max_failures)
    assert fb.may_start("a.3", V1)
    assert fb.failed("a.1", V1) is False
    assert fb.may_start("a.3", V1)
    assert fb.failed("a.2", V1) is True
    assert not fb.may_start("a.3", V1)
    assert fb.may_start("a.3", V2)
    assert fb.stopped() == [("w", V1)]
