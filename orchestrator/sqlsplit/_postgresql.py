"""PostgreSQL statements as ``psql`` reads a file: dollar quotes, E'' strings, nested
comments, a ``;`` inside parentheses or a routine body does not end a statement,
``COPY ... FROM stdin`` rows and backslash meta-commands."""

from __future__ import annotations

import re
from collections.abc import Iterator

from orchestrator.sqlsplit._lexical import (
    BLOCK_COMMENT,
    ID_CHAR,
    ID_START,
    IDCH_ASCII,
    IDSTART_ASCII,
    ascii_but,
    every_but_ascii,
    lazy,
)

_START_OR_DOLLAR = every_but_ascii(IDSTART_ASCII | {"$"})
_DOLLAR_TAG_CHAR = every_but_ascii(IDCH_ASCII - {"$"})
# Nothing that can start a quote, a comment, a parenthesis, a ';' or a word.
_ROUTINE_PLAIN = ascii_but(IDSTART_ASCII | set("'\"$;-/()\\"))

_PG_TOKENS = (
    # '...' ('' is a quote), unless a lone E prefixes it
    rf"(?:(?<![eE])|(?<={ID_CHAR}[eE]))'[^']*+'"
    # E'...' also takes backslash escapes ('' still doubles, and the escapes go on after it)
    rf"|(?<=[eE])'(?:[^'\\]++|\\[\s\S]|'')*+'"
    r'|"[^"]*+"'
    r"|--[^\n]*+"
    # a comment holding no nested /*; the others go to _pg_comment_end
    r"|/\*(?:[^*/]++|\*(?!/)|/(?!\*))*+\*/"
    r"|-|/(?!\*)"
    # a $ inside an identifier or before a digit cannot open a dollar quote
    rf"|(?<={ID_CHAR})\$|\$(?!{_START_OR_DOLLAR})"
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
_PG_RUN = lazy(r"""(?:[^'"$;\-/()\\]++|""" + _PG_TOKENS + "|" + _PG_PARENS + ")*+")
_PG_RUN_IN_PARENS = lazy(r"""(?:[^'"$\-/()\\]++|""" + _PG_TOKENS + "|" + _PG_PARENS + ")*+")
# In CREATE FUNCTION/PROCEDURE, also stop at BEGIN, CASE and END.
_PG_RUN_ROUTINE = lazy(
    rf"(?:{_ROUTINE_PLAIN}++"
    rf"|(?!(?i:begin|case|end)(?!{ID_CHAR})){ID_START}{ID_CHAR}*+"
    "|" + _PG_TOKENS + "|" + _PG_PARENS + ")*+"
)
_PG_WORD = lazy(rf"{ID_START}{ID_CHAR}*+")
_PG_DOLLAR = DOLLAR_QUOTE = lazy(rf"\$(?:{ID_START}{_DOLLAR_TAG_CHAR}*+)?\$")
_PG_LEAD = lazy(r"(?:\s++|--[^\n]*+|/\*(?:[^*/]++|\*(?!/)|/(?!\*))*+\*/)*+")
_PG_NESTED = lazy(r"/\*|\*/")
_PG_SEP = r"(?:\s++|--[^\n]*+|" + BLOCK_COMMENT + ")+"
_PG_COPY = lazy(rf"copy(?!{ID_CHAR})", re.IGNORECASE)
# FROM STDIN outside quotes and comments (those are blanked out first)
_PG_FROM_STDIN = lazy(rf"(?<!{ID_CHAR})from\s+stdin(?!{ID_CHAR})", re.IGNORECASE)
_PG_QUOTED = lazy(_PG_TOKENS)
# psql's end-of-data line; copy.c accepts "\\.\n" and "\\.\r\n"
_PG_COPY_END = lazy(r"^\\\.\r?(?:\n|\Z)", re.MULTILINE)
_PG_META_SKIP = lazy(r"\\(?:un)?restrict(?![^\s\\])")
_PG_ROUTINE = lazy(
    rf"create{_PG_SEP}(?:or{_PG_SEP}replace{_PG_SEP})?(?:function|procedure)(?!{ID_CHAR})",
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


def scan(text: str) -> Iterator[tuple[int, ...]]:
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
