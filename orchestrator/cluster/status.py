"""``orchestrator cluster status``: the live replicas (and dead ones until their lease ends) and the queued work."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from orchestrator.cluster import control, store
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config import PostgresqlConfig

__all__ = ["command", "read", "render"]


def command(config_path: str, as_json: bool, out: TextIO | None = None) -> int:
    """``orchestrator cluster status CONFIG [--json]``: 0 when read, 2 without daemon.cluster, 3 when the store is away."""
    from orchestrator import config as config_module
    from orchestrator.config import PostgresqlConfig

    config = config_module.load(config_path)
    spec = config.daemon.cluster
    if spec is None:
        raise ConfigError(f"{config.path.name}: no daemon.cluster in the config: cluster status reads the control "
                          "store that daemon.cluster.store names")
    db = config.database(spec.store)
    assert isinstance(db, PostgresqlConfig)
    doc = read(db, spec.lease)
    out = out or sys.stdout
    out.write(json.dumps(doc, indent=2) + "\n" if as_json else render(doc))
    return 0


def read(db: PostgresqlConfig, lease: float) -> dict[str, Any]:
    """The cluster as the control store sees it (StoreUnavailable when it cannot be read)."""
    with store.session(db) as conn:
        steps = store.applied_steps(conn)
        if not steps:
            return {"store": db.dbid, "schema_steps": [], "replicas": [], "queued": [], "lease_s": lease}
        return {"store": db.dbid, "schema_steps": steps, "lease_s": lease,
                "replicas": control.replicas(conn, lease), "queued": control.queued(conn)}


def render(doc: dict[str, Any]) -> str:
    """The text form: one line per replica, then the queued work."""
    lines = [f"control store {doc['store']} (lease {doc['lease_s']:g} s, schema step "
             f"{max(doc['schema_steps'], default=0)})"]
    replicas = doc["replicas"]
    lines.append(f"{len(replicas)} replica(s)")
    for r in replicas:
        claims = ", ".join(r["claims"]) if r["claims"] else "-"
        lines.append(f"  {r['owner']:<32} {r['state']:<8} heartbeat {r['heartbeat']} ({r['heartbeat_age_s']:g} s ago)"
                     f"  claims: {claims}")
    queued = doc["queued"]
    lines.append(f"{len(queued)} target(s) queued")
    for q in queued[:50]:
        when = f" not before {q['not_before']}" if q["not_before"] else ""
        lines.append(f"  {q['target']:<32} {', '.join(q['sets'])} ({q['reason']}){when}")
    if len(queued) > 50:
        lines.append(f"  ... and {len(queued) - 50} more")
    return "\n".join(lines) + "\n"
