"""What a Redis migration may send, and the ``db`` a Python migration's ``up(db)`` receives on Redis."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import MigrationError
from orchestrator.redact import redact
from orchestrator.targets._where import one_line

if TYPE_CHECKING:
    from orchestrator.sets import Script

__all__ = ["FORBIDDEN", "SCRIPT_COMMANDS", "SKIPPED", "RedisHandle", "check_allowed", "command_name", "connect_cause", "file_body",
           "roundtrip"]

log = logging.getLogger("migrations")

SKIPPED = ("MULTI", "EXEC")
"""Transaction wrappers a file written for redis-cli may hold; the file already runs in one."""
FORBIDDEN = {
    **dict.fromkeys(("SELECT", "SWAPDB"), "it would part the data from its ledger, which lives in this database"),
    **dict.fromkeys(("FLUSHDB", "FLUSHALL"), "it would delete the ledger"),
    **dict.fromkeys(("DISCARD", "WATCH", "UNWATCH"), "the file runs in the runner's own MULTI/EXEC"),
    **dict.fromkeys(("RESET", "QUIT", "AUTH", "HELLO"), "it would change or end the runner's connection"),
    **dict.fromkeys(("MONITOR", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"), "it never returns"),
}
"""Commands a migration may not run, with the reason its error gives."""
SCRIPT_COMMANDS = ("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO")


def command_name(argv: Sequence[str | bytes]) -> str:
    name = argv[0]
    return (name.decode("utf-8", "replace") if isinstance(name, bytes) else name).upper()


class RedisHandle:
    """The ``db`` a Python migration's ``up(db)`` receives on Redis.

    ``execute("SET k v")`` (redis-cli quoting) or ``execute(["SET", "k", "v"])`` runs
    one command and returns its reply; ``params`` are extra arguments appended
    unparsed. ``connection`` is the run's redis-py client (``decode_responses=True``:
    replies are ``str``; pass ``NEVER_DECODE=True`` to ``execute_command`` for bytes).
    ``prefix`` is the target's key prefix.
    """

    def __init__(self, client: Any, dbid: str, prefix: str, label: str, readonly: Callable[[str], bool]):
        self._client = client
        self._label = label
        self._readonly = readonly
        self.dbid = dbid
        self.driver = "redis"
        self.prefix = prefix
        self.statements = 0
        self.failed_at: int | None = None
        self._touched = False
        self._wrote = False

    @property
    def connection(self) -> Any:
        # What a migration does through the raw client cannot be counted: assume it wrote.
        self._touched = True
        return self._client

    @property
    def ran_any(self) -> bool:
        """True when something may have changed the data: a write ran (reads and rejected commands change nothing)."""
        return self._wrote or self._touched

    def execute(self, command: str | Sequence[str | bytes | int | float], params: Sequence[Any] | None = None) -> Any:
        """Run one command; returns its reply (redis-py's reply conversion applies)."""
        import redis

        from orchestrator.sets import split_redis_args

        argv: list[Any] = split_redis_args(command) if isinstance(command, str) else list(command)
        argv += list(params or ())
        number = self.statements + 1
        if not argv:
            raise MigrationError(self._label, "execute() got an empty command", number)
        check_allowed(self._label, argv, number, None)
        name = command_name(argv)
        try:
            reply = self._client.execute_command(*argv)
        except redis.ResponseError:
            self.failed_at = number
            if name in SCRIPT_COMMANDS:
                self._wrote = True  # a script stops at its error; what ran before it stays
            raise
        self.statements = number
        if not self._wrote and not self._readonly(name):
            self._wrote = True
        return reply

    def query(self, command: str | Sequence[str | bytes | int | float], params: Sequence[Any] | None = None) -> Any:
        """Run one command and return its reply (same as :meth:`execute`)."""
        return self.execute(command, params)


def check_allowed(label: str, argv: Sequence[Any], number: int, line: int | None) -> None:
    name = command_name(argv)
    if name in FORBIDDEN:
        raise MigrationError(label, f"{name} is not allowed in a migration: {FORBIDDEN[name]}", number, line)



def file_body(script: Script) -> list[tuple[int, int, list[Any]]]:
    """(statement, line, argv) of each command a ``.redis`` file runs; MigrationError for one it may not.

    What the file alone decides: computed once per discovery and shared by every target running it.
    """
    body = []
    for number, (line, argv) in enumerate(script.redis_commands(), 1):
        check_allowed(script.label, argv, number, line)
        if command_name(argv) in SKIPPED:
            log.debug("%s: statement %d (line %d): %s skipped, the file already runs in MULTI/EXEC", script.label, number, line, argv[0])
        else:
            body.append((number, line, argv))
    return body


def roundtrip(conn: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send commands in one write, read one reply each; error replies come back as exception objects."""
    import redis

    conn.send_packed_command(conn.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            # Undecoded: a migration's binary reply must not break the reply stream.
            replies.append(conn.read_response(disable_decoding=True))
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


def connect_cause(exc: BaseException, db: Any) -> str:
    """What a failed connect says: the cause and what to check, never the password."""
    import redis

    where = f"{db.ip}:{db.port}"
    reason = redact(one_line(exc)[:500]).rstrip(".")
    if isinstance(exc, redis.AuthenticationError):
        who = f"user {db.user!r}" if db.user else "the default user"
        return f"authentication failed at {where} as {who}: {reason}; check user and password in the config"
    if isinstance(exc, redis.TimeoutError):
        return f"no answer from {where} within {db.timeout}s (connection_timeout)"
    if isinstance(exc, redis.ConnectionError):
        os_error = exc.__cause__ or exc.__context__  # redis-py wraps the socket error in a sentence naming host and port
        if isinstance(os_error, OSError) and os_error.strerror:
            reason = os_error.strerror
        return f"cannot connect to {where}: {reason}"
    return f"{where} refused the session: {reason}"
