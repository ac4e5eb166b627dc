"""Fleet benchmark: orchestrator against the raw clients' floor and the peer tools, side by side.

Builds a fleet (by default 1,000 SQLite files, 20 PostgreSQL databases, 20 MariaDB
databases and 20 Redis key prefixes, a set of 50 small migrations per engine) and
times, per engine and for the whole fleet:

- orchestrator's first catch-up, no-op catch-up and status (the CLI, one process);
- the floor: the raw client in one process with the same number of threads, one
  session per target, each migration's statements plus the ledger insert in one
  transaction (MariaDB: autocommit, DDL commits anyway); for no-op and status,
  merely connecting and reading the ledger;
- dbmate (npm package, native binary) and yoyo-migrations (PyPI, own venv), one
  invocation per target in a loop, as their users run them, over a subset of
  the targets (reported per target).

Peers are installed under bench/out/cache on first use. Everything the run
creates (databases, keys, files) is removed at the end. Usage::

    python bench/fleet.py                  # the full run (a few minutes)
    python bench/fleet.py --sqlite 100 --pg 5 --mysql 5 --redis 5 --no-peers   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CACHE = OUT / "cache"
PG = {"host": os.environ.get("TEST_PG_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_PG_PORT", "5432")),
      "user": os.environ.get("TEST_PG_USER", "postgres")}
MY = {"host": os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_MYSQL_PORT", "3306")),
      "user": os.environ.get("TEST_MYSQL_USER", "root")}
RD = {"host": os.environ.get("TEST_REDIS_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_REDIS_PORT", "6379"))}
ENGINES = ("sqlite", "postgresql", "mysql", "redis")
LEDGER_SQL = ("CREATE TABLE IF NOT EXISTS floor_ledger (set_id VARCHAR(100) NOT NULL, version VARCHAR(180) NOT NULL, "
              "apply_time BIGINT NOT NULL, checksum CHAR(64), PRIMARY KEY (set_id, version))")


# -- the migrations ----------------------------------------------------------------


def sql_migrations(n: int) -> list[tuple[str, list[str]]]:
    """(version, statements): small, portable across the three SQL engines."""
    return [(f"2024-01-01_{i:04d}_step", [f"CREATE TABLE bench_{i} (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL)",
                                          f"INSERT INTO bench_{i} (id, name) VALUES (1, 'row {i}')"]) for i in range(n)]


def redis_migrations(n: int, ns: str) -> list[tuple[str, list[list[str]]]]:
    return [(f"2024-01-01_{i:04d}_step", [["HSET", f"{ns}:h{i}", "f", "v"], ["SADD", f"{ns}:s{i}", "a"]]) for i in range(n)]


def write_sets(work: Path, n: int, ns: str) -> None:
    for version, statements in sql_migrations(n):
        (work / "sets" / "sql").mkdir(parents=True, exist_ok=True)
        (work / "sets" / "sql" / f"{version}.sql").write_text(";\n".join(statements) + ";\n")
        (work / "dbmate").mkdir(exist_ok=True)
        (work / "dbmate" / f"{20240101000000 + int(version[11:15])}_step.sql").write_text(
            "-- migrate:up\n" + ";\n".join(statements) + ";\n\n-- migrate:down\n")
        (work / "yoyo").mkdir(exist_ok=True)
        (work / "yoyo" / f"{version}.sql").write_text(";\n".join(statements) + ";\n")
    for version, commands in redis_migrations(n, ns):
        (work / "sets" / "kv").mkdir(parents=True, exist_ok=True)
        (work / "sets" / "kv" / f"{version}.redis").write_text("".join(" ".join(c) + "\n" for c in commands))


# -- the fleet ---------------------------------------------------------------------


class Fleet:
    """Targets per engine and per group (orch, floor, dbmate, yoyo); creates and removes them."""

    def __init__(self, work: Path, run_id: str, sizes: dict[str, dict[str, int]]):
        self.work, self.run_id, self.sizes = work, run_id, sizes
        self.pg_dbs: list[str] = []
        self.my_dbs: list[str] = []

    def names(self, engine: str, group: str) -> list[str]:
        return [f"{self.run_id}_{group}_{engine[:2]}{i:04d}" for i in range(self.sizes[group].get(engine, 0))]

    def create(self) -> None:
        import psycopg
        import pymysql

        pg_names = [n for g in self.sizes for n in self.names("postgresql", g)]
        my_names = [n for g in self.sizes for n in self.names("mysql", g)]

        def make_pg(name: str) -> None:
            with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self.pg_dbs.append(name)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(make_pg, pg_names))
        with pymysql.connect(**MY, password="", autocommit=True, ssl_disabled=True) as conn, conn.cursor() as cur:
            for name in my_names:
                cur.execute(f"CREATE DATABASE `{name}`")
                self.my_dbs.append(name)
        (self.work / "sqlite").mkdir(exist_ok=True)

    def drop(self) -> None:
        import psycopg
        import pymysql
        import redis

        def drop_pg(name: str) -> None:
            with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(drop_pg, self.pg_dbs))
        with pymysql.connect(**MY, password="", autocommit=True, ssl_disabled=True) as conn, conn.cursor() as cur:
            for name in self.my_dbs:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        client = redis.Redis(**RD)
        keys = list(client.scan_iter(match=f"{self.run_id}*", count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])

    def reset(self, engine: str, group: str) -> None:
        """Empty one group's targets of an engine again (a fresh database, file or prefix), for another first catch-up."""
        import psycopg
        import pymysql
        import redis

        names = self.names(engine, group)
        if engine == "sqlite":
            for name in names:
                for path in Path(self.sqlite_path(name)).parent.glob(f"{name}.db*"):
                    path.unlink()
        elif engine == "postgresql":
            with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
                for name in names:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    conn.execute(f'CREATE DATABASE "{name}"')
        elif engine == "mysql":
            with pymysql.connect(**MY, password="", autocommit=True, ssl_disabled=True) as conn, conn.cursor() as cur:
                for name in names:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                    cur.execute(f"CREATE DATABASE `{name}`")
        else:
            client = redis.Redis(**RD)
            for name in names:
                keys = list(client.scan_iter(match=f"{name}:*", count=5000))
                for i in range(0, len(keys), 1000):
                    client.delete(*keys[i:i + 1000])
            # The migrations' own keys are shared by the whole run (see redis_migrations).
            shared = list(client.scan_iter(match=f"{self.run_id}:*", count=5000))
            for i in range(0, len(shared), 1000):
                client.delete(*shared[i:i + 1000])

    def sqlite_path(self, name: str) -> str:
        return str(self.work / "sqlite" / f"{name}.db")

    def targets(self, engine: str, group: str) -> list[dict[str, Any]]:
        """Floor target specs."""
        out = []
        for name in self.names(engine, group):
            if engine == "sqlite":
                out.append({"engine": engine, "path": self.sqlite_path(name)})
            elif engine == "redis":
                out.append({"engine": engine, "prefix": f"{name}:"})
            else:
                out.append({"engine": engine, "dbname": name})
        return out

    def config(self, workers: int | None, group: str = "orch", ports: dict[str, int] | None = None,
               file: str = "config.json") -> Path:
        """orchestrator's config for one group; ``ports`` replaces the servers' ports (the latency proxy);
        ``workers`` None leaves ``daemon.workers`` to its default."""
        ports = ports or {}
        dbs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
        for name in self.names("sqlite", group):
            dbs["sqlite"].append({"host_id": name[-6:], "path": self.sqlite_path(name), "journal_mode": "WAL"})
        for name in self.names("postgresql", group):
            dbs["postgresql"].append({"host_id": name[-6:], "ip": PG["host"], "port": ports.get("postgresql", PG["port"]),
                                      "user": PG["user"], "dbname": name})
        for name in self.names("mysql", group):
            dbs["mysql"].append({"host_id": name[-6:], "ip": MY["host"], "port": ports.get("mysql", MY["port"]),
                                 "user": MY["user"], "dbname": name})
        for name in self.names("redis", group):
            dbs["redis"].append({"host_id": name[-6:], "ip": RD["host"], "port": ports.get("redis", RD["port"]), "prefix": f"{name}:"})
        sets: dict[str, Any] = {}
        sql_targets = [f"{e}.*" for e in ("sqlite", "postgresql", "mysql") if dbs[e]]
        if sql_targets:
            sets["sql"] = {"targets": sql_targets}
        if dbs["redis"]:
            sets["kv"] = {"targets": ["redis.*"]}
        path = self.work / file
        document: dict[str, Any] = {"databases": {e: v for e, v in dbs.items() if v}, "migrations": {"directory": "sets", "sets": sets}}
        if workers is not None:
            document["daemon"] = {"workers": workers}
        path.write_text(json.dumps(document, indent=1))
        return path


# -- timing a process ----------------------------------------------------------------


# Spawns the measured command and reports its wall time and peak RSS. A small process of its own, so that
# the RSS is the command's alone: a child's peak RSS counts what it had before exec, a fork of this process.
_LAUNCH = ("import json, os, sys, time\n"
           "started = time.perf_counter()\n"
           "pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)\n"
           "_, status, usage = os.wait4(pid, 0)\n"
           "wall = time.perf_counter() - started\n"
           "with open(sys.argv[1], 'w') as out: json.dump([wall, usage.ru_maxrss, os.waitstatus_to_exitcode(status)], out)\n")


def timed(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MB, exit code, stderr tail) of one process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCH, result.name, *argv], cwd=cwd, env=env, stdout=out, stderr=err,
                       check=False)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
        wall, rss_kb, code = json.loads(result.read() or "[0, 0, -1]")
    return wall, rss_kb / 1024, code, " | ".join(tail)


def loop(argvs: list[list[str]], cwd: Path | None = None) -> float:
    """Wall seconds of running each command in turn (a shell loop over the fleet)."""
    started = time.perf_counter()
    for argv in argvs:
        proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"peer failed: {' '.join(argv[:3])}...: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return time.perf_counter() - started


# -- the floor: raw clients, same threads, one session per target ----------------------


def floor_main(mode: str, spec_path: str, workers: int, n: int, ns: str) -> None:
    """Run in a child process: the raw clients' floor over the targets in spec_path."""
    specs = json.loads(Path(spec_path).read_text())
    sql = sql_migrations(n)
    kv = redis_migrations(n, ns)
    checksum = "0" * 64

    def ledger_query(spec: dict[str, Any], param: str) -> str:
        # The far section reads orchestrator's own ledger (same targets), the others the floor's.
        if "ledger" in spec:
            return f"SELECT version FROM {spec['ledger']} WHERE set_id = {param}"
        return f"SELECT version FROM floor_ledger WHERE set_id = {param}"

    def sqlite_target(spec: dict[str, Any]) -> None:
        import sqlite3

        conn = sqlite3.connect(spec["path"], isolation_level=None, check_same_thread=False)
        try:
            if mode == "first":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(LEDGER_SQL)
                for version, statements in sql:
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO floor_ledger VALUES ('sql', ?, ?, ?)", (version, int(time.time()), checksum))
                    conn.execute("COMMIT")
            else:
                conn.execute(ledger_query(spec, "?"), ("sql",)).fetchall()
        finally:
            conn.close()

    def pg_target(spec: dict[str, Any]) -> None:
        import psycopg

        with psycopg.connect(**{**PG, "port": spec.get("port", PG["port"])}, dbname=spec["dbname"], autocommit=True) as conn:
            if mode == "first":
                conn.execute(LEDGER_SQL)
                for version, statements in sql:
                    with conn.transaction():
                        for statement in statements:
                            conn.execute(statement)
                        conn.execute("INSERT INTO floor_ledger VALUES ('sql', %s, %s, %s)", (version, int(time.time()), checksum))
            else:
                conn.execute(ledger_query(spec, "%s"), ("sql",)).fetchall()

    def my_target(spec: dict[str, Any]) -> None:
        import pymysql

        conn = pymysql.connect(**{**MY, "port": spec.get("port", MY["port"])}, password="", database=spec["dbname"],
                               autocommit=True, ssl_disabled=True)
        try:
            with conn.cursor() as cur:
                if mode == "first":
                    cur.execute(LEDGER_SQL)
                    for version, statements in sql:
                        for statement in statements:
                            cur.execute(statement)  # DDL commits by itself on MySQL
                        cur.execute("INSERT INTO floor_ledger VALUES ('sql', %s, %s, %s)", (version, int(time.time()), checksum))
                else:
                    cur.execute(ledger_query(spec, "%s"), ("sql",))
                    cur.fetchall()
        finally:
            conn.close()

    def redis_target(spec: dict[str, Any]) -> None:
        import redis

        options = {**RD, "port": spec.get("port", RD["port"])}
        try:
            client = redis.Redis(**options, driver_info=None)  # no CLIENT SETINFO round trips on connect
        except TypeError:
            client = redis.Redis(**options, lib_name=None, lib_version=None)
        try:
            ledger = f"{spec['prefix']}{spec.get('ledger', 'floor_ledger')}:kv"
            if mode == "first":
                for version, commands in kv:
                    pipe = client.pipeline(transaction=True)
                    for command in commands:
                        pipe.execute_command(*command)
                    pipe.hset(ledger, version, int(time.time()))
                    pipe.execute()
            else:
                client.hgetall(ledger)
        finally:
            client.close()

    run = {"sqlite": sqlite_target, "postgresql": pg_target, "mysql": my_target, "redis": redis_target}
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(run[s["engine"]], s) for s in specs]:
            future.result()


# -- peers ------------------------------------------------------------------------------


def ensure_peers() -> tuple[Path, Path]:
    """dbmate's native binary (npm package) and a venv with yoyo-migrations; installed once into the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    arch = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    dbmate = CACHE / "npm" / "node_modules" / "@dbmate" / f"linux-{arch}" / "bin" / "dbmate"
    if not dbmate.exists():
        print("installing dbmate (npm) ...", file=sys.stderr)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE / "npm"), "dbmate"],
                       check=True, stdout=subprocess.DEVNULL)
    venv = CACHE / "yoyo-venv"
    yoyo = venv / "bin" / "yoyo"
    if not yoyo.exists():
        print("installing yoyo-migrations (venv) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "yoyo-migrations", "psycopg[binary]", "pymysql"], check=True)
    return dbmate, yoyo


def dbmate_url(engine: str, fleet: Fleet, name: str) -> str:
    if engine == "sqlite":
        return f"sqlite:{fleet.sqlite_path(name)}"
    if engine == "postgresql":
        return f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{name}?sslmode=disable"
    return f"mysql://{MY['user']}@{MY['host']}:{MY['port']}/{name}"


def yoyo_url(engine: str, fleet: Fleet, name: str) -> str:
    if engine == "sqlite":
        return f"sqlite:///{fleet.sqlite_path(name)}"
    if engine == "postgresql":
        return f"postgresql+psycopg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    return f"mysql://{MY['user']}@{MY['host']}:{MY['port']}/{name}"


# -- the run ------------------------------------------------------------------------------


def median_of(times: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(times))


def interleaved(times: int, fns: tuple[Callable[[], float], ...]) -> list[float]:
    """The median of each of ``fns``, run in turn (a b c a b c ...), so that the machine's drift falls on all alike."""
    walls: list[list[float]] = [[] for _ in fns]
    for _ in range(times):
        for i, fn in enumerate(fns):
            walls[i].append(fn())
    return [statistics.median(w) for w in walls]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite", type=int, default=1000)
    parser.add_argument("--pg", type=int, default=20)
    parser.add_argument("--mysql", type=int, default=20)
    parser.add_argument("--redis", type=int, default=20)
    parser.add_argument("--migrations", type=int, default=50)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each no-op/status measurement (median)")
    parser.add_argument("--first-repeat", type=int, default=3,
                        help="runs of each first catch-up, on emptied targets each time (median)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--peer-sqlite", type=int, default=100, help="SQLite files in the dbmate loop")
    parser.add_argument("--peer-yoyo-sqlite", type=int, default=20, help="SQLite files in the yoyo loop (yoyo is slow)")
    parser.add_argument("--peer-server", type=int, default=10, help="PostgreSQL and MariaDB databases in each peer loop")
    parser.add_argument("--far", type=int, default=200, help="server targets behind the latency proxy (a third each engine)")
    parser.add_argument("--far-delay-ms", type=float, default=10.0, help="one-way delay the proxy adds, each direction")
    parser.add_argument("--far-workers", type=int, default=None,
                        help="the floor's threads for far targets (default: what orchestrator picks by default for them)")
    parser.add_argument("--startup-runs", type=int, default=15, help="runs of each start-up measurement (median)")
    parser.add_argument("--sections", default="fleet,far,startup", help="which parts to run: fleet, far, startup")
    parser.add_argument("--keep", action="store_true", help="keep the fleet (prints where) for profiling; drop it by hand")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the raw numbers here")
    parser.add_argument("--floor", nargs=2, metavar=("MODE", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--ns", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        floor_main(args.floor[0], args.floor[1], args.workers, args.migrations, args.ns)
        return 0

    run_id = f"orchbench_{uuid.uuid4().hex[:6]}"
    sections = set(args.sections.split(","))
    counts = {"sqlite": args.sqlite, "postgresql": args.pg, "mysql": args.mysql, "redis": args.redis}
    sizes = {"orch": dict(counts), "floor": dict(counts)} if "fleet" in sections else {}
    if "far" in sections and args.far:
        third = args.far // 3
        sizes["far"] = {"postgresql": third, "mysql": third, "redis": args.far - 2 * third}
    if "startup" in sections:
        sizes["one"] = {"sqlite": 1}
    peers = None
    if not args.no_peers and "fleet" in sections:
        peers = ensure_peers()
        sizes["dbmate"] = {"sqlite": min(args.peer_sqlite, args.sqlite), "postgresql": min(args.peer_server, args.pg),
                           "mysql": min(args.peer_server, args.mysql)}
        sizes["yoyo"] = {"sqlite": min(args.peer_yoyo_sqlite, args.sqlite), "postgresql": min(args.peer_server, args.pg),
                         "mysql": min(args.peer_server, args.mysql)}
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{run_id}_", dir=OUT))
    fleet = Fleet(work, run_id, sizes)
    results: dict[str, Any] = {"run": run_id, "workers": args.workers, "migrations": args.migrations, "targets": counts,
                               "cpus": os.cpu_count(), "python": platform.python_version(), "rows": {}}
    try:
        print(f"building the fleet in {work} ...", file=sys.stderr)
        fleet.create()
        write_sets(work, args.migrations, run_id)
        env = bytecode_env()
        if "fleet" in sections:
            results["rows"] = measure(args, fleet, fleet.config(args.workers), peers, work, results)
        if "far" in sections and args.far:
            results["far"] = measure_far(args, fleet, work, env)
        if "startup" in sections:
            results["startup"] = measure_startup(args, fleet, work, env)
            results["startup_runs"] = args.startup_runs
    finally:
        if args.keep:
            print(f"kept: {work} (config.json); databases and keys start with {run_id}", file=sys.stderr)
        else:
            print("cleaning up ...", file=sys.stderr)
            try:
                fleet.drop()
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print(render(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


def bytecode_env() -> dict[str, str]:
    """The environment every measured process runs in: the code beside this script, with its bytecode.

    The checkout comes first on PYTHONPATH, whatever copy of the package pip last
    installed. An installed package has its bytecode compiled at install time; an
    editable checkout run with PYTHONDONTWRITEBYTECODE would compile every module
    from source in every process. So the bytecode is compiled once, into a cache
    folder under bench/out (the checkout stays clean), and read from there.
    """
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(OUT / "pycache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "orchestrator"), str(ROOT / "bench")], env=env,
                   stdout=subprocess.DEVNULL, check=True)
    return env


def measure(args: argparse.Namespace, fleet: Fleet, config: Path, peers: tuple[Path, Path] | None, work: Path,
            results: dict[str, Any]) -> dict[str, Any]:
    orch = [sys.executable, "-m", "orchestrator", "-q"]
    env = bytecode_env()
    rows: dict[str, Any] = {}
    peak = 0.0

    rss_by: dict[str, float] = {}

    def run_orch(*argv: str) -> float:
        nonlocal peak
        wall, rss, code, tail = timed([*orch, *argv, str(config)], cwd=work, env=env)
        if code != 0:
            raise SystemExit(f"orchestrator {' '.join(argv)} exited {code}: {tail}")
        peak = max(peak, rss)
        rss_by[" ".join(argv)] = max(rss_by.get(" ".join(argv), 0.0), rss)
        return wall

    def run_floor(mode: str, specs: list[dict[str, Any]]) -> float:
        spec = work / f"floor-{uuid.uuid4().hex[:6]}.json"
        spec.write_text(json.dumps(specs))
        wall, _, code, tail = timed([sys.executable, __file__, "--floor", mode, str(spec), "--workers", str(args.workers),
                                     "--migrations", str(args.migrations), "--ns", fleet.run_id], cwd=work, env=env)
        if code != 0:
            raise SystemExit(f"floor {mode} exited {code}: {tail}")
        return wall

    started = time.perf_counter()
    for engine in ENGINES:
        n = len(fleet.names(engine, "orch"))
        if not n:
            continue
        print(f"{engine}: first catch-up of {n} targets ...", file=sys.stderr)
        row: dict[str, Any] = {"targets": n}
        pattern, floor = f"{engine}.*", fleet.targets(engine, "floor")
        # Interleaved, each on emptied targets: orchestrator, floor, orchestrator, floor, ...
        firsts: list[float] = []
        floors: list[float] = []
        for attempt in range(args.first_repeat):
            if attempt:
                fleet.reset(engine, "orch")
                fleet.reset(engine, "floor")
            firsts.append(run_orch("catch-up", "--target", pattern))
            floors.append(run_floor("first", floor))
        row["first"], row["first_floor"] = statistics.median(firsts), statistics.median(floors)
        row["first_runs"] = {"orchestrator": firsts, "floor": floors}
        row["noop"], row["status"], row["noop_floor"] = interleaved(args.repeat, (
            lambda p=pattern: run_orch("catch-up", "--target", p), lambda p=pattern: run_orch("status", "--target", p),
            lambda f=floor: run_floor("noop", f)))
        if peers and engine != "redis":
            row.update(measure_peers(engine, fleet, peers, work, args))
        rows[engine] = row
    print("whole fleet: no-op catch-up and status ...", file=sys.stderr)
    everything = [t for e in ENGINES for t in fleet.targets(e, "floor")]
    whole: dict[str, Any] = {"targets": sum(r["targets"] for r in rows.values())}
    whole["noop"], whole["status"], whole["noop_floor"] = interleaved(args.repeat, (
        lambda: run_orch("catch-up"), lambda: run_orch("status"), lambda: run_floor("noop", everything)))
    whole["rss_mb"] = max(rss_by["catch-up"], rss_by["status"])
    whole["first"] = sum(r["first"] for r in rows.values())
    whole["first_floor"] = sum(r["first_floor"] for r in rows.values())
    rows["fleet"] = whole
    startup = median_of(5, lambda: timed([*orch, "--version"], env=env)[0])
    results["startup_s"] = startup
    results["peak_rss_mb"] = peak
    results["total_s"] = time.perf_counter() - started
    return rows


def measure_far(args: argparse.Namespace, fleet: Fleet, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """No-op catch-up and status over server targets behind the latency proxy, default settings, against the floor."""
    orch = [sys.executable, "-m", "orchestrator", "-q"]
    counts = fleet.sizes["far"]
    direct = fleet.config(None, "far", file="config-far-direct.json")
    print(f"far: first catch-up of {sum(counts.values())} server targets (direct, not timed) ...", file=sys.stderr)
    _, _, code, tail = timed([*orch, "catch-up", str(direct)], cwd=work, env=env)
    if code != 0:
        raise SystemExit(f"orchestrator catch-up (far, direct) exited {code}: {tail}")
    proxy = subprocess.Popen([sys.executable, str(ROOT / "bench" / "latency_proxy.py"), "--delay-ms", str(args.far_delay_ms),
                              f"postgresql={PG['host']}:{PG['port']}", f"mysql={MY['host']}:{MY['port']}",
                              f"redis={RD['host']}:{RD['port']}"], stdout=subprocess.PIPE, text=True, env=env)
    assert proxy.stdout is not None
    try:
        ports = json.loads(proxy.stdout.readline())
        config = fleet.config(None, "far", ports=ports, file="config-far.json")
        workers = args.far_workers or default_workers(config, env)
        specs = [{**spec, "port": ports[spec["engine"]], "ledger": "migration"}
                 for engine in ("postgresql", "mysql", "redis") for spec in fleet.targets(engine, "far")]
        spec_path = work / "floor-far.json"
        spec_path.write_text(json.dumps(specs))
        out: dict[str, Any] = {"targets": len(specs), "counts": counts, "delay_ms": args.far_delay_ms, "workers": workers}

        def run_orch(command: str) -> float:
            wall, _, code, tail = timed([*orch, command, str(config)], cwd=work, env=env)
            if code != 0:
                raise SystemExit(f"orchestrator {command} (far) exited {code}: {tail}")
            return wall

        def run_floor() -> float:
            wall, _, code, tail = timed([sys.executable, __file__, "--floor", "noop", str(spec_path), "--workers", str(workers),
                                         "--migrations", str(args.migrations), "--ns", fleet.run_id], cwd=work, env=env)
            if code != 0:
                raise SystemExit(f"floor (far) exited {code}: {tail}")
            return wall

        print(f"far: no-op catch-up and status through the proxy ({args.far_delay_ms:g} ms each way, "
              f"floor on {workers} threads) ...", file=sys.stderr)
        def counts_since() -> dict[str, int]:
            proxy.send_signal(signal.SIGUSR1)
            return json.loads(proxy.stdout.readline())  # type: ignore[union-attr]

        # Interleaved, so that the machine's load drifts over all three alike.
        walls: dict[str, list[float]] = {"noop": [], "status": [], "floor": []}
        turns: dict[str, dict[str, int]] = {}
        counts_since()
        for _ in range(args.repeat):
            for key, fn in (("noop", lambda: run_orch("catch-up")), ("status", lambda: run_orch("status")), ("floor", run_floor)):
                walls[key].append(fn())
                turns[key] = counts_since()  # the same every run: keep the last
        out.update({key: statistics.median(v) for key, v in walls.items()})
        # Turns (direction changes) per connection, per engine: about two per round trip.
        out["turns"] = {key: {e: round(t.get(f"{e}.turns", 0) / max(1, t.get(f"{e}.connections", 0)), 1)
                              for e in ("postgresql", "mysql", "redis")} for key, t in turns.items()}
    finally:
        proxy.terminate()
        proxy.communicate(timeout=10)
    return out


def default_workers(config: Path, env: dict[str, str]) -> int:
    """How many targets orchestrator works on at once for this config when it sets no ``daemon.workers``."""
    # The far fleet is all servers: the server pool's size (orchestrator.concurrency), or daemon.workers before it.
    code = ("import sys; from orchestrator import config\n"
            "c = config.load(sys.argv[1])\n"
            "try:\n from orchestrator.concurrency import budgets\n"
            " print(max(n for n, _ in budgets(((d, d.split('.')[0]) for d in c.databases), None)))\n"
            "except ImportError:\n print(c.daemon.workers)")
    proc = subprocess.run([sys.executable, "-c", code, str(config)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"cannot read orchestrator's default workers: {proc.stderr.strip()[-300:]}")
    return int(proc.stdout.strip())


def measure_startup(args: argparse.Namespace, fleet: Fleet, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """A no-op ``up`` on one SQLite target, --version and --help, against a bare ``python3 -c pass``, interleaved."""
    orch = [sys.executable, "-m", "orchestrator"]
    config = fleet.config(None, "one", file="config-one.json")
    dbid = f"sqlite.{fleet.names('sqlite', 'one')[0][-6:]}"
    up = [*orch, "-q", "up", "all", str(config), dbid, "sql"]
    wall, _, code, tail = timed(up, cwd=work, env=env)  # the first apply; what follows is the no-op
    if code != 0:
        raise SystemExit(f"orchestrator up exited {code}: {tail}")
    print(f"start-up: {args.startup_runs} runs each ...", file=sys.stderr)
    commands = {"python": [sys.executable, "-c", "pass"], "up": up, "version": [*orch, "--version"], "help": [*orch, "--help"]}
    walls: dict[str, list[float]] = {k: [] for k in commands}
    rss: dict[str, float] = {}
    for _ in range(args.startup_runs):
        for key, argv in commands.items():
            wall, peak, code, tail = timed(argv, cwd=work, env=env)
            if code != 0:
                raise SystemExit(f"{' '.join(argv)} exited {code}: {tail}")
            walls[key].append(wall)
            rss[key] = max(rss.get(key, 0.0), peak)
    return {"median_s": {k: statistics.median(v) for k, v in walls.items()}, "rss_mb": rss}


def measure_peers(engine: str, fleet: Fleet, peers: tuple[Path, Path], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    dbmate, yoyo = peers
    out: dict[str, Any] = {}
    names = fleet.names(engine, "dbmate")
    base = [str(dbmate), "--migrations-dir", str(work / "dbmate"), "--no-dump-schema"]
    print(f"{engine}: dbmate loop over {len(names)} targets ...", file=sys.stderr)
    out["dbmate_n"] = len(names)
    out["dbmate_first"] = loop([[*base, "--url", dbmate_url(engine, fleet, n), "up"] for n in names]) / len(names)
    out["dbmate_noop"] = loop([[*base, "--url", dbmate_url(engine, fleet, n), "migrate"] for n in names]) / len(names)
    out["dbmate_status"] = loop([[*base, "--url", dbmate_url(engine, fleet, n), "status"] for n in names]) / len(names)
    names = fleet.names(engine, "yoyo")
    print(f"{engine}: yoyo loop over {len(names)} targets ...", file=sys.stderr)
    ybase = [str(yoyo)]
    out["yoyo_n"] = len(names)

    def apply(n: str) -> list[str]:
        return [*ybase, "apply", "--batch", "--no-config-file", "--database", yoyo_url(engine, fleet, n), str(work / "yoyo")]

    out["yoyo_first"] = loop([apply(n) for n in names]) / len(names)
    out["yoyo_noop"] = loop([apply(n) for n in names]) / len(names)
    out["yoyo_status"] = loop([[*ybase, "list", "--no-config-file", "--database", yoyo_url(engine, fleet, n), str(work / "yoyo")]
                               for n in names]) / len(names)
    return out


# -- the report ----------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    rows = results.get("rows") or {}
    if rows:
        lines += [
            f"fleet: {', '.join(f'{v} {k}' for k, v in results['targets'].items())}; {results['migrations']} migrations per set; "
            f"{results['workers']} workers; {results['cpus']} CPUs; Python {results['python']}",
            "",
            "| engine (targets) | first catch-up | floor | ratio | no-op catch-up | floor | ratio | status | ratio to floor |"
            " dbmate no-op / target | yoyo no-op / target | orchestrator no-op / target | vs dbmate |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for engine, r in rows.items():
        n = r["targets"]
        per = r["noop"] / n
        dbmate = r.get("dbmate_noop")
        yoyo = r.get("yoyo_noop")
        lines.append(
            f"| {engine} ({n}) | {r['first']:.2f} s | {r['first_floor']:.2f} s | {r['first'] / r['first_floor']:.2f}x "
            f"| {r['noop']:.2f} s | {r['noop_floor']:.2f} s | {r['noop'] / r['noop_floor']:.2f}x "
            f"| {r['status']:.2f} s | {r['status'] / r['noop_floor']:.2f}x "
            f"| {f'{dbmate * 1000:.1f} ms' if dbmate else '-'} | {f'{yoyo * 1000:.1f} ms' if yoyo else '-'} "
            f"| {per * 1000:.2f} ms | {f'{dbmate / per:.0f}x faster' if dbmate else '-'} |")
    peers = [(e, r) for e, r in rows.items() if "dbmate_first" in r]
    if peers:
        lines += ["", "Peers, per target (one process per target, in a loop; first apply / no-op / status):", "",
                  "| engine | dbmate (targets) | yoyo (targets) | orchestrator first / target |", "|---|---|---|---|"]
        for engine, r in peers:
            lines.append(
                f"| {engine} | {r['dbmate_first'] * 1000:.1f} / {r['dbmate_noop'] * 1000:.1f} / {r['dbmate_status'] * 1000:.1f} ms "
                f"({r['dbmate_n']}) | {r['yoyo_first'] * 1000:.0f} / {r['yoyo_noop'] * 1000:.0f} / {r['yoyo_status'] * 1000:.0f} ms "
                f"({r['yoyo_n']}) | {r['first'] / r['targets'] * 1000:.1f} ms |")
    far = results.get("far")
    if far:
        counts = ", ".join(f"{v} {k}" for k, v in far["counts"].items())
        lines += ["", f"Far targets: {far['targets']} server targets ({counts}) behind a proxy adding {far['delay_ms']:g} ms "
                  f"each way; orchestrator with default settings, the floor on the same {far['workers']} threads:", "",
                  "| pass | orchestrator | floor | ratio |", "|---|---|---|---|",
                  f"| no-op catch-up | {far['noop']:.2f} s | {far['floor']:.2f} s | {far['noop'] / far['floor']:.2f}x |",
                  f"| status | {far['status']:.2f} s | {far['floor']:.2f} s | {far['status'] / far['floor']:.2f}x |"]
        if far.get("turns"):
            lines += ["", "Turns per connection seen by the proxy (a change of direction; about two per round trip):", "",
                      "| pass | PostgreSQL | MariaDB | Redis |", "|---|---|---|---|"]
            for key, label in (("noop", "orchestrator no-op catch-up"), ("status", "orchestrator status"), ("floor", "floor")):
                t = far["turns"][key]
                lines.append(f"| {label} | {t['postgresql']} | {t['mysql']} | {t['redis']} |")
    start = results.get("startup")
    if start:
        m = start["median_s"]
        lines += ["", f"Start-up (median of {results.get('startup_runs', '?')} interleaved runs):", "",
                  "| command | wall | vs python3 -c pass | peak RSS |", "|---|---|---|---|"]
        for key, label in (("python", "python3 -c pass"), ("up", "orchestrator up all CONFIG DBID SET (one SQLite target, no-op)"),
                           ("version", "orchestrator --version"), ("help", "orchestrator --help")):
            lines.append(f"| {label} | {m[key] * 1000:.0f} ms | {m[key] / m['python']:.2f}x | {start['rss_mb'][key]:.0f} MB |")
    lines += ["", *bars(results)]
    if rows:
        lines += ["", f"orchestrator peak RSS (largest of all its runs): {results['peak_rss_mb']:.0f} MB; "
                  f"CLI start-up (--version): {results['startup_s'] * 1000:.0f} ms; fleet section took {results['total_s']:.0f} s"]
    return "\n".join(lines)


def bars(results: dict[str, Any]) -> list[str]:
    """The goals this benchmark holds orchestrator to (issue 15), each with its measured value."""
    rows = results.get("rows") or {}
    out = ["| goal | measured | |", "|---|---|---|"]

    def bar(name: str, value: str, ok: bool) -> None:
        out.append(f"| {name} | {value} | {'met' if ok else 'MISSED'} |")

    start = results.get("startup")
    if start:
        m = start["median_s"]
        bar("no-op `up` on one SQLite target <= 3x `python3 -c pass`", f"{m['up'] * 1000:.0f} ms vs {m['python'] * 1000:.0f} ms = "
            f"{m['up'] / m['python']:.2f}x", m["up"] <= 3 * m["python"])
    for engine, r in rows.items():
        if engine != "fleet":
            bar(f"first catch-up <= 1.2x floor: {engine}", f"{r['first'] / r['first_floor']:.2f}x", r["first"] <= 1.2 * r["first_floor"])
    fleet = rows.get("fleet")
    if fleet:
        for key, label in (("noop", "no-op catch-up"), ("status", "status")):
            bar(f"{label} <= 1.3x floor (whole fleet)", f"{fleet[key] / fleet['noop_floor']:.2f}x", fleet[key] <= 1.3 * fleet["noop_floor"])
            # The dbmate loop over the whole fleet, from its per-target time on each engine; it has no Redis
            # driver, so its loop covers fewer targets than the orchestrator run it is compared with.
            peers = [(r["targets"], r[f"dbmate_{key}"]) for e, r in rows.items() if e != "fleet" and f"dbmate_{key}" in r]
            if peers:
                loop_s = sum(count * per for count, per in peers)
                bar(f"{label} of the whole fleet >= 12x faster than the dbmate loop",
                    f"{loop_s:.2f} s ({sum(c for c, _ in peers)} SQL targets) vs {fleet[key]:.2f} s = {loop_s / fleet[key]:.1f}x",
                    loop_s >= 12 * fleet[key])
    far = results.get("far")
    if far:
        for key, label in (("noop", "no-op catch-up"), ("status", "status")):
            bar(f"far targets: {label} <= 1.5x floor (default settings)", f"{far[key] / far['floor']:.2f}x", far[key] <= 1.5 * far["floor"])
    if fleet:
        bar("peak memory of one process < 200 MB", f"{results['peak_rss_mb']:.0f} MB", results["peak_rss_mb"] < 200)
        if start:
            per = (fleet["rss_mb"] - start["rss_mb"]["up"]) * 1024 * 1024 / fleet["targets"]
            out.append(f"| memory per target (whole-fleet run minus a one-target `up`, over {fleet['targets']} targets) | "
                       f"{per / 1024:.1f} KB | |")
    return out


if __name__ == "__main__":
    sys.exit(main())
