"""Binding states without a database: ``assess`` on ledger rows, the exit-code table, and what catch-up reports."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import fleet
from orchestrator.config import load
from orchestrator.errors import exit_code_for_state, worst_exit_code
from orchestrator.runner import run
from orchestrator.sets import discover
from orchestrator.state import STATES, SetInfo, assess
from orchestrator.targets import LedgerRow, open_target

A, B, C = "001_a", "002_b", "003_c"


@pytest.fixture
def info(project: Any) -> SetInfo:
    project.add_set("app", ["sqlite.t"])
    project.add_target("sqlite", "t", {"path": "t.db"})
    for version in (A, B, C):
        project.write("app", f"{version}.sql", f"CREATE TABLE t{version[:3]} (x INTEGER);\n")
    return SetInfo(load(project.config).sets["app"])


def row(info: SetInfo, version: str, **kw: Any) -> LedgerRow:
    script, _ = info.script("sqlite", version)
    fields: dict[str, Any] = {"set_id": "app", "checksum": script.checksum if script else None, **kw}
    return LedgerRow(version, kw.pop("apply_time", 1_700_000_000), **{k: v for k, v in fields.items() if k != "apply_time"})


def judge(info: SetInfo, rows: list[LedgerRow], holder: str | None = None) -> Any:
    return assess(info, "sqlite.t", "sqlite", {r.version: r for r in rows}, holder, "config.json")


def test_current_pending_and_out_of_order(info: SetInfo) -> None:
    st = judge(info, [row(info, v) for v in (A, B, C)])
    assert (st.state, st.applied, st.last_version, st.pending, st.error) == ("current", 3, C, [], None)
    st = judge(info, [row(info, A), row(info, C, apply_time=1_800_000_000)])
    assert (st.state, st.pending, st.out_of_order, st.last_apply_time) == ("pending", [B], [B], 1_800_000_000)


def test_drift_names_the_changed_and_the_missing_file(info: SetInfo) -> None:
    st = judge(info, [row(info, A, checksum="ab" * 32), row(info, "000_gone")])
    assert st.state == "drift" and len(st.drift) == 2
    assert "001_a.sql: changed since it was applied on sqlite.t (checksum abababababab" in st.drift[0]
    assert st.drift[1] == "app/000_gone: applied on sqlite.t but missing from the set"
    assert st.error == st.drift[0] + " (and 1 more)"


def test_a_failed_row_blocks_and_names_the_resolve_command(info: SetInfo) -> None:
    st = judge(info, [row(info, A), row(info, B, status="failed", statement=2, error="boom")])
    assert st.state == "failed"
    assert st.error == ("sqlite.t/app: 002_b failed at statement 2: boom; fix the database, then run "
                        "'orchestrator resolve config.json sqlite.t app 002_b --retry|--mark-applied|--forget'")


def test_a_running_row_is_in_flight_under_a_held_lock_and_interrupted_without(info: SetInfo) -> None:
    rows = [row(info, A), row(info, B, status="running")]
    assert (judge(info, rows, holder="h pid 1").state, judge(info, rows, holder="h pid 1").holder) == ("locked", "h pid 1")
    st = judge(info, rows)
    assert st.state == "failed" and "002_b was interrupted (state running)" in (st.error or "")


def test_an_empty_pending_file_waits_and_adopted_rows_are_not_judged(info: SetInfo, project: Any) -> None:
    project.write("app", "004_d.sql", "-- nothing yet\n")
    info = SetInfo(load(project.config).sets["app"])
    st = judge(info, [row(info, v) for v in (A, B, C)] + [LedgerRow("0999", 1, "", None)])
    assert (st.state, st.waiting, st.pending, st.drift) == ("pending", True, ["004_d"], [])
    assert (st.error or "").startswith("waiting: app/004_d.sql: ")


def test_current_at_a_glance_is_what_the_full_steps_say(info: SetInfo) -> None:
    """The one-comparison answer for an exactly current ledger, against every step on 400 random ledgers."""
    import random

    rng = random.Random(15)
    shapes = [lambda v: row(info, v), lambda v: row(info, v, apply_time=rng.randrange(1, 2_000_000_000)),
              lambda v: row(info, v, checksum="ab" * 32), lambda v: row(info, v, checksum=None),
              lambda v: row(info, v, status="failed", statement=1, error="boom"), lambda v: row(info, v, status="running"),
              lambda v: row(info, v, set_id=""), lambda v: row(info, v, set_id="other")]
    glanced = 0
    for _ in range(400):
        versions = [v for v in (A, B, C, "000_gone", "004_new") if rng.random() < (0.9 if v in (A, B, C) else 0.1)]
        rows = {v: rng.choice(shapes[:2] if rng.random() < 0.5 else shapes)(v) for v in versions}
        holder = rng.choice([None, None, None, "", "host pid 7"])
        full = assess(info, "sqlite.t", "sqlite", rows, holder, "config.json", glance=False)
        quick = assess(info, "sqlite.t", "sqlite", rows, holder, "config.json")
        assert (quick.to_json(), quick.applied_at) == (full.to_json(), full.applied_at), rows
        glanced += quick.state == "current"
    assert glanced > 50  # the glance was taken, not only the steps


def test_one_exit_code_table() -> None:
    assert {s: exit_code_for_state(s) for s in STATES} == {
        "current": 0, "pending": 0, "failed": 1, "drift": 1, "unreachable": 3, "locked": 1, "held": 0, "capped": 0, "removed": 0}
    assert [worst_exit_code(c) for c in ([], [0, 3], [3, 1], [1, 2, 3])] == [0, 3, 1, 2]


def test_runner_tells_its_caller_each_migration_applied_before_a_failure(project: Any) -> None:
    folder = project.add_set("app", ["sqlite.t"])
    project.write("app", f"{A}.sql", "CREATE TABLE a (x INTEGER);\n")
    project.write("app", f"{B}.sql", "CREATE TABLE b (x INTEGER);\n")
    project.write("app", f"{C}.sql", "INSERT INTO nowhere VALUES (1);\n")
    project.add_target("sqlite", "t", {"path": str(project.root / "t.db")})
    config = load(project.config)
    target = open_target(config.databases["sqlite.t"], config.table)
    target.connect()
    told: list[str] = []
    try:
        with pytest.raises(Exception, match="no such table: nowhere"):
            run(target, discover("app", folder), on_applied=lambda applied: told.append(applied.version))
    finally:
        target.close()
    assert told == [A, B]


@pytest.mark.parametrize("engine", ["sqlite", "mysql"])
def test_catch_up_reports_the_ledger_as_status_then_reads_it(project: Any, engine: str, request: Any) -> None:
    """What catch-up says of a binding is the ledger the target recorded, not rows made up on the side
    (on MySQL the failed migration has a row of its own, so it is no longer pending)."""
    entry = {"path": str(project.root / "t.db")} if engine == "sqlite" else request.getfixturevalue("mysql_db")
    dbid = project.add_target(engine, "t", entry)
    project.add_set("app", [dbid])
    project.write("app", f"{A}.sql", "CREATE TABLE a (x INTEGER);\n")
    project.write("app", f"{B}.sql", "CREATE TABLE b (x INTEGER);\n")
    project.write("app", f"{C}.sql", "INSERT INTO nowhere VALUES (1);\n")
    (done,) = fleet.catch_up(project.config).bindings
    (read,) = fleet.status(project.config).bindings
    assert (done.state, done.applied_now) == ("failed", [A, B])
    fields = ("applied", "last_version", "last_apply_time", "pending", "out_of_order", "drift")
    assert {f: getattr(done, f) for f in fields} == {f: getattr(read, f) for f in fields}
    assert done.pending == ([C] if engine == "sqlite" else [])
