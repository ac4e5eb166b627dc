"""Redis: one migration in one round trip, checked and timed against the three-round-trip sequence and the floor.

The design (the Redis target's own script, imported from orchestrator.targets._redis_script): one EVALSHA whose script
checks the ledger, checks every command as MULTI would at queue time (known
command, arity, ACL), runs the commands with ``redis.pcall`` (a script is atomic,
like MULTI/EXEC, and like it never rolls back), and records the version in the
version hash only if no command failed; otherwise it writes a ``running`` meta
entry (the caller then marks it ``failed`` with the statement and line), so a
partly failed run never reads as applied. A crash in between leaves ``running``,
as before; a lost reply is resolved by reading the version hash, which the script
wrote together with the body or not at all.

    python bench/redis_round_trips.py                 # 20 prefixes x 50 migrations, loopback
    python bench/redis_round_trips.py --delay-ms 10   # through bench/latency_proxy.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RD = {"host": os.environ.get("TEST_REDIS_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_REDIS_PORT", "6379"))}

# The script the Redis target runs, not a copy: the bench checks and times what ships.
sys.path.insert(0, str(ROOT))
from orchestrator.targets._redis_script import APPLY, arguments, outcome  # noqa: E402


def one_trip(script: Any, ledger: str, meta: str, version: str, commands: list[list[str]]) -> tuple[str, int, int, str]:
    now = int(time.time())
    args = arguments(version, now, json.dumps({"status": "applied", "duration_ms": 0}),
                     json.dumps({"status": "running", "apply_time": now}), commands)
    assert args is not None
    return outcome(script(keys=[ledger, meta], args=args))


def three_trips(client: Any, ledger: str, meta: str, version: str, commands: list[list[str]]) -> None:
    """Today's sequence: WATCH and the checks; MULTI, body, running claim, EXEC; then the promotion to applied."""
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(ledger, meta)
        pipe.hexists(ledger, version)
        pipe.hget(meta, version)
        pipe.multi()
        for argv in commands:
            pipe.execute_command(*argv)
        pipe.hset(meta, version, json.dumps({"status": "running"}))
        pipe.execute()
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(ledger, version, int(time.time()))
        pipe.hset(meta, version, json.dumps({"status": "applied"}))
        pipe.execute()


def floor(client: Any, ledger: str, meta: str, version: str, commands: list[list[str]]) -> None:
    with client.pipeline(transaction=True) as pipe:
        for argv in commands:
            pipe.execute_command(*argv)
        pipe.hset(ledger, version, int(time.time()))
        pipe.execute()


def check(client: Any, script: Any, ns: str) -> None:
    """The guarantees, asserted against the server."""
    ledger, meta = f"{ns}:chk:ledger", f"{ns}:chk:meta"
    assert one_trip(script, ledger, meta, "v1", [["SET", f"{ns}:chk:a", "1"], ["SADD", f"{ns}:chk:s", "x"]])[0] == "applied"
    assert client.hexists(ledger, "v1") and client.get(f"{ns}:chk:a") == b"1"
    assert one_trip(script, ledger, meta, "v1", [["INCR", f"{ns}:chk:a"]])[0] == "recorded"  # nothing runs
    assert client.get(f"{ns}:chk:a") == b"1"
    # Queue-time errors: nothing runs, nothing is recorded.
    for bad in (["NOSUCHCOMMAND", "x"], ["INCR"]):
        result = one_trip(script, ledger, meta, "v2", [["SET", f"{ns}:chk:b", "1"], bad])
        assert result[:3] == ("refused", 1, 2) and client.get(f"{ns}:chk:b") is None and not client.hexists(meta, "v2"), result
    # A run-time error: the others ran (no rollback), the version is not applied, the meta entry blocks the set.
    result = one_trip(script, ledger, meta, "v3", [["SET", f"{ns}:chk:c", "1"], ["LPUSH", f"{ns}:chk:c", "x"], ["SET", f"{ns}:chk:d", "2"]])
    assert result[:3] == ("failed", 1, 2) and result[3].startswith("WRONGTYPE"), result
    assert not client.hexists(ledger, "v3") and json.loads(client.hget(meta, "v3"))["status"] == "running"
    assert client.get(f"{ns}:chk:d") == b"2"
    assert one_trip(script, ledger, meta, "v3", [["SET", f"{ns}:chk:e", "1"]])[0] == "blocked"  # failed/running
    # A command a script may not run: refused before anything ran (the caller takes the MULTI/EXEC path).
    assert one_trip(script, ledger, meta, "v4", [["SET", f"{ns}:chk:f", "1"], ["SUBSCRIBE", "x"]])[:3] == ("unsuitable", 0, 2)
    assert client.get(f"{ns}:chk:f") is None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--migrations", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="through the latency proxy, this much each way")
    args = parser.parse_args()
    import redis

    ns = f"orchbench_{uuid.uuid4().hex[:6]}"
    proxy = None
    port = RD["port"]
    if args.delay_ms:
        proxy = subprocess.Popen([sys.executable, str(ROOT / "bench" / "latency_proxy.py"), "--delay-ms", str(args.delay_ms),
                                  f"redis={RD['host']}:{RD['port']}"], stdout=subprocess.PIPE, text=True)
        assert proxy.stdout is not None
        port = json.loads(proxy.stdout.readline())["redis"]
    client = redis.Redis(host=RD["host"], port=port)
    try:
        script = client.register_script(APPLY)
        check(client, script, ns)
        times: dict[str, float] = {}
        for name, fn in (("three round trips (today)", lambda led, met, v, c: three_trips(client, led, met, v, c)),
                         ("one round trip (script)", lambda led, met, v, c: one_trip(script, led, met, v, c)),
                         ("floor (MULTI pipeline)", lambda led, met, v, c: floor(client, led, met, v, c))):
            started = time.perf_counter()
            for t in range(args.targets):
                base = f"{ns}:{name[:5]}:{t}"
                for i in range(args.migrations):
                    fn(f"{base}:ledger", f"{base}:meta", f"v{i:04d}", [["HSET", f"{base}:h{i}", "f", "v"], ["SADD", f"{base}:s{i}", "a"]])
            times[name] = time.perf_counter() - started
        print(f"{args.targets} prefixes x {args.migrations} migrations, one client, {args.delay_ms:g} ms each way\n")
        print("| sequence | time | per migration | vs floor |\n|---|---|---|---|")
        base = times["floor (MULTI pipeline)"]
        for name, secs in times.items():
            print(f"| {name} | {secs:.2f} s | {secs / args.targets / args.migrations * 1e6:.0f} us | {secs / base:.2f}x |")
        print("\nguarantees checked: queue-time errors, run-time errors, replays, blocked sets, commands scripts may not run")
    finally:
        keys = list(client.scan_iter(match=f"{ns}*", count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
        client.close()
        if proxy:
            proxy.send_signal(signal.SIGTERM)
            proxy.communicate(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
