"""Where in a migration file a failure happened: the one place file lines are worked out.

Engines read a position from their driver's error (a character offset, a line
counted from some point of the statement, the part of a multi-statement chunk
that failed) into an :class:`ErrorAt`; :meth:`ErrorAt.file_line` turns it into
the file's line. Python migrations report the line of their deepest frame in the
migration file (:func:`raise_line`); Redis command files know each command's line.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from orchestrator.sqlsplit import Statement, line_of

__all__ = ["ErrorAt", "one_line", "raise_line"]


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
