"""The contract every engine passes: one suite over sqlite, postgresql, mysql and redis.

It covers all nine protocol methods (connect, close, applied, lock, holder,
ensure_ledger, apply, record, forget), adopting a C-tool ledger, and a session
lost under each of them. Engine-specific setup lives in ``conftest.py`` (the
:class:`Engine` adapters); the tests below never ask which engine they run on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import LockHeld, MigrationError, TargetUnreachable
from orchestrator.runner import run
from orchestrator.sets import discover
from orchestrator.targets import Target
from tests.conftest import race
from tests.contract.conftest import CUT, Engine


def test_fresh_ledger_is_empty_and_reading_creates_nothing(engine: Engine) -> None:
    target = engine.target(readonly=True)
    try:
        assert target.applied("s1") == {}
    finally:
        target.close()
    target = engine.target()
    try:
        assert target.applied("s1") == {}  # still none: reading never created a ledger
    finally:
        target.close()


def test_second_runner_sees_lock_held(engine: Engine, tmp_path: Path) -> None:
    engine.write_migration(tmp_path / "s1", "2024-01-01_00-00-00_first")
    migration_set = discover("s1", tmp_path / "s1")
    first, second = engine.target(), engine.contender()
    try:
        with engine.hold_lock(first, "s1"):
            started = time.monotonic()
            with pytest.raises(LockHeld):
                run(second, migration_set, lock_wait=0.3)
            assert time.monotonic() - started < 5
            assert (first.holder("s1") is not None) == engine.names_lock_holder  # status can name who holds it
            with second.lock("other-set", wait=0):  # locks are per set
                pass
        assert [a.version for a in run(second, migration_set).applied] == ["2024-01-01_00-00-00_first"]  # released
        assert second.holder("s1") is None  # and released again after the run
    finally:
        first.close()
        second.close()


def test_apply_records_version_time_and_checksum(engine: Engine, tmp_path: Path) -> None:
    engine.write_migration(tmp_path / "s1", "2024-01-01_00-00-00_first")
    migration_set = discover("s1", tmp_path / "s1")
    target = engine.target()
    try:
        before = int(time.time())
        report = run(target, migration_set)
        rows = target.applied("s1")
    finally:
        target.close()
    assert [a.version for a in report.applied] == ["2024-01-01_00-00-00_first"]
    row = rows["2024-01-01_00-00-00_first"]
    assert row.status == "applied"
    assert before - 1 <= row.apply_time <= int(time.time()) + 1
    assert row.checksum == migration_set.migrations[0].script_for(engine.driver).checksum
    assert row.set_id == "s1"
    assert engine.counter() == 1


def test_failed_apply_leaves_no_row_or_a_failed_row(engine: Engine, tmp_path: Path) -> None:
    engine.write_migration(tmp_path / "s1", "2024-01-01_00-00-00_good")
    engine.write_migration(tmp_path / "s1", "2024-01-02_00-00-00_bad", ok=False)
    engine.write_migration(tmp_path / "s1", "2024-01-03_00-00-00_after")
    migration_set = discover("s1", tmp_path / "s1")
    target = engine.target()
    try:
        with pytest.raises(MigrationError) as failure:
            run(target, migration_set)
        rows = target.applied("s1")
    finally:
        target.close()
    assert "2024-01-02_00-00-00_bad" in str(failure.value)
    assert failure.value.statement is not None and failure.value.line is not None
    assert "2024-01-03_00-00-00_after" not in rows
    bad = rows.get("2024-01-02_00-00-00_bad")
    assert (bad.status if bad else None) == ("failed" if engine.records_failed_rows else None)
    # Without transactional DDL, what ran before the failing statement stays; else it is rolled back.
    assert engine.counter() == (2 if engine.records_failed_rows else 1)
    assert rows["2024-01-01_00-00-00_good"].status == "applied"


def test_two_racing_runners_apply_each_migration_once(engine: Engine, tmp_path: Path) -> None:
    versions = [f"2024-01-0{i}_00-00-00_m{i}" for i in range(1, 7)]
    for version in versions:
        engine.write_migration(tmp_path / "s1", version)
    migration_set = discover("s1", tmp_path / "s1")
    errors = race(2, engine.target, migration_set, lock_wait=30)
    assert errors == []
    target = engine.target()
    try:
        assert sorted(target.applied("s1")) == versions
    finally:
        target.close()
    assert engine.counter() == len(versions)


def test_apply_of_a_version_recorded_meanwhile_returns_none_and_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    """Both runners read an empty ledger; the second one's apply must notice the first one's row and undo its own work."""
    engine.write_migration(tmp_path / "s1", "2024-01-01_00-00-00_first")
    script = discover("s1", tmp_path / "s1").migrations[0].script_for(engine.driver)
    first, second = engine.target(), engine.target()
    try:
        assert first.applied("s1") == {} and second.applied("s1") == {}
        with first.lock("s1", 5):
            first.ensure_ledger()
            assert first.apply(script) is not None
        with second.lock("s1", 5):
            second.ensure_ledger()
            assert second.apply(script) is None
        assert list(second.applied("s1")) == ["2024-01-01_00-00-00_first"]
    finally:
        first.close()
        second.close()
    assert engine.counter() == 1


def test_record_marks_applied_without_running_and_forget_deletes(engine: Engine, tmp_path: Path) -> None:
    engine.write_migration(tmp_path / "s1", "2024-01-01_00-00-00_a")
    engine.write_migration(tmp_path / "s1", "2024-01-02_00-00-00_b")
    migration_set = discover("s1", tmp_path / "s1")
    target = engine.target()
    try:
        with target.lock("s1", 5):
            target.ensure_ledger()
            before = int(time.time())
            target.record("s1", "2024-01-01_00-00-00_a", "c" * 64)
            target.record("s1", "2024-01-01_00-00-00_a", "c" * 64)  # again: nothing more happens
            target.record("s1", "2024-01-09_00-00-00_not_in_the_set", None)
        rows = target.applied("s1")
        assert sorted(rows) == ["2024-01-01_00-00-00_a", "2024-01-09_00-00-00_not_in_the_set"]
        row = rows["2024-01-01_00-00-00_a"]
        assert (row.status, row.set_id, row.checksum) == ("applied", "s1", "c" * 64)
        assert before - 1 <= row.apply_time <= int(time.time()) + 1
        assert target.applied("other") == {}  # recorded for its set only
        # A recorded version is not run: only b runs, once.
        assert [a.version for a in run(target, migration_set).applied] == ["2024-01-02_00-00-00_b"]
        assert engine.counter() == 1
        with target.lock("s1", 5):
            target.forget("s1", "2024-01-01_00-00-00_a")
            target.forget("s1", "2024-01-07_00-00-00_never_recorded")  # nothing to delete: no error
        assert sorted(target.applied("s1")) == ["2024-01-02_00-00-00_b", "2024-01-09_00-00-00_not_in_the_set"]
        # Forgotten, a version is pending again and runs.
        assert [a.version for a in run(target, migration_set).applied] == ["2024-01-01_00-00-00_a"]
    finally:
        target.close()
    assert engine.counter() == 2


def test_a_c_tool_ledger_is_read_then_adopted_keeping_its_rows(engine: Engine, tmp_path: Path) -> None:
    old, older = "2023-01-02_00-00-00_old", "2023-01-01_00-00-00_older"
    engine.seed_legacy_ledger({engine.stored_name(old): 1_700_000_000, older: 1_600_000_000})
    for version in (older, old, "2024-01-01_00-00-00_new"):
        engine.write_migration(tmp_path / "s1", version)
    migration_set = discover("s1", tmp_path / "s1")
    target = engine.target()
    try:
        # Read-only first: the C tool's rows count as applied before anything is changed.
        rows = target.applied("s1")
        assert {v: r.apply_time for v, r in rows.items()} == {old: 1_700_000_000, older: 1_600_000_000}
        with target.lock("s1", 5):
            target.ensure_ledger()
            target.ensure_ledger()  # already current: nothing to do
        rows = target.applied("s1")
        assert {v: (r.apply_time, r.status) for v, r in rows.items()} == {old: (1_700_000_000, "applied"),
                                                                        older: (1_600_000_000, "applied")}
        assert [a.version for a in run(target, migration_set).applied] == ["2024-01-01_00-00-00_new"]
        assert engine.counter() == 1
        with target.lock("s1", 5):
            target.forget("s1", old)  # the C tool's row, whatever name it stored it under
        assert sorted(target.applied("s1")) == ["2023-01-01_00-00-00_older", "2024-01-01_00-00-00_new"]
    finally:
        target.close()


_AFTER_A_CUT: dict[str, Callable[[Target, Any], object]] = {
    "applied": lambda t, script: t.applied("s1"),
    "holder": lambda t, script: t.holder("s1"),
    "lock": lambda t, script: t.lock("s1", 0).__enter__(),
    "ensure_ledger": lambda t, script: t.ensure_ledger(),
    "record": lambda t, script: t.record("s1", "2024-01-05_00-00-00_x", None),
    "forget": lambda t, script: t.forget("s1", "2024-01-05_00-00-00_x"),
    "apply": lambda t, script: t.apply(script),
}


@pytest.mark.parametrize("method", sorted(_AFTER_A_CUT))
def test_a_lost_session_is_unreachable_in_every_method(server_engine: Engine, method: str, tmp_path: Path) -> None:
    """The fleet never inspects driver objects: the target itself says the connection is gone."""
    server_engine.write_migration(tmp_path / "s1", "2024-01-01_00-00-00_first")
    script = discover("s1", tmp_path / "s1").migrations[0].script_for(server_engine.driver)
    target = server_engine.target()
    try:
        with target.lock("s1", 5):
            target.ensure_ledger()  # the ledger exists: what follows is the method's own work
        server_engine.cut(target)
        try:
            _AFTER_A_CUT[method](target, script)
        except TargetUnreachable as lost:
            assert lost.exit_code == 3 and lost.dbid == target.dbid
        else:  # only a method that needs no server at all may return
            assert method in server_engine.without_server, f"{method} returned on a lost session"
    finally:
        target.close()  # never raises, even on a dead session


def test_a_python_migration_meeting_a_lost_session_is_unreachable_not_failed(server_engine: Engine, tmp_path: Path) -> None:
    server_engine.write_python_migration(tmp_path / "s1", "2024-01-01_00-00-00_cut", (
        "from tests.contract.conftest import CUT\n\n\n"
        "def up(db):\n"
        "    CUT['now']()\n"
        f"    db.execute({server_engine.probe!r})\n"
    ))
    migration_set = discover("s1", tmp_path / "s1")
    target = server_engine.target()
    CUT["now"] = lambda: server_engine.cut(target)
    try:
        with pytest.raises(TargetUnreachable):
            run(target, migration_set)
    finally:
        CUT.clear()
        target.close()
        server_engine.restore()
    target = server_engine.target()
    try:
        row = target.applied("s1").get("2024-01-01_00-00-00_cut")
        assert row is None or row.status == "running"  # rolled back, or left 'running' (outcome unknown), never applied
    finally:
        target.close()
