"""``wait``: every selected target accepts a connection before the deadline, or is named with its reason."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import pytest

from orchestrator import config as config_module
from orchestrator.errors import ConfigError
from orchestrator.wait import wait_for
from tests.conftest import PG
from tests.test_daemon import free_port, poll


def forwarder(port: int, upstream: tuple[str, int]) -> socket.socket:
    """Start listening on ``port`` now and pass every connection on to ``upstream`` (a server that 'comes up')."""
    server = socket.create_server(("127.0.0.1", port))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            up = socket.create_connection(upstream)
            threading.Thread(target=pump, args=(client, up), daemon=True).start()
            threading.Thread(target=pump, args=(up, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


def test_every_engine_that_answers_is_ready_at_once(project: Any, pg_db: Any, mysql_db: Any, redis_prefix: Any, sqlite_db: Any,
                                                    tmp_path: Any) -> None:
    project.add_target("postgresql", "p", pg_db)
    project.add_target("mysql", "m", mysql_db)
    project.add_target("redis", "r", redis_prefix)
    project.add_target("sqlite", "s", sqlite_db)
    project.add_target("sqlite", "new", {"path": str(tmp_path / "not-yet.db")})
    config = config_module.load(project.config)
    assert wait_for(config, timeout=30) == {}
    assert not (tmp_path / "not-yet.db").exists()  # waiting creates nothing


def test_a_dead_target_is_named_with_its_reason_and_the_pattern_selects(project: Any, pg_db: Any) -> None:
    project.add_target("postgresql", "p", pg_db)
    project.add_target("postgresql", "gone", {**pg_db, "port": free_port(), "connection_timeout": 1})
    config = config_module.load(project.config)
    missing = wait_for(config, timeout=1.5, interval=0.2)
    assert list(missing) == ["postgresql.gone"] and "postgresql.gone" in missing["postgresql.gone"]
    assert wait_for(config, pattern="postgresql.p", timeout=5) == {}
    with pytest.raises(ConfigError, match=r"no target matches 'mysql\.\*' \(declared: postgresql\.p, postgresql\.gone\)"):
        wait_for(config, pattern="mysql.*")


def test_a_target_that_comes_up_while_waiting(project: Any, pg_db: Any, caplog: Any) -> None:
    port = free_port()
    project.add_target("postgresql", "late", {**pg_db, "port": port, "connection_timeout": 2})
    config = config_module.load(project.config)
    caplog.set_level(logging.DEBUG, logger="wait")
    outcome: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: outcome.setdefault("missing", wait_for(config, timeout=60, interval=0.2)))
    waiter.start()
    poll(lambda: "postgresql.late: not yet" in caplog.text, what="a refused first attempt")
    server = forwarder(port, (PG["ip"], PG["port"]))
    try:
        waiter.join(60)
        assert outcome["missing"] == {} and "postgresql.late: accepts connections (after" in caplog.text
    finally:
        server.close()
