"""Inventory benchmark: 10,000 targets discovered from a catalog, served by one process.

Builds a PostgreSQL catalog database holding a ``tenants`` table of N rows (by
default 10,000), each pointing at a SQLite file, and a set of a few small
migrations bound to ``sqlite.*``. Then measures, side by side in one run:

- resolution: ``Inventory.resolve`` of the catalog in-process (read, merge,
  validate N entries), against the raw floor of fetching the same rows with psycopg;
- a first catch-up (for information), then a no-op ``catch-up`` and a ``status``
  of the whole fleet through the CLI (one process, resolving the inventory
  first), against the raw-driver floor in a child process with the same threads:
  read the catalog, then open each SQLite file and read its ledger;
- the peak RSS of each process (``wait4``).

Everything it creates (the catalog database, the files) is removed at the end::

    python bench/inventory.py                 # 10,000 targets, a few minutes
    python bench/inventory.py --targets 500   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG = {"host": os.environ.get("TEST_PG_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_PG_PORT", "5432")),
      "user": os.environ.get("TEST_PG_USER", "postgres")}
QUERY = "SELECT host_id, path FROM tenants WHERE active ORDER BY host_id"


def timed(argv: list[str], cwd: Path | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MB, exit code, stderr tail) of one process, measured with wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, err.decode(errors="replace")[-400:]


def floor_main(config_path: str, workers: int) -> None:
    """Child process: the raw drivers' floor of a no-op pass / status over the catalog's targets."""
    import psycopg

    config = json.loads(Path(config_path).read_text())
    catalog = config["databases"]["postgresql"][0]
    with psycopg.connect(host=catalog["ip"], port=catalog["port"], user=catalog["user"], dbname=catalog["dbname"]) as conn:
        rows = conn.execute(QUERY).fetchall()
    folder = Path(config_path).parent

    def one(row: tuple[str, str]) -> None:
        conn = sqlite3.connect(f"file:{folder / row[1]}?mode=ro", uri=True)
        try:
            conn.execute("SELECT version, apply_time, checksum FROM migration WHERE set_id = 's'").fetchall()
        finally:
            conn.close()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, rows))


def resolve_once(config_path: Path) -> tuple[float, int]:
    from orchestrator import config as config_module
    from orchestrator.inventory import Inventory, parse_sources

    raw = json.loads(config_path.read_text())
    cfg = config_module.load(config_path)
    inventory = Inventory(parse_sources(raw["inventory"], str(config_path)), config_path.parent)
    static = {d: db for d, db in cfg.databases.items() if not d.startswith("sqlite.")}
    started = time.perf_counter()
    result = inventory.resolve(static)
    return time.perf_counter() - started, len(result.databases) - len(static)


def raw_fetch(catalog: dict[str, Any]) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(host=catalog["ip"], port=catalog["port"], user=catalog["user"], dbname=catalog["dbname"]) as conn:
        conn.execute(QUERY).fetchall()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--migrations", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--floor", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        floor_main(args.floor, args.workers)
        return 0

    import psycopg

    run_id = uuid.uuid4().hex[:8]
    dbname = f"orchbench_inv_{run_id}"
    work = Path(tempfile.mkdtemp(prefix="orchbench_inv_"))
    admin = psycopg.connect(host=PG["host"], port=PG["port"], user=PG["user"], dbname="postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    try:
        catalog = {"host_id": "catalog", "ip": PG["host"], "port": PG["port"], "user": PG["user"], "dbname": dbname}
        with psycopg.connect(host=PG["host"], port=PG["port"], user=PG["user"], dbname=dbname, autocommit=True) as conn:
            conn.execute("CREATE TABLE tenants (host_id text PRIMARY KEY, path text NOT NULL, active boolean NOT NULL DEFAULT true)")
            with conn.cursor().copy("COPY tenants (host_id, path) FROM STDIN") as copy:
                for i in range(args.targets):
                    copy.write_row((f"t{i:05d}", f"data/t{i:05d}.db"))
        (work / "data").mkdir()
        folder = work / "sets" / "s"
        folder.mkdir(parents=True)
        for i in range(args.migrations):
            (folder / f"2024-01-01_{i:04d}_step.sql").write_text(
                f"CREATE TABLE bench_{i} (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL);\n"
                f"INSERT INTO bench_{i} (id, name) VALUES (1, 'row {i}');\n")
        config = work / "config.json"
        config.write_text(json.dumps({
            "databases": {"postgresql": [catalog]},
            "inventory": [{"name": "tenants", "driver": "sqlite", "defaults": {"journal_mode": "DELETE"},
                           "sql": {"dbid": "postgresql.catalog", "query": QUERY}}],
            "migrations": {"directory": "sets", "sets": {"s": {"targets": ["sqlite.*"]}}},
            "daemon": {"workers": args.workers},
        }, indent=2))

        resolution = [resolve_once(config) for _ in range(args.repeat)]
        assert all(n == args.targets for _, n in resolution), resolution
        fetch = statistics.median(raw_fetch(catalog) for _ in range(args.repeat))

        orch = [sys.executable, "-m", "orchestrator", "-q"]
        first = timed([*orch, "catch-up", str(config), "--workers", str(args.workers)], cwd=work)
        if first[2] != 0:
            raise SystemExit(f"first catch-up exited {first[2]}: {first[3]}")
        results: dict[str, list[tuple[float, float, int, str]]] = {"noop": [], "status": [], "floor": []}
        for _ in range(args.repeat):
            results["noop"].append(timed([*orch, "catch-up", str(config), "--workers", str(args.workers)], cwd=work))
            results["status"].append(timed([*orch, "status", str(config)], cwd=work))
            results["floor"].append(timed([sys.executable, __file__, "--floor", str(config), "--workers", str(args.workers)]))
        for name, runs in results.items():
            bad = [r for r in runs if r[2] != 0]
            if bad:
                raise SystemExit(f"{name} exited {bad[0][2]}: {bad[0][3]}")

        def med(name: str) -> float:
            return statistics.median(r[0] for r in results[name])

        def peak(name: str) -> float:
            return max(r[1] for r in results[name])

        floor = med("floor")
        print(f"targets: {args.targets} SQLite files from a PostgreSQL catalog; {args.migrations} migrations; "
              f"{args.workers} workers; median of {args.repeat}\n")
        print("| measure | orchestrator | floor | ratio | peak RSS |")
        print("|---|---|---|---|---|")
        res = statistics.median(t for t, _ in resolution)
        print(f"| resolve {args.targets} catalog rows (in-process) | {res:.3f} s | {fetch:.3f} s (psycopg fetch) | "
              f"{res / fetch:.1f}x | |")
        print(f"| first catch-up (CLI) | {first[0]:.2f} s | | | {first[1]:.0f} MB |")
        print(f"| no-op catch-up (CLI) | {med('noop'):.2f} s | {floor:.2f} s | {med('noop') / floor:.2f}x | "
              f"{peak('noop'):.0f} MB (floor {peak('floor'):.0f} MB) |")
        print(f"| status (CLI) | {med('status'):.2f} s | {floor:.2f} s | {med('status') / floor:.2f}x | {peak('status'):.0f} MB |")
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
