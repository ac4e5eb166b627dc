"""One error tree with one root, and the one table of exit codes.

Every error the project raises on purpose derives from :class:`OrchestratorError`;
its ``exit_code`` is the CLI's exit status. A binding's state maps to an exit code
through :func:`exit_code_for_state`, and several codes combine through
:func:`worst_exit_code`: the CLI, the fleet report, ``validate`` and the daemon all
use these, so the codes are defined here and nowhere else. Messages are one line
that says what, where and what next; they never hold a DSN or a password
(``redact`` is applied once more on the way out).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "ConfigError",
    "FailedState",
    "LockHeld",
    "MigrationError",
    "OrchestratorError",
    "SetError",
    "TargetUnreachable",
    "exit_code_for_state",
    "worst_exit_code",
]

EXIT_OK = 0  # done, or current (pending counts too: status and plan only report it)
EXIT_FAILED = 1  # a migration failed; a binding is failed, drifted or locked
EXIT_USAGE = 2  # usage or config error, a set unreadable: nothing was attempted
EXIT_UNREACHABLE = 3  # a target could not be reached
EXIT_PENDING = 4  # status --exit-code: migrations are pending (dbmate's --exit-code), nothing worse
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

_STATE_EXIT_CODES = {"current": EXIT_OK, "pending": EXIT_OK, "failed": EXIT_FAILED, "drift": EXIT_FAILED,
                     "unreachable": EXIT_UNREACHABLE, "locked": EXIT_FAILED,
                     "held": EXIT_OK, "capped": EXIT_OK,  # held back by a rollout or a version cap: not a failure
                     "removed": EXIT_OK}  # gone from its inventory source: no longer worked on
# When several outcomes meet, the most actionable wins: a config problem, then a failure, then a target down.
_PRECEDENCE = (EXIT_USAGE, EXIT_FAILED, EXIT_UNREACHABLE)


def exit_code_for_state(state: str) -> int:
    """The exit code of one binding state (``current``, ``pending``, ``failed``, ``drift``, ``unreachable``, ``locked``)."""
    return _STATE_EXIT_CODES[state]


def worst_exit_code(codes: Iterable[int]) -> int:
    """One exit code for many outcomes: 2 > 1 > 3 > 0."""
    seen = set(codes)
    return next((code for code in _PRECEDENCE if code in seen), EXIT_OK)


class OrchestratorError(Exception):
    """Root of every error the project raises on purpose."""

    exit_code = EXIT_FAILED


class ConfigError(OrchestratorError):
    """Bad config.json, bad command line: nothing was attempted (exit 2)."""

    exit_code = EXIT_USAGE


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

    exit_code = EXIT_UNREACHABLE

    def __init__(self, dbid: str, cause: str):
        self.dbid = dbid
        self.cause = cause
        super().__init__(f"{dbid}: unreachable: {cause}")
