"""Redis: what a run says after a lost reply, and a lock whose holder has exited.

The lost reply is made by a TCP relay started in the test on 127.0.0.1: it passes
everything through until the runner sends what records a version ``applied`` (the
MULTI/EXEC that promotes a no-transaction file's claim, or the script that runs a
file with its ledger entry in one round trip), then cuts that one connection,
after the server executed it (the reply is dropped) or before it reached the server. The dead holder is a real process that
took the lock with the runner's own code and exited without releasing it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import LockHeld
from tests.conftest import REDIS
from tests.targets.test_redis import ROOT, make_target, meta, raw_client, setup_project

VERSIONS = ("v0009", "v0010", "v0011")
_EXEC_REPLY = re.compile(rb"\*2\r\n:\d+\r\n:\d+\r\n$")
_SCRIPT_REPLY = re.compile(rb"\*1\r\n:1\r\n$")


class CuttingProxy:
    """Relays to Redis; cuts the connection that carries the ``applied`` record of ``version``, once.

    ``mode``: ``after`` drops the EXEC's reply (the server applied it), ``before`` drops the
    transaction itself (never reaches the server). ``close_after_cut`` stops accepting new
    connections once the cut is made, so that the ledger cannot be read again.
    """

    def __init__(self, ledger_key: str, version: str, mode: str, close_after_cut: bool = False, script: bool = False):
        # The MULTI/EXEC that records a version applied: HSET <ledger> <version> <time> (the claim writes the meta hash);
        # or the script's call: EVALSHA <sha> 2 <ledger> <meta> <version> ...
        self.marker = (f"$4\r\nHSET\r\n${len(ledger_key)}\r\n{ledger_key}\r\n${len(version)}\r\n{version}\r\n").encode()
        if script:
            meta_key = f"{ledger_key}:meta"
            self.marker = (f"${len(ledger_key)}\r\n{ledger_key}\r\n${len(meta_key)}\r\n{meta_key}\r\n"
                           f"${len(version)}\r\n{version}\r\n").encode()
        self.reply = _SCRIPT_REPLY if script else _EXEC_REPLY
        self.mode, self.close_after_cut = mode, close_after_cut
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set() and self.close_after_cut:
                client.close()
                continue
            server = socket.create_connection((REDIS["ip"], REDIS["port"]), timeout=10)
            self._open += [client, server]
            armed = threading.Event()  # this connection carries the record: cut after the server's reply
            threading.Thread(target=self._upstream, args=(client, server, armed), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, armed), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, armed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if not self.cut.is_set() and self.marker in data:
                    if self.mode == "before":
                        self._cut(client, server)
                        return
                    armed.set()
                server.sendall(data)
        except OSError:
            pass

    def _downstream(self, server: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        pending = b""
        try:
            while data := server.recv(65536):
                if armed.is_set():
                    pending += data
                    if self.reply.search(pending):  # the server executed it: the client never hears so
                        self._cut(client, server)
                        return
                    continue
                client.sendall(data)
        except OSError:
            pass

    def _cut(self, client: socket.socket, server: socket.socket) -> None:
        self.cut.set()
        if self.close_after_cut:
            self.listener.close()
        for s in (client, server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        for s in self._open:
            s.close()


def _project(project: Any, redis_prefix: dict[str, Any], proxy: CuttingProxy | None = None, directive: str = "") -> Path:
    entry = {**redis_prefix, **({"ip": "127.0.0.1", "port": proxy.port} if proxy else {})}
    return setup_project(project, entry, {f"{v}.redis": f"{directive}INCR {{p}}counter\nSET {{p}}{v} done\n" for v in VERSIONS})


# Files that record 'applied' in a second step after their body: no-transaction files (claim, body, promotion).
_PROMOTED = "# orchestrator: no-transaction\n"


def _ledger(redis_prefix: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    client = raw_client()
    applied = sorted(client.hkeys(f"{redis_prefix['prefix']}migration:s1"))
    return applied, {v: meta(redis_prefix, v).get("status") for v in VERSIONS}


@pytest.fixture
def cutting_proxy(redis_prefix: dict[str, Any]) -> Any:
    proxies: list[CuttingProxy] = []

    def start(mode: str, close_after_cut: bool = False, script: bool = False) -> CuttingProxy:
        proxy = CuttingProxy(f"{redis_prefix['prefix']}migration:s1", "v0010", mode, close_after_cut, script)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


def test_a_reply_lost_after_the_version_was_recorded_is_checked_not_reported_running(
        project: Any, redis_prefix: dict[str, Any], cutting_proxy: Any, orchestrator: Any) -> None:
    proxy = cutting_proxy("after")
    config = _project(project, redis_prefix, proxy, _PROMOTED)
    code, out, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert proxy.cut.is_set()
    assert code == 0, out + err
    assert "read again, the ledger shows it applied" in err and "stays 'running'" not in err and "unreachable" not in err, err
    assert _ledger(redis_prefix) == (list(VERSIONS), dict.fromkeys(VERSIONS, "applied"))
    assert raw_client().get(f"{redis_prefix['prefix']}counter") == "3"  # each ran once


def test_a_reply_lost_with_the_server_out_of_reach_says_the_outcome_is_unknown(
        project: Any, redis_prefix: dict[str, Any], cutting_proxy: Any, orchestrator: Any) -> None:
    proxy = cutting_proxy("after", close_after_cut=True)
    config = _project(project, redis_prefix, proxy, _PROMOTED)
    code, out, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 3, out + err
    line = next(text for text in err.splitlines() if "recording s1/v0010.redis applied" in text)
    assert "it ran, and whether it was recorded is unknown until the ledger can be read again" in line, err
    # What the message could not know: it had been recorded.
    assert _ledger(redis_prefix) == (["v0009", "v0010"], {"v0009": "applied", "v0010": "applied", "v0011": None})


def test_a_record_that_never_reached_the_server_is_reported_still_running(
        project: Any, redis_prefix: dict[str, Any], cutting_proxy: Any, orchestrator: Any) -> None:
    proxy = cutting_proxy("before")
    config = _project(project, redis_prefix, proxy, _PROMOTED)
    code, out, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 3, out + err
    assert "it ran, and the ledger, read again, still shows it 'running'" in err, err
    assert _ledger(redis_prefix) == (["v0009"], {"v0009": "applied", "v0010": "running", "v0011": None})


# -- a file and its ledger entry in one script: no 'running' limbo -----------------------------------------


def test_a_script_reply_lost_after_it_ran_is_checked_and_reported_applied(
        project: Any, redis_prefix: dict[str, Any], cutting_proxy: Any, orchestrator: Any) -> None:
    proxy = cutting_proxy("after", script=True)
    config = _project(project, redis_prefix, proxy)
    code, out, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert proxy.cut.is_set()
    assert code == 0, out + err
    assert "read again, the ledger shows it applied" in err and "unreachable" not in err, err
    assert _ledger(redis_prefix) == (list(VERSIONS), dict.fromkeys(VERSIONS, "applied"))
    assert raw_client().get(f"{redis_prefix['prefix']}counter") == "3"  # each ran once


def test_a_script_that_never_reached_the_server_leaves_nothing_to_resolve(
        project: Any, redis_prefix: dict[str, Any], cutting_proxy: Any, orchestrator: Any) -> None:
    proxy = cutting_proxy("before", script=True)
    config = _project(project, redis_prefix, proxy)
    code, out, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert proxy.cut.is_set()
    assert code == 3, out + err
    assert "nothing was applied (the ledger, read again, does not hold it)" in err, err
    # Not 'running': the body and its entry travel together, so the next run simply applies it.
    assert _ledger(redis_prefix) == (["v0009"], {"v0009": "applied", "v0010": None, "v0011": None})
    assert raw_client().get(f"{redis_prefix['prefix']}counter") == "1"
    project.databases["redis"][0].update(ip=REDIS["ip"], port=REDIS["port"])  # straight to the server now
    code, out, err = orchestrator("up", "all", project.config, "redis.r1", "s1")
    assert code == 0, out + err
    assert raw_client().get(f"{redis_prefix['prefix']}counter") == "3"


def test_a_script_reply_lost_with_the_server_out_of_reach_says_the_outcome_is_unknown(
        project: Any, redis_prefix: dict[str, Any], cutting_proxy: Any, orchestrator: Any) -> None:
    proxy = cutting_proxy("after", close_after_cut=True, script=True)
    config = _project(project, redis_prefix, proxy)
    code, out, err = orchestrator("up", "all", config, "redis.r1", "s1")
    assert code == 3, out + err
    assert "connection lost while applying s1/v0010.redis: whether it ran is unknown until the ledger can be read again" in err, err
    assert _ledger(redis_prefix) == (["v0009", "v0010"], {"v0009": "applied", "v0010": "applied", "v0011": None})


_DEAD_HOLDER = """
import os, sys
from orchestrator.config import RedisConfig
from orchestrator.targets import open_target
target = open_target(RedisConfig.model_validate({"host_id": "r1", "ip": sys.argv[1], "port": int(sys.argv[2]),
                                                 "password": sys.argv[3], "prefix": sys.argv[4]}), "migration")
target.connect()
with target.lock("s1", wait=0):
    print(target.client.get(sys.argv[4] + "migration:s1:lock"), flush=True)
    os._exit(0)  # gone without releasing: as a killed or crashed runner
"""


def _dead_holder(redis_prefix: dict[str, Any]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", _DEAD_HOLDER, REDIS["ip"], str(REDIS["port"]), REDIS["password"],
                           redis_prefix["prefix"]], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    value = proc.stdout.strip()
    return int(value.rsplit(" pid ", 1)[1]), value


def test_a_lock_left_by_an_exited_runner_on_this_host_is_taken_over(project: Any, redis_prefix: dict[str, Any],
                                                                   orchestrator: Any) -> None:
    config = _project(project, redis_prefix)
    pid, value = _dead_holder(redis_prefix)
    key = f"{redis_prefix['prefix']}migration:s1:lock"
    assert raw_client().get(key) == value and raw_client().pttl(key) > 20_000  # it would block for most of its TTL
    code, out, err = orchestrator("up", "all", config, "redis.r1", "s1", "--lock-wait", "0.5")
    assert code == 0, out + err
    assert f"took over the lock of {socket.gethostname()} pid {pid} since" in err and "that process no longer exists" in err, err
    assert _ledger(redis_prefix) == (list(VERSIONS), dict.fromkeys(VERSIONS, "applied"))
    assert raw_client().get(key) is None  # released by the run that took it


def test_a_lock_of_a_dead_pid_from_another_namespace_is_not_taken_but_its_expiry_is_named(redis_prefix: dict[str, Any]) -> None:
    key = f"{redis_prefix['prefix']}migration:s1:lock"
    _, value = _dead_holder(redis_prefix)
    token, rest = value.split(" ", 1)
    foreign = f"{token.split('.')[0]}.0123456789ab {rest}"  # the same pid, but in another container or boot
    raw_client().set(key, foreign, px=30_000)
    target = make_target(redis_prefix)
    try:
        with pytest.raises(LockHeld) as held:
            with target.lock("s1", wait=0.3):
                pass
    finally:
        target.close()
    message = str(held.value)
    assert "may run in another container or boot of this host; its lock expires at" in message, message
    assert raw_client().get(key) == foreign  # never taken
