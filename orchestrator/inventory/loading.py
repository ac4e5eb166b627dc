"""A config with its inventory resolved: what every command works on.

:func:`load` reads config.json, reads every inventory source once and returns the
config over static plus discovered targets (each set bound again by its dbid
globs) with the :class:`Resolution` that says where each target came from and
what went wrong. The daemon keeps one :class:`Inventory` per config
(:func:`inventory_of`) and calls :func:`resolved` on each refresh instead.
"""

from __future__ import annotations

import logging
import os

from orchestrator.config import Config
from orchestrator.config import load as load_config
from orchestrator.inventory.resolve import Inventory, Resolution
from orchestrator.inventory.sources import parse_sources

__all__ = ["inventory_of", "load", "resolved"]

log = logging.getLogger("orchestrator")


def inventory_of(config: Config, name: str | None = None) -> Inventory | None:
    """The config's sources, validated (one ConfigError line on a bad declaration); None without an inventory."""
    if not config.inventory:
        return None
    return Inventory(parse_sources(config.inventory, name or str(config.path)), config.folder)


def resolved(config: Config, inventory: Inventory) -> tuple[Config, Resolution]:
    """``config`` (as loaded, static targets only) over what ``inventory`` lists now."""
    resolution = inventory.resolve(config.databases)
    return config.with_databases(resolution.databases, resolution.origin), resolution


def load(path: str | os.PathLike[str], report: bool = False) -> tuple[Config, Resolution | None]:
    """Load config.json and resolve its inventory once (the command line's way).

    ``report`` logs each bad row (warning) and each failing source (error) in one line.
    """
    config = load_config(path)
    inventory = inventory_of(config, str(path))
    if inventory is None:
        return config, None
    config, resolution = resolved(config, inventory)
    if report:
        for line in resolution.problems:
            log.warning("%s", line)
        for source in resolution.failed:
            log.error("%s", source.error)
    return config, resolution
