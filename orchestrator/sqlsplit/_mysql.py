"""MySQL/MariaDB statements as the ``mariadb`` client reads a file (``#`` comments,
``DELIMITER`` lines), plus ``CREATE PROCEDURE ... BEGIN ... END;`` bodies as the
server's bootstrap mode reads them."""

from __future__ import annotations

import re
from collections.abc import Iterator

from orchestrator.sqlsplit._lexical import BLOCK_COMMENT, ID_CHAR, IDCH_ASCII, ascii_but, lazy

_MY_TOKENS = (
    r"'(?:[^'\\]++|\\[\s\S])*+'"
    r'|"(?:[^"\\]++|\\[\s\S])*+"'
    r"|`[^`]*+`"
    r"|#[^\n]*+"
    r"|--(?=\s|\Z)[^\n]*+"
    # every /* */ is skipped whole, /*! ... */ too: no split inside
    "|" + BLOCK_COMMENT + r"|-|/(?!\*)"
)
# Nothing that can start a quote, a comment, a ';' or a word.
_COMPOUND_PLAIN = ascii_but(IDCH_ASCII | set("'\"`#;-/"))
_MY_COMMENT = r"#[^\n]*+|--(?=\s|\Z)[^\n]*+|" + BLOCK_COMMENT
# /*! and /*M! hold code the server runs, so they are never leading comments.
_MY_LEAD = lazy(r"(?:\s++|#[^\n]*+|--(?=\s|\Z)[^\n]*+|/\*(?!!|M!)(?:[^*]++|\*(?!/))*+\*/)*+")
_MY_DELIMITER = lazy(r"delimiter[ \t]+([^\n]*)", re.IGNORECASE)
_MY_QUOTED_NAME = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`"""
_MY_COMPOUND = lazy(
    r"(?:create\s+(?:or\s+replace\s+)?"
    r"(?:definer\s*=\s*(?:current_user(?:\s*\(\s*\))?|(?:"
    + _MY_QUOTED_NAME
    + r"""|[^\s@'"`]+)(?:\s*@\s*(?:"""
    + _MY_QUOTED_NAME
    + r"""|[^\s'"`]+))?)\s+)?"""
    r"(?:sql\s+security\s+\w+\s+)?(?:aggregate\s+)?"
    r"(?:procedure|function|trigger|event)"
    r"|begin\s+not\s+atomic)"
    rf"(?!{ID_CHAR})",
    re.IGNORECASE,
)
_MY_RUN_COMPOUND = lazy(
    rf"(?:{_COMPOUND_PLAIN}++"
    # a word that is not BEGIN/CASE/END, or is a column (t.end)
    rf"|(?:(?<=\.)|(?!(?i:begin|case|end)(?!{ID_CHAR}))){ID_CHAR}++"
    "|" + _MY_TOKENS + ")*+"
)
_MY_WORD = lazy(rf"{ID_CHAR}++")
# After END: IF/LOOP/WHILE/REPEAT/FOR close blocks whose openers were not counted.
_MY_END_SUFFIX = lazy(
    r"(?:\s++|" + _MY_COMMENT + r")*+(?:(if|loop|while|repeat|for)|case)" + rf"(?!{ID_CHAR})",
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


def scan(text: str) -> Iterator[tuple[int, int]]:
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
