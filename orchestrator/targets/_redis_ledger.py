"""Reading the Redis ledger: the version hash and the meta hash, as LedgerRows."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.targets import LedgerRow

__all__ = ["ChecksumRepair", "ledger_rows", "parse_meta"]


def ledger_rows(versions: dict[str, str], metas: dict[str, str], set_id: str) -> dict[str, LedgerRow]:
    """Rows by version: only the version hash says "applied"; a meta entry alone is failed or running."""
    rows: dict[str, LedgerRow] = {}
    for version, stamp in versions.items():
        info = parse_meta(metas.get(version))
        rows[version] = LedgerRow(
            version=version, apply_time=_int(stamp), set_id=info.get("set_id") or set_id, checksum=info.get("checksum"),
            duration_ms=info.get("duration_ms"), status="applied", applied_by=info.get("applied_by"),
        )
    for version, raw in metas.items():
        info = parse_meta(raw) if raw else {}
        status = info.get("status") if raw else None
        if version in rows or status == "applied":
            continue  # only the version hash says "applied"; a stale meta entry alone means nothing
        rows[version] = LedgerRow(
            version=version, apply_time=_int(info.get("apply_time")), set_id=info.get("set_id") or set_id,
            checksum=info.get("checksum"), duration_ms=info.get("duration_ms"),
            status=status if status in ("failed", "running") else "failed",
            statement=info.get("statement"), error=info.get("error") or ("unreadable meta entry" if not info else None),
            applied_by=info.get("applied_by"),
        )
    return dict(sorted(rows.items()))


def parse_meta(raw: str | bytes | None) -> dict[str, Any]:
    """A meta entry as a dict; {} for a missing or hand-edited entry that is not a JSON object."""
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


class ChecksumRepair:
    """RedisTarget's ``accept_checksum``: the meta entry's checksum and applied_by change, nothing else."""

    client: Any

    def _key(self, set_id: str, suffix: str = "") -> str:
        raise NotImplementedError

    def _reachable(self, doing: str) -> Any:
        raise NotImplementedError

    def accept_checksum(self, set_id: str, version: str, checksum: str, note: str) -> bool:
        ledger, meta = self._key(set_id), self._key(set_id, ":meta")
        with self._reachable("accepting a checksum"):
            if not self.client.hexists(ledger, version):
                return False
            entry = parse_meta(self.client.hget(meta, version))
            entry.update(checksum=checksum, applied_by=note, set_id=entry.get("set_id") or set_id, status="applied")
            self.client.hset(meta, version, json.dumps(entry, separators=(",", ":"), ensure_ascii=False))
            return True
