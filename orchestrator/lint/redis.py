"""Redis rules for ``.redis`` command files and Python migrations run on Redis targets.

``KEYS`` and ``FLUSHALL``/``FLUSHDB`` are found in command files by their first word,
and in Python by the client calls that send them (``.keys(pattern)``, ``.flushall()``,
``execute_command("KEYS", ...)``). A ``scan``/``scan_iter`` call without ``match`` walks
the whole keyspace. Python is read with :mod:`ast`, so a command built at run time
is not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from orchestrator.lint.rules import Hit
from orchestrator.sets import split_redis_args

__all__ = ["check_commands", "check_python"]

_BY_COMMAND = {"KEYS": "redis-keys", "FLUSHALL": "redis-flush", "FLUSHDB": "redis-flush"}
_SCANS = {"scan": 1, "scan_iter": 0}  # keyspace scans, and the position of their match argument


def check_commands(text: str) -> Iterator[Hit]:
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            argv = split_redis_args(stripped)
        except ValueError:
            continue  # validate names the quoting fault
        if argv:
            name = argv[0] if isinstance(argv[0], str) else argv[0].decode("latin-1")
            if name.upper() in _BY_COMMAND:
                yield Hit(_BY_COMMAND[name.upper()], number, stripped)


def check_python(text: str) -> Iterator[Hit]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return  # validate reports it with its line
    lines = text.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        method = node.func.attr
        source = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else method
        rule_id = None
        if method == "keys" and (node.args or node.keywords):  # dict.keys() takes no argument
            rule_id = "redis-keys"
        elif method in ("flushall", "flushdb"):
            rule_id = "redis-flush"
        elif method in ("execute_command", "execute") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and node.args[0].value.split()[:1]:
            rule_id = _BY_COMMAND.get(node.args[0].value.split()[0].upper())
        elif method in _SCANS and not any(k.arg == "match" for k in node.keywords) and len(node.args) <= _SCANS[method]:
            rule_id = "redis-scan-unbounded"
        if rule_id:
            yield Hit(rule_id, node.lineno, source)
