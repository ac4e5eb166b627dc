"""Statement text reduced to what the MySQL and SQLite rules read: no comments, no string contents.

Neither engine has a parser in Python that follows its own grammar, and the rules
here need only the statement's keywords and names, so strings become ``''``, comments
disappear and quoted identifiers lose their quotes (folded to lower case).
"""

from __future__ import annotations

import re

__all__ = ["ident", "normalize", "top_level_parts"]

_TOKEN = re.compile(
    r"'(?:[^'\\]|\\.|'')*'"          # string
    r"|\"(?:[^\"\\]|\\.|\"\")*\""     # double-quoted: a string in MySQL, an identifier in SQLite
    r"|`(?:[^`]|``)*`"                # backquoted identifier
    r"|\[[^\]]*\]"                    # SQLite [identifier]
    r"|--[^\n]*|#[^\n]*|/\*.*?\*/",   # comments
    re.S,
)


def normalize(text: str, dialect: str) -> str:
    """One line of text: comments removed, strings emptied, quoted identifiers unquoted and lower-cased in place."""

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        first = token[0]
        if first == "'" or (first == '"' and dialect == "mysql"):
            return "''"
        if first in '"`[':
            return " " + token[1:-1].replace(" ", "_").lower() + " "
        if first == "#" and dialect != "mysql":
            return token
        return " "

    out = _TOKEN.sub(sub, text)
    return " ".join(out.split())


def ident(name: str) -> str:
    """A table name as the rules compare it: schema dropped, lower case."""
    return name.rsplit(".", 1)[-1].strip().lower()


def top_level_parts(text: str) -> list[str]:
    """Split on commas outside parentheses (the clauses of an ALTER TABLE)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]
