"""Tunable defaults, one place, each with its unit."""

from __future__ import annotations

LOCK_WAIT = 10.0
"""Seconds a runner polls a held (target, set) lock before reporting it ``locked``."""

LOCK_POLL = 0.1
"""Seconds between two try-lock attempts while waiting."""

REDIS_LOCK_TTL_MS = 30_000
"""Milliseconds a Redis lock lives without renewal; a crashed holder's lock expires after this."""

LEDGER_TABLE = "migration"
"""Default name of the ledger table in SQL targets (the C tool's name)."""

SETS_DIRECTORY = "sets"
"""Default folder holding the migration sets, relative to config.json."""

WORKERS = 8
"""Default number of bindings a fleet run or the daemon works on at once (a command-line run: of SQLite files)."""

SERVER_WORKERS = 32
"""Default number of server targets (PostgreSQL, MySQL, Redis) a command-line run works on at once, beside the files."""

WATCH_INTERVAL = 5.0
"""Seconds between two scans of the set folders for new or changed files."""

HTTP_HOST = "127.0.0.1"
"""Default address of the daemon's status server."""

HTTP_PORT = 8787
"""Default port of the daemon's status server."""

CONNECT_TIMEOUT = {"postgresql": 3, "mysql": 5, "redis": 3}
"""Seconds to wait for a server connection when the config gives no ``connection_timeout``."""

KEEPALIVE = 60
"""Seconds a silent dead TCP link to PostgreSQL or MySQL is kept before it is dropped (keepalive probes); 0: off."""

TCP_USER_TIMEOUT = 60
"""Seconds data sent to PostgreSQL or MySQL may stay unacknowledged before the link counts as dead; 0: the system's."""

SQLITE_BUSY_TIMEOUT = 5000
"""Milliseconds SQLite waits for another writer before reporting the target ``locked``."""

VERSION_MAX_LENGTH = 180
"""Longest version (file name without extension) the ledger's ``version`` column holds."""

RETRY_MIN = 30.0
"""Seconds the daemon waits before retrying a failed or unreachable (set, target); doubles on each failure."""

RETRY_MAX = 3600.0
"""Seconds: the longest wait between two retries of a failing (set, target)."""

MISFIRE_GRACE = 60.0
"""Seconds a scheduled run may start late (busy workers, suspended host) before it counts as missed."""

PAGE_REFRESH = 5
"""Seconds between two reloads of the daemon's fleet page."""

CLUSTER_LEASE = 30.0
"""Cluster mode: seconds after which a silent replica's claims go to another replica."""

INVENTORY_REFRESH = 60.0
"""Seconds between two reads of the inventory sources by the daemon (``migrations.inventory_refresh``)."""

LOCK_TIMEOUT = 2.0
"""Seconds one attempt of a migration may wait for a lock (migrations.lock_timeout)."""
LOCK_RETRIES = 10
"""Attempts after the first that a lock timeout may retry (migrations.lock_retries)."""
NOTIFY_FLUSH = 5.0
"""Seconds a CLI run waits at exit for webhook deliveries still queued, then gives up in one line."""
