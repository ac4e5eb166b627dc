"""Racing runners and replicas on the engines without transactional DDL (MySQL, Redis).

A ``running`` ledger row whose runner still holds the lock is work in progress: a
second runner or replica reports the binding ``locked``, never ``failed`` or
"interrupted". The slow migrations sleep inside the server (MySQL) or in ``up``
(Redis), so the second runner arrives while the first is mid-migration.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from tests.conftest import redis_connect
from tests.test_daemon import FAST, daemons, mysql_rows, poll  # noqa: F401 - daemons is a fixture

SLOW_MYSQL = "SELECT SLEEP(5);\nCREATE TABLE slow (x INT);\n"
SLOW_REDIS = "import time\n\n\ndef up(db):\n    time.sleep(5)\n    db.execute(['INCR', db.prefix + 'slow'])\n"


def _slow_set(project: Any, mysql_db: Any, redis_prefix: Any, **options: Any) -> list[str]:
    targets = [project.add_target("mysql", "m", mysql_db), project.add_target("redis", "r", redis_prefix)]
    project.add_set("s", targets, **options)
    project.write("s", "001_first/mysql.sql", "CREATE TABLE first (x INT);\n")
    project.write("s", "001_first/redis.redis", "SET first 1\n")
    project.write("s", "002_slow/mysql.sql", SLOW_MYSQL)
    project.write("s", "002_slow/up.py", SLOW_REDIS)
    return targets


def _running(mysql_db: Any, redis_prefix: Any) -> bool:
    """Both targets show 002_slow as running: the first runner is inside the slow migration."""
    my = mysql_rows(mysql_db["dbname"], "SELECT status FROM migration WHERE set_id = 's' AND version = '002_slow'")
    meta = redis_connect().hget(f"{redis_prefix['prefix']}migration:s:meta", "002_slow")
    return my == [("running",)] and meta is not None and json.loads(meta)["status"] == "running"


def _assert_applied_once(mysql_db: Any, redis_prefix: Any) -> None:
    assert mysql_rows(mysql_db["dbname"], "SELECT version, status FROM migration WHERE set_id = 's' ORDER BY version") == [
        ("001_first", "applied"), ("002_slow", "applied")]
    assert mysql_rows(mysql_db["dbname"], "SELECT count(*) FROM slow") == [(0,)]  # created once (a second CREATE would fail)
    client = redis_connect()
    prefix = redis_prefix["prefix"]
    assert sorted(client.hkeys(f"{prefix}migration:s")) == [b"001_first", b"002_slow"]
    metas = {k.decode(): json.loads(v)["status"] for k, v in client.hgetall(f"{prefix}migration:s:meta").items()}
    assert metas == {"001_first": "applied", "002_slow": "applied"}
    assert client.get(f"{prefix}slow") == b"1"  # the slow up() ran exactly once


def test_a_second_runner_meeting_a_migration_in_flight_reports_locked_not_interrupted(
        project: Any, mysql_db: Any, redis_prefix: Any, orchestrator: Any) -> None:
    _slow_set(project, mysql_db, redis_prefix)
    config = project.config
    first = subprocess.Popen([sys.executable, "-m", "orchestrator", "catch-up", str(config)], cwd=config.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        poll(lambda: _running(mysql_db, redis_prefix), 20, "the first runner inside 002_slow on both targets")
        code, out, err = orchestrator("catch-up", config, "--lock-wait", "0.3")
        status_code, status_out, _ = orchestrator("status", config)
        ups = [orchestrator("up", "all", config, dbid, "s", "--lock-wait", "0.3") for dbid in ("mysql.m", "redis.r")]
        assert _running(mysql_db, redis_prefix)  # all of the above ran while the first runner was still at work
    finally:
        first_out = first.communicate(timeout=60)[0]
    assert first.returncode == 0, first_out
    text = out + err
    assert code == 1, text  # locked: exit 1, as documented
    assert "interrupted" not in text and "failed" not in text and "resolve" not in text, text
    for dbid in ("mysql.m", "redis.r"):
        assert f"{dbid}/s locked" in text, text
    assert status_code == 1 and "interrupted" not in status_out and status_out.count("locked") >= 2, status_out
    for (up_code, up_out, up_err), dbid in zip(ups, ("mysql.m", "redis.r")):
        assert up_code == 1 and f"{dbid}/s locked by " in up_err and "interrupted" not in up_err + up_out, up_err
    _assert_applied_once(mysql_db, redis_prefix)


def test_two_daemons_racing_on_a_slow_migration_report_no_failure(project: Any, mysql_db: Any, redis_prefix: Any,
                                                                  daemons: Any) -> None:
    targets = _slow_set(project, mysql_db, redis_prefix, schedule={"every": "500ms"})
    project.extra["daemon"] = FAST
    config = project.config
    first = daemons(config)
    first.wait_ready()
    poll(lambda: _running(mysql_db, redis_prefix), 20, "the first daemon inside 002_slow on both targets")
    second = daemons(config)
    second.wait_ready()
    for d in (first, second):
        poll(lambda d=d: all((d.binding("s", t) or {}).get("state") == "current" for t in targets), 30,
             f"both bindings current\n{d.log}")
    for d in (first, second):
        d.send(signal.SIGTERM)
    assert first.wait() == 0 and second.wait() == 0
    for d in (first, second):
        assert "interrupted" not in d.log and "failed" not in d.log and "retrying" not in d.log, d.log
        assert "| ERROR |" not in d.log and "Traceback" not in d.log, d.log
    _assert_applied_once(mysql_db, redis_prefix)


def test_a_tick_due_while_the_previous_run_goes_on_is_one_info_line_not_a_traceback(
        project: Any, mysql_db: Any, daemons: Any) -> None:
    target = project.add_target("mysql", "m", mysql_db)
    project.add_set("slow", [target], schedule={"every": "200ms"})
    project.write("slow", "001_slow.sql", "SELECT SLEEP(2);\nCREATE TABLE t (x INT);\n")
    project.extra["daemon"] = FAST
    d = daemons(project.config)
    d.wait_ready()
    poll(lambda: (d.binding("slow", target) or {}).get("state") == "current", 30, f"the slow migration applied\n{d.log}")
    d.send(signal.SIGTERM)
    assert d.wait() == 0
    skipped = [line for line in d.lines if "skipped: the previous run of the set is still going" in line]
    assert skipped and all("| INFO | daemon - slow: run due at " in line for line in skipped), d.log
    assert "Traceback" not in d.log and "| ERROR |" not in d.log and "maximum number of running instances" not in d.log, d.log
    assert mysql_rows(mysql_db["dbname"], "SELECT version, status FROM migration") == [("001_slow", "applied")]
