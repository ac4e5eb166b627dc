"""Webhook notifications against a real local HTTP receiver started by the test."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orchestrator.notify import Hook, Notifier, Once, event, safe_url, sign


class Receiver:
    """A real HTTP server on 127.0.0.1 recording every POST; ``statuses`` are answered in turn (then 200)."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None, hang: threading.Event | None = None):
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if hang is not None:
                    hang.wait(30)
                    return
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                with receiver.arrived:
                    if code == 200:
                        receiver.posts.append((dict(self.headers.items()), body))
                    receiver.arrived.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/T0KEN-in-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.posts) >= count, timeout), f"only {len(self.posts)} arrived"
        return [json.loads(body) for _, body in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    yield r
    r.close()


def test_event_is_posted_signed_with_all_fields(receiver: Receiver) -> None:
    notifier = Notifier([Hook(receiver.url, secret="s3cret")])
    notifier.send(event("binding.failed", "s1", "postgresql.p1", "2024-01-01_a", "failed", "boom at line 3"))
    assert notifier.flush(10) == 0
    (headers, body), = receiver.posts
    payload = json.loads(body)
    assert {k: payload[k] for k in ("event", "set", "target", "version", "state", "error")} == {
        "event": "binding.failed", "set": "s1", "target": "postgresql.p1", "version": "2024-01-01_a",
        "state": "failed", "error": "boom at line 3"}
    assert payload["text"] == "orchestrator binding.failed: set s1 on postgresql.p1 at 2024-01-01_a (failed): boom at line 3"
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Orchestrator-Signature"] == expected == sign(body, "s3cret")
    assert headers["Content-Type"] == "application/json"
    assert b"s3cret" not in body
    assert notifier.delivered == 1 and notifier.undelivered == 0
    notifier.close()


def test_unsigned_without_secret_and_only_subscribed_events(receiver: Receiver) -> None:
    notifier = Notifier([Hook(receiver.url, events=frozenset({"run.finished"}))])
    assert notifier.wants("run.finished") and not notifier.wants("binding.failed")
    notifier.send(event("binding.failed", "s1"))
    notifier.send(event("run.finished", summary={"failed": 0}))
    assert notifier.flush(10) == 0
    (headers, body), = receiver.posts
    assert "X-Orchestrator-Signature" not in headers
    assert json.loads(body)["event"] == "run.finished" and json.loads(body)["summary"] == {"failed": 0}
    notifier.close()


def test_server_errors_are_retried_in_order_client_errors_are_not() -> None:
    r = Receiver(statuses=[503, 500])
    try:
        notifier = Notifier([Hook(r.url)], retry_first=0.05, retry_cap=0.1)
        for i in range(3):
            notifier.send(event("run.finished", version=str(i)))
        assert [p["version"] for p in r.wait_for(3)] == ["0", "1", "2"]
        assert notifier.flush(10) == 0 and notifier.undelivered == 0
        r.statuses = [404]
        notifier.send(event("run.finished", version="gone"))
        assert notifier.flush(10) == 0
        assert notifier.undelivered == 1 and len(r.posts) == 3
        notifier.close()
    finally:
        r.close()


def test_dead_receiver_never_blocks_and_events_arrive_once_it_is_back(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    notifier = Notifier([Hook(f"http://127.0.0.1:{port}/x", timeout=1)], retry_first=0.05, retry_cap=0.2)
    started = time.monotonic()
    for i in range(50):
        notifier.send(event("binding.failed", "s1", f"sqlite.t{i}"))
    assert time.monotonic() - started < 0.5  # only queued
    assert notifier.flush(0.3) == 50
    r = Receiver(port=port)
    try:
        assert len(r.wait_for(50)) == 50
        assert notifier.flush(10) == 0 and notifier.undelivered == 0
    finally:
        r.close()
        notifier.close()


def test_hung_receiver_gives_up_at_close_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    hang = threading.Event()
    r = Receiver(hang=hang)
    try:
        notifier = Notifier([Hook(r.url, secret="s3cret", timeout=30)])
        notifier.send(event("run.finished"))
        notifier.send(event("run.finished"))
        with caplog.at_level(logging.WARNING, logger="notify"):
            started = time.monotonic()
            assert notifier.close(wait=0.3) == 2
            assert time.monotonic() - started < 5
        assert notifier.undelivered == 2
        lines = [rec.getMessage() for rec in caplog.records]
        assert lines == ["notify: 2 events not delivered within 0.3s; giving up"]
    finally:
        hang.set()
        r.close()


def test_given_up_event_logs_host_only(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    notifier = Notifier([Hook(f"http://127.0.0.1:{port}/hooks/T0KEN", secret="s3cret")], retry_first=0.01,
                        retry_cap=0.02, max_age=0.1)
    with caplog.at_level(logging.WARNING, logger="notify"):
        notifier.send(event("binding.failed", "s1"))
        assert notifier.flush(10) == 0
    assert notifier.undelivered == 1
    text = caplog.text
    assert f"binding.failed to http://127.0.0.1:{port} undelivered after" in text
    assert "T0KEN" not in text and "s3cret" not in text
    assert safe_url("https://hooks.example.com:8443/services/T0KEN?x=1") == "https://hooks.example.com:8443"
    notifier.close()


def test_once_fires_per_new_condition() -> None:
    once = Once()
    assert once.first(("s1", "t1"), "v1")
    assert not once.first(("s1", "t1"), "v1")
    assert once.first(("s1", "t1"), "v2")
    once.forget(("s1", "t1"))
    assert once.first(("s1", "t1"), "v2")
