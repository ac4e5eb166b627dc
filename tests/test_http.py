"""The status server: endpoints, token, read-only methods, metrics, and the fleet page in a real browser.

Unit tests serve a fixed snapshot (no daemon, no database); process tests run the
daemon itself, one of them with the page loaded in headless Chromium.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigError
from orchestrator.fleet import BindingStatus, FleetReport
from orchestrator.daemon.metrics import Metrics
from orchestrator.http import StatusServer, is_loopback, render_page
from tests.test_daemon import FAST, daemons, free_port, poll  # noqa: F401 - daemons is a fixture

TOKEN = "t0ken-for-tests-9f3a1c"


class FakeSource:
    """A fixed snapshot, as the daemon would hold it."""

    def __init__(self, rows: list[tuple[BindingStatus, dict[str, Any]]], ready: bool = True):
        self._rows = rows
        self.is_ready = ready

    def ready(self) -> tuple[bool, str]:
        return (True, "") if self.is_ready else (False, "first status refresh not done yet")

    def rows(self) -> list[tuple[BindingStatus, dict[str, Any]]]:
        return self._rows

    def status(self) -> dict[str, Any]:
        data = FleetReport([b for b, _ in self._rows]).to_json()
        data["daemon"] = {"version": "test", "host": "h", "pid": 1, "sets": {"s1": {"schedule": "every 5m", "apply": "auto"}}}
        return data


def sample_rows() -> list[tuple[BindingStatus, dict[str, Any]]]:
    return [
        (BindingStatus("s1", "sqlite.a", "current", applied=3, last_version="003", last_apply_time=1_700_000_000), {}),
        (BindingStatus("s1", "postgresql.p", "unreachable", error="postgresql.p: unreachable: connection refused"),
         {"next_retry": 1_700_000_060.0, "failures": 2}),
        (BindingStatus("s2", "sqlite.a", "pending", applied=1, pending=["002", "003"]), {}),
        (BindingStatus("s2", "mysql.m", "failed", applied=1, error="s2/002.sql: statement 1 (line 1): <script>alert(1)</script>"), {}),
    ]


@pytest.fixture
def serve() -> Any:
    servers: list[StatusServer] = []

    def start(source: FakeSource, host: str = "127.0.0.1", token: str | None = None) -> StatusServer:
        server = StatusServer(source, Metrics(source), host, 0, lambda: token)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def request(server: StatusServer, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "example.com", "192.168.1.1"):
        assert not is_loopback(host), host


@pytest.mark.parametrize("http_config", [{"host": "0.0.0.0", "port": 0}, {"host": "10.1.2.3", "port": 0, "token": "${ORCH_EMPTY_TOKEN:-}"}])
def test_non_loopback_bind_without_a_token_refuses_to_start(project: Any, sqlite_db: Any, orchestrator: Any, http_config: Any) -> None:
    project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", ["sqlite.a"])
    project.extra["daemon"] = {"http": http_config}
    code, out, err = orchestrator("daemon", project.config)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "daemon.http.token is required" in err and repr(http_config["host"]) in err
    assert not Path(sqlite_db["path"]).exists()  # nothing was started, nothing touched


def test_token_guards_everything_but_the_probes(serve: Any) -> None:
    server = serve(FakeSource(sample_rows()), host="0.0.0.0", token=TOKEN)
    for path in ("/", "/status", "/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
            code, head, body = request(server, "GET", path, headers)
            assert code == 401, (path, headers)
            assert head["www-authenticate"].startswith("Bearer") and TOKEN not in body
        code, _, body = request(server, "GET", path, {"Authorization": f"Bearer {TOKEN}"})
        assert code == 200 and TOKEN not in body, path
        assert request(server, "GET", path, {"Authorization": f"bearer  {TOKEN}"})[0] == 200  # scheme is case-insensitive
    for path in ("/healthz", "/readyz"):
        assert request(server, "GET", path)[0] == 200


def test_no_token_on_loopback_and_endpoints(serve: Any) -> None:
    source = FakeSource(sample_rows(), ready=False)
    server = serve(source)
    assert request(server, "GET", "/healthz")[:3:2] == (200, "ok\n")
    code, _, body = request(server, "GET", "/readyz")
    assert code == 503 and "first status refresh not done yet" in body
    source.is_ready = True
    assert request(server, "GET", "/readyz")[0] == 200
    code, head, body = request(server, "GET", "/status")
    assert code == 200 and head["content-type"] == "application/json" and head["cache-control"] == "no-store"
    data = json.loads(body)
    assert data["summary"]["failed"] == 1 and data["exit_code"] == 1
    assert [(b["set"], b["target"], b["state"]) for b in data["bindings"]][:2] == [("s1", "sqlite.a", "current"), ("s1", "postgresql.p", "unreachable")]
    assert data["daemon"]["sets"]["s1"]["schedule"] == "every 5m"
    code, _, body = request(server, "GET", "/nope")
    assert code == 404 and "/status" in body


def test_an_address_in_use_is_a_config_error() -> None:
    source = FakeSource([])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*pick another daemon.http.host or port"):
            StatusServer(source, Metrics(source), "127.0.0.1", port, lambda: None).start()


def test_only_get_and_head_are_served(serve: Any) -> None:
    server = serve(FakeSource(sample_rows()))
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        code, head, _ = request(server, method, "/status")
        assert code == 405 and head["allow"] == "GET, HEAD", method
    code, head, body = request(server, "HEAD", "/status")
    assert code == 200 and body == "" and int(head["content-length"]) > 100


def test_metrics_come_from_the_snapshot(serve: Any) -> None:
    source = FakeSource(sample_rows())
    server = serve(source)
    code, head, body = request(server, "GET", "/metrics")
    assert code == 200 and head["content-type"].startswith("text/plain")
    assert 'orchestrator_pending_migrations{set="s2",target="sqlite.a"} 2.0' in body
    assert 'orchestrator_pending_migrations{set="s1",target="sqlite.a"} 0.0' in body
    assert 'orchestrator_binding_state{set="s2",state="failed",target="mysql.m"} 1.0' in body
    assert 'orchestrator_binding_state{set="s2",state="current",target="mysql.m"} 0.0' in body
    assert 'orchestrator_target_up{target="postgresql.p"} 0.0' in body
    assert 'orchestrator_target_up{target="sqlite.a"} 1.0' in body
    assert 'orchestrator_last_apply_timestamp_seconds{set="s1",target="sqlite.a"} 1.7e+09' in body
    assert 'orchestrator_next_retry_timestamp_seconds{set="s1",target="postgresql.p"} 1.70000006e+09' in body
    assert "orchestrator_ready 1.0" in body
    server.metrics.applied.labels("s1", "sqlite.a").inc(3)
    server.metrics.runs.labels("s1").observe(0.2)
    body = request(server, "GET", "/metrics")[2]
    assert 'orchestrator_migrations_applied_total{set="s1",target="sqlite.a"} 3.0' in body
    assert 'orchestrator_run_duration_seconds_bucket{le="0.25",set="s1"} 1.0' in body


class _Cells(HTMLParser):
    """(set, target) -> (state, text) of every grid cell of the fleet page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], list[str]] = {}
        self.refresh: str | None = None
        self._current: tuple[str, str] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":  # the page reloads itself every data-refresh seconds (its own script keeps the filter)
            self.refresh = a.get("data-refresh")
        if tag == "td" and "data-state" in a:
            self._current = (a["data-set"] or "", a["data-target"] or "")
            self.cells[self._current] = [a["data-state"] or "", ""]
        elif self._current and tag == "td":
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._current:
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current:
            self.cells[self._current][1] += data


def test_page_renders_a_cell_per_binding_and_escapes_errors() -> None:
    rows = sample_rows()
    page = render_page(rows, {"sets": {"s1": {"schedule": "every 5m"}, "s2": {"schedule": None, "apply": "report"}}, "host": "h", "pid": 7},
                       ready=True, now=1_700_000_030)
    parsed = _Cells()
    parsed.feed(page)
    assert {k: v[0] for k, v in parsed.cells.items()} == {
        ("s1", "sqlite.a"): "current", ("s2", "sqlite.a"): "pending", ("s1", "postgresql.p"): "unreachable",
        ("s2", "postgresql.p"): "unbound", ("s1", "mysql.m"): "unbound", ("s2", "mysql.m"): "failed"}
    assert page.count("<script>") == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # only the page's own
    assert "2 pending" in parsed.cells[("s2", "sqlite.a")][1]
    assert "retry 2023-11-14 22:14:20Z (in 30s), attempt 3" in parsed.cells[("s1", "postgresql.p")][1]
    assert "3 applied" in parsed.cells[("s1", "sqlite.a")][1] and "(30s ago)" in parsed.cells[("s1", "sqlite.a")][1]
    assert parsed.refresh == "5" and "http://" not in page and "https://" not in page  # no external assets


# -- the daemon's server -----------------------------------------------------------------


def test_daemon_token_from_the_environment_never_shows(project: Any, sqlite_db: Any, daemons: Any) -> None:  # noqa: F811
    project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", ["sqlite.a"], schedule={"every": "1s"})
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    project.extra["daemon"] = {**FAST, "http": {"host": "0.0.0.0", "port": 0, "token": "${ORCH_TEST_TOKEN}"}}
    daemon = daemons(project.config, "-v", env={"ORCH_TEST_TOKEN": TOKEN})
    url = poll(lambda: (m := re.search(r"status on http://0\.0\.0\.0:(\d+)/", daemon.log)) and m.group(1), what="status server")
    daemon.url = f"http://127.0.0.1:{url}/"
    poll(lambda: daemon.get("/readyz")[0] == 200, what="ready")
    assert daemon.get("/status")[0] == 401 and daemon.get("/status", token="nope")[0] == 401 and daemon.get("/")[0] == 401
    code, body = daemon.get("/status", token=TOKEN)
    assert code == 200 and json.loads(body)["daemon"]["ready"] is True
    poll(lambda: json.loads(daemon.get("/status", token=TOKEN)[1])["bindings"][0]["state"] == "current", what="current")
    pages = [daemon.get(p, token=TOKEN)[1] for p in ("/", "/status", "/metrics")]
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    assert TOKEN not in daemon.log and all(TOKEN not in page for page in pages)
    assert "GET /status" in daemon.log  # -v logs requests, and still not the token


def test_fleet_page_in_headless_chromium(project: Any, sqlite_db: Any, tmp_path: Path, daemons: Any) -> None:  # noqa: F811
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is required for this test: apt-get install -y chromium (.ci/run installs it)"
    project.add_target("sqlite", "a", sqlite_db)
    project.add_target("sqlite", "b", {"path": str(tmp_path / "b.db")})
    project.add_target("postgresql", "gone", {"ip": "127.0.0.1", "port": free_port(), "user": "postgres", "dbname": "x",
                                              "connection_timeout": 1})
    project.add_set("app", ["sqlite.a", "sqlite.b", "postgresql.gone"], schedule={"every": "1s"})
    project.add_set("broken", ["sqlite.a"])
    project.add_set("reports", ["sqlite.b"], apply="report")
    project.write("app", "001_users.sql", "CREATE TABLE users (id INTEGER);\n")
    project.write("broken", "001_bad.sql", "INSERT INTO no_such_table VALUES (1);\n")
    project.write("reports", "001_r.sql", "CREATE TABLE r (id INTEGER);\n")
    project.extra["daemon"] = FAST
    daemon = daemons(project.config)
    daemon.wait_ready()
    poll(lambda: (daemon.binding("broken", "sqlite.a") or {}).get("state") == "failed"
         and (daemon.binding("app", "sqlite.b") or {}).get("state") == "current", what="states settled")
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--dump-dom", daemon.url],
        capture_output=True, text=True, timeout=90,
    ).stdout
    parsed = _Cells()
    parsed.feed(dom)
    states = {k: v[0] for k, v in parsed.cells.items()}
    assert states == {
        ("app", "sqlite.a"): "current", ("app", "sqlite.b"): "current", ("app", "postgresql.gone"): "unreachable",
        ("broken", "sqlite.a"): "failed", ("broken", "sqlite.b"): "unbound", ("broken", "postgresql.gone"): "unbound",
        ("reports", "sqlite.b"): "pending", ("reports", "sqlite.a"): "unbound", ("reports", "postgresql.gone"): "unbound",
    }, dom[:2000]
    assert "no_such_table" in parsed.cells[("broken", "sqlite.a")][1]
    assert "retry" in parsed.cells[("app", "postgresql.gone")][1]
    assert "1 applied" in parsed.cells[("app", "sqlite.a")][1] and "1 pending" in parsed.cells[("reports", "sqlite.b")][1]
    assert parsed.refresh == "5"
    assert re.search(r'data-count-state="failed">failed <b>1</b>', dom)
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


class VersionedSource(FakeSource):
    """A snapshot with a version, as the daemon's: the server builds /status once per version."""

    def __init__(self, rows: list[tuple[BindingStatus, dict[str, Any]]]):
        super().__init__(rows)
        self.builds = 0
        self.changes = 0

    def version(self) -> Any:
        return self.changes

    def status(self) -> dict[str, Any]:
        self.builds += 1
        return super().status()


def _burst(port: int, path: str, count: int) -> list[tuple[int, str]]:
    """``count`` GET requests released at once, one thread each; (status, body) or (0, error) per request."""
    barrier, results, guard = threading.Barrier(count), [], threading.Lock()

    def one() -> None:
        barrier.wait()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            outcome = (response.status, response.read().decode())
        except Exception as exc:  # counted: the test asserts none failed
            outcome = (0, f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        with guard:
            results.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_status_is_built_once_per_version_and_never_older_than_the_request(serve: Any) -> None:
    source = VersionedSource(sample_rows())
    server = serve(source)
    results = _burst(server.address[1], "/status", 50)
    assert [code for code, _ in results] == [200] * 50 and len({body for _, body in results}) == 1
    assert source.builds == 1
    source._rows = source._rows[:1]
    source.changes += 1  # the daemon's snapshot changed: the next request sees it
    data = json.loads(request(server, "GET", "/status")[2])
    assert len(data["bindings"]) == 1 and source.builds == 2
    assert request(server, "GET", "/")[0] == 200 and source.builds == 3  # the page has its own body


def test_daemon_serves_200_concurrent_status_requests(project: Any, tmp_path: Path, daemons: Any) -> None:  # noqa: F811
    targets = [project.add_target("sqlite", f"t{i}", {"path": str(tmp_path / f"t{i}.db")}) for i in range(40)]
    project.add_set("app", targets)
    project.write("app", "001_users.sql", "CREATE TABLE users (id INTEGER);\n")
    project.extra["daemon"] = FAST
    daemon = daemons(project.config)
    daemon.wait_ready()
    poll(lambda: daemon.status()["summary"]["current"] == 40, what="40 bindings current")
    port = int(daemon.url.rstrip("/").rsplit(":", 1)[1])
    for path in ("/status", "/", "/healthz"):
        results = _burst(port, path, 200)
        failures = [(code, body[:200]) for code, body in results if code != 200]
        assert len(results) == 200 and not failures, (path, failures[:5])
    bodies = {body for _, body in _burst(port, "/status", 200)}
    assert all(json.loads(body)["summary"]["current"] == 40 for body in bodies)
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0 and "Traceback" not in daemon.log
