"""Redis quirks: connecting (ACL users, refused ports), the two ledger hashes,
the renewed SET NX PX lock, MULTI/EXEC semantics (queue-time versus run-time
errors), redis-cli quoting, Python migrations, and several processes at once.
Every test runs against the real server under its own key prefix (the
``redis_prefix`` fixture)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import RedisConfig
from orchestrator.errors import FailedState, LockHeld, MigrationError
from orchestrator.runner import run
from orchestrator.sets import discover, split_redis_args
from orchestrator.targets import open_target, runner_identity
from tests.conftest import REDIS, unique

DATA = Path(__file__).resolve().parent.parent / "data" / "redis"
ROOT = Path(__file__).resolve().parents[2]


def raw_client(db: int = 0, decode: bool = True):
    import redis

    return redis.Redis(host=REDIS["ip"], port=REDIS["port"], password=REDIS["password"] or None, db=db,
                       socket_timeout=5, decode_responses=decode)


def make_target(entry: dict[str, Any], table: str = "migration", **overrides: Any):
    target = open_target(RedisConfig.model_validate({"host_id": "r1", **entry, **overrides}), table)
    target.connect()
    return target


def keys(entry: dict[str, Any]) -> set[str]:
    return set(raw_client(entry.get("dbindex", 0)).scan_iter(match=f"{entry['prefix']}*", count=1000))


def setup_project(project: Any, entry: dict[str, Any], files: dict[str, str]) -> Path:
    dbid = project.add_target("redis", "r1", entry)
    project.add_set("s1", [dbid])
    for name, content in files.items():
        project.write("s1", name, content.replace("{p}", entry["prefix"]))
    return project.config


def meta(entry: dict[str, Any], version: str, set_id: str = "s1") -> dict[str, Any]:
    raw = raw_client(entry.get("dbindex", 0)).hget(f"{entry['prefix']}migration:{set_id}:meta", version)
    return json.loads(raw) if raw else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def acl_user(redis_prefix: dict[str, Any]) -> Any:
    """An ACL user limited to the test's key prefix; deleted afterwards."""
    name, password = unique("orch_user"), unique("pw")
    admin = raw_client()
    admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", f"~{redis_prefix['prefix']}*", "+@all")
    yield name, password
    admin.execute_command("ACL", "DELUSER", name)


# -- connecting ---------------------------------------------------------------------


def test_acl_user_with_its_password_applies_into_the_configured_dbindex(project: Any, redis_prefix: Any, acl_user: Any,
                                                                         orchestrator: Any) -> None:
    user, password = acl_user
    entry = {**redis_prefix, "user": user, "password": password, "dbindex": 3}
    config = setup_project(project, entry, {"2024-01-01_00-00-00_a.redis": "SET {p}greeting hello\n"})
    try:
        code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
        assert code == 0, err
        db3 = raw_client(3)
        assert db3.get(f"{redis_prefix['prefix']}greeting") == "hello"
        assert set(db3.hgetall(f"{redis_prefix['prefix']}migration:s1")) == {"2024-01-01_00-00-00_a"}
        assert not keys(redis_prefix)  # nothing landed in db 0
    finally:
        db3 = raw_client(3)
        for key in db3.scan_iter(match=f"{redis_prefix['prefix']}*"):
            db3.delete(key)


@pytest.mark.parametrize("fault", ["wrong password", "unknown user"])
def test_bad_credentials_are_unreachable_naming_the_target_never_the_password(project: Any, redis_prefix: Any, acl_user: Any,
                                                                              orchestrator: Any, fault: str) -> None:
    user, password = acl_user
    bad_password = unique("not-the-password")
    entry = {**redis_prefix, "user": user if fault == "wrong password" else unique("nobody"), "password": bad_password}
    config = setup_project(project, entry, {"2024-01-01_00-00-00_a.redis": "SET {p}x 1\n"})
    code, out, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 3
    assert "redis.r1: unreachable: authentication failed" in err
    assert "check user and password" in err
    assert bad_password not in out + err and password not in out + err
    assert "Traceback" not in err
    assert not keys(redis_prefix)


@pytest.mark.parametrize(("denied", "expected"), [
    ("-multi", "no permissions to run the 'multi' command; the user needs MULTI, EXEC, WATCH"),
    ("-@scripting", "cannot renew the lock: this user has no permissions to run the 'evalsha' command"),
])
def test_a_user_without_transactions_or_scripts_is_stopped_before_anything_runs(project: Any, redis_prefix: Any, orchestrator: Any,
                                                                                 denied: str, expected: str) -> None:
    """Without MULTI the file would run outside any transaction; without scripts the lock could not be renewed or released."""
    user, password = unique("orch_user"), unique("pw")
    admin = raw_client()
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", f"~{redis_prefix['prefix']}*", "+@all", denied)
    try:
        config = setup_project(project, {**redis_prefix, "user": user, "password": password},
                               {"2024-01-01_00-00-00_a.redis": "SET {p}a 1\n"})
        code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
        assert code == 1 and expected in err, err
        assert not keys(redis_prefix)  # nothing applied, no ledger entry, no lock left behind
        code, out, err = orchestrator("status", config)  # reading needs neither
        assert code == 0 and "pending" in out, err
    finally:
        admin.execute_command("ACL", "DELUSER", user)


def test_refused_port_is_unreachable_at_once(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    port = free_port()
    config = setup_project(project, {**redis_prefix, "port": port}, {"2024-01-01_00-00-00_a.redis": "SET {p}x 1\n"})
    started = time.monotonic()
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 3
    assert f"redis.r1: unreachable: cannot connect to 127.0.0.1:{port}" in err
    assert time.monotonic() - started < 5  # no silent retries with back-off


# -- ledger -----------------------------------------------------------------------------


def test_ledger_is_two_plain_hashes_and_reading_it_writes_nothing(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    target = make_target(redis_prefix)
    try:
        assert target.applied("s1") == {}
        assert target.holder("s1") is None
        target.ensure_ledger()
    finally:
        target.close()
    assert not keys(redis_prefix)

    config = setup_project(project, redis_prefix, {"2024-01-01_00-00-00_a.redis": "SET {p}a 1\nINCR {p}a\n"})
    before = int(time.time())
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 0, err
    p = redis_prefix["prefix"]
    client = raw_client()
    versions = client.hgetall(f"{p}migration:s1")
    assert list(versions) == ["2024-01-01_00-00-00_a"]
    assert before - 1 <= int(versions["2024-01-01_00-00-00_a"]) <= time.time() + 1  # Unix seconds, as text
    info = meta(redis_prefix, "2024-01-01_00-00-00_a")
    script = discover("s1", project.root / "sets" / "s1").migrations[0].script_for("redis")
    assert info["status"] == "applied" and info["set_id"] == "s1" and info["checksum"] == script.checksum
    assert info["applied_by"] == runner_identity() and isinstance(info["duration_ms"], int)
    assert info["statement"] is None and info["error"] is None
    assert client.get(f"{p}a") == "2"
    assert keys(redis_prefix) == {f"{p}a", f"{p}migration:s1", f"{p}migration:s1:meta"}  # the lock is gone


def test_ledger_name_follows_migrations_table(redis_prefix: Any, tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "2024-01-01_00-00-00_a.redis").write_text("SET x 1\n".replace("x", redis_prefix["prefix"] + "x"))
    target = make_target(redis_prefix, table="schema_versions")
    try:
        run(target, discover("s1", tmp_path / "s1"))
    finally:
        target.close()
    assert f"{redis_prefix['prefix']}schema_versions:s1" in keys(redis_prefix)


def test_versions_written_by_hand_count_as_applied(redis_prefix: Any, tmp_path: Path) -> None:
    """A version added with plain redis-cli (or by the C tool) has no meta entry: applied, no checksum."""
    p = redis_prefix["prefix"]
    raw_client().hset(f"{p}migration:s1", "2024-01-01_00-00-00_a", "1700000000")
    (tmp_path / "s1").mkdir()
    for version in ("2024-01-01_00-00-00_a", "2024-01-02_00-00-00_b"):
        (tmp_path / "s1" / f"{version}.redis").write_text(f"INCR {p}counter\n")
    target = make_target(redis_prefix)
    try:
        row = target.applied("s1")["2024-01-01_00-00-00_a"]
        assert (row.status, row.apply_time, row.checksum, row.set_id) == ("applied", 1700000000, None, "s1")
        report = run(target, discover("s1", tmp_path / "s1"))
    finally:
        target.close()
    assert [a.version for a in report.applied] == ["2024-01-02_00-00-00_b"]
    assert raw_client().get(f"{p}counter") == "1"


def test_record_and_forget(redis_prefix: Any) -> None:
    target = make_target(redis_prefix)
    try:
        target.record("s1", "v1", "ab" * 32)
        first = target.applied("s1")["v1"]
        target.record("s1", "v1", "cd" * 32)  # already recorded: unchanged
        assert target.applied("s1")["v1"] == first
        assert (first.status, first.checksum, first.duration_ms) == ("applied", "ab" * 32, 0)
        target.forget("s1", "v1")
        assert target.applied("s1") == {}
    finally:
        target.close()
    assert not keys(redis_prefix)


# -- MULTI/EXEC semantics ----------------------------------------------------------------


def test_queue_time_error_aborts_the_whole_file_and_records_nothing(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    body = "# seed\nSET {p}a 1\nSET {p}b 2\n\nNOSUCHCOMMAND {p}c\nSET {p}d 4\n"
    config = setup_project(project, redis_prefix, {"2024-01-01_00-00-00_bad.redis": body})
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1
    assert "s1/2024-01-01_00-00-00_bad.redis: statement 3 (line 5):" in err
    assert "unknown command" in err and "nothing was applied" in err
    assert not keys(redis_prefix)  # neither the commands before it nor a ledger entry

    wrong_arity = "SET {p}a 1\nINCR\n"
    project.write("s1", "2024-01-01_00-00-00_bad.redis", wrong_arity.replace("{p}", redis_prefix["prefix"]))
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1 and "statement 2 (line 2):" in err and "wrong number of arguments" in err
    assert not keys(redis_prefix)



def test_queue_time_errors_in_the_one_round_trip_script_apply_nothing(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    """After a connection's first file, files run as one script: it checks each command as MULTI would before running any."""
    p = redis_prefix["prefix"]
    files = {"2024-01-01_00-00-00_first.redis": "SET {p}first 1\n",
             "2024-01-02_00-00-00_bad.redis": "SET {p}a 1\n\nNOSUCHCOMMAND {p}c\nSET {p}d 4\n"}
    config = setup_project(project, redis_prefix, files)
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1
    assert "s1/2024-01-02_00-00-00_bad.redis: statement 2 (line 3):" in err and "unknown command" in err, err
    assert "nothing was applied" in err
    assert keys(redis_prefix) == {f"{p}first", f"{p}migration:s1", f"{p}migration:s1:meta"}  # no 'a', no entry for bad
    assert set(raw_client().hkeys(f"{p}migration:s1:meta")) == {"2024-01-01_00-00-00_first"}

    project.write("s1", "2024-01-02_00-00-00_bad.redis", f"SET {p}a 1\nINCR\n")
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1 and "statement 2 (line 2):" in err and "wrong number of arguments" in err, err
    assert raw_client().get(f"{p}a") is None


def test_commands_known_to_the_connection_are_still_checked_against_the_users_acl(project: Any, redis_prefix: Any,
                                                                                 orchestrator: Any) -> None:
    """COMMAND INFO is asked once per connection, so the script skips those checks; the ACL check stays in it."""
    p = redis_prefix["prefix"]
    name, password = unique("orch_nosadd"), unique("pw")
    admin = raw_client()
    admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", f"~{p}*", "+@all", "-sadd")
    try:
        files = {"2024-01-01_00-00-00_first.redis": "SET {p}first 1\n",
                 "2024-01-02_00-00-00_second.redis": "SET {p}second 2\nINCR {p}n\n",
                 "2024-01-03_00-00-00_third.redis": "SET {p}third 3\nSADD {p}s x\n"}
        config = setup_project(project, {**redis_prefix, "user": name, "password": password}, files)
        code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
        assert code == 1
        assert "s1/2024-01-03_00-00-00_third.redis: statement 2 (line 2):" in err and "NOPERM" in err, err
        assert "nothing was applied" in err
        assert admin.get(f"{p}second") == "2" and admin.get(f"{p}third") is None and admin.exists(f"{p}s") == 0
        assert sorted(admin.hkeys(f"{p}migration:s1")) == ["2024-01-01_00-00-00_first", "2024-01-02_00-00-00_second"]
    finally:
        admin.execute_command("ACL", "DELUSER", name)


def test_a_command_no_script_may_run_takes_multi_exec_after_the_first_file(project: Any, redis_prefix: Any,
                                                                          orchestrator: Any) -> None:
    """XGROUP has subcommands, whose queue-time checks a script cannot repeat: that file runs in MULTI/EXEC."""
    p = redis_prefix["prefix"]
    files = {"2024-01-01_00-00-00_first.redis": "SET {p}first 1\n",
             "2024-01-02_00-00-00_group.redis": "XGROUP CREATE {p}events workers $ MKSTREAM\nSET {p}after 1\n"}
    config = setup_project(project, redis_prefix, files)
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 0, err
    client = raw_client()
    assert [g["name"] for g in client.xinfo_groups(f"{p}events")] == ["workers"] and client.get(f"{p}after") == "1"
    assert set(client.hkeys(f"{p}migration:s1")) == {v.removesuffix(".redis") for v in files}
    assert meta(redis_prefix, "2024-01-02_00-00-00_group")["status"] == "applied"


def test_runtime_error_keeps_the_other_commands_and_blocks_the_set_until_resolved(project: Any, redis_prefix: Any,
                                                                                   orchestrator: Any) -> None:
    p = redis_prefix["prefix"]
    files = {
        "2024-01-01_00-00-00_good.redis": "SET {p}good 1\n",
        "2024-01-02_00-00-00_mixed.redis": "SET {p}a 1\n# a is a string, not a list\nLPUSH {p}a x\nSET {p}b 2\n",
        "2024-01-03_00-00-00_after.redis": "SET {p}after 1\n",
    }
    config = setup_project(project, redis_prefix, files)
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1
    assert "2024-01-02_00-00-00_mixed.redis: statement 2 (line 3): WRONGTYPE" in err
    assert "other commands were applied" in err
    client = raw_client()
    assert client.get(f"{p}a") == "1" and client.get(f"{p}b") == "2" and client.get(f"{p}after") is None
    assert set(client.hgetall(f"{p}migration:s1")) == {"2024-01-01_00-00-00_good"}  # not "applied"
    info = meta(redis_prefix, "2024-01-02_00-00-00_mixed")
    assert (info["status"], info["statement"], info["line"]) == ("failed", 2, 3)
    assert info["error"].startswith("WRONGTYPE")

    target = make_target(redis_prefix)
    try:
        row = target.applied("s1")["2024-01-02_00-00-00_mixed"]
        assert (row.status, row.statement) == ("failed", 2) and row.error.startswith("WRONGTYPE")
    finally:
        target.close()

    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1 and "2024-01-02_00-00-00_mixed failed at statement 2: WRONGTYPE" in err and "orchestrator resolve" in err
    assert client.get(f"{p}after") is None

    code, _, err = orchestrator("resolve", config, "redis.r1", "s1", "2024-01-02_00-00-00_mixed", "--mark-applied")
    assert code == 0, err
    assert meta(redis_prefix, "2024-01-02_00-00-00_mixed")["status"] == "applied"
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 0, err
    assert client.get(f"{p}after") == "1"
    assert len(client.hgetall(f"{p}migration:s1")) == 3


def test_commands_that_would_break_the_transaction_or_the_ledger_are_refused(project: Any, redis_prefix: Any,
                                                                              orchestrator: Any) -> None:
    config = setup_project(project, redis_prefix, {"2024-01-01_00-00-00_a.redis": "SET {p}a 1\nSELECT 2\nSET {p}b 1\n"})
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1 and "statement 2 (line 2): SELECT is not allowed in a migration" in err
    assert not keys(redis_prefix)
    # MULTI/EXEC wrappers of a file written for redis-cli are skipped: it runs in one transaction anyway.
    project.write("s1", "2024-01-01_00-00-00_a.redis", f"MULTI\nSET {redis_prefix['prefix']}a 1\nEXEC\n")
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 0, err
    assert raw_client().get(f"{redis_prefix['prefix']}a") == "1"


def test_apply_rechecks_the_ledger_inside_the_transaction(redis_prefix: Any, tmp_path: Path) -> None:
    """Without the lock (a lock lost to expiry), a second runner's apply is a no-op."""
    p = redis_prefix["prefix"]
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "2024-01-01_00-00-00_a.redis").write_text(f"INCR {p}counter\n")
    script = discover("s1", tmp_path / "s1").migrations[0].script_for("redis")
    first, second = make_target(redis_prefix), make_target(redis_prefix)
    try:
        assert first.apply(script) is not None
        assert second.apply(script) is None
        raw_client().hset(f"{p}migration:s1:meta", "2024-01-02_00-00-00_b", json.dumps({"status": "failed"}))
        other = discover("s1", tmp_path / "s1").migrations[0].script_for("redis")
        object.__setattr__(other, "version", "2024-01-02_00-00-00_b")
        with pytest.raises(FailedState, match="recorded failed"):
            second.apply(other)
    finally:
        first.close()
        second.close()
    assert raw_client().get(f"{p}counter") == "1"


def counting_files(tmp_path: Path, p: str, count: int) -> list[Any]:
    """``count`` files of set s1, each counting itself in {p}counter and {p}seen; their scripts, in order."""
    (tmp_path / "s1").mkdir()
    for n in range(count):
        (tmp_path / "s1" / f"2024-01-0{n + 1}_00-00-00_f{n}.redis").write_text(f"INCR {p}counter\nSADD {p}seen f{n}\n")
    return [m.script_for("redis") for m in discover("s1", tmp_path / "s1").migrations]


def test_a_server_that_lost_its_scripts_gets_the_apply_script_again(redis_prefix: Any, tmp_path: Path) -> None:
    """SCRIPT FLUSH (or a restarted server) between two files: the next file still runs once, with its ledger entry."""
    p = redis_prefix["prefix"]
    scripts = counting_files(tmp_path, p, 3)
    target = make_target(redis_prefix)
    try:
        with target.lock("s1", 1):
            assert [target.apply(s) is not None for s in scripts[:2]] == [True, True]  # MULTI/EXEC, then the script
            raw_client().script_flush()
            assert target.apply(scripts[2]) is not None
            assert target.apply(scripts[2]) is None  # recorded: never twice
    finally:
        target.close()
    client = raw_client()
    assert client.get(f"{p}counter") == "3" and client.smembers(f"{p}seen") == {"f0", "f1", "f2"}
    assert sorted(client.hgetall(f"{p}migration:s1")) == [s.version for s in scripts]
    assert all(meta(redis_prefix, s.version)["status"] == "applied" for s in scripts)


def test_command_info_is_asked_once_per_connection_not_by_every_file(redis_prefix: Any, tmp_path: Path) -> None:
    p = redis_prefix["prefix"]
    scripts = counting_files(tmp_path, p, 6)
    admin = raw_client()

    def command_info_calls() -> int:
        stats = admin.info("commandstats")
        return int(stats.get("cmdstat_command|info", {}).get("calls", 0))

    before = command_info_calls()
    target = make_target(redis_prefix)
    try:
        with target.lock("s1", 1):
            assert all(target.apply(s) is not None for s in scripts)  # the first by MULTI/EXEC, five by the script
    finally:
        target.close()
    assert command_info_calls() - before == 1  # INCR and SADD asked about together, once (the script used to ask per file)
    assert admin.get(f"{p}counter") == "6"


def test_binary_replies_and_values(redis_prefix: Any, tmp_path: Path) -> None:
    p = redis_prefix["prefix"]
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "2024-01-01_00-00-00_a.redis").write_text(f'SET {p}bin "\\xff\\xfe"\nGETSET {p}bin "\\xc3\\x28"\n')
    target = make_target(redis_prefix)
    try:
        run(target, discover("s1", tmp_path / "s1"))
    finally:
        target.close()
    assert raw_client(decode=False).get(f"{p}bin") == b"\xc3\x28"


# -- redis-cli quoting -------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    (r'SET k "a\nb"', ["SET", "k", "a\nb"]),
    (r'SET k "\x41\x42\t\"q\"\\"', ["SET", "k", 'AB\t"q"\\']),
    (r'SET k "\q\x4"', ["SET", "k", "qx4"]),
    (r"SET k 'it\'s \n raw'", ["SET", "k", "it's \\n raw"]),
    (r"SET k back\slash", ["SET", "k", "back\\slash"]),
    ('SET k foo"bar baz"', ["SET", "k", "foobar baz"]),
    ("SET k \"\" ''", ["SET", "k", "", ""]),
    (r'SET k "\xff"', ["SET", "k", b"\xff"]),
    ("  GET   k  ", ["GET", "k"]),
])
def test_split_redis_args_matches_redis_cli(line: str, expected: list[Any]) -> None:
    assert split_redis_args(line) == expected


@pytest.mark.parametrize("line", ['SET k "abc', "SET k 'abc", 'SET k "a"b', "SET k 'a'b"])
def test_split_redis_args_rejects_what_redis_cli_rejects(line: str) -> None:
    with pytest.raises(ValueError):
        split_redis_args(line)


def test_quoted_file_stores_what_redis_cli_would(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    p = redis_prefix["prefix"]
    files = {path.name: path.read_text() for path in DATA.glob("*.redis")}
    config = setup_project(project, redis_prefix, files)
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 0, err
    client = raw_client(decode=False)
    assert client.hgetall(f"{p}flags") == {b"checkout": b"on", b"search": b"off", b"beta users": b"a, b\tc"}
    assert client.get(f"{p}banner").decode() == 'Welcome!\nShop "spring" sale \u20ac10 off'
    assert client.get(f"{p}path") == b"C:\\temp\\new"
    assert client.get(f"{p}raw") == b"\x00\x01\xff"
    assert client.smembers(f"{p}roles") == {b"admin", b"editor", b"read only"}
    assert client.lrange(f"{p}queue", 0, -1) == [b"first", b"second item", b""]
    assert 0 < client.ttl(f"{p}banner") <= 86400


def test_unbalanced_quotes_stop_the_run_before_anything_runs(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    files = {"2024-01-01_00-00-00_a.redis": "SET {p}a 1\n", "2024-01-02_00-00-00_b.redis": "SET {p}b 1\n\nSET {p}c \"open\n"}
    config = setup_project(project, redis_prefix, files)
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1
    assert "2024-01-02_00-00-00_b.redis: statement 2 (line 3): cannot parse command: unbalanced double quotes" in err
    assert not keys(redis_prefix)


# -- Python migrations and no-transaction files ------------------------------------------------


PY_OK = '''
def up(db):
    assert db.driver == "redis" and db.dbid == "redis.r1"
    db.execute("SET " + db.prefix + "greeting 'hello world'")
    db.execute(["HSET", db.prefix + "user:1", "name", "Ann Lee"])
    db.execute("HSET " + db.prefix + "user:1", ["city", "Oslo"])
    assert db.query("HGET " + db.prefix + "user:1 name") == "Ann Lee"
    assert db.connection.get(db.prefix + "greeting") == "hello world"  # decode_responses=True
'''

PY_FAILS_AFTER_WRITING = '''
def up(db):
    db.execute("SET " + db.prefix + "a 1")
    db.execute("LPUSH " + db.prefix + "a x")
'''

PY_FAILS_BEFORE_WRITING = '''
def up(db):
    if db.query("GET " + db.prefix + "ready") != "yes":
        raise RuntimeError("not ready")
    db.execute("SET " + db.prefix + "done 1")
'''


def test_python_migration_gets_a_redis_handle(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    config = setup_project(project, redis_prefix, {"2024-01-01_00-00-00_a.py": PY_OK})
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 0, err
    client = raw_client()
    p = redis_prefix["prefix"]
    assert client.get(f"{p}greeting") == "hello world"
    assert client.hgetall(f"{p}user:1") == {"name": "Ann Lee", "city": "Oslo"}
    assert "4 statements" in err
    assert meta(redis_prefix, "2024-01-01_00-00-00_a")["status"] == "applied"


def test_python_failure_after_a_write_is_recorded_failed(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    config = setup_project(project, redis_prefix, {"2024-01-01_00-00-00_a.py": PY_FAILS_AFTER_WRITING})
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1
    assert "2024-01-01_00-00-00_a.py: statement 2 (line 4): up() raised ResponseError: WRONGTYPE" in err
    info = meta(redis_prefix, "2024-01-01_00-00-00_a")
    assert (info["status"], info["statement"], info["line"]) == ("failed", 2, 4)
    assert raw_client().hgetall(f"{redis_prefix['prefix']}migration:s1") == {}
    assert raw_client().get(f"{redis_prefix['prefix']}a") == "1"


def test_python_failure_before_any_write_records_nothing(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    config = setup_project(project, redis_prefix, {"2024-01-01_00-00-00_a.py": PY_FAILS_BEFORE_WRITING})
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1 and "line 4: up() raised RuntimeError: not ready" in err
    assert not keys(redis_prefix)  # not blocked: the next run simply tries again
    raw_client().set(f"{redis_prefix['prefix']}ready", "yes")
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 0, err
    assert raw_client().get(f"{redis_prefix['prefix']}done") == "1"


def test_no_transaction_file_runs_command_by_command(project: Any, redis_prefix: Any, orchestrator: Any) -> None:
    p = redis_prefix["prefix"]
    body = "# orchestrator: no-transaction\nSET {p}a 1\nLPUSH {p}a x\nSET {p}b 1\n"
    config = setup_project(project, redis_prefix, {"2024-01-01_00-00-00_a.redis": body})
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 1 and "statement 2 (line 3): WRONGTYPE" in err and "commands before it stay applied" in err
    client = raw_client()
    assert client.get(f"{p}a") == "1" and client.get(f"{p}b") is None  # stopped at the failure
    assert meta(redis_prefix, "2024-01-01_00-00-00_a")["status"] == "failed"
    code, _, err = orchestrator("resolve", config, "redis.r1", "s1", "2024-01-01_00-00-00_a", "--forget")
    assert code == 0, err
    project.write("s1", "2024-01-01_00-00-00_a.redis", body.replace("{p}", p).replace("LPUSH", "APPEND"))
    code, _, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 0, err
    assert client.get(f"{p}a") == "1x" and client.get(f"{p}b") == "1"


# -- locking -------------------------------------------------------------------------------


def test_heartbeat_keeps_the_lock_past_its_ttl_and_holder_names_the_runner(redis_prefix: Any) -> None:
    key = f"{redis_prefix['prefix']}migration:s1:lock"
    first, second = make_target(redis_prefix), make_target(redis_prefix)
    first.lock_ttl_ms = 400
    client = raw_client()
    try:
        with first.lock("s1", wait=0):
            token = client.get(key)
            time.sleep(1.2)  # 3 TTLs: alive only because it was renewed
            assert client.get(key) == token
            assert 0 < client.pttl(key) <= 400
            assert second.holder("s1").startswith(runner_identity() + " since ")
            with pytest.raises(LockHeld) as held:
                with second.lock("s1", wait=0):
                    pass
            assert runner_identity() in str(held.value)
            assert client.get(key) == token  # holder() and a failed try changed nothing
        assert client.get(key) is None
        assert second.holder("s1") is None
    finally:
        first.close()
        second.close()


def test_release_never_deletes_a_lock_that_now_belongs_to_someone_else(redis_prefix: Any) -> None:
    key = f"{redis_prefix['prefix']}migration:s1:lock"
    target = make_target(redis_prefix)
    target.lock_ttl_ms = 300
    client = raw_client()
    try:
        with target.lock("s1", wait=0):
            # As if our lock expired and another runner took it.
            client.set(key, "0123 1700000000 other-host pid 7", px=10_000)
            time.sleep(0.25)  # a heartbeat comes and must not renew a lock it does not own
        assert client.get(key) == "0123 1700000000 other-host pid 7"
        assert 5_000 < client.pttl(key) <= 10_000
        assert target.holder("s1") == "other-host pid 7 since 22:13:20Z"
    finally:
        target.close()


_HOLDER = """
import sys, time
from orchestrator.config import RedisConfig
from orchestrator.targets import open_target
target = open_target(RedisConfig.model_validate({"host_id": "r1", "ip": sys.argv[1], "port": int(sys.argv[2]),
                                                 "password": sys.argv[3], "prefix": sys.argv[4]}), "migration")
target.connect()
target.lock_ttl_ms = 1000
with target.lock("s1", wait=0):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_crashed_holders_lock_expires(redis_prefix: Any) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, REDIS["ip"], str(REDIS["port"]), REDIS["password"], redis_prefix["prefix"]],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    target = make_target(redis_prefix)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert f"pid {proc.pid} since" in target.holder("s1")
        with pytest.raises(LockHeld, match=f"pid {proc.pid}"):
            with target.lock("s1", wait=0.5):  # renewed while the holder lives
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with target.lock("s1", wait=5):  # no release ever came: the TTL freed it
            assert runner_identity() in target.holder("s1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        target.close()


def test_four_processes_apply_each_migration_once(project: Any, redis_prefix: Any) -> None:
    files = {f"2024-01-{day:02d}_00-00-00_m{day}.redis": "INCR {p}counter\n" for day in range(1, 9)}
    config = setup_project(project, redis_prefix, files)
    command = [sys.executable, "-m", "orchestrator", "up", "all", str(config), "redis.r1", "s1", "--lock-wait", "60"]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outputs
    client = raw_client()
    assert client.get(f"{redis_prefix['prefix']}counter") == "8"
    assert sorted(client.hgetall(f"{redis_prefix['prefix']}migration:s1")) == sorted(v[:-6] for v in files)
    assert sum(err.count("applied 2024") for _, err in outputs) == 8


def test_lost_lock_stops_the_run_before_the_next_migration(redis_prefix: Any, tmp_path: Path) -> None:
    p = redis_prefix["prefix"]
    (tmp_path / "s1").mkdir()
    for version in ("2024-01-01_00-00-00_a", "2024-01-02_00-00-00_b"):
        (tmp_path / "s1" / f"{version}.redis").write_text(f"INCR {p}counter\n")
    script = discover("s1", tmp_path / "s1").migrations[1].script_for("redis")
    target = make_target(redis_prefix)
    target.lock_ttl_ms = 150
    try:
        with target.lock("s1", wait=0):
            raw_client().set(f"{p}migration:s1:lock", "x 1700000000 thief pid 1", px=10_000)
            deadline = time.monotonic() + 5
            while not target._locks["s1"].lost and time.monotonic() < deadline:
                time.sleep(0.02)
            with pytest.raises(LockHeld, match="thief pid 1"):
                target.apply(script)
    finally:
        target.close()
    assert raw_client().get(f"{p}counter") is None


def test_migration_error_is_raised_for_the_contract(redis_prefix: Any, tmp_path: Path) -> None:
    """The runner's MigrationError carries the command number and file line."""
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "2024-01-01_00-00-00_a.redis").write_text("PING\n\nBOGUS 1\n")
    target = make_target(redis_prefix)
    try:
        with pytest.raises(MigrationError) as failure:
            run(target, discover("s1", tmp_path / "s1"))
    finally:
        target.close()
    assert (failure.value.statement, failure.value.line) == (2, 3)
