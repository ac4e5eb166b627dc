"""One error tree with one root, and the exit code each class maps to.

Every error the project raises on purpose derives from :class:`OrchestratorError`;
its ``exit_code`` is the CLI's exit status, mapped in exactly one place
(``cli.main``). Messages are one line that says what, where and what next; they
never hold a DSN or a password (``redact`` is applied once more on the way out).
"""

from __future__ import annotations

__all__ = [
    "OrchestratorError",
    "ConfigError",
    "SetError",
    "MigrationError",
    "FailedState",
    "LockHeld",
    "TargetUnreachable",
]


class OrchestratorError(Exception):
    """Root of every error the project raises on purpose."""

    exit_code = 1


class ConfigError(OrchestratorError):
    """Bad config.json, bad command line: nothing was attempted (exit 2)."""

    exit_code = 2


class SetError(ConfigError):
    """A migration set's files are unusable (duplicate version, unreadable, not UTF-8, bad directive)."""


class MigrationError(OrchestratorError):
    """A migration failed on a target (exit 1).

    ``where`` is the script label (``s1/2024-05-01_10-00-00_add.sql``), ``statement``
    and ``line`` locate the failing statement when known.
    """

    def __init__(self, where: str, message: str, statement: int | None = None, line: int | None = None):
        self.where = where
        self.message = message
        self.statement = statement
        self.line = line
        loc = ""
        if statement is not None:
            loc = f" statement {statement}" + (f" (line {line})" if line else "") + ":"
        elif line:
            loc = f" line {line}:"  # Python migrations: the line of the raise
        super().__init__(f"{where}:{loc} {message}")


class FailedState(OrchestratorError):
    """A previous run left a failed or unfinished migration recorded; the set is blocked until resolved."""


class LockHeld(OrchestratorError):
    """Another runner holds the (target, set) lock; reported after a bounded wait, never waited on forever."""

    def __init__(self, dbid: str, set_id: str, holder: str = ""):
        self.dbid = dbid
        self.set_id = set_id
        self.holder = holder
        by = f" by {holder}" if holder else ""
        super().__init__(f"{dbid}/{set_id} locked{by}; another runner is applying this set, try again later")


class TargetUnreachable(OrchestratorError):
    """Could not connect to, or lost, a target (exit 3)."""

    exit_code = 3

    def __init__(self, dbid: str, cause: str):
        self.dbid = dbid
        self.cause = cause
        super().__init__(f"{dbid}: unreachable: {cause}")
