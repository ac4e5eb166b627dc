"""The daemon's status server under a burst of concurrent requests.

Starts ``orchestrator daemon`` on a fleet of SQLite files (one set of a few
migrations), waits until it is ready and every binding is current, then sends
``--requests`` GET requests at once (one thread each, released together by a
barrier) to ``--path``, ``--rounds`` times. Prints the latency p50, p99 and max
over all requests and the number that failed (timeout, reset or non-200).
Removes what it created.

    python bench/http_concurrency.py                          # 200 concurrent /status, 500 bindings, 5 rounds
    python bench/http_concurrency.py --targets 1000 --path /metrics
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, targets: int) -> Path:
    sets = root / "sets" / "s"
    sets.mkdir(parents=True)
    for n in range(1, 4):
        (sets / f"{n:03d}_t.sql").write_text(f"CREATE TABLE t{n} (x INTEGER);\n")
    databases = {"sqlite": [{"host_id": f"t{i}", "path": str(root / "db" / f"t{i}.db")} for i in range(targets)]}
    (root / "db").mkdir()
    config = {"databases": databases,
              "migrations": {"directory": "sets", "sets": {"s": {"targets": [f"sqlite.t{i}" for i in range(targets)]}}},
              "daemon": {"workers": 8, "watch_interval": "1s", "http": {"host": "127.0.0.1", "port": 0}}}
    path = root / "config.json"
    path.write_text(json.dumps(config))
    return path


def get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def burst(port: int, path: str, count: int, timeout: float) -> tuple[list[float], list[str]]:
    barrier = threading.Barrier(count)
    times: list[float] = []
    failures: list[str] = []
    guard = threading.Lock()

    def one() -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            status, _ = get(port, path, timeout)
            outcome = None if status == 200 else f"HTTP {status}"
        except Exception as exc:  # counted, not raised: the burst goes on
            outcome = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        with guard:
            times.append(elapsed)
            if outcome:
                failures.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times, failures


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=500, help="SQLite targets (bindings in /status)")
    parser.add_argument("--requests", type=int, default=200, help="concurrent requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", default="/status")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="orchbench_http_"))
    daemon = None
    try:
        config = build(root, args.targets)
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        daemon = subprocess.Popen([sys.executable, "-m", "orchestrator", "daemon", str(config)], cwd=root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert daemon.stdout is not None
        port = 0
        for line in daemon.stdout:
            m = re.search(r"status on http://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        if not port:
            raise SystemExit("the daemon did not start")
        threading.Thread(target=lambda: [None for _ in daemon.stdout], daemon=True).start()  # type: ignore[union-attr]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status, body = get(port, "/status", 10)
                data = json.loads(body)
                if status == 200 and data["summary"].get("current") == args.targets:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("the fleet did not become current within 120 s")
        size = len(get(port, args.path, 10)[1])
        times: list[float] = []
        failures: list[str] = []
        for _ in range(args.rounds):
            t, f = burst(port, args.path, args.requests, args.timeout)
            times += t
            failures += f
        print(f"{args.path} ({size} bytes, {args.targets} bindings): {args.rounds} rounds of {args.requests} concurrent requests")
        print("| requests | failed | p50 | p99 | max |")
        print("|---|---|---|---|---|")
        print(f"| {len(times)} | {len(failures)} | {percentile(times, 50) * 1000:.1f} ms | "
              f"{percentile(times, 99) * 1000:.1f} ms | {max(times) * 1000:.1f} ms |")
        for failure in sorted(set(failures))[:5]:
            print(f"  failure: {failure}")
        return 1 if failures else 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
