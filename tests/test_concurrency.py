"""Worker budgets of a fleet run: SQLite files and server targets apart unless a count is given."""

from __future__ import annotations

from orchestrator import defaults
from orchestrator.concurrency import SERVER_WORKERS, budgets


def test_without_a_count_files_and_servers_get_their_own_pools() -> None:
    targets = [(f"sqlite.f{i}", "sqlite") for i in range(100)] + [(f"postgresql.p{i}", "postgresql") for i in range(50)]
    targets += [("redis.r1", "redis"), ("mysql.m1", "mysql")]
    pools = budgets(targets, None)
    assert [size for size, _ in pools] == [defaults.WORKERS, SERVER_WORKERS]
    assert pools[0][1] == [f"sqlite.f{i}" for i in range(100)]
    assert pools[1][1] == [f"postgresql.p{i}" for i in range(50)] + ["redis.r1", "mysql.m1"]
    assert SERVER_WORKERS > defaults.WORKERS


def test_an_explicit_count_is_one_budget_for_every_target() -> None:
    targets = [("sqlite.a", "sqlite"), ("redis.r", "redis"), ("sqlite.b", "sqlite")]
    assert budgets(targets, 4) == [(3, ["sqlite.a", "redis.r", "sqlite.b"])]
    assert budgets(targets, 2) == [(2, ["sqlite.a", "redis.r", "sqlite.b"])]


def test_pools_never_outnumber_their_targets_and_empty_ones_are_left_out() -> None:
    assert budgets([("redis.r", "redis")], None) == [(1, ["redis.r"])]
    assert budgets([("sqlite.a", "sqlite"), ("sqlite.b", "sqlite")], None) == [(2, ["sqlite.a", "sqlite.b"])]
    assert budgets([], None) == []
