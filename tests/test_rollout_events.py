"""Rollout webhooks from real runs (CLI and daemon), and caps raised by SIGHUP in a running daemon."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from test_daemon import FAST, daemons, poll  # noqa: F401 (the fixture)
from test_notify import Receiver, free_port

V1 = "2024-01-01_00-00-00_base"
V2 = "2024-02-01_00-00-00_x"


def versions(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        try:
            return sorted(v for (v,) in conn.execute("SELECT version FROM migration"))
        except sqlite3.OperationalError:
            return []


def failing_fleet(project: Any, url: str, count: int = 12) -> Path:
    """``count`` SQLite files, canary c0..c3 (budget 1 of 4): V1 fails on c1 and c2 (its table is there already)."""
    for i in range(count):
        name = f"c{i}" if i < 4 else f"t{i:02d}"
        project.add_target("sqlite", name, {"path": f"{name}.db"})
    for name in ("c1", "c2"):
        with sqlite3.connect(project.root / f"{name}.db") as conn:
            conn.execute("CREATE TABLE x_t (id int)")
    project.add_set("s1", ["sqlite.*"], rollout={"waves": [{"name": "canary", "targets": ["sqlite.c*"]},
                                                           {"name": "early", "percent": 25}], "max_failures": 1})
    project.write("s1", f"{V1}.sql", "CREATE TABLE x_t (id int);\n")
    project.extra["notify"] = [{"url": url, "secret": "${HOOK_SECRET}"}]
    return project.config


def test_cli_run_sends_one_event_per_new_failure_and_held_wave(project: Any, orchestrator: Any,
                                                               monkeypatch: Any) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret-hook")
    receiver = Receiver()
    try:
        config = failing_fleet(project, receiver.url)
        code, _, err = orchestrator("catch-up", config, "--workers", "1")
        assert code == 1
        events = receiver.wait_for(5)
        time.sleep(0.2)  # nothing more is on its way: the CLI flushed its queue before returning
        assert len(receiver.posts) == 5
        for headers, body in receiver.posts:
            assert headers["X-Orchestrator-Signature"] == \
                "sha256=" + hmac.new(b"s3cret-hook", body, hashlib.sha256).hexdigest()
            assert b"s3cret-hook" not in body
        failed = sorted(e["target"] for e in events if e["event"] == "binding.failed")
        held = [(e["wave"], e["version"]) for e in events if e["event"] == "rollout.held"]
        assert failed == ["sqlite.c1", "sqlite.c2"]
        assert held == [("early", V1), ("rest", V1)]
        finished = [e for e in events if e["event"] == "run.finished"]
        assert len(finished) == 1 and finished[0]["state"] == "failed" and finished[0]["summary"]["held"] == 8
        assert all(e["text"] for e in events)
        assert versions(project.root / "t04.db") == []  # held: the later waves got nothing
        assert "s3cret-hook" not in err and "/hooks/T0KEN" not in err
    finally:
        receiver.close()


def test_dead_receiver_does_not_slow_the_run(project: Any, orchestrator: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOOK_SECRET", "x")
    config = failing_fleet(project, f"http://127.0.0.1:{free_port()}/hook", count=40)
    with_hooks = config.read_text()
    without = json.loads(with_hooks)
    without.pop("notify")

    def fresh_run(text: str) -> tuple[int, str]:
        for db in project.root.glob("*.db"):
            db.unlink()
        for name in ("c1", "c2"):
            with sqlite3.connect(project.root / f"{name}.db") as conn:
                conn.execute("CREATE TABLE x_t (id int)")
        config.write_text(text)
        code, out, err = orchestrator("catch-up", config, "--json")
        assert code == 1
        return json.loads(out)["wall_ms"], err

    # Warm-up of both kinds: the first run with hooks imports the delivery code (urllib, http.client)
    # inside this test process, a one-off cost no later run pays. Best of two runs each, so one burst
    # of other work on a shared machine does not decide the comparison.
    fresh_run(json.dumps(without))
    fresh_run(with_hooks)
    base = min(fresh_run(json.dumps(without))[0] for _ in range(2))
    runs = [fresh_run(with_hooks) for _ in range(2)]
    dead = min(ms for ms, _ in runs)
    assert all("not delivered within" in err for _, err in runs)  # gave up at exit, in one line
    assert dead <= base * 1.5 + 250, (dead, base)


def test_daemon_delivers_once_the_receiver_is_back_and_soak_schedules_a_run(project: Any, daemons: Any) -> None:
    port = free_port()
    for name in ("a", "b", "c"):
        project.add_target("sqlite", name, {"path": f"{name}.db"})
    with sqlite3.connect(project.root / "b.db") as conn:
        conn.execute("CREATE TABLE x_t (id int)")
    project.add_set("s1", ["sqlite.*"], rollout={"waves": [{"name": "one", "targets": ["sqlite.a", "sqlite.b"]}],
                                                 "max_failures": 1, "soak": "2s"})
    project.write("s1", f"{V1}.sql", "CREATE TABLE x_t (id int);\n")
    project.extra["notify"] = [{"url": f"http://127.0.0.1:{port}/hook", "events": ["binding.failed"]}]
    project.extra["daemon"] = FAST
    daemon = daemons(project.config, env={"HOOK_SECRET": ""})
    daemon.wait_ready()
    # b fails within the budget of 1; c waits for the soak, then the daemon runs the set again by itself.
    poll(lambda: versions(project.root / "c.db") == [V1], 20, "the soak's scheduled run")
    a_time = sqlite3.connect(project.root / "a.db").execute("SELECT apply_time FROM migration").fetchone()[0]
    c_time = sqlite3.connect(project.root / "c.db").execute("SELECT apply_time FROM migration").fetchone()[0]
    assert c_time >= a_time + 2
    time.sleep(1)  # b has been retried meanwhile: still one failure to tell
    receiver = Receiver(port=port)
    try:
        events = receiver.wait_for(1, timeout=30)
        time.sleep(1.5)
        assert [(e["event"], e["target"]) for e in events] == [("binding.failed", "sqlite.b")]
        assert len(receiver.posts) == 1
    finally:
        receiver.close()


def test_daemon_sighup_raises_a_cap(project: Any, daemons: Any) -> None:
    for name in ("a", "b"):
        project.add_target("sqlite", name, {"path": f"{name}.db"})
    project.add_set("s1", ["sqlite.*"], until=V1)
    project.write("s1", f"{V1}.sql", "CREATE TABLE t1 (id int);\n")
    project.write("s1", f"{V2}.sql", "CREATE TABLE t2 (id int);\n")
    project.extra["daemon"] = FAST
    daemon = daemons(project.config)
    daemon.wait_ready()
    poll(lambda: (daemon.binding("s1", "sqlite.a") or {}).get("state") == "capped", 20, "capped")
    assert versions(project.root / "a.db") == [V1]
    assert daemon.binding("s1", "sqlite.a")["capped"] == [V2]
    assert 'orchestrator_binding_state{set="s1",state="capped",target="sqlite.a"} 1.0' in daemon.get("/metrics")[1]
    assert "1 capped (until or pin)" in daemon.get("/")[1]
    project.sets["s1"].pop("until")
    project.config  # rewrites config.json without the cap
    daemon.send(signal.SIGHUP)
    poll(lambda: versions(project.root / "a.db") == [V1, V2] and versions(project.root / "b.db") == [V1, V2], 20,
         "the raised cap applied without a restart")
    assert daemon.proc.poll() is None
