"""Cluster-mode benchmark: 1, 2 and 3 replicas over a control store against one daemon without a store.

Builds a fleet (by default 3,000 SQLite files, 20 PostgreSQL databases, 20 MariaDB
databases and 20 Redis key prefixes; one set of 5 small migrations per engine) and
times, for each contender:

- **one daemon, no store**: ``orchestrator daemon CONFIG --once`` (one catch-up of
  the whole fleet, then exit), spawn to exit;
- **cluster, N replicas** (N = 1, 2, 3): N ``orchestrator daemon CONFIG`` processes
  started together against a fresh control store, from spawn until the control
  store's fleet view shows every binding current and updated since the start (read
  straight from the store); then SIGTERM.

Each is run twice on the same targets: the first catch-up (everything applied),
then a no-op pass (everything already current). The store's overhead per target is
(cluster with 1 replica - one daemon) / targets. Everything created is removed.

    python bench/cluster.py                       # the full run (several minutes)
    python bench/cluster.py --sqlite 300 --pg 5 --mysql 5 --redis 5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import redis

PG = {"host": os.environ.get("TEST_PG_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_PG_PORT", "5432")),
      "user": os.environ.get("TEST_PG_USER", "postgres"), "password": os.environ.get("TEST_PG_PASSWORD", "")}
MY = {"host": os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_MYSQL_PORT", "3306")),
      "user": os.environ.get("TEST_MYSQL_USER", "root"), "password": os.environ.get("TEST_MYSQL_PASSWORD", "")}
RD = {"host": os.environ.get("TEST_REDIS_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_REDIS_PORT", "6379"))}
MIGRATIONS = 5
WORKERS = 8


def pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(dbname="postgres", autocommit=True, **{k: v for k, v in PG.items() if v != ""})


def build(root: Path, tag: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """A project folder with its config.json (cluster section added per run) and the created server objects."""
    made: dict[str, Any] = {"pg": [], "my": [], "redis": []}
    db: dict[str, list[dict[str, Any]]] = {"sqlite": [], "postgresql": [], "mysql": [], "redis": []}
    (root / "files").mkdir(parents=True)
    for i in range(args.sqlite):
        db["sqlite"].append({"host_id": f"f{i:05d}", "path": str(root / "files" / f"f{i:05d}.db")})
    with pg_admin() as conn:
        for name in [f"bc_{tag}_control"] + [f"bc_{tag}_p{i}" for i in range(args.pg)]:
            conn.execute(f'CREATE DATABASE "{name}"')
            made["pg"].append(name)
    for i in range(args.pg):
        db["postgresql"].append({"host_id": f"p{i}", "ip": PG["host"], "port": PG["port"], "user": PG["user"],
                                 "password": PG["password"], "dbname": f"bc_{tag}_p{i}"})
    db["postgresql"].append({"host_id": "control", "ip": PG["host"], "port": PG["port"], "user": PG["user"],
                             "password": PG["password"], "dbname": f"bc_{tag}_control"})
    with pymysql.connect(**MY) as conn, conn.cursor() as cur:
        for i in range(args.mysql):
            cur.execute(f"CREATE DATABASE `bc_{tag}_m{i}`")
            made["my"].append(f"bc_{tag}_m{i}")
            db["mysql"].append({"host_id": f"m{i}", "ip": MY["host"], "port": MY["port"], "user": MY["user"],
                                "password": MY["password"], "dbname": f"bc_{tag}_m{i}"})
    for i in range(args.redis):
        db["redis"].append({"host_id": f"r{i}", "ip": RD["host"], "port": RD["port"], "prefix": f"bc_{tag}_r{i}:"})
        made["redis"].append(f"bc_{tag}_r{i}:")
    folder = root / "sets" / "s"
    folder.mkdir(parents=True)
    for n in range(1, MIGRATIONS + 1):
        (folder / f"{n:03d}_m").mkdir()
        (folder / f"{n:03d}_m" / "up.sql").write_text(f"CREATE TABLE t{n} (id INTEGER PRIMARY KEY, v TEXT);\n"
                                                     f"INSERT INTO t{n} (id, v) VALUES (1, 'x');\n")
        (folder / f"{n:03d}_m" / "redis.redis").write_text(f"SET t{n} x\nINCR n\n")
    targets = ["sqlite.*", "postgresql.p*", "mysql.*", "redis.*"]
    config = {"databases": db, "migrations": {"directory": "sets", "sets": {"s": {"targets": targets,
                                                                                   "schedule": {"every": "1h"}}}},
              "daemon": {"workers": WORKERS, "http": {"host": "127.0.0.1", "port": 0}}}
    (root / "config.base.json").write_text(json.dumps(config))
    made["count"] = args.sqlite + args.pg + args.mysql + args.redis
    made["control"] = f"bc_{tag}_control"
    return root, made


def write_config(root: Path, cluster: bool) -> Path:
    config = json.loads((root / "config.base.json").read_text())
    if cluster:
        config["daemon"]["cluster"] = {"store": "postgresql.control", "lease": "30s"}
    path = root / "config.json"
    path.write_text(json.dumps(config))
    return path


def reset_ledgers(root: Path, made: dict[str, Any]) -> None:
    """Back to nothing applied: remove the SQLite files, recreate the server databases, drop the Redis keys."""
    shutil.rmtree(root / "files")
    (root / "files").mkdir()
    with pg_admin() as conn:
        for name in made["pg"]:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    with pymysql.connect(**MY) as conn, conn.cursor() as cur:
        for name in made["my"]:
            cur.execute(f"DROP DATABASE `{name}`")
            cur.execute(f"CREATE DATABASE `{name}`")
    client = redis.Redis(**RD)
    for prefix in made["redis"]:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def run_once(config: Path) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "orchestrator", "-q", "daemon", str(config), "--once"], cwd=config.parent,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.monotonic() - started


def run_cluster(config: Path, made: dict[str, Any], replicas: int) -> float:
    control = {k: v for k, v in PG.items() if v != ""}
    since = None
    with psycopg.connect(dbname=made["control"], autocommit=True, **control) as conn:
        since = conn.execute("SELECT now()").fetchone()[0]
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "-q", "daemon", str(config)], cwd=config.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(replicas)]
    try:
        with psycopg.connect(dbname=made["control"], autocommit=True, **control) as conn:
            while True:
                try:
                    done = conn.execute("SELECT count(*) FROM orchestrator_bindings WHERE state = 'current'"
                                        " AND updated_at >= %s", (since,)).fetchone()[0]
                except psycopg.errors.UndefinedTable:
                    done = 0
                if done >= made["count"]:
                    break
                if time.monotonic() - started > 1800:
                    raise SystemExit("cluster run did not finish in 30 minutes")
                time.sleep(0.1)
        return time.monotonic() - started
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(120)


def reset_control(made: dict[str, Any]) -> None:
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE "{made["control"]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{made["control"]}"')


def cleanup(root: Path, made: dict[str, Any]) -> None:
    with pg_admin() as conn:
        for name in made["pg"]:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    with pymysql.connect(**MY) as conn, conn.cursor() as cur:
        for name in made["my"]:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    client = redis.Redis(**RD)
    for prefix in made["redis"]:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sqlite", type=int, default=3000)
    parser.add_argument("--pg", type=int, default=20)
    parser.add_argument("--mysql", type=int, default=20)
    parser.add_argument("--redis", type=int, default=20)
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    root, made = build(root, tag, args)
    results: list[dict[str, Any]] = []
    try:
        config = write_config(root, cluster=False)
        first, noop = run_once(config), run_once(config)
        results.append({"contender": "one daemon, no store", "first": first, "noop": noop})
        print(f"one daemon, no store: first {first:.1f} s, no-op {noop:.1f} s", flush=True)
        for n in [int(x) for x in args.replicas.split(",")]:
            reset_ledgers(root, made)
            reset_control(made)
            config = write_config(root, cluster=True)
            first = run_cluster(config, made, n)
            reset_control(made)  # a fresh store: the no-op pass queues every target again
            noop = run_cluster(config, made, n)
            results.append({"contender": f"cluster, {n} replica(s)", "first": first, "noop": noop})
            print(f"cluster, {n} replica(s): first {first:.1f} s, no-op {noop:.1f} s", flush=True)
    finally:
        cleanup(root, made)
    count = made["count"]
    base = results[0]
    print(f"\n{count} targets ({args.sqlite} SQLite, {args.pg} PostgreSQL, {args.mysql} MariaDB, {args.redis} Redis), "
          f"{MIGRATIONS} migrations each, {WORKERS} workers per process\n")
    print("| contender | first catch-up | no-op pass | per target (first / no-op) |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['contender']} | {r['first']:.1f} s | {r['noop']:.1f} s | "
              f"{r['first'] / count * 1000:.1f} ms / {r['noop'] / count * 1000:.1f} ms |")
    one = next((r for r in results if r["contender"].startswith("cluster, 1 ")), None)
    if one is not None:
        print(f"\nstore overhead per target, 1 replica against one daemon: first "
              f"{(one['first'] - base['first']) / count * 1000:+.1f} ms, no-op {(one['noop'] - base['noop']) / count * 1000:+.1f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"targets": count, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
