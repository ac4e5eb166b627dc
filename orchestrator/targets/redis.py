"""Redis target: ledger hashes, a renewed ``SET NX PX`` lock, ``.redis`` files in MULTI/EXEC.

The ledger is readable with plain ``redis-cli`` (``<p>`` is the entry's ``prefix``,
``<t>`` the ledger name from ``migrations.table``, ``migration`` by default):

- ``<p><t>:<set>``: hash version -> apply_time (Unix seconds, as text), the applied versions;
- ``<p><t>:<set>:meta``: hash version -> JSON (set_id, checksum, duration_ms, status,
  statement, line, error, applied_by; apply_time too while not applied);
- ``<p><t>:<set>:lock``: ``<random>[.<scope>] <since> <host> pid <N>`` with a TTL, while a runner holds the set
  (``<scope>`` names the boot and PID namespace the pid belongs to, so that a lock whose process is
  gone can be taken over at once instead of after its TTL).

A ``.redis`` file runs with its ledger entry in one script, one round trip (``_redis_script``); a connection's
first file and a file no script can run take MULTI/EXEC (WATCH and a ledger check, the body with a ``running``
claim, then the promotion to applied). Racing runners apply a file once, and since Redis never rolls back, the
version enters the version hash only when every command succeeded; a failure, or a
crash in between, leaves a ``failed`` or ``running`` meta entry that blocks the set
until ``orchestrator resolve``: the ledger may say "unknown", never a false "applied".
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.errors import FailedState, LockHeld, MigrationError, OrchestratorError, TargetUnreachable
from orchestrator.redact import redact
from orchestrator.targets import Applied, LedgerRow, runner_identity
from orchestrator.targets._dirty import apply_under_dirty_flag
from orchestrator.targets._redis_commands import (
    SCRIPT_COMMANDS,
    RedisHandle,
    command_name,
    connect_cause,
    file_body,
    roundtrip,
)
from orchestrator.targets._redis_ledger import ChecksumRepair, ledger_rows, parse_meta
from orchestrator.targets._redis_lock import Heartbeat, holder_for_error, holder_state, holder_text, process_scope
from orchestrator.targets._redis_script import APPLY, UNSUITABLE, KeptScript, apply_file
from orchestrator.targets._where import raise_line

if TYPE_CHECKING:
    from orchestrator.config import RedisConfig
    from orchestrator.sets import Script

__all__ = ["RedisHandle", "RedisTarget"]

log = logging.getLogger("migrations")

# Compare-and-renew and compare-and-delete: only the token's owner touches the lock.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# Compare-and-set: take over a dead holder's lock only if it still holds exactly that value.
_TAKE_OVER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return false"
_RECORD = ("if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then return 0 end "
           "redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) redis.call('hset', KEYS[2], ARGV[1], ARGV[3]) return 1")

_WATCH_RETRIES = 5
_ERROR_MAX = 500


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return redact(text[:_ERROR_MAX]) or type(exc).__name__


class RedisTarget(ChecksumRepair):
    """Target protocol on Redis (redis-py); one client, and one pool, per run."""

    driver = "redis"

    def __init__(self, db: RedisConfig, table: str):
        self.db = db
        self.dbid: str = db.dbid
        self.table = table
        self.client: Any = None
        self.lock_ttl_ms: int = defaults.REDIS_LOCK_TTL_MS
        """TTL of the lock key; the heartbeat renews it every third of it."""
        self._scripts: dict[str, Any] = {}
        self._locks: dict[str, Heartbeat] = {}
        self._readonly_cache: dict[str, bool] = {}
        self._wrote = False  # the dirty-flag migration under way may have changed data
        self._checked = False  # MULTI/EXEC probed once on this connection: files may take the one-round-trip script
        self._applying: KeptScript  # the apply script on a connection of its own (connect makes it)

    # -- connection ----------------------------------------------------------------

    def connect(self, readonly: bool = False) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        db = self.db
        options: dict[str, Any] = {
            "host": db.ip, "port": db.port, "db": db.dbindex, "username": db.user or None,
            "password": db.password.get_secret_value() or None, "ssl": db.tls,
            "socket_connect_timeout": db.timeout, "socket_timeout": db.timeout, "decode_responses": True,
            # No silent retries: a resent EXEC could apply a migration twice.
            "retry": Retry(NoBackoff(), 0),
        }
        # No CLIENT SETINFO on connect: two round trips, half the cost of a connect.
        try:
            self.client = redis.Redis(**options, driver_info=None)
        except TypeError:  # redis-py before driver_info
            self.client = redis.Redis(**options, lib_name=None, lib_version=None)
        try:
            self.client.ping()  # redis-py connects lazily; reach and authenticate now
        except redis.RedisError as exc:
            self.client.close()
            self.client = None
            raise TargetUnreachable(self.dbid, connect_cause(exc, self.db)) from None
        for name, source in (("renew", _RENEW), ("release", _RELEASE), ("record", _RECORD), ("take_over", _TAKE_OVER)):
            self._scripts[name] = self.client.register_script(source)
        self._applying = KeptScript(self.client.connection_pool, self._checkout, APPLY)

    @contextmanager
    def _reachable(self, doing: str) -> Iterator[None]:
        """Turn a lost connection into TargetUnreachable, a refused command into one line, both naming what was under way."""
        import redis

        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TargetUnreachable(self.dbid, f"connection lost while {doing}: {_one_line(exc)}") from None
        except redis.ResponseError as exc:
            hint = "; the ACL user needs hash, string, scripting and transaction commands on these keys" if "NOPERM" in str(exc) else ""
            raise OrchestratorError(f"{self.dbid}: Redis refused {doing}: {_one_line(exc)}{hint}") from None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection of our own for WATCH/MULTI/EXEC, so that replies map to commands one to one."""
        conn = self._checkout()
        clean = False
        try:
            yield conn
            clean = True
        finally:
            if not clean:
                conn.disconnect()  # drops a pending WATCH, an open MULTI or a half-read reply
            self.client.connection_pool.release(conn)

    def _checkout(self) -> Any:
        pool = self.client.connection_pool
        try:
            return pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name
            return pool.get_connection("MULTI")

    def _readonly(self, name: str) -> bool:
        """Whether the server flags command ``name`` read-only (COMMAND INFO); unknown counts as a write."""
        if name not in self._readonly_cache:
            try:
                with self._connection() as conn:
                    info = roundtrip(conn, [("COMMAND", "INFO", name)])[0]
                self._readonly_cache[name] = bool(info and info[0] and b"readonly" in info[0][2])
            except Exception:  # no COMMAND permission, or an old server: assume it wrote
                self._readonly_cache[name] = False
        return self._readonly_cache[name]

    def close(self) -> None:
        for set_id in list(self._locks):
            self._release(set_id, self._locks.pop(set_id))
        if self.client is not None:
            self._applying.close()
            try:
                self.client.close()
            except Exception:  # closing is best effort
                pass
            self.client = None

    # -- keys and ledger -------------------------------------------------------------

    def _key(self, set_id: str, suffix: str = "") -> str:
        return f"{self.db.prefix}{self.table}:{set_id}{suffix}"

    def _meta(self, set_id: str, status: str, checksum: str | None, duration_ms: int | None = None,
              statement: int | None = None, line: int | None = None, error: str | None = None) -> str:
        entry: dict[str, Any] = {
            "set_id": set_id, "checksum": checksum, "duration_ms": duration_ms, "status": status,
            "statement": statement, "line": line, "error": redact(error)[:_ERROR_MAX] if error else None,
            "applied_by": runner_identity(),
        }
        if status != "applied":
            entry["apply_time"] = int(time.time())  # an applied row's time lives in the version hash
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)

    def applied(self, set_id: str) -> dict[str, LedgerRow]:
        import redis

        ledger, meta = self._key(set_id), self._key(set_id, ":meta")
        with self._reachable("reading the ledger"):
            # One round trip, no MULTI, so that a read-only ACL user can read status. A write
            # landing between the two reads is harmless: only the version hash says "applied".
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(ledger)
            pipe.hgetall(meta)
            try:
                versions, metas = pipe.execute()
            except redis.ResponseError as exc:
                hint = "; they must be hashes (or absent)" if "WRONGTYPE" in str(exc) else ""
                raise OrchestratorError(f"{self.dbid}: cannot read the ledger hashes {ledger} and {meta}: {_one_line(exc)}{hint}") from None
        return ledger_rows(versions, metas, set_id)

    def ensure_ledger(self) -> None:
        """Nothing to create: the hashes appear with their first entry."""

    def record(self, set_id: str, version: str, checksum: str | None) -> None:
        with self._reachable("recording a version"):
            self._scripts["record"](keys=[self._key(set_id), self._key(set_id, ":meta")],
                                    args=[version, int(time.time()), self._meta(set_id, "applied", checksum, 0)])

    def forget(self, set_id: str, version: str) -> None:
        with self._reachable("forgetting a version"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self._key(set_id), version)
            pipe.hdel(self._key(set_id, ":meta"), version)
            pipe.execute()

    # -- locking ---------------------------------------------------------------------

    @contextmanager
    def lock(self, set_id: str, wait: float = defaults.LOCK_WAIT) -> Iterator[None]:
        if set_id in self._locks:  # re-entrant within one run
            yield
            return
        key = self._key(set_id, ":lock")
        scope = process_scope()
        token = f"{secrets.token_hex(8)}{'.' + scope if scope else ''} {int(time.time())} {runner_identity()}"
        ttl = int(self.lock_ttl_ms)
        deadline = time.monotonic() + wait
        checked: str | None = None  # the holder's value last looked at: each value is judged once
        with self._reachable("taking the lock"):
            while not self.client.set(key, token, nx=True, px=ttl):
                value = self.client.get(key)
                if value is not None and value != checked:
                    checked = value
                    if self._take_over_if_gone(set_id, key, value, token, ttl):
                        break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockHeld(self.dbid, set_id, self._holder_for_error(set_id, key))
                time.sleep(min(defaults.LOCK_POLL, remaining))
        self._check_scripting(set_id, key, token, ttl)
        self._locks[set_id] = Heartbeat(self._scripts["renew"], self.dbid, set_id, key, token, ttl)
        try:
            yield
        finally:
            beat = self._locks.pop(set_id, None)
            if beat is not None:
                self._release(set_id, beat)

    def _check_scripting(self, set_id: str, key: str, token: str, ttl: int) -> None:
        """Renew once now: a user who may not run scripts learns it before the migrations, not at release."""
        import redis

        try:
            self._scripts["renew"](keys=[key], args=[token, ttl])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TargetUnreachable(self.dbid, f"connection lost while taking the lock: {_one_line(exc)}") from None
        except redis.ResponseError as exc:
            with self._reachable("dropping the lock"):
                self.client.delete(key)  # just taken, still ours
            raise OrchestratorError(f"{self.dbid}/{set_id}: cannot renew the lock: {_one_line(exc)}; the lock's renewal and "
                                    "safe release need EVALSHA and SCRIPT LOAD (+@scripting) for this user") from None

    def _take_over_if_gone(self, set_id: str, key: str, value: str, token: str, ttl: int) -> bool:
        """Take a lock whose holder ran on this host, in this boot and PID namespace, and has exited.

        Compare-and-set on the exact value seen: a holder that renewed or released
        meanwhile, or a runner that took the lock first, keeps it.
        """
        if holder_state(value) != "gone":
            return False
        import redis

        try:
            taken = self._scripts["take_over"](keys=[key], args=[value, token, ttl])
        except redis.ResponseError as exc:  # no scripting for this user: wait for the TTL instead
            log.debug("%s/%s: cannot take over the lock: %s", self.dbid, set_id, _one_line(exc))
            return False
        if taken:
            log.warning("%s/%s: took over the lock of %s: that process no longer exists", self.dbid, set_id, holder_text(value))
        return bool(taken)

    def _holder_for_error(self, set_id: str, key: str) -> str:
        """The holder for a LockHeld message; a holder known to be gone comes with when its lock expires."""
        value = self.client.get(key)
        if value is None:
            return ""
        state = holder_state(value)
        pttl = self.client.pttl(key) if state in ("gone", "gone?") else 0
        return holder_for_error(value, state, pttl)

    def _release(self, set_id: str, beat: Heartbeat) -> None:
        # Runs in finally blocks and close(): log, never raise over the first failure.
        beat.stop()
        try:
            if not self._scripts["release"](keys=[beat.key], args=[beat.token]):
                log.warning("%s/%s: the lock had expired or was taken over; left to its new holder", self.dbid, set_id)
        except Exception as exc:
            log.warning("%s/%s: releasing the lock failed (it expires within %d ms): %s", self.dbid, set_id, beat.ttl_ms, _one_line(exc))

    def holder(self, set_id: str) -> str | None:
        """``host pid N since HH:MM:SSZ`` of the lock's holder ("" for a foreign value), None when free."""
        with self._reachable("reading the lock"):
            value = self.client.get(self._key(set_id, ":lock"))
        if value is None:
            return None
        return holder_text(value)

    # -- applying ----------------------------------------------------------------------

    def apply(self, script: Script) -> Applied | None:
        checksum, no_transaction = script.inspect()
        beat = self._locks.get(script.set_id)
        if beat is not None and beat.lost:
            raise LockHeld(self.dbid, script.set_id, self.holder(script.set_id) or "")
        if script.kind == "py":
            up = script.load_up()
            return apply_under_dirty_flag(self, script, checksum, lambda: self._python(script, up))
        body = script.derived("redis:body", lambda: file_body(script))
        if no_transaction:
            return apply_under_dirty_flag(self, script, checksum, lambda: self._one_by_one(script, body))
        if self._checked:  # MULTI/EXEC probed on this connection (no file runs without them): one round trip
            done = apply_file(self.client, self._applying, self.dbid, script, body, (self._key(script.set_id),
                              self._key(script.set_id, ":meta")), (self._meta(script.set_id, "applied", checksum, 0),
                              self._meta(script.set_id, "running", checksum)), lambda *failure: self._fail(script, checksum, *failure))
            if done is not UNSUITABLE:
                return done  # type: ignore[no-any-return]
        started = time.monotonic()
        results = self._claim(script, checksum, body)
        self._checked = True
        if results is None:
            return None
        duration = int((time.monotonic() - started) * 1000)
        failures = [(step, reply) for step, reply in zip(body, results, strict=False) if isinstance(reply, Exception)]
        if failures:
            (number, line, _), exc = failures[0]
            more = f" ({len(failures) - 1} more command(s) failed too)" if len(failures) > 1 else ""
            self._fail(script, checksum, duration, number, line, _one_line(exc))
            raise MigrationError(script.label, f"{_one_line(exc)}{more}; the file's other commands were applied "
                                 "(Redis does not roll back), recorded as failed", number, line)
        self._promote(script, checksum, duration)
        return Applied(script.version, len(body), duration)

    def _claim(self, script: Script, checksum: str, body: list[tuple[int, int, list[Any]]]) -> list[Any] | None:
        """Run ``body`` in MULTI/EXEC with a ``running`` meta entry, if the version is still unrecorded.

        Returns the body's replies (errors as exception objects), or None when the
        ledger already holds the version. Raises MigrationError when Redis refused
        the transaction at queue time (nothing ran) and FailedState when another
        runner recorded the version failed or running.
        """
        ledger, meta, version = self._key(script.set_id), self._key(script.set_id, ":meta"), script.version
        running = self._meta(script.set_id, "running", checksum)
        for _ in range(_WATCH_RETRIES):
            with self._reachable(f"applying {script.label}"), self._connection() as conn:
                # An empty MULTI/EXEC first: if this user may not run them, the body would
                # otherwise run outside any transaction.
                probe = roundtrip(conn, [("MULTI",), ("EXEC",), ("WATCH", ledger, meta), ("HEXISTS", ledger, version), ("HGET", meta, version)])
                for reply in probe:
                    if isinstance(reply, Exception):
                        raise OrchestratorError(f"{self.dbid}/{script.set_id}: cannot check the ledger before {script.label}: "
                                                f"{_one_line(reply)}; the user needs MULTI, EXEC, WATCH and hash commands on {ledger}*")
                info = parse_meta(probe[4]) if probe[4] is not None else {}
                if probe[3] or info.get("status") in ("failed", "running"):
                    roundtrip(conn, [("UNWATCH",)])
                    if probe[3]:
                        return None
                    raise FailedState(f"{self.dbid}/{script.set_id}: {version} was recorded {info['status']} by "
                                      f"{info.get('applied_by') or 'another runner'} meanwhile; see 'orchestrator resolve'")
                replies = roundtrip(conn, [("MULTI",), *(argv for _, _, argv in body), ("HSET", meta, version, running), ("EXEC",)])
                outcome = replies[-1]
                if outcome is None:
                    continue  # WATCH fired: another client wrote the ledger; look again
                if isinstance(outcome, Exception):
                    queued = [(i, r) for i, r in enumerate(replies[1:-1]) if isinstance(r, Exception)]
                    conn.disconnect()  # whatever refused EXEC, leave no transaction open
                    if queued and queued[0][0] < len(body):
                        number, line, _ = body[queued[0][0]]
                        raise MigrationError(script.label, f"{_one_line(queued[0][1])}; nothing was applied (Redis refused the transaction)",
                                             number, line)
                    cause = queued[0][1] if queued else outcome
                    raise OrchestratorError(f"{self.dbid}/{script.set_id}: cannot run {script.label} with its ledger entry: "
                                            f"{_one_line(cause)}; nothing was applied")
                if isinstance(outcome[-1], Exception):  # the claim itself failed at run time: keep the body's outcome visible
                    raise OrchestratorError(f"{self.dbid}/{script.set_id}: {script.label} ran but its ledger entry failed: "
                                            f"{_one_line(outcome[-1])}; check {meta}, then 'orchestrator resolve'")
                return list(outcome[:-1])
        raise OrchestratorError(f"{self.dbid}/{script.set_id}: the ledger kept changing under {script.label}; "
                                "another client writes it, try again")

    def _promote(self, script: Script, checksum: str, duration: int) -> None:
        """running -> applied: the version enters the version hash."""
        import redis

        doing = f"recording {script.label} applied"
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._key(script.set_id), script.version, int(time.time()))
        pipe.hset(self._key(script.set_id, ":meta"), script.version, self._meta(script.set_id, "applied", checksum, duration))
        try:
            pipe.execute()
        except redis.ResponseError as exc:
            raise OrchestratorError(f"{self.dbid}/{script.set_id}: {doing}: {_one_line(exc)}; "
                                    "check the data, then 'orchestrator resolve --mark-applied'") from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The EXEC may have been applied with only its reply lost: ask the ledger before saying anything.
            recorded = self._recorded_after_loss(script)
            if recorded:
                log.warning("%s: the connection dropped while recording %s applied; read again, the ledger shows it applied",
                            self.dbid, script.label)
                return
            if recorded is None:
                raise TargetUnreachable(self.dbid, f"connection lost while {doing}: it ran, and whether it was recorded "
                                        f"is unknown until the ledger can be read again ('applied', or 'running' "
                                        f"until 'orchestrator resolve'): {_one_line(exc)}") from None
            raise TargetUnreachable(self.dbid, f"connection lost while {doing}: it ran, and the ledger, read again, "
                                    f"still shows it 'running'; check the data, then 'orchestrator resolve "
                                    f"--mark-applied': {_one_line(exc)}") from None

    def _recorded_after_loss(self, script: Script) -> bool | None:
        """After a lost reply: is the version in the version hash? None when the ledger cannot be read either."""
        try:
            return bool(self.client.hexists(self._key(script.set_id), script.version))
        except Exception as exc:  # still unreachable: the caller words its message by what is known
            log.debug("%s: re-reading the ledger after a lost connection failed: %s", self.dbid, _one_line(exc))
            return None

    def _fail(self, script: Script, checksum: str, duration: int, statement: int | None, line: int | None, error: str) -> None:
        """running -> failed; on error the entry stays ``running``, which blocks the set just the same."""
        try:
            self.client.hset(self._key(script.set_id, ":meta"), script.version,
                             self._meta(script.set_id, "failed", checksum, duration, statement, line, error))
        except Exception as exc:
            log.warning("%s: recording the failure of %s failed (it stays 'running'): %s", self.dbid, script.label, _one_line(exc))

    # -- the dirty flag (orchestrator.targets._dirty), for no-transaction files and Python migrations --

    def dirty_claim(self, script: Script, checksum: str) -> bool:
        self._wrote = False
        return self._claim(script, checksum, []) is not None

    def dirty_applied(self, script: Script, checksum: str, duration_ms: int) -> None:
        self._promote(script, checksum, duration_ms)

    def dirty_failed(self, script: Script, checksum: str, duration_ms: int, failure: MigrationError) -> None:
        if not self._wrote:
            self._unclaim(script)  # nothing changed the data: the set is not blocked
            return
        self._fail(script, checksum, duration_ms, failure.statement, failure.line, failure.message)

    def _unclaim(self, script: Script) -> None:
        """Nothing ran: remove the ``running`` entry so that the set is not blocked."""
        try:
            self.client.hdel(self._key(script.set_id, ":meta"), script.version)
        except Exception as exc:
            log.warning("%s: clearing the claim of %s failed (it stays 'running'): %s", self.dbid, script.label, _one_line(exc))

    def _one_by_one(self, script: Script, body: list[tuple[int, int, list[Any]]]) -> int:
        """``# orchestrator: no-transaction``: commands run one at a time, other clients interleave."""
        ran = 0
        for number, line, argv in body:
            with self._reachable(f"applying {script.label} (statement {number}; it stays 'running')"), self._connection() as conn:
                reply = roundtrip(conn, [argv])[0]
            if isinstance(reply, Exception):
                self._wrote = self._wrote or command_name(argv) in SCRIPT_COMMANDS  # a script stops at its error; what ran stays
                after = "the commands before it stay applied, recorded as failed" if self._wrote else "nothing was applied"
                raise MigrationError(script.label, f"{_one_line(reply)}; {after}", number, line)
            ran += 1
            self._wrote = self._wrote or not self._readonly(command_name(argv))
        return ran

    def _python(self, script: Script, up: Any) -> int:
        import redis

        handle = RedisHandle(self.client, self.dbid, self.db.prefix, script.label, self._readonly)
        try:
            if up(handle) is False:
                raise MigrationError(script.label, "up() returned False", handle.failed_at)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Outcome unknown: the claim stays 'running' and blocks the set.
            raise TargetUnreachable(self.dbid, f"connection lost while applying {script.label} (it stays 'running'): "
                                    f"{_one_line(exc)}") from None
        except OrchestratorError:
            raise
        except Exception as exc:
            raise MigrationError(script.label, f"up() raised {type(exc).__name__}: {_one_line(exc)}".rstrip(": "),
                                 handle.failed_at, raise_line(exc, script.path)) from None
        finally:
            self._wrote = handle.ran_any
        return handle.statements
