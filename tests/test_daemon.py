"""The daemon: schedules, the folder watcher, retries, signals, reload, replicas, --once, and deploy/ files.

Process tests run ``python -m orchestrator daemon CONFIG`` against SQLite files and
the real servers, with the status server on a free port; they poll for conditions
with deadlines instead of sleeping. Unit tests drive :class:`Daemon` runs with an
injected clock, so retries are checked without waiting for them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from orchestrator import cli
from orchestrator import config as config_module
from orchestrator.backoff import Backoff
from orchestrator.daemon import Daemon, parse_shard
from orchestrator.daemon.runs import SetRuns
from orchestrator.watcher import Watcher
from orchestrator.errors import ConfigError
from tests.conftest import mysql_connect, pg_connect

ROOT = Path(__file__).resolve().parents[1]
FAST = {"workers": 4, "watch_interval": "200ms", "retry_min": "300ms", "retry_max": "1s",
        "http": {"host": "127.0.0.1", "port": 0}}


# -- helpers ------------------------------------------------------------------------


def poll(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not yet: server not up, file half-read, ledger table not created yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonProcess:
    """``orchestrator daemon`` in a subprocess; its log is collected, its status server found from the log."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "daemon", str(config), *extra],
            cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        poll(lambda: text in self.log or self.proc.poll() is not None and text in self.log, timeout, f"log line {text!r}\n{self.log}")

    def wait_ready(self, timeout: float = 20.0) -> None:
        def found() -> str | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log}")
            m = re.search(r"status on (http://\S+/)", self.log)
            return m.group(1) if m else None

        self.url = poll(found, timeout, "the status server")
        poll(lambda: self.get("/readyz")[0] == 200, timeout, "readiness")

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url.rstrip("/") + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        return json.loads(body)

    def binding(self, set_id: str, dbid: str) -> dict[str, Any] | None:
        for item in self.status()["bindings"]:
            if item["set"] == set_id and item["target"] == dbid:
                return item
        return None

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def daemons() -> Any:
    started: list[DaemonProcess] = []

    def start(config: Path, *extra: str, env: dict[str, str] | None = None) -> DaemonProcess:
        process = DaemonProcess(config, *extra, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


class TcpProxy:
    """A TCP relay in front of a server that the test brings down (refusing connections) and up again."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._guard = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._guard:
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._guard:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()


def sqlite_rows(path: str, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def pg_rows(dbname: str, sql: str) -> list[tuple[Any, ...]]:
    with pg_connect(dbname) as conn:
        return conn.execute(sql).fetchall()


def mysql_rows(dbname: str, sql: str) -> list[tuple[Any, ...]]:
    with mysql_connect(dbname) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# -- units: backoff, watcher, shard ---------------------------------------------------


def test_backoff_doubles_from_the_first_delay_up_to_the_cap_and_resets_on_success() -> None:
    clock = FakeClock()
    backoff = Backoff(clock, first=30, cap=3600)
    delays = []
    for _ in range(9):
        entry = backoff.fail("s1", "postgresql.p1", "unreachable", "refused")
        delays.append((entry.next_at - clock.now).total_seconds())
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert not backoff.due("s1", "postgresql.p1")
    clock.advance(3599)
    assert not backoff.due("s1", "postgresql.p1")
    clock.advance(1)
    assert backoff.due("s1", "postgresql.p1")
    assert backoff.due("s1", "sqlite.other")  # never failed: always due
    assert backoff.succeed("s1", "postgresql.p1") is not None
    assert backoff.get("s1", "postgresql.p1") is None
    assert (backoff.fail("s1", "postgresql.p1", "unreachable", None).next_at - clock.now).total_seconds() == 30


def test_watcher_reports_a_set_only_after_its_files_hold_still(tmp_path: Path) -> None:
    folder = tmp_path / "s1"
    folder.mkdir()
    (folder / "001_a.sql").write_text("CREATE TABLE a (id INTEGER);\n")
    watcher = Watcher({"s1": folder})
    assert watcher.scan() == []  # what was there at start is the baseline
    assert watcher.settled("s1")
    partial = folder / "002_b.sql"
    partial.write_text("CREATE TABLE b (")  # a copy in progress
    assert watcher.scan() == []  # changed: wait for it to settle
    assert not watcher.settled("s1")
    with partial.open("a") as fh:
        fh.write("id INTEGER")  # still growing at the next poll
    assert watcher.scan() == []
    assert not watcher.settled("s1")
    with partial.open("a") as fh:
        fh.write(");\n")
    assert watcher.scan() == []
    assert watcher.scan() == ["s1"]  # unchanged across two polls: reported once
    assert watcher.scan() == []
    assert watcher.settled("s1")
    (folder / ".002_b.sql.swp").write_text("editor noise")  # hidden files are not migrations
    (folder / "003_c").mkdir()  # a folder migration appearing counts, its files too
    assert watcher.scan() == []
    (folder / "003_c" / "sqlite.sql").write_text("SELECT 1;\n")
    assert watcher.scan() == []
    assert watcher.scan() == ["s1"]


def test_a_scheduled_run_never_reads_a_file_still_being_written(project: Any, sqlite_db: Any) -> None:
    dbid = project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", [dbid], schedule={"every": "1h"})
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    project.extra["daemon"] = FAST
    daemon = Daemon(config_module.load(project.config))
    first = daemon.runs.run_once("s1", "schedule")
    assert first.mode == "catch-up" and first.report.bindings[0].applied_now == ["001_a"]
    project.write("s1", "002_b.sql", "CREATE TABLE b (")  # the copy is still running
    assert daemon.runs.run_once("s1", "schedule").mode == "deferred"
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration ORDER BY version") == [("001_a",)]
    project.write("s1", "002_b.sql", "CREATE TABLE b (id INTEGER);\n")
    assert daemon.watcher.scan() == []  # changed again since the deferred run looked
    assert daemon.watcher.scan() == ["s1"]
    done = daemon.runs.run_once("s1", "change")
    assert done.report.bindings[0].applied_now == ["002_b"]
    assert sqlite_rows(sqlite_db["path"], "SELECT name FROM sqlite_master WHERE name = 'b'") == [("b",)]


def test_runs_of_one_set_never_overlap_and_triggers_meanwhile_coalesce(project: Any, sqlite_db: Any,
                                                                     monkeypatch: Any) -> None:
    dbid = project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", [dbid], schedule={"every": "1h"})
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    project.extra["daemon"] = FAST
    daemon = Daemon(config_module.load(project.config))
    entered, release = threading.Event(), threading.Event()
    active, most, reasons = [0], [0], []
    real_run_once = daemon.runs.run_once

    def slow_run_once(name: str, reason: str) -> Any:
        active[0] += 1
        most[0] = max(most[0], active[0])
        reasons.append(reason)
        entered.set()
        release.wait(10)
        try:
            return real_run_once(name, reason)
        finally:
            active[0] -= 1

    monkeypatch.setattr(daemon.runs, "run_once", slow_run_once)
    first = threading.Thread(target=daemon.runs.tick, args=("s1", "schedule"))
    first.start()
    assert entered.wait(10)
    # Three triggers (a file change, schedule ticks) while the run is in flight: none starts a second run.
    assert [daemon.runs.tick("s1", r) for r in ("change", "schedule", "schedule")] == [[], [], []]
    release.set()
    first.join(10)
    assert most[0] == 1 and reasons == ["schedule", "change"]  # one more run afterwards, not three
    assert sqlite_rows(sqlite_db["path"], "SELECT version FROM migration") == [("001_a",)]


def test_triggers_waiting_for_a_set_merge_into_the_strongest_at_the_earliest_time() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    state = SetRuns()
    state.want("retry", now + timedelta(seconds=30))
    assert state.take(now) == "schedule"  # the retry is not due: a tick now is the schedule's own
    assert (state.wanted, state.wanted_at) == ("retry", now + timedelta(seconds=30))
    state.want("change", now)  # a new file: the run now also covers the retry
    state.want("start", now + timedelta(seconds=5))
    assert (state.wanted, state.wanted_at) == ("change", now)
    assert state.take(now) == "change" and state.wanted is None and state.wanted_at is None
    assert state.take(now) == "schedule"


def test_each_set_has_one_job_that_changes_and_retries_bring_forward(project: Any, sqlite_db: Any, pg_db: Any) -> None:
    project.add_target("sqlite", "a", sqlite_db)
    project.add_target("postgresql", "down", {**pg_db, "port": free_port(), "connection_timeout": 1})
    project.add_set("hourly", ["sqlite.a", "postgresql.down"], schedule={"every": "1h"})
    project.add_set("plain", ["sqlite.a"])
    project.write("hourly", "001_h.sql", "CREATE TABLE h (id INTEGER);\n")
    project.write("plain", "001_p.sql", "CREATE TABLE p (id INTEGER);\n")
    project.extra["daemon"] = FAST
    daemon = Daemon(config_module.load(project.config))
    daemon.start()
    try:
        # The failing target is retried (300ms, 600ms, 1s, ...) long before the hourly tick, by the set's own job.
        poll(lambda: (r := daemon.backoff.get("hourly", "postgresql.down")) and r.failures >= 3, what="three retries")
        assert daemon.scheduling.job_ids() == ["set:hourly"]  # no retry or run-now jobs beside it
        hourly = daemon.status()["daemon"]["sets"]["hourly"]
        assert hourly["next_retry"] and hourly["runs"] >= 3 and hourly["last_run"]["reason"] == "retry"
        # A set without a schedule has a job only while something asks it to run: a new file does.
        poll(lambda: daemon.status()["daemon"]["sets"]["plain"]["runs"] == 1, what="plain's start-up run")
        assert [b["state"] for b in daemon.status()["bindings"] if b["set"] == "plain"] == ["current"]
        project.write("plain", "002_q.sql", "CREATE TABLE q (id INTEGER);\n")
        poll(lambda: daemon.status()["daemon"]["sets"]["plain"]["runs"] == 2, what="plain run for its new file")
        assert daemon.status()["daemon"]["sets"]["plain"]["last_run"]["reason"] == "change"
        assert sqlite_rows(sqlite_db["path"], "SELECT set_id, version FROM migration WHERE set_id = 'plain'") == [
            ("plain", "001_p"), ("plain", "002_q")]
        assert "set:plain" not in daemon.scheduling.job_ids()
    finally:
        daemon.stop()


def test_shard_argument_is_checked(project: Any, sqlite_db: Any, orchestrator: Any) -> None:
    assert parse_shard(None) is None
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "0/0", "-1/2"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", ["sqlite.a"])
    code, out, err = orchestrator("daemon", project.config, "--shard", "2/2")
    assert code == 2
    assert err.strip().count("\n") == 0 and "--shard '2/2'" in err and "Traceback" not in err


# -- units: retries with an injected clock --------------------------------------------


def test_unreachable_target_is_retried_with_backoff_not_every_tick(project: Any, sqlite_db: Any, pg_db: Any) -> None:
    clock = FakeClock()
    project.add_target("sqlite", "a", sqlite_db)
    project.add_target("postgresql", "down", {**pg_db, "port": free_port(), "connection_timeout": 2})
    project.add_set("s1", ["sqlite.a", "postgresql.down"], schedule={"every": "1s"})
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    project.extra["daemon"] = {**FAST, "retry_min": "30s", "retry_max": "1h"}
    daemon = Daemon(config_module.load(project.config), clock=clock)

    first = daemon.runs.run_once("s1", "schedule")
    states = {b.dbid: b.state for b in first.report.bindings}
    assert states == {"sqlite.a": "current", "postgresql.down": "unreachable"}
    retry = daemon.backoff.get("s1", "postgresql.down")
    assert retry is not None and retry.failures == 1 and retry.next_at == clock.now + timedelta(seconds=30)

    clock.advance(10)  # ticks before the retry time leave the target alone, the others still run
    tick = daemon.runs.run_once("s1", "schedule")
    assert [b.dbid for b in tick.report.bindings] == ["sqlite.a"] and tick.skipped == {"postgresql.down"}
    row = next(item for item in daemon.status()["bindings"] if item["target"] == "postgresql.down")
    assert row["state"] == "unreachable" and row["next_retry"] == "2030-01-01T12:00:30Z" and row["failures"] == 1

    clock.advance(20)
    again = daemon.runs.run_once("s1", "retry")  # a retry run is for the failing targets only
    assert [b.dbid for b in again.report.bindings] == ["postgresql.down"]
    assert daemon.backoff.get("s1", "postgresql.down").next_at == clock.now + timedelta(seconds=60)

    project.databases["postgresql"][0]["port"] = pg_db["port"]  # the server is back
    daemon.config = config_module.load(project.config)
    clock.advance(60)
    back = daemon.runs.run_once("s1", "schedule")
    assert {b.dbid: b.state for b in back.report.bindings} == {"sqlite.a": "current", "postgresql.down": "current"}
    assert daemon.backoff.get("s1", "postgresql.down") is None
    assert pg_rows(pg_db["dbname"], "SELECT set_id, version FROM migration") == [("s1", "001_a")]


def test_mysql_failed_state_is_reread_not_rerun_until_resolved(project: Any, mysql_db: Any, orchestrator: Any) -> None:
    clock = FakeClock()
    dbid = project.add_target("mysql", "m", mysql_db)
    project.add_set("s1", [dbid], schedule={"every": "1s"})
    project.write("s1", "001_bad.sql", "CREATE TABLE made (id INT);\nINSERT INTO no_such_table VALUES (1);\n")
    project.write("s1", "002_next.sql", "CREATE TABLE next_one (id INT);\n")
    project.extra["daemon"] = {**FAST, "retry_min": "30s", "retry_max": "1h"}
    config = project.config
    daemon = Daemon(config_module.load(config), clock=clock)

    first = daemon.runs.run_once("s1", "schedule")
    assert first.report.bindings[0].state == "failed"
    ledger = "SELECT version, status FROM migration ORDER BY version"
    assert mysql_rows(mysql_db["dbname"], ledger) == [("001_bad", "failed")]

    clock.advance(31)  # due: the ledger is read again, the migration is not run again
    second = daemon.runs.run_once("s1", "schedule")
    assert second.skipped == {dbid} and second.report.bindings == []
    assert daemon.backoff.get("s1", dbid).failures == 2
    assert mysql_rows(mysql_db["dbname"], ledger) == [("001_bad", "failed")]
    assert daemon.rows()[0][0].state == "failed" and "orchestrator resolve" in daemon.rows()[0][0].error

    code, _, err = orchestrator("resolve", config, dbid, "s1", "001_bad", "--mark-applied")
    assert code == 0, err
    clock.advance(61)
    third = daemon.runs.run_once("s1", "schedule")
    assert third.report.bindings[0].state == "current" and third.report.bindings[0].applied_now == ["002_next"]
    assert daemon.backoff.get("s1", dbid) is None
    assert mysql_rows(mysql_db["dbname"], ledger) == [("001_bad", "applied"), ("002_next", "applied")]


# -- processes --------------------------------------------------------------------------


def test_daemon_applies_on_schedule_and_on_new_files_reports_and_recovers(project: Any, sqlite_db: Any, pg_db: Any,
                                                                          daemons: Any) -> None:
    proxy = TcpProxy(pg_db["ip"], pg_db["port"])  # not started: PostgreSQL is "down" at first
    project.add_target("sqlite", "a", sqlite_db)
    project.add_target("postgresql", "p", {**pg_db, "port": proxy.port, "connection_timeout": 2})
    project.add_set("ticks", ["sqlite.a", "postgresql.p"], schedule={"every": "1s"})
    project.add_set("dropbox", ["sqlite.a"])  # no schedule: start-up and file changes only
    project.write("ticks", "001_tick.sql", "CREATE TABLE tick (id INTEGER);\n")
    project.write("dropbox", "001_first.sql", "CREATE TABLE first_box (id INTEGER);\n")
    project.extra["daemon"] = FAST
    config = project.config
    daemon = daemons(config)
    try:
        daemon.wait_ready()
        poll(lambda: (daemon.binding("ticks", "sqlite.a") or {}).get("state") == "current", what="ticks on sqlite.a")
        poll(lambda: daemon.status()["daemon"]["sets"]["ticks"]["runs"] >= 3, what="three scheduled runs")
        down = poll(lambda: (b := daemon.binding("ticks", "postgresql.p")) and b["state"] == "unreachable" and b.get("next_retry") and b,
                    what="postgresql.p unreachable with a retry time")
        assert down["error"].startswith("postgresql.p: unreachable")
        assert daemon.status()["daemon"]["retries"][0]["dbid"] == "postgresql.p"
        assert sqlite_rows(sqlite_db["path"], "SELECT set_id, version FROM migration ORDER BY set_id") == [
            ("dropbox", "001_first"), ("ticks", "001_tick")]

        # A file dropped into a set without a schedule is noticed and applied.
        project.write("dropbox", "002_dropped.sql", "CREATE TABLE dropped (id INTEGER);\n")
        poll(lambda: sqlite_rows(sqlite_db["path"], "SELECT version FROM migration WHERE set_id = 'dropbox' AND version = '002_dropped'"),
             what="002_dropped in the ledger")
        assert sqlite_rows(sqlite_db["path"], "SELECT name FROM sqlite_master WHERE name = 'dropped'") == [("dropped",)]
        item = poll(lambda: (b := daemon.binding("dropbox", "sqlite.a")) and b["applied"] == 2 and b, what="status of dropbox")
        assert item["state"] == "current" and item["last_version"] == "002_dropped"
        daemon.wait_log("dropbox: new or changed migration files")

        _, metrics = daemon.get("/metrics")
        assert 'orchestrator_pending_migrations{set="dropbox",target="sqlite.a"} 0.0' in metrics
        assert 'orchestrator_pending_migrations{set="ticks",target="postgresql.p"} 0.0' in metrics
        assert 'orchestrator_target_up{target="postgresql.p"} 0.0' in metrics
        assert 'orchestrator_target_up{target="sqlite.a"} 1.0' in metrics
        assert 'orchestrator_migrations_applied_total{set="dropbox",target="sqlite.a"} 2.0' in metrics
        assert 'orchestrator_binding_state{set="ticks",state="unreachable",target="postgresql.p"} 1.0' in metrics
        assert re.search(r'orchestrator_run_duration_seconds_count\{set="ticks"\} [1-9]', metrics)

        # PostgreSQL comes back: the next retry catches it up.
        proxy.start()
        poll(lambda: (daemon.binding("ticks", "postgresql.p") or {}).get("state") == "current", what="postgresql.p caught up")
        assert pg_rows(pg_db["dbname"], "SELECT set_id, version FROM migration") == [("ticks", "001_tick")]
        assert pg_rows(pg_db["dbname"], "SELECT to_regclass('public.tick') IS NOT NULL") == [(True,)]
        assert daemon.status()["daemon"]["retries"] == []
        poll(lambda: 'orchestrator_target_up{target="postgresql.p"} 1.0' in daemon.get("/metrics")[1], what="target up")

        # SIGHUP with a broken config keeps the running one.
        good = config.read_text()
        config.write_text('{"databases": {"sqlite": [{"host_id": "a"}]}}')
        daemon.send(signal.SIGHUP)
        daemon.wait_log("reload failed, keeping the running configuration")
        assert daemon.proc.poll() is None and daemon.get("/healthz")[0] == 200 and daemon.get("/readyz")[0] == 200
        reload_info = daemon.status()["daemon"]["reload"]
        assert reload_info["ok"] is False and "databases.sqlite[0].path" in reload_info["error"]
        line = next(text for text in daemon.lines if "reload failed" in text)
        assert "Traceback" not in daemon.log and line.count("|") == 2
        config.write_text(good)
        daemon.send(signal.SIGHUP)
        daemon.wait_log("reloaded config.json")
        assert daemon.status()["daemon"]["reload"]["ok"] is True

        daemon.send(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.log
        assert "stopped" in daemon.lines[-1]
    finally:
        proxy.stop()


def test_sigterm_lets_the_migration_in_flight_finish_and_starts_nothing_after(project: Any, pg_db: Any, daemons: Any) -> None:
    project.add_target("postgresql", "p", pg_db)
    project.add_set("slow", ["postgresql.p"])
    project.write("slow", "001_slow.sql", "SELECT pg_sleep(2);\nCREATE TABLE slow_done (id INT);\n")
    project.write("slow", "002_after.sql", "CREATE TABLE after_stop (id INT);\n")
    project.extra["daemon"] = FAST
    daemon = daemons(project.config)
    daemon.wait_log("applying: 001_slow")
    time.sleep(0.3)  # well inside pg_sleep
    daemon.send(signal.SIGTERM)
    daemon.wait_log("stopping; runs in progress finish their current migration")
    assert daemon.proc.poll() is None  # still finishing the migration
    assert daemon.wait() == 0, daemon.log
    assert pg_rows(pg_db["dbname"], "SELECT set_id, version FROM migration") == [("slow", "001_slow")]
    assert pg_rows(pg_db["dbname"], "SELECT to_regclass('public.slow_done') IS NOT NULL, to_regclass('public.after_stop') IS NULL") == [(True, True)]
    assert "applying: 002_after" not in daemon.log


def test_second_signal_exits_at_once(project: Any, pg_db: Any, daemons: Any) -> None:
    project.add_target("postgresql", "p", pg_db)
    project.add_set("slow", ["postgresql.p"])
    project.write("slow", "001_slow.sql", "SELECT pg_sleep(20);\nCREATE TABLE never (id INT);\n")
    project.extra["daemon"] = FAST
    daemon = daemons(project.config)
    daemon.wait_log("applying: 001_slow")
    daemon.send(signal.SIGINT)
    daemon.wait_log("stopping;")
    started = time.monotonic()
    daemon.send(signal.SIGINT)
    assert daemon.wait(10) == 128 + signal.SIGINT
    assert time.monotonic() - started < 5
    assert "SIGINT again: exiting now" in daemon.log
    # The server notices the lost client only when pg_sleep returns; end that backend now. The cut
    # migration was never committed: nothing recorded, nothing half-made.
    pg_rows(pg_db["dbname"], "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert pg_rows(pg_db["dbname"], "SELECT to_regclass('public.never') IS NULL, to_regclass('public.migration') IS NULL "
                                    "OR (SELECT count(*) FROM migration) = 0") == [(True, True)]


def test_two_daemons_on_one_fleet_apply_each_migration_once(project: Any, sqlite_db: Any, pg_db: Any, mysql_db: Any,
                                                            daemons: Any) -> None:
    targets = [project.add_target("sqlite", "a", sqlite_db), project.add_target("postgresql", "p", pg_db),
               project.add_target("mysql", "m", mysql_db)]
    project.add_set("race", targets, schedule={"every": "300ms"})
    project.write("race", "001_hits.sql", "CREATE TABLE hits (v VARCHAR(20) NOT NULL);\n")
    for n in range(2, 6):
        project.write("race", f"{n:03d}_hit.sql", f"INSERT INTO hits (v) VALUES ('{n:03d}');\n")
    project.extra["daemon"] = FAST
    config = project.config
    first, second = daemons(config), daemons(config)
    first.wait_ready()
    second.wait_ready()
    for n in range(6, 9):  # more work while both run: both watchers and both schedules race for it
        project.write("race", f"{n:03d}_hit.sql", f"INSERT INTO hits (v) VALUES ('{n:03d}');\n")
    expected = [(f"{n:03d}",) for n in range(2, 9)]
    readers = {"sqlite.a": lambda sql: sqlite_rows(sqlite_db["path"], sql), "postgresql.p": lambda sql: pg_rows(pg_db["dbname"], sql),
               "mysql.m": lambda sql: mysql_rows(mysql_db["dbname"], sql)}
    for dbid, read in readers.items():
        poll(lambda read=read: read("SELECT count(*) FROM migration WHERE set_id = 'race'") == [(8,)], what=f"8 migrations on {dbid}")
    for d in (first, second):
        poll(lambda d=d: all((d.binding("race", t) or {}).get("state") == "current" for t in targets), what="both daemons see current")
    time.sleep(0.7)  # a few more ticks of both: still nothing applied twice
    for dbid, read in readers.items():
        assert read("SELECT v FROM hits ORDER BY v") == expected, dbid
        assert read("SELECT count(*), count(DISTINCT version) FROM migration WHERE set_id = 'race'") == [(8, 8)], dbid
    for d in (first, second):
        d.send(signal.SIGTERM)
    assert first.wait() == 0 and second.wait() == 0
    applied = [line for d in (first, second) for line in d.lines if re.search(r"migrations - \S+/race: applied \d", line)]
    assert len(applied) == 8 * 3, "\n".join(applied)


def test_shards_split_the_targets_between_replicas(project: Any, tmp_path: Path, daemons: Any) -> None:
    from orchestrator.fleet import shard_of

    names = [f"t{i}" for i in range(6)]
    for name in names:
        project.add_target("sqlite", name, {"path": str(tmp_path / f"{name}.db")})
    project.add_set("s1", [f"sqlite.{n}" for n in names])
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    project.extra["daemon"] = FAST
    config = project.config
    replica = daemons(config, "--shard", "1/2")
    replica.wait_ready()
    mine = sorted(f"sqlite.{n}" for n in names if shard_of(f"sqlite.{n}", 2) == 1)
    poll(lambda: sorted(b["target"] for b in replica.status()["bindings"] if b["state"] == "current") == mine, what="shard 1/2 current")
    assert replica.status()["daemon"]["shard"] == "1/2"
    for name in names:
        exists = (tmp_path / f"{name}.db").exists() and sqlite_rows(str(tmp_path / f"{name}.db"), "SELECT name FROM sqlite_master WHERE name = 'migration'")
        assert bool(exists) == (f"sqlite.{name}" in mine), name
    replica.send(signal.SIGTERM)
    assert replica.wait() == 0


def test_once_runs_one_catch_up_and_exits_with_its_code(project: Any, sqlite_db: Any, pg_db: Any) -> None:
    project.add_target("sqlite", "a", sqlite_db)
    project.add_target("postgresql", "p", pg_db)
    project.add_set("s1", ["sqlite.a", "postgresql.p"], schedule={"cron": "0 3 * * *"})
    project.add_set("r1", ["sqlite.a"], apply="report")
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    project.write("r1", "001_r.sql", "CREATE TABLE r (id INTEGER);\n")
    project.extra["daemon"] = FAST

    def once() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", "daemon", str(project.config), "--once"],
                              capture_output=True, text=True, timeout=60, cwd=project.root)

    done = once()
    assert done.returncode == 0, done.stderr
    assert "catch-up: 2 targets, 3 bindings" in done.stdout
    assert sqlite_rows(sqlite_db["path"], "SELECT set_id, version FROM migration") == [("s1", "001_a")]  # r1 only reports
    assert pg_rows(pg_db["dbname"], "SELECT set_id, version FROM migration") == [("s1", "001_a")]

    project.write("s1", "002_bad.sql", "INSERT INTO no_such_table VALUES (1);\n")
    failed = once()
    assert failed.returncode == 1 and "002_bad" in failed.stderr and "Traceback" not in failed.stderr

    project.databases["postgresql"][0]["port"] = free_port()
    (project.root / "sets" / "s1" / "002_bad.sql").unlink()
    down = once()
    assert down.returncode == 3, down.stderr
    assert "postgresql.p" in down.stderr and "unreachable" in down.stderr


# -- deploy/ ------------------------------------------------------------------------------


def test_deploy_files_parse_and_their_config_loads(tmp_path: Path) -> None:
    import yaml  # a test dependency only: the deploy files are checked, not read at run time
    deploy = ROOT / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    assert {"orchestrator", "postgres", "mariadb", "redis"} <= set(compose["services"])
    manifests = [doc for doc in yaml.safe_load_all((deploy / "k8s.yaml").read_text()) if doc]
    kinds = {doc["kind"]: doc for doc in manifests}
    assert {"Deployment", "ConfigMap", "Secret", "Service"} <= set(kinds)
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    dockerfile = (deploy / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "EXPOSE 8787" in dockerfile and "HEALTHCHECK" in dockerfile and "USER" in dockerfile
    unit = (deploy / "orchestrator.service").read_text()
    assert "Restart=on-failure" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    # The config the ConfigMap ships loads (with its sets and secrets from the environment).
    data = kinds["ConfigMap"]["data"]
    (tmp_path / "config.json").write_text(data["config.json"])
    for key, text in data.items():
        if key != "config.json":
            set_name, _, file_name = key.partition("--")
            (tmp_path / "sets" / set_name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "sets" / set_name / file_name).write_text(text)
    env = {"PG_PASSWORD": "x", "MYSQL_PASSWORD": "y", "REDIS_PASSWORD": "z", "ORCHESTRATOR_TOKEN": "t" * 32}
    loaded = config_module.load(tmp_path / "config.json", env=env)
    assert loaded.daemon.http.host == "0.0.0.0" and loaded.daemon.http.token is not None
    compose_config = config_module.load(deploy / "config.json", env=env)
    assert set(compose_config.sets) and all(spec.folder.is_dir() for spec in compose_config.sets.values())
    # The files agree with each other: every ${NAME} has a source, every set file is mounted and is deploy/sets'.
    refs = set(re.findall(r"\$\{(\w+)", data["config.json"]))
    assert refs <= set(kinds["Secret"]["stringData"]), refs
    assert set(re.findall(r"\$\{(\w+)", (deploy / "config.json").read_text())) <= set(
        compose["services"]["orchestrator"]["environment"])
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]["configMap"]
    assert volume["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert sorted(item["key"] for item in volume["items"]) == sorted(data)
    for item in volume["items"]:
        if item["key"] != "config.json":
            assert (deploy / item["path"]).read_text() == data[item["key"]], item
    # Each way of starting the daemon is a command line the CLI accepts.
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    for argv in (container["args"], compose["services"]["orchestrator"]["command"], exec_start.split()[1:]):
        assert argv[0] == "daemon" and cli._parser().parse_args(argv).config == "/etc/orchestrator/config.json", argv
