"""orchestrator: keeps the schemas of a fleet of databases current.

Forward-only migration sets (folders of SQL, Python and Redis command files) are
applied in name order to many targets (PostgreSQL, MySQL/MariaDB, SQLite, Redis),
and each target records what it has applied in its own ledger. The same runner
backs the CLI (``orchestrator up``), fleet-wide catch-up and the daemon.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
