"""What the replicas keep in the control store besides the job queue: who is alive, the fleet view, queued set runs.

Plain SQL on our own tables (created by :mod:`.store`); each function takes an open
autocommit connection, so a caller can do several in one session. A replica's claims
are procrastinate's jobs in ``doing`` under the worker id the replica registered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = ["QUEUE", "TASK", "claim_set_run", "heartbeat", "is_stale", "publish", "queued", "read_view",
           "register", "replicas", "stale_after", "unregister"]

TASK = "orchestrator.migrate_target"  # the one procrastinate task: catch up one target's due sets
QUEUE = "orchestrator"
STALE_WITHOUT_SCHEDULE = 600.0  # seconds: a binding of a set without a schedule is stale after 10 minutes


# -- replicas ----------------------------------------------------------------------


def register(conn: psycopg.Connection[Any], host: str, pid: int, version: str) -> int:
    """Add this replica; returns its id."""
    row = conn.execute("INSERT INTO orchestrator_replicas (host, pid, version) VALUES (%s, %s, %s) RETURNING id",
                       (host, pid, version)).fetchone()
    assert row is not None
    return int(row[0])


def heartbeat(conn: psycopg.Connection[Any], replica: int, host: str, pid: int, version: str,
              worker_id: int | None, stopping: bool = False) -> int:
    """Renew this replica's heartbeat (and its worker id); a replica pruned while cut off registers again.

    Returns the replica's id (a new one after such a re-registration)."""
    row = conn.execute("UPDATE orchestrator_replicas SET heartbeat = now(), worker_id = %s, stopping = %s"
                       " WHERE id = %s RETURNING id", (worker_id, stopping, replica)).fetchone()
    if row is not None:
        return replica
    replica = register(conn, host, pid, version)
    conn.execute("UPDATE orchestrator_replicas SET worker_id = %s, stopping = %s WHERE id = %s",
                 (worker_id, stopping, replica))
    return replica


def unregister(conn: psycopg.Connection[Any], replica: int) -> None:
    conn.execute("DELETE FROM orchestrator_replicas WHERE id = %s", (replica,))


def replicas(conn: psycopg.Connection[Any], lease: float) -> list[dict[str, Any]]:
    """Replicas whose lease has not ended (a dead one shows until then), with the targets each has claimed.

    Rows whose lease ended are deleted on the way."""
    conn.execute("DELETE FROM orchestrator_replicas WHERE heartbeat < now() - make_interval(secs => %s)", (lease,))
    rows = conn.execute(
        "SELECT r.id, r.host, r.pid, r.started_at, r.heartbeat, r.stopping, r.version, r.worker_id,"
        "       extract(epoch FROM now() - r.heartbeat),"
        "       coalesce(array_agg(j.args->>'dbid' ORDER BY j.args->>'dbid')"
        "                FILTER (WHERE j.id IS NOT NULL), '{}')"
        "  FROM orchestrator_replicas r"
        "  LEFT JOIN procrastinate_jobs j ON j.worker_id = r.worker_id AND j.status = 'doing'"
        " GROUP BY r.id ORDER BY r.host, r.pid, r.id").fetchall()
    out = []
    for rid, host, pid, started, beat, stopping, version, worker, age, claims in rows:
        alive = float(age) <= lease / 2 if not stopping else False
        out.append({"id": rid, "host": host, "pid": pid, "owner": f"{host} pid {pid}", "version": version,
                    "started": _iso(started), "heartbeat": _iso(beat), "heartbeat_age_s": round(float(age), 1),
                    "state": "stopping" if stopping else ("live" if alive else "silent"),
                    "worker_id": worker, "claims": list(claims)})
    return out


def queued(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Work waiting to be claimed: one row per queued target, soonest first."""
    rows = conn.execute(
        "SELECT args->>'dbid', args->'sets', args->>'reason', scheduled_at, attempts FROM procrastinate_jobs"
        " WHERE task_name = %s AND status = 'todo' ORDER BY coalesce(scheduled_at, '-infinity'), id",
        (TASK,)).fetchall()
    return [{"target": dbid, "sets": list(sets or []), "reason": reason, "not_before": _iso(at), "attempts": attempts}
            for dbid, sets, reason, at, attempts in rows]


# -- the fleet view ----------------------------------------------------------------


def publish(conn: psycopg.Connection[Any], owner: str, bindings: Iterable[dict[str, Any]]) -> int:
    """Store each binding's JSON form (``BindingStatus.to_json()``) as worked on by ``owner`` now."""
    rows = [(b["set"], b["target"], b["state"], json.dumps(b), owner) for b in bindings]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orchestrator_bindings (set_name, dbid, state, binding, owner, updated_at)"
                " VALUES (%s, %s, %s, %s::jsonb, %s, now())"
                " ON CONFLICT (set_name, dbid) DO UPDATE SET state = excluded.state, binding = excluded.binding,"
                " owner = excluded.owner, updated_at = excluded.updated_at", rows)
    return len(rows)


def read_view(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every binding any replica published: its JSON form plus ``owner`` and ``updated`` (UTC ISO 8601)."""
    rows = conn.execute("SELECT binding, owner, updated_at FROM orchestrator_bindings"
                        " ORDER BY set_name, dbid").fetchall()
    out = []
    for binding, owner, updated in rows:
        item = dict(binding)
        item["owner"] = owner
        item["updated"] = _iso(updated)
        out.append(item)
    return out


def stale_after(every: float | None) -> float:
    """Seconds after which a binding not refreshed is stale: twice its set's interval, else 10 minutes."""
    return 2 * every if every else STALE_WITHOUT_SCHEDULE


def is_stale(updated: str | None, now: datetime, every: float | None) -> bool:
    if updated is None:
        return True
    when = datetime.fromisoformat(updated.replace("Z", "+00:00"))
    return now - when > timedelta(seconds=stale_after(every))


# -- set runs ----------------------------------------------------------------------


def claim_set_run(conn: psycopg.Connection[Any], set_name: str, reason: str, window: float, owner: str) -> bool:
    """Whether this replica queues this run of a set: True for the first replica in ``window`` seconds.

    N replicas' schedulers all notice a set's tick; only one of them queues its targets."""
    row = conn.execute(
        "INSERT INTO orchestrator_set_runs AS r (set_name, reason, queued_at, queued_by) VALUES (%s, %s, now(), %s)"
        " ON CONFLICT (set_name, reason) DO UPDATE SET queued_at = now(), queued_by = excluded.queued_by"
        " WHERE r.queued_at < now() - make_interval(secs => %s) RETURNING 1",
        (set_name, reason, owner, window)).fetchone()
    return row is not None


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None
