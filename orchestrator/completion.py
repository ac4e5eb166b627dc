"""Shell completion helpers for argcomplete: config files, set names, dbids and versions from the config.

Each completer receives what the shell has typed so far (``prefix``) and the
arguments argcomplete parsed before it (``parsed_args``); the config named there
is loaded quietly (a broken or missing config completes nothing rather than
printing into the shell). Enable with::

    eval "$(register-python-argcomplete orchestrator)"      # bash, or zsh with bashcompinit
"""

from __future__ import annotations

import logging
import re
from argparse import Namespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config import Config

__all__ = ["config_files", "dbids", "set_names", "up_arguments", "versions"]

_COUNT = re.compile(r"all|[0-9]+")


def _load(path: str | None) -> Config | None:
    if not path:
        return None
    from orchestrator.config import load

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # completion output goes to the shell: no log line may slip in
    try:
        return load(path)
    except Exception:  # any broken config: complete nothing
        return None
    finally:
        logging.disable(previous)


def config_files(prefix: str, **_: Any) -> list[str]:
    """``*.json`` files and folders (to descend) matching what was typed."""
    from argcomplete.completers import FilesCompleter

    return list(FilesCompleter(allowednames=("json",), directories=True)(prefix))


def set_names(prefix: str, parsed_args: Namespace | None = None, **_: Any) -> list[str]:
    config = _load(getattr(parsed_args, "config", None))
    return [name for name in (config.sets if config else ()) if name.startswith(prefix)]


def dbids(prefix: str, parsed_args: Namespace | None = None, **_: Any) -> list[str]:
    config = _load(getattr(parsed_args, "config", None))
    return [dbid for dbid in (config.databases if config else ()) if dbid.startswith(prefix)]


def versions(prefix: str, parsed_args: Namespace | None = None, **_: Any) -> list[str]:
    """Versions of the set named in ``parsed_args.set`` (file names without extension)."""
    config = _load(getattr(parsed_args, "config", None))
    name = getattr(parsed_args, "set", None)
    if config is None or name not in config.sets:
        return []
    folder = config.sets[name].folder
    try:
        names = {p.name.split(".", 1)[0] for p in folder.iterdir() if not p.name.startswith(".")}
    except OSError:
        return []
    return sorted(v for v in names if v.startswith(prefix))


def up_arguments(prefix: str, parsed_args: Namespace | None = None, **_: Any) -> list[str]:
    """``up [all|N] CONFIG DBID SET``: what goes in the slot being typed, from the words before it."""
    words = list(getattr(parsed_args, "args", None) or [])
    counted = bool(words) and _COUNT.fullmatch(words[0]) is not None
    if counted:
        words = words[1:]
    slot = len(words)
    if slot == 0:
        return (["all"] if not counted and prefix and "all".startswith(prefix) else []) + config_files(prefix)
    context = Namespace(config=words[0])
    if slot == 1:
        return dbids(prefix, context)
    if slot == 2:
        return set_names(prefix, context)
    return []
