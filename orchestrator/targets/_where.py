"""Where in a migration file a failure happened: the one place file lines are worked out.

Engines read a position from their driver's error (a character offset, a line
counted from some point of the statement, the part of a multi-statement chunk
that failed) into an :class:`ErrorAt`; :meth:`ErrorAt.file_line` turns it into
the file's line. Python migrations report the line of their deepest frame in the
migration file (:func:`raise_line`); Redis command files know each command's line.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.sqlsplit import Statement, line_of

__all__ = ["ErrorAt", "as_written", "one_line", "raise_line"]

_BLANKS = re.compile(r"\s*")


@dataclass(frozen=True)
class ErrorAt:
    """A failed statement's message and where the server says the error is.

    ``statement`` is the statement (or the part of a chunk) that failed; the line
    is found at character ``offset`` of its text (its first line when None), or
    at file line ``anchor`` when given (COPY rows), then ``line - 1`` lines further.
    """

    message: str
    statement: Statement | None = None
    offset: int | None = None
    line: int = 1
    anchor: int | None = None

    def file_line(self) -> int | None:
        if self.statement is None:
            return None
        start = self.anchor if self.anchor is not None else line_of(self.statement, self.offset or 0)
        return start + max(self.line, 1) - 1


def raise_line(exc: BaseException, path: Path | str) -> int | None:
    """The line of the migration file where ``exc`` was raised (its deepest frame in that file)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return line


def one_line(exc: BaseException) -> str:
    """An exception's text on one line, or its class name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def as_written(text: str, statement: Any, pos: int) -> tuple[str, int] | None:
    """(the statement's text up to its ';', offset after the ';') as the sqlite3 shell sends it, from the file.

    The splitter trims trailing blanks; they are taken back from the file. A leading
    comment may quote the statement, so the match must be followed by blanks and
    ';' or the end. The last statement without ';' loses the file's final newline, as
    in the shell, which joins the lines it read.
    """
    body = statement.text
    start = text.find(body, pos)
    while start >= 0:
        stop = _BLANKS.match(text, start + len(body)).end()  # type: ignore[union-attr]
        if stop >= len(text):
            written = text[start:]
            return (written[:-1] if written.endswith("\n") else written), stop
        if text[stop] == ";":
            return text[start:stop], stop + 1
        start = text.find(body, start + 1)
    return None
