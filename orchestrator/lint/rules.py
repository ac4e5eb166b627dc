"""Every lint rule: id, severity, the engines it checks, why it matters and the safe form, in one table.

``error`` marks a statement that takes a lock strong enough, or long enough, to stall
a busy table (or fails outright); ``warning`` marks a destructive or breaking change
that may well be intended. The README's rule table is written from this one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["RULES", "Finding", "Hit", "Rule", "rule"]


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # "error" | "warning"
    engines: tuple[str, ...]
    why: str
    safe: str


@dataclass(frozen=True)
class Hit:
    """What an engine checker found: a rule at a file line, for a statement."""

    rule: str
    line: int
    statement: str
    detail: str = ""


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    file: str
    line: int
    statement: str
    message: str
    safe: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity} {self.rule}: {self.message}: {self.statement}; safe: {self.safe}"


_PG = ("postgresql",)
_MY = ("mysql",)
_SQL = ("postgresql", "mysql", "sqlite")

_TABLE = [
    Rule("index-not-concurrent", "error", _PG,
         "CREATE INDEX without CONCURRENTLY blocks every write to the table while the index builds",
         "CREATE INDEX CONCURRENTLY in a file that starts with '-- orchestrator: no-transaction'"),
    Rule("concurrently-in-transaction", "error", _PG,
         "CONCURRENTLY cannot run inside a transaction block: the migration fails",
         "make '-- orchestrator: no-transaction' the file's first line"),
    Rule("constraint-not-valid", "error", _PG,
         "ADD CONSTRAINT (foreign key or check) scans the whole table under a lock that blocks writes",
         "ADD CONSTRAINT ... NOT VALID, then ALTER TABLE ... VALIDATE CONSTRAINT in a later migration (or a no-transaction file)"),
    Rule("unique-constraint", "error", _PG,
         "ADD PRIMARY KEY / UNIQUE builds its index while holding ACCESS EXCLUSIVE on the table",
         "CREATE UNIQUE INDEX CONCURRENTLY (no-transaction file), then ADD CONSTRAINT ... UNIQUE USING INDEX"),
    Rule("validate-same-transaction", "warning", _PG,
         "VALIDATE CONSTRAINT in the same transaction as its ADD ... NOT VALID still scans under the ADD's ACCESS EXCLUSIVE lock",
         "VALIDATE CONSTRAINT in a later migration, or make the file no-transaction"),
    Rule("column-type-rewrite", "error", _PG,
         "ALTER COLUMN ... TYPE rewrites the table and its indexes under ACCESS EXCLUSIVE (unless the change is binary-coercible)",
         "add a new column, backfill it in batches, switch readers, drop the old one (waive it for varchar(n) to text or a longer varchar)"),
    Rule("set-not-null", "error", _PG,
         "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE unless a validated CHECK (col IS NOT NULL) proves it",
         "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT c in a later migration, then SET NOT NULL"),
    Rule("volatile-default", "error", _PG,
         "ADD COLUMN with a volatile default (random(), gen_random_uuid(), clock_timestamp(), serial, identity, stored generated) rewrites the table",
         "add the column without a default, set the default, then backfill existing rows in batches"),
    Rule("vacuum-full", "error", _PG,
         "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE",
         "plain VACUUM, or pg_repack outside the migration"),
    Rule("cluster", "error", _PG,
         "CLUSTER rewrites the table under ACCESS EXCLUSIVE",
         "pg_repack --order-by outside the migration"),
    Rule("reindex-not-concurrent", "error", _PG,
         "REINDEX without CONCURRENTLY blocks writes (and reads using the index) while it runs",
         "REINDEX ... CONCURRENTLY in a no-transaction file"),
    Rule("lock-table", "error", _PG,
         "LOCK TABLE holds a lock until the migration commits, queueing every query on the table behind it",
         "drop the explicit lock and keep the migration short; the lock timeout bounds what each statement waits"),
    Rule("enum-value-used", "error", _PG,
         "a value added by ALTER TYPE ... ADD VALUE cannot be used before that transaction commits: the migration fails",
         "use the new value in a later migration, or make the file no-transaction"),
    Rule("alter-table-copy", "error", _MY,
         "this ALTER TABLE may copy the whole table, blocking writes (and replicas) for as long as the copy takes",
         "add ', ALGORITHM=INPLACE, LOCK=NONE' (or INSTANT) so the server refuses instead of copying, or use an online schema change tool"),
    Rule("alter-table-lock", "error", _MY,
         "this ALTER TABLE needs a shared or exclusive table lock (FULLTEXT/SPATIAL index, LOCK=SHARED|EXCLUSIVE)",
         "add ', LOCK=NONE' so the server refuses instead of locking, or run it in a quiet window with an online schema change tool"),
    Rule("rebuild-foreign-keys", "warning", ("sqlite",),
         "a table rebuild (DROP TABLE x, then RENAME TO x) without foreign-key handling can cascade deletes or leave broken references",
         "'-- orchestrator: no-transaction' with PRAGMA foreign_keys=OFF, BEGIN, the rebuild, PRAGMA foreign_key_check, COMMIT"),
    Rule("drop-table", "warning", _SQL,
         "DROP TABLE destroys data, and code still reading the table fails",
         "stop using the table in the code first, deploy, then drop it in a later migration (waive it once that is done)"),
    Rule("drop-column", "warning", _SQL,
         "DROP COLUMN destroys data, and code still selecting the column fails",
         "stop using the column in the code first, deploy, then drop it in a later migration (waive it once that is done)"),
    Rule("rename", "warning", _SQL,
         "renaming a table or column breaks code that still uses the old name",
         "add the new name beside the old one (a new column or a view), move the code over, then drop the old name"),
    Rule("redis-keys", "error", ("redis",),
         "KEYS walks the whole keyspace in one command, blocking the server meanwhile",
         "SCAN with MATCH and COUNT (scan_iter(match=..., count=...) in Python)"),
    Rule("redis-flush", "error", ("redis",),
         "FLUSHALL/FLUSHDB deletes every key of the database (or server), not just this application's",
         "delete the set's own keys: SCAN MATCH prefix:* then DEL/UNLINK in batches"),
    Rule("redis-scan-unbounded", "warning", ("redis",),
         "a SCAN loop without MATCH visits every key of the database",
         "pass match='prefix:*' (and a count) to scan/scan_iter"),
]

RULES: dict[str, Rule] = {r.id: r for r in _TABLE}


def rule(rule_id: str) -> Rule:
    return RULES[rule_id]
