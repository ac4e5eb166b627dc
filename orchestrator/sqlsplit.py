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

import functools
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Statement", "line_of", "mysql_parts", "split"]


def _lazy(pattern: str, flags: int = 0) -> Callable[[], re.Pattern[str]]:
    """A module-level pattern compiled on its first call, then the same object every call.

    The PostgreSQL patterns alone take ~150 ms to compile; a run that splits only
    SQLite (or nothing) should not pay that at import. Scanners call each one once
    per file and keep the result in a local. The lead and run patterns end in ``*+``
    and always match (possibly empty); their ``m is None`` branches are never taken.
    """
    return functools.cache(lambda: re.compile(pattern, flags))


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
    try:
        scan = _SCANNERS[dialect]
    except KeyError:
        raise ValueError(
            f"unknown SQL dialect {dialect!r}; expected one of {', '.join(sorted(_SCANNERS))}"
        ) from None
    return _statements(text, scan(text))


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


# Characters that continue an identifier in PostgreSQL and MySQL (any non-ASCII
# character is a letter to both lexers), and those that may start one.
_IDCH = "0-9A-Za-z_$\x80-\U0010ffff"
_IDSTART = "A-Za-z_\x80-\U0010ffff"
_BLOCK_COMMENT = r"/\*(?:[^*]++|\*(?!/))*+\*/"


# --- PostgreSQL (psql) -------------------------------------------------------

_PG_TOKENS = (
    # '...' ('' is a quote), unless a lone E prefixes it
    rf"(?:(?<![eE])|(?<=[{_IDCH}][eE]))'[^']*+'"
    # E'...' also takes backslash escapes ('' still doubles, and the escapes go on after it)
    rf"|(?<=[eE])'(?:[^'\\]++|\\[\s\S]|'')*+'"
    r'|"[^"]*+"'
    r"|--[^\n]*+"
    # a comment holding no nested /*; the others go to _pg_comment_end
    r"|/\*(?:[^*/]++|\*(?!/)|/(?!\*))*+\*/"
    r"|-|/(?!\*)"
    # a $ inside an identifier or before a digit cannot open a dollar quote
    rf"|(?<=[{_IDCH}])\$|\$(?![{_IDSTART}$])"
)


def _pg_parens(levels: int) -> str:
    # Balanced parentheses, a few levels deep, inside one regex match: psql does
    # not split at a ';' inside them, and INSERT rows are full of them, so
    # returning to Python at every parenthesis would dominate the run time.
    # Deeper nesting (or a dollar quote inside) stops the match and is counted in Python.
    inner = r"""[^'"$\-/()\\]++|""" + _PG_TOKENS
    pattern = r"\((?:" + inner + r")*+\)"
    for _ in range(levels):
        pattern = r"\((?:" + inner + "|" + pattern + r")*+\)"
    return pattern


_PG_PARENS = _pg_parens(3)
_PG_RUN = _lazy(r"""(?:[^'"$;\-/()\\]++|""" + _PG_TOKENS + "|" + _PG_PARENS + ")*+")
_PG_RUN_IN_PARENS = _lazy(r"""(?:[^'"$\-/()\\]++|""" + _PG_TOKENS + "|" + _PG_PARENS + ")*+")
# In CREATE FUNCTION/PROCEDURE, also stop at BEGIN, CASE and END.
_PG_RUN_ROUTINE = _lazy(
    rf"""(?:[^'"$;\-/()\\{_IDSTART}]++"""
    rf"|(?!(?i:begin|case|end)(?![{_IDCH}]))[{_IDSTART}][{_IDCH}]*+"
    "|" + _PG_TOKENS + "|" + _PG_PARENS + ")*+"
)
_PG_WORD = _lazy(rf"[{_IDSTART}][{_IDCH}]*+")
_PG_DOLLAR = _lazy(rf"\$(?:[{_IDSTART}][0-9A-Za-z_\x80-\U0010ffff]*+)?\$")
_PG_LEAD = _lazy(r"(?:\s++|--[^\n]*+|/\*(?:[^*/]++|\*(?!/)|/(?!\*))*+\*/)*+")
_PG_NESTED = _lazy(r"/\*|\*/")
_PG_SEP = r"(?:\s++|--[^\n]*+|" + _BLOCK_COMMENT + ")+"
_PG_COPY = _lazy(rf"copy(?![{_IDCH}])", re.IGNORECASE)
# FROM STDIN outside quotes and comments (those are blanked out first)
_PG_FROM_STDIN = _lazy(rf"(?<![{_IDCH}])from\s+stdin(?![{_IDCH}])", re.IGNORECASE)
_PG_QUOTED = _lazy(_PG_TOKENS)
# psql's end-of-data line; copy.c accepts "\\.\n" and "\\.\r\n"
_PG_COPY_END = _lazy(r"^\\\.\r?(?:\n|\Z)", re.MULTILINE)
_PG_META_SKIP = _lazy(r"\\(?:un)?restrict(?![^\s\\])")
_PG_ROUTINE = _lazy(
    rf"create{_PG_SEP}(?:or{_PG_SEP}replace{_PG_SEP})?(?:function|procedure)(?![{_IDCH}])",
    re.IGNORECASE,
)


def _pg_comment_end(text: str, pos: int) -> int | None:
    """End of the (possibly nested) block comment opening at *pos*, or None if unterminated."""
    depth = 0
    for m in _PG_NESTED().finditer(text, pos):
        if m.group() == "/*":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return m.end()
    return None


def _pg_from_stdin(statement: str) -> bool:
    """True for a COPY statement that reads its rows from the client (``FROM STDIN``)."""
    blanked = _PG_QUOTED().sub(lambda m: " " if len(m.group()) > 1 else m.group(), statement)
    return _PG_FROM_STDIN().search(blanked) is not None


def _pg_skip_lead(text: str, pos: int) -> int:
    lead = _PG_LEAD()
    while True:
        m = lead.match(text, pos)
        pos = pos if m is None else m.end()
        if not text.startswith("/*", pos):
            return pos
        end = _pg_comment_end(text, pos)
        if end is None:
            return pos  # unterminated: a statement for the server to reject
        pos = end


def _pg_line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _pg_copy_in(text: str, first: int, end: int, n: int) -> tuple[list[tuple[int, ...]], int]:
    """(regions, where scanning resumes) for a COPY ... FROM STDIN ending at the ';' at *end*.

    psql sends the statement at its ';', then the server asks for the rows and psql
    reads them from the next line of the file up to a line holding only ``\\.``
    (or the end of the file); the rest of the statement's own line is read after.
    """
    eol = _pg_line_end(text, end)
    start = min(eol + 1, n)
    m = _PG_COPY_END().search(text, start)
    regions: list[tuple[int, ...]] = [(first, end, start, m.start() if m else n)]
    rest = text[end + 1:eol]
    if rest.strip():
        regions.append((end + 1 + len(rest) - len(rest.lstrip()), eol))
    return regions, m.end() if m else n


def _scan_postgresql(text: str) -> Iterator[tuple[int, ...]]:
    meta_skip, routine_start, copy_start, dollar, word_at = (
        _PG_META_SKIP(), _PG_ROUTINE(), _PG_COPY(), _PG_DOLLAR(), _PG_WORD()
    )
    run_plain, run_in_parens, run_routine = _PG_RUN(), _PG_RUN_IN_PARENS(), _PG_RUN_ROUTINE()
    n = len(text)
    pos = 0
    while True:
        first = _pg_skip_lead(text, pos)
        if first >= n:
            return
        if text[first] == "\\":
            # A psql meta-command takes the rest of its line. pg_dump writes \restrict and
            # \unrestrict into every plain dump (15.14 and later); psql's other commands are
            # yielded for the target to refuse.
            pos = _pg_line_end(text, first)
            if meta_skip.match(text, first) is None:
                yield first, pos
            continue
        # psql's heuristic: BEGIN ... END is tracked only in CREATE [OR REPLACE]
        # FUNCTION/PROCEDURE, at parenthesis depth 0, and CASE only inside a BEGIN.
        routine = text[first] in "cC" and routine_start.match(text, first) is not None
        copy = not routine and text[first] in "cC" and copy_start.match(text, first) is not None
        parens = begins = 0
        pos = first
        while True:
            if parens:
                run = run_in_parens
            elif routine:
                run = run_routine
            else:
                run = run_plain
            m = run.match(text, pos)
            pos = pos if m is None else m.end()
            if pos >= n:
                yield (first, n, n, n) if copy and _pg_from_stdin(text[first:n]) else (first, n)
                return
            c = text[pos]
            if c == ";":
                if not parens and not begins:
                    if copy and _pg_from_stdin(text[first:pos]):
                        regions, pos = _pg_copy_in(text, first, pos, n)
                        yield from regions
                        break
                    yield first, pos
                    pos += 1
                    break
                pos += 1
            elif c == "\\":
                # psql runs a meta-command wherever a backslash stands outside quotes and
                # comments; in the middle of a statement none is skipped.
                yield first, pos
                eol = _pg_line_end(text, pos)
                yield pos, eol
                pos = eol
                break
            elif c == "(":
                parens += 1
                pos += 1
            elif c == ")":
                parens = max(parens - 1, 0)
                pos += 1
            elif c == "$":
                m = dollar.match(text, pos)
                if m is None:
                    pos += 1
                else:
                    close = text.find(m.group(), m.end())
                    pos = n if close < 0 else close + len(m.group())
            elif c == "/":
                end = _pg_comment_end(text, pos)
                pos = n if end is None else end
            elif c in "'\"":
                pos = n  # unterminated string or identifier
            else:
                # the run pattern stopped before BEGIN, CASE or END
                m = word_at.match(text, pos)
                if m is None:  # not reached; never loop on a character
                    pos += 1
                    continue
                pos = m.end()
                word = m.group().lower()
                if word == "begin":
                    begins += 1
                elif word == "case":
                    if begins:
                        begins += 1
                elif begins:
                    begins -= 1


# --- MySQL / MariaDB (mariadb client, bootstrap) -----------------------------

_MY_TOKENS = (
    r"'(?:[^'\\]++|\\[\s\S])*+'"
    r'|"(?:[^"\\]++|\\[\s\S])*+"'
    r"|`[^`]*+`"
    r"|#[^\n]*+"
    r"|--(?=\s|\Z)[^\n]*+"
    # every /* */ is skipped whole, /*! ... */ too: no split inside
    "|" + _BLOCK_COMMENT + r"|-|/(?!\*)"
)
_MY_COMMENT = r"#[^\n]*+|--(?=\s|\Z)[^\n]*+|" + _BLOCK_COMMENT
# /*! and /*M! hold code the server runs, so they are never leading comments.
_MY_LEAD = _lazy(r"(?:\s++|#[^\n]*+|--(?=\s|\Z)[^\n]*+|/\*(?!!|M!)(?:[^*]++|\*(?!/))*+\*/)*+")
_MY_DELIMITER = _lazy(r"delimiter[ \t]+([^\n]*)", re.IGNORECASE)
_MY_QUOTED_NAME = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`"""
_MY_COMPOUND = _lazy(
    r"(?:create\s+(?:or\s+replace\s+)?"
    r"(?:definer\s*=\s*(?:current_user(?:\s*\(\s*\))?|(?:"
    + _MY_QUOTED_NAME
    + r"""|[^\s@'"`]+)(?:\s*@\s*(?:"""
    + _MY_QUOTED_NAME
    + r"""|[^\s'"`]+))?)\s+)?"""
    r"(?:sql\s+security\s+\w+\s+)?(?:aggregate\s+)?"
    r"(?:procedure|function|trigger|event)"
    r"|begin\s+not\s+atomic)"
    rf"(?![{_IDCH}])",
    re.IGNORECASE,
)
_MY_RUN_COMPOUND = _lazy(
    rf"""(?:[^'"`#;\-/{_IDCH}]++"""
    # a word that is not BEGIN/CASE/END, or is a column (t.end)
    rf"|(?:(?<=\.)|(?!(?i:begin|case|end)(?![{_IDCH}])))[{_IDCH}]++"
    "|" + _MY_TOKENS + ")*+"
)
_MY_WORD = _lazy(rf"[{_IDCH}]++")
# After END: IF/LOOP/WHILE/REPEAT/FOR close blocks whose openers were not counted.
_MY_END_SUFFIX = _lazy(
    r"(?:\s++|" + _MY_COMMENT + r")*+(?:(if|loop|while|repeat|for)|case)" + rf"(?![{_IDCH}])",
    re.IGNORECASE,
)
_MY_RUNS: dict[str, re.Pattern[str]] = {}


def _my_run(delimiter: str) -> re.Pattern[str]:
    """Regex skipping everything up to *delimiter*, an unterminated token or the end."""
    run = _MY_RUNS.get(delimiter)
    if run is None:
        head = delimiter[0]
        plain = r"""[^'"`#;\-/""" + re.escape(head) + "]++"
        if delimiter == ";":
            run = re.compile("(?:" + plain + "|" + _MY_TOKENS + ")*+")
        else:
            # The delimiter wins over a quote or comment starting at the same place,
            # as in the client; a lone first character of it is ordinary text
            # (the tokens already take a lone '-', '/' or '#').
            lone = "" if head in "'\"`#-/;" else "|" + re.escape(head)
            run = re.compile(
                "(?:(?!" + re.escape(delimiter) + ")(?:" + plain + "|" + _MY_TOKENS + lone + "|;))*+"
            )
        _MY_RUNS[delimiter] = run
    return run


def _my_delimiter_arg(rest: str) -> str:
    """The new delimiter from the rest of a DELIMITER line, as the client's get_arg reads it."""
    rest = rest.strip()
    if rest[:1] in ("'", '"', "`"):
        close = rest.find(rest[0], 1)
        arg = rest[1:close] if close > 0 else rest[1:]
    else:
        arg = rest.split(None, 1)[0] if rest else ""
    # the client refuses an empty delimiter or one holding a backslash
    return "" if "\\" in arg else arg


def _scan_mysql(text: str) -> Iterator[tuple[int, int]]:
    lead, delimiter_line, compound_start = _MY_LEAD(), _MY_DELIMITER(), _MY_COMPOUND()
    run_compound, word_at, end_suffix = _MY_RUN_COMPOUND(), _MY_WORD(), _MY_END_SUFFIX()
    n = len(text)
    pos = 0
    delimiter = ";"
    run = _my_run(delimiter)
    while True:
        m = lead.match(text, pos)
        first = pos if m is None else m.end()
        if first >= n:
            return
        if text[first] in "dD":
            m = delimiter_line.match(text, first)
            if m is not None:
                # the client eats the whole line; it is never sent to the server
                delimiter = _my_delimiter_arg(m.group(1)) or delimiter
                run = _my_run(delimiter)
                pos = m.end()
                continue
        # Only a ';' script needs compound depth: with a custom delimiter the
        # author has already marked where bodies end.
        compound = delimiter == ";" and compound_start.match(text, first) is not None
        depth = 0
        pos = first
        while True:
            m = (run_compound if compound else run).match(text, pos)
            pos = pos if m is None else m.end()
            if pos >= n:
                yield first, n
                return
            c = text[pos]
            if text.startswith(delimiter, pos):
                if not depth:
                    yield first, pos
                    pos += len(delimiter)
                    break
                pos += len(delimiter)
            elif c in "'\"`/":
                pos = n  # unterminated string, identifier or comment
            else:
                # the run pattern stopped before BEGIN, CASE or END
                m = word_at.match(text, pos)
                if m is None:  # not reached; never loop on a character
                    pos += 1
                    continue
                pos = m.end()
                word = m.group().lower()
                if word != "end":
                    depth += 1  # BEGIN or CASE
                    continue
                suffix = end_suffix.match(text, pos)
                if suffix is not None:
                    pos = suffix.end()
                    if suffix.group(1):
                        continue  # END IF, END LOOP, ...
                depth = max(depth - 1, 0)  # END, END CASE


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
        for part in _statements(statement.text, _scan_mysql(statement.text))
    ]


# --- SQLite (sqlite3 shell) --------------------------------------------------

# SQLite ends an unterminated /* or -- comment at the end of input without error.
_SQ_COMMENT = r"--[^\n]*+|/\*(?:[^*]++|\*(?!/))*+(?:\*/|\Z)"
_SQ_RUN = _lazy(
    r"""(?:[^'"`\[;\-/]++|'[^']*+'|"[^"]*+"|`[^`]*+`|\[[^\]]*+\]|"""
    + _SQ_COMMENT
    + r"|-|/(?!\*))*+"
)
_SQ_LEAD = _lazy(r"(?:\s++|" + _SQ_COMMENT + ")*+")
# sqlite3_complete() is a state machine; a ';' that does not complete a statement
# leaves it in the "';' inside a trigger body" state, whatever came before. This
# prefix recreates that state, so each check reads only the text since the last ';'
# and a huge unterminated trigger cannot make splitting quadratic.
_SQ_IN_TRIGGER = "CREATE TRIGGER;"


def _scan_sqlite(text: str) -> Iterator[tuple[int, int]]:
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


_SCANNERS: dict[str, Callable[[str], Iterator[tuple[int, ...]]]] = {
    "postgresql": _scan_postgresql,
    "mysql": _scan_mysql,
    "sqlite": _scan_sqlite,
}
