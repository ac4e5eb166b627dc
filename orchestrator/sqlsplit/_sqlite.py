"""SQLite statements as the ``sqlite3`` shell reads a file: SQLite's own
``sqlite3_complete`` decides where a statement ends."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from orchestrator.sqlsplit._lexical import lazy

# SQLite ends an unterminated /* or -- comment at the end of input without error.
_SQ_COMMENT = r"--[^\n]*+|/\*(?:[^*]++|\*(?!/))*+(?:\*/|\Z)"
_SQ_RUN = lazy(
    r"""(?:[^'"`\[;\-/]++|'[^']*+'|"[^"]*+"|`[^`]*+`|\[[^\]]*+\]|"""
    + _SQ_COMMENT
    + r"|-|/(?!\*))*+"
)
_SQ_LEAD = lazy(r"(?:\s++|" + _SQ_COMMENT + ")*+")
# sqlite3_complete() is a state machine; a ';' that does not complete a statement
# leaves it in the "';' inside a trigger body" state, whatever came before. This
# prefix recreates that state, so each check reads only the text since the last ';'
# and a huge unterminated trigger cannot make splitting quadratic.
_SQ_IN_TRIGGER = "CREATE TRIGGER;"


def scan(text: str) -> Iterator[tuple[int, int]]:
    lead, run = _SQ_LEAD(), _SQ_RUN()
    n = len(text)
    pos = 0
    complete = sqlite3.complete_statement
    while True:
        m = lead.match(text, pos)
        first = pos if m is None else m.end()
        if first >= n:
            return
        pos = checked = first
        prefix = ""
        while True:
            m = run.match(text, pos)
            pos = pos if m is None else m.end()
            if pos >= n:
                yield first, n
                return
            if text[pos] != ";":
                pos = n  # unterminated string or identifier
                continue
            pos += 1
            if complete(prefix + text[checked:pos]):
                yield first, pos - 1
                break
            prefix = _SQ_IN_TRIGGER
            checked = pos
