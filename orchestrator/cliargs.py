"""Arguments several commands share (CONFIG, DBID, SET, VERSION, the fleet filters) with help and completion,
options read before parsing, and config-schema, which needs no config."""

from __future__ import annotations

import argparse

__all__ = ["fleet_filters", "option_value", "positional", "print_json_schema"]

_HELP = {
    "config": "path of config.json",
    "dbid": "target id as <driver>.<host_id>, e.g. postgresql.main",
    "set": "migration set: its name in the config, or its folder",
    "version": "migration version: the file name without its extension",
}


def positional(p: argparse.ArgumentParser, *names: str) -> None:
    """CONFIG, DBID, SET and VERSION arguments with their help and shell completion from the config."""
    from orchestrator import completion

    completers = {"config": completion.config_files, "dbid": completion.dbids, "set": completion.set_names,
                  "version": completion.versions}
    for name in names:
        action = p.add_argument(name, metavar=name.upper(), help=_HELP[name])
        action.completer = completers[name]  # type: ignore[attr-defined]  # read by argcomplete


def fleet_filters(p: argparse.ArgumentParser) -> None:
    from orchestrator import completion

    positional(p, "config")
    action = p.add_argument("--set", dest="set_name", default=None, metavar="SET", help="only this set")
    action.completer = completion.set_names  # type: ignore[attr-defined]
    action = p.add_argument("--target", default=None, metavar="PATTERN", help="only targets whose dbid matches this glob, e.g. 'postgresql.*'")
    action.completer = completion.dbids  # type: ignore[attr-defined]


def option_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in argv (the last one wins), read before parsing."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2]
    return value


def print_json_schema() -> int:
    """``orchestrator config-schema``: the JSON Schema of config.json on stdout."""
    import json

    from orchestrator.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
