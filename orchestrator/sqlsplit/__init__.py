"""Split a migration SQL file into statements the way each engine's own client does.

Real scripts must run unchanged, so each dialect follows its command-line client:
``psql`` for PostgreSQL (dollar quotes, E'' strings, nested comments, a ``;``
inside parentheses or a ``BEGIN ATOMIC`` body does not end a statement), the
``mariadb``/``mysql`` client for MySQL (``#`` comments, ``DELIMITER`` lines,
plus ``CREATE PROCEDURE ... BEGIN ... END;`` bodies as the server's bootstrap
mode reads them) and the ``sqlite3`` shell for SQLite (SQLite's own
``sqlite3_complete`` decides where a statement ends). :func:`split` is a
generator of :class:`Statement` slices of the input: it never copies the whole
file, uses compiled regular expressions to jump between the characters that
matter, and never raises on malformed SQL; an unterminated string or comment
makes the rest of the file the last statement, for the server to report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Statement", "line_of", "mysql_parts", "pg_dollar_quote", "split"]


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a script, as sent to the server."""

    number: int
    """1-based index among the statements of the file."""
    line: int
    """1-based file line of the statement's first token (after leading blanks and comments)."""
    text: str
    """Statement text without its delimiter, leading blanks/comments and trailing blanks.

    A psql meta-command (PostgreSQL only) is a statement whose text starts with a
    backslash and runs to the end of its line, e.g. ``\\connect db``."""
    data: str | None = None
    """PostgreSQL ``COPY ... FROM STDIN``: the inline rows that follow it, up to (not
    including) the ``\\.`` line, as psql sends them; None for every other statement."""
    data_line: int = 0
    """File line of the first row of ``data``."""


def split(text: str, dialect: str) -> Iterator[Statement]:
    """Yield the statements of *text* for *dialect* (``postgresql``, ``mysql`` or ``sqlite``).

    Blank and comment-only pieces are skipped; a last statement without a
    delimiter is yielded. Raises :class:`ValueError` for an unknown dialect, at
    call time rather than on the first ``next()``.
    """
    if dialect not in _DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of {', '.join(_DIALECTS)}")
    return _statements(text, _scanner(dialect)(text))


def line_of(statement: Statement, offset: int) -> int:
    """File line of the 0-based character *offset* into ``statement.text`` (clamped to the text)."""
    offset = min(max(offset, 0), len(statement.text))
    return statement.line + statement.text.count("\n", 0, offset)


def _statements(text: str, regions: Iterator[tuple[int, ...]]) -> Iterator[Statement]:
    # Scanners yield (first token, delimiter) offsets; lines are counted from the
    # previous statement only, so the whole file is counted once.
    # A region is (first, end), or (first, end, data start, data end) for a COPY FROM STDIN.
    number = 0
    line = 1
    counted = 0
    for region in regions:
        first, end = region[0], region[1]
        while end > first and text[end - 1].isspace():
            end -= 1
        if end <= first:
            continue
        line += text.count("\n", counted, first)
        counted = first
        number += 1
        if len(region) == 2:
            yield Statement(number, line, text[first:end])
        else:
            start, stop = region[2], region[3]
            yield Statement(number, line, text[first:end], text[start:stop], line + text.count("\n", first, start))


def mysql_parts(statement: Statement) -> list[Statement]:
    """The ``;``-separated statements inside one MySQL chunk, numbered from 1, with file lines.

    A chunk ended by a custom delimiter (``DROP PROCEDURE IF EXISTS p; CREATE
    PROCEDURE p() BEGIN ... END$$``) reaches the server whole, with multi-statements
    on, as the ``mariadb`` client sends it; the server then runs its parts one by one.
    This reads the parts as a ``;`` script would be read (compound bodies stay
    whole), so that a failing part can be named by its own line.
    """
    return [
        Statement(part.number, statement.line + part.line - 1, part.text)
        for part in _statements(statement.text, _scanner("mysql")(statement.text))
    ]


_DIALECTS = ("mysql", "postgresql", "sqlite")


def pg_dollar_quote() -> re.Pattern[str]:
    """PostgreSQL's dollar quote (``$$`` or ``$tag$``) as the splitter reads it, compiled on first use."""
    from orchestrator.sqlsplit import _postgresql

    return _postgresql.DOLLAR_QUOTE()


def _scanner(dialect: str) -> Callable[[str], Iterator[tuple[int, ...]]]:
    # Each dialect's scanner is loaded on first use, so importing this module stays
    # cheap (a SQLite-only run never loads the PostgreSQL patterns, nor the reverse).
    if dialect == "postgresql":
        from orchestrator.sqlsplit import _postgresql

        return _postgresql.scan
    if dialect == "mysql":
        from orchestrator.sqlsplit import _mysql

        return _mysql.scan
    from orchestrator.sqlsplit import _sqlite

    return _sqlite.scan
