"""A ``.redis`` file and its ledger entry in one round trip: one script, checked as MULTI would check it.

The script (EVALSHA) runs atomically, as MULTI/EXEC does, and like it never rolls
back. It returns early when the version is recorded (applied, or failed/running,
which blocks the set); checks every command as MULTI checks at queue time (known
command, arity, the user's ACL), so that a refused file changes nothing; runs the
commands with ``redis.pcall``; and writes the version into the version hash only
when none failed. When one failed it writes a ``running`` meta entry, which the
target then marks ``failed`` with the statement and line: a partly failed run
never reads as applied, and a crash in between leaves ``running``, as on the
MULTI/EXEC path. A lost reply is settled by reading the version hash, which the
script wrote together with the body or not at all.

Files a script cannot run take the MULTI/EXEC path: commands with subcommands or
flagged ``noscript`` (the script says so before running anything), and commands
with more arguments than Lua can unpack.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import FailedState, MigrationError, OrchestratorError, TargetUnreachable
from orchestrator.redact import redact
from orchestrator.targets import Applied
from orchestrator.targets._redis_commands import command_name, roundtrip
from orchestrator.targets._redis_ledger import parse_meta
from orchestrator.targets._where import one_line

if TYPE_CHECKING:
    from orchestrator.sets import Script

__all__ = ["APPLY", "MAX_ARGS", "UNSUITABLE", "KeptScript", "Outcome", "apply_file", "arguments", "outcome", "passes"]

log = logging.getLogger("migrations")

MAX_ARGS = 7000
"""Arguments one command may carry on the script path (Lua's unpack stops near 8000)."""

DURATION = '"duration_ms":0'
"""The applied meta entry's duration, filled in by the script (server time spent on the body)."""

APPLY = """
local version = ARGV[1]
if redis.call('hexists', KEYS[1], version) == 1 then return {0} end
local meta = redis.call('hget', KEYS[2], version)
if meta then
  local ok, info = pcall(cjson.decode, meta)
  if ok and type(info) == 'table' and (info['status'] == 'failed' or info['status'] == 'running') then return {-1, meta} end
end
local commands, at = {}, 7
for n = 1, tonumber(ARGV[5]) do
  local argc = tonumber(ARGV[at])
  commands[n] = {unpack(ARGV, at + 1, at + argc)}
  at = at + argc + 1
end
local known = {}
for n, argv in ipairs(commands) do
  local name = string.lower(argv[1])
  if ARGV[6] ~= '1' then
    if known[name] == nil then known[name] = redis.call('command', 'info', name)[1] or false end
    local info = known[name]
    if not info then return {-2, n, "ERR unknown command '" .. argv[1] .. "'"} end
    local arity = info[2]
    if (arity > 0 and #argv ~= arity) or (arity < 0 and #argv < -arity) then
      return {-2, n, "ERR wrong number of arguments for '" .. name .. "' command"}
    end
    for _, flag in ipairs(info[3]) do
      if flag == 'noscript' or (type(flag) == 'table' and flag['ok'] == 'noscript') then return {-3, n} end
    end
    if info[10] and #info[10] > 0 then return {-3, n} end
  end
  if redis.acl_check_cmd and not redis.acl_check_cmd(unpack(argv)) then
    return {-2, n, "NOPERM this user has no permissions to run the '" .. name .. "' command or its keys"}
  end
end
if redis.replicate_commands then redis.replicate_commands() end
local started = redis.call('time')
local failures, first, first_error = 0, 0, ''
for n, argv in ipairs(commands) do
  local reply = redis.pcall(unpack(argv))
  if type(reply) == 'table' and reply['err'] then
    failures = failures + 1
    if failures == 1 then first, first_error = n, reply['err'] end
  end
end
if failures == 0 then
  local ended = redis.call('time')
  local ms = math.floor(((ended[1] - started[1]) * 1000000 + (ended[2] - started[2])) / 1000)
  redis.call('hset', KEYS[1], version, ARGV[2])
  redis.call('hset', KEYS[2], version, (string.gsub(ARGV[3], '"duration_ms":0', '"duration_ms":' .. ms, 1)))
  return {1}
end
redis.call('hset', KEYS[2], version, ARGV[4])
return {2, failures, first, first_error}
"""

Outcome = tuple[str, int, int, str]
"""(what happened, failures, statement, error): what one run of the script says."""


def arguments(version: str, apply_time: int, applied_meta: str, running_meta: str,
              commands: Sequence[Sequence[Any]], checked: bool = False) -> list[Any] | None:
    """The script's ARGV; None when a command is too long for the script path.

    ``checked``: the caller found every command known, of the right arity and fit
    for a script (:func:`passes`), so the script checks only the user's ACL.
    """
    args: list[Any] = [version, apply_time, applied_meta, running_meta, len(commands), int(checked)]
    for argv in commands:
        if len(argv) > MAX_ARGS:
            return None
        args += [len(argv), *argv]
    return args


def outcome(reply: Sequence[Any]) -> Outcome:
    """``recorded`` (already applied), ``blocked`` (failed/running: error holds the meta entry), ``refused``
    (a queue-time check failed, nothing ran), ``unsuitable`` (a command scripts cannot run, nothing ran),
    ``applied``, or ``failed`` (some commands failed; the others ran)."""
    code = int(reply[0])
    if code == 0:
        return ("recorded", 0, 0, "")
    if code == -1:
        return ("blocked", 0, 0, _text(reply[1]))
    if code == -2:
        return ("refused", 1, int(reply[1]), _error(reply[2]))
    if code == -3:
        return ("unsuitable", 0, int(reply[1]), "")
    if code == 1:
        return ("applied", 0, 0, "")
    return ("failed", int(reply[1]), int(reply[2]), _error(reply[3]))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _error(value: Any) -> str:
    # As redis-py words a reply error: the generic ERR code dropped, the others (WRONGTYPE, NOPERM, ...) kept.
    text = _text(value)
    return text[4:] if text.startswith("ERR ") else text


class KeptScript:
    """A script run as EVALSHA on a pooled connection kept for the run: one round trip, no pool or command layer per call.

    Called as redis-py's registered scripts are (``run(keys=..., args=...)``) and
    raises as they do: a refused call as ResponseError, a lost one as
    ConnectionError (the connection is then dropped: a half-read reply must not
    reach the next call). A server that lacks the script gets it once.
    """

    def __init__(self, pool: Any, checkout: Callable[[], Any], source: str):
        self._pool, self._checkout, self._source = pool, checkout, source
        self._sha = hashlib.sha1(source.encode()).hexdigest()
        self._conn: Any = None
        self._infos: dict[str, Any] = {}  # lower-case command name -> COMMAND INFO entry (None: unknown)
        self._no_command_info = False

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        import redis

        command = ("EVALSHA", self._sha, len(keys), *keys, *args)
        reply = self._trip(command)
        if isinstance(reply, redis.exceptions.NoScriptError):
            self._trip(("SCRIPT", "LOAD", self._source))
            reply = self._trip(command)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def command_info(self, names: set[str]) -> dict[str, Any] | None:
        """COMMAND INFO of each name (None: unknown), asked once per name on this connection; None when the user may not ask."""
        missing = [name for name in names if name not in self._infos]
        if missing and not self._no_command_info:
            reply = self._trip(("COMMAND", "INFO", *missing))
            if isinstance(reply, Exception):
                self._no_command_info = True  # the script asks the server itself, as it may
            else:
                self._infos.update(zip(missing, reply, strict=True))
        return None if self._no_command_info else self._infos

    def _trip(self, command: Sequence[Any]) -> Any:
        """One command's reply (an error reply as an exception object) on the kept connection, checked out on first use."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self._checkout()
        try:
            return roundtrip(conn, [command])[0]
        except BaseException:
            self._conn = None
            conn.disconnect()  # a half-read reply must not reach the next call
            self._pool.release(conn)
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._pool.release(self._conn)
            self._conn = None


def passes(infos: dict[str, Any], commands: Sequence[Sequence[Any]]) -> bool:
    """True when COMMAND INFO says each command exists, has its arity, and may run in a script (no flag
    ``noscript``, no subcommands): the checks the apply script would make, less the ACL's. False sends the
    script making them all, so that what it answers, and the words it answers with, stay the same."""
    for argv in commands:
        info = infos.get(command_name(argv).lower())
        if not info:
            return False
        arity = int(info[1])
        if (arity > 0 and len(argv) != arity) or (arity < 0 and len(argv) < -arity):
            return False
        if b"noscript" in info[2] or "noscript" in info[2] or (len(info) > 9 and info[9]):
            return False
    return True


UNSUITABLE = object()
"""What :func:`apply_file` returns when the file must take the MULTI/EXEC path (nothing ran)."""


MarkFailed = Callable[[int, int, int, str], None]
"""(duration_ms, statement, line, error): marks the version's meta entry ``failed``."""


def apply_file(client: Any, run: KeptScript, dbid: str, script: Script, body: Sequence[tuple[int, int, Sequence[Any]]],
               keys: tuple[str, str], metas: tuple[str, str], mark_failed: MarkFailed) -> Any:
    """Run a ``.redis`` file's ``body`` ((statement, line, argv) each) with its ledger entry in one round trip.

    ``run`` is the script (:data:`APPLY`) on its connection, ``keys`` the version and meta
    hashes, ``metas`` the applied and running meta entries. Returns Applied, None
    when the ledger already holds the version, or UNSUITABLE when the file must take
    the MULTI/EXEC path (nothing ran). Raises as that path does.
    """
    import redis

    commands = [argv for _, _, argv in body]
    started = time.monotonic()
    try:
        # What COMMAND INFO says of each command is asked once per connection, not by every script run.
        infos = run.command_info({command_name(argv).lower() for argv in commands})
        args = arguments(script.version, int(time.time()), metas[0], metas[1], commands,
                         checked=infos is not None and passes(infos, commands))
        if args is None:
            return UNSUITABLE
        reply = run(keys=list(keys), args=args)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return _settle_lost_reply(client, dbid, script, len(body), keys, exc)
    except redis.ResponseError as exc:
        raise OrchestratorError(f"{dbid}/{script.set_id}: cannot run {script.label} with its ledger entry: "
                                f"{one_line(exc)}; nothing was applied") from None
    duration = int((time.monotonic() - started) * 1000)
    what, failures, number, error = outcome(reply)
    if what == "recorded":
        return None
    if what == "blocked":
        info = parse_meta(error)
        raise FailedState(f"{dbid}/{script.set_id}: {script.version} was recorded {info.get('status')} by "
                          f"{info.get('applied_by') or 'another runner'} meanwhile; see 'orchestrator resolve'")
    if what == "unsuitable":
        log.debug("%s: statement %d cannot run in a script; the file runs in MULTI/EXEC", script.label, number)
        return UNSUITABLE
    if what == "applied":
        return Applied(script.version, len(body), duration)
    statement, line, _ = body[number - 1]
    error = redact(" ".join(error.split())[:500])
    if what == "refused":
        raise MigrationError(script.label, f"{error}; nothing was applied (Redis refused the transaction)", statement, line)
    more = f" ({failures - 1} more command(s) failed too)" if failures > 1 else ""
    mark_failed(duration, statement, line, error)
    raise MigrationError(script.label, f"{error}{more}; the file's other commands were applied "
                         "(Redis does not roll back), recorded as failed", statement, line)


def _settle_lost_reply(client: Any, dbid: str, script: Script, count: int, keys: tuple[str, str], exc: BaseException) -> Any:
    """After a lost reply, the version hash says whether the script ran: it wrote the body and the entry together."""
    doing = f"connection lost while applying {script.label}"
    try:
        recorded = client.hexists(keys[0], script.version)
        entry = parse_meta(client.hget(keys[1], script.version))
    except Exception:  # still out of reach: say what is known
        raise TargetUnreachable(dbid, f"{doing}: whether it ran is unknown until the ledger can be read again "
                                f"(the file and its ledger entry run as one: 'applied', or not at all): {one_line(exc)}") from None
    if recorded:
        log.warning("%s: the connection dropped while applying %s; read again, the ledger shows it applied", dbid, script.label)
        return Applied(script.version, count, 0)
    if entry.get("status") == "running":
        raise TargetUnreachable(dbid, f"{doing}: it ran and a command failed; the ledger, read again, shows it "
                                f"'running': check the data, then 'orchestrator resolve': {one_line(exc)}") from None
    raise TargetUnreachable(dbid, f"{doing}: nothing was applied (the ledger, read again, does not hold it): "
                            f"{one_line(exc)}") from None
