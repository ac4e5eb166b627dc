"""The contract every engine passes: one suite over sqlite, postgresql, mysql and redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import config as config_module
from orchestrator.errors import LockHeld, MigrationError
from orchestrator.runner import run
from orchestrator.sets import discover
from orchestrator.targets import open_target
from tests.conftest import race

_MODELS = {"sqlite": config_module.SqliteConfig, "postgresql": config_module.PostgresqlConfig,
           "mysql": config_module.MysqlConfig, "redis": config_module.RedisConfig}


def make_target(driver: str, entry: dict[str, Any], readonly: bool = False):
    target = open_target(_MODELS[driver].model_validate({"host_id": "t", **entry}), "migration")
    target.connect(readonly=readonly)
    return target


def counter_key(entry: dict[str, Any]) -> str:
    return f"{entry.get('prefix', '')}counter"


def write_migration(folder: Path, driver: str, entry: dict[str, Any], version: str, ok: bool = True) -> None:
    """A migration that bumps a counter (and, when not ok, then fails)."""
    folder.mkdir(parents=True, exist_ok=True)
    if driver == "redis":
        body = f"INCR {counter_key(entry)}\n" + ("NOSUCHCOMMAND x\n" if not ok else "")
        (folder / f"{version}.redis").write_text(body)
    else:
        setup = "CREATE TABLE IF NOT EXISTS counter (n INTEGER NOT NULL);\n"
        body = setup + "INSERT INTO counter (n) VALUES (1);\n" + ("INSERT INTO no_such_table VALUES (1);\n" if not ok else "")
        (folder / f"{version}.sql").write_text(body)


def counter_value(driver: str, entry: dict[str, Any]) -> int:
    if driver == "redis":
        from tests.conftest import redis_connect

        value = redis_connect(entry.get("dbindex", 0)).get(counter_key(entry))
        return int(value or 0)
    target = make_target(driver, entry)
    try:
        return target._execute("SELECT COUNT(*) FROM counter")[0][0]
    finally:
        target.close()


def test_fresh_ledger_is_empty_and_reading_creates_nothing(engine_entry: Any) -> None:
    driver, entry = engine_entry
    target = make_target(driver, entry, readonly=True)
    try:
        assert target.applied("s1") == {}
    finally:
        target.close()
    target = make_target(driver, entry)
    try:
        assert target.applied("s1") == {}  # still none: reading never created a ledger
    finally:
        target.close()


def test_second_runner_sees_lock_held(engine_entry: Any, tmp_path: Path) -> None:
    driver, entry = engine_entry
    if driver == "sqlite":
        _second_sqlite_writer_sees_lock_held(entry, tmp_path)
        return
    first, second = make_target(driver, entry), make_target(driver, entry)
    try:
        with first.lock("s1", wait=0):
            started = time.monotonic()
            with pytest.raises(LockHeld):
                with second.lock("s1", wait=0.3):
                    pass
            assert time.monotonic() - started < 5
            assert first.holder("s1") is not None  # status can name who holds it
            with second.lock("other-set", wait=0):  # locks are per set
                pass
        with second.lock("s1", wait=0):  # released
            pass
    finally:
        first.close()
        second.close()


def _second_sqlite_writer_sees_lock_held(entry: dict[str, Any], tmp_path: Path) -> None:
    """SQLite's lock is the file's write lock, taken per migration: a second writer waits busy_timeout, then reports it."""
    write_migration(tmp_path / "s1", "sqlite", entry, "2024-01-01_00-00-00_first")
    migration_set = discover("s1", tmp_path / "s1")
    entry = {**entry, "busy_timeout": 200}
    first, second = make_target("sqlite", entry), make_target("sqlite", entry)
    try:
        first._execute("BEGIN IMMEDIATE")  # another process in the middle of a migration
        started = time.monotonic()
        with pytest.raises(LockHeld):
            run(second, migration_set, lock_wait=0.3)
        assert time.monotonic() - started < 5
        first._execute("ROLLBACK")
        assert [a.version for a in run(second, migration_set).applied] == ["2024-01-01_00-00-00_first"]
    finally:
        first.close()
        second.close()


def test_apply_records_version_time_and_checksum(engine_entry: Any, tmp_path: Path) -> None:
    driver, entry = engine_entry
    write_migration(tmp_path / "s1", driver, entry, "2024-01-01_00-00-00_first")
    migration_set = discover("s1", tmp_path / "s1")
    target = make_target(driver, entry)
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
    assert row.checksum == migration_set.migrations[0].script_for(driver).checksum
    assert row.set_id == "s1"
    assert counter_value(driver, entry) == 1


def test_failed_apply_leaves_no_row_or_a_failed_row(engine_entry: Any, tmp_path: Path) -> None:
    driver, entry = engine_entry
    write_migration(tmp_path / "s1", driver, entry, "2024-01-01_00-00-00_good")
    write_migration(tmp_path / "s1", driver, entry, "2024-01-02_00-00-00_bad", ok=False)
    write_migration(tmp_path / "s1", driver, entry, "2024-01-03_00-00-00_after")
    migration_set = discover("s1", tmp_path / "s1")
    target = make_target(driver, entry)
    try:
        with pytest.raises(MigrationError) as failure:
            run(target, migration_set)
        rows = target.applied("s1")
    finally:
        target.close()
    assert "2024-01-02_00-00-00_bad" in str(failure.value)
    assert failure.value.statement is not None
    assert "2024-01-03_00-00-00_after" not in rows
    if driver == "mysql":
        assert rows["2024-01-02_00-00-00_bad"].status == "failed"
        assert counter_value(driver, entry) == 2  # DDL and DML before the failing statement stay
    else:
        assert "2024-01-02_00-00-00_bad" not in rows
        assert counter_value(driver, entry) == 1  # the bad migration's own insert rolled back
    assert rows["2024-01-01_00-00-00_good"].status == "applied"


def test_two_racing_runners_apply_each_migration_once(engine_entry: Any, tmp_path: Path) -> None:
    driver, entry = engine_entry
    versions = [f"2024-01-0{i}_00-00-00_m{i}" for i in range(1, 7)]
    for version in versions:
        write_migration(tmp_path / "s1", driver, entry, version)
    migration_set = discover("s1", tmp_path / "s1")
    errors = race(2, lambda: make_target(driver, entry), migration_set, lock_wait=30)
    assert errors == []
    target = make_target(driver, entry)
    try:
        assert sorted(target.applied("s1")) == versions
    finally:
        target.close()
    assert counter_value(driver, entry) == len(versions)


def test_apply_of_a_version_recorded_meanwhile_returns_none_and_changes_nothing(engine_entry: Any, tmp_path: Path) -> None:
    """Both runners read an empty ledger; the second one's apply must notice the first one's row and undo its own work."""
    driver, entry = engine_entry
    write_migration(tmp_path / "s1", driver, entry, "2024-01-01_00-00-00_first")
    script = discover("s1", tmp_path / "s1").migrations[0].script_for(driver)
    first, second = make_target(driver, entry), make_target(driver, entry)
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
    assert counter_value(driver, entry) == 1
