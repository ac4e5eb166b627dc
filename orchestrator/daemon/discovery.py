"""The daemon's inventory: sources re-read every ``migrations.inventory_refresh`` and on SIGHUP.

:class:`Discovery` keeps the config as loaded (static targets) and one
:class:`~orchestrator.inventory.Inventory`, whose last good lists outlive a
failing source. Each refresh yields the config over what the sources list now;
the service applies it (new targets are caught up, vanished ones shown as
``removed``). Problems are logged once when they appear, a source's failure once
when it goes down and once when it is back, so a refresh every few seconds does
not flood the log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.daemon.common import iso
from orchestrator.inventory import inventory_of, resolved

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.inventory import Inventory, Removed, Resolution

__all__ = ["Discovery"]

log = logging.getLogger("daemon")


class Discovery:
    """Static config + inventory -> the config runs use, refreshed on demand."""

    def __init__(self, static: Config):
        self.static = static
        self.inventory: Inventory | None = inventory_of(static)
        self.resolution: Resolution | None = None
        self._logged: set[str] = set()
        self._down: set[str] = set()

    @property
    def active(self) -> bool:
        return self.inventory is not None

    @property
    def interval(self) -> float:
        return self.static.inventory_refresh

    def resolve(self) -> Config:
        """Read every source now; the config over static plus discovered targets (static alone without inventory)."""
        if self.inventory is None:
            self.resolution = None
            return self.static
        config, resolution = resolved(self.static, self.inventory)
        self._log(resolution)
        self.resolution = resolution
        return config

    def reload(self, static: Config) -> Config:
        """A new config.json: its sources (a bad declaration raises ConfigError), keeping same-named sources' last lists."""
        inventory = inventory_of(static)
        if inventory is not None and self.inventory is not None:
            inventory.adopt(self.inventory)
        self.static, self.inventory = static, inventory
        return self.resolve()

    def removed(self) -> dict[str, tuple[str, str]]:
        """Targets gone from a source that answered: dbid -> (source, since as ISO UTC)."""
        gone: dict[str, Removed] = self.resolution.removed if self.resolution is not None else {}
        return {dbid: (r.source, iso(datetime.fromtimestamp(r.since, UTC)) or "") for dbid, r in gone.items()}

    def sources(self) -> list[dict[str, Any]]:
        """The sources as /status shows them."""
        def when(ts: float | None) -> str | None:
            return iso(datetime.fromtimestamp(ts, UTC)) if ts is not None else None

        if self.resolution is None:
            return []
        return [{"name": s.name, "kind": s.kind, "up": s.up, "targets": s.targets, "checked_at": when(s.checked_at),
                 "last_ok_at": when(s.last_ok_at), "down_since": when(s.down_since), "error": s.error}
                for s in self.resolution.sources]

    def problems(self) -> list[str]:
        return list(self.resolution.problems) if self.resolution is not None else []

    def _log(self, resolution: Resolution) -> None:
        for line in resolution.problems:
            if line not in self._logged:
                log.warning("%s", line)
        self._logged = set(resolution.problems)
        for source in resolution.sources:
            if not source.up and source.name not in self._down:
                log.error("%s; keeping its last list of %d targets", source.error, source.targets)
                self._down.add(source.name)
            elif source.up and source.name in self._down:
                log.info("inventory %s: answers again (%d targets)", source.name, source.targets)
                self._down.discard(source.name)
