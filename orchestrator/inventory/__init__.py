"""Targets discovered at run time: config.json's ``inventory`` sources.

Nobody types 3,000 tenant databases into ``databases``: a source lists them (a
catalog query, the databases or schemas of a server, SQLite files, a file, a
command, a URL) and every row becomes an entry of the ``databases`` shape,
bound to sets by the same dbid globs. :func:`parse_sources` validates the
declarations; :class:`Inventory` resolves them, keeping each source's last good
list across refreshes.
"""

from __future__ import annotations

from orchestrator.inventory.fetch import SourceError
from orchestrator.inventory.loading import inventory_of, load, resolved
from orchestrator.inventory.resolve import REMOVED_KEEP, STATIC, Inventory, Removed, Resolution, SourceStatus
from orchestrator.inventory.sources import KINDS, Source, parse_sources

__all__ = ["KINDS", "REMOVED_KEEP", "STATIC", "Inventory", "Removed", "Resolution", "Source", "SourceError",
           "SourceStatus", "inventory_of", "load", "parse_sources", "resolved"]
