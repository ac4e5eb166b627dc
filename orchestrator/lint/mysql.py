"""MySQL/MariaDB rules: ALTER TABLE that copies or locks the table, destructive drops and renames.

InnoDB runs most ALTER TABLE clauses in place without blocking writes (adding a
column or an ordinary index, dropping an index); those that change a column's type
(MODIFY/CHANGE), add a foreign key with checks on or a CHECK constraint, convert the
character set, change the engine or drop the primary key copy the table. An ALTER
that says ``LOCK=NONE`` or ``ALGORITHM=INSTANT`` is safe as written: the server
refuses it rather than copying. The clauses are read from the statement text
(comments and strings removed), with the tables created earlier in the file skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from orchestrator.lint.rules import Hit
from orchestrator.lint.sqltext import ident, normalize, top_level_parts
from orchestrator.sqlsplit import mysql_parts, split

__all__ = ["check", "online_alter"]

_NAME = r"([\w$.]+)"
_CREATE = re.compile(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.I)
_DROP = re.compile(r"^DROP\s+(?:TEMPORARY\s+)?TABLES?\s+(?:IF\s+EXISTS\s+)?(.+?)(?:\s+(?:RESTRICT|CASCADE))?$", re.I)
_RENAME_TABLE = re.compile(r"^RENAME\s+TABLES?\s+(.+)$", re.I)
_ALTER = re.compile(rf"^ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?{_NAME}\s+(.*)$", re.I | re.S)
_CREATE_INDEX = re.compile(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:ONLINE\s+)?(UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+)?INDEX\s+.*?\sON\s+{_NAME}(.*)$", re.I | re.S)
_FK_CHECKS = re.compile(r"^SET\s+(?:SESSION\s+|@@(?:SESSION\.)?)?FOREIGN_KEY_CHECKS\s*=\s*(\w+)", re.I)
_ALGORITHM = re.compile(r"\bALGORITHM\s*=?\s*(\w+)", re.I)
_LOCK = re.compile(r"\bLOCK\s*=?\s*(\w+)", re.I)
_COPY_CLAUSES = (
    (re.compile(r"^(?:MODIFY|CHANGE)\b", re.I), "changes a column definition"),
    (re.compile(r"^ADD\s+(?:CONSTRAINT\s+(?:[\w$]+\s+)?)?CHECK\b", re.I), "adds a CHECK constraint"),
    (re.compile(r"^CONVERT\s+TO\b", re.I), "converts the character set"),
    (re.compile(r"^ENGINE\s*=?", re.I), "rebuilds the table"),
    (re.compile(r"^ORDER\s+BY\b", re.I), "reorders the table"),
)
_DROP_PRIMARY = re.compile(r"^DROP\s+PRIMARY\s+KEY\b", re.I)
_ADD_PRIMARY = re.compile(r"^ADD\s+(?:CONSTRAINT\s+(?:[\w$]+\s+)?)?PRIMARY\s+KEY\b", re.I)
_FOREIGN = re.compile(r"^ADD\s+(?:CONSTRAINT\s+(?:[\w$]+\s+)?)?FOREIGN\s+KEY\b", re.I)
_LOCKING = re.compile(r"^ADD\s+(?:FULLTEXT|SPATIAL)\b", re.I)
_DROP_COLUMN = re.compile(r"^DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?(?!(?:INDEX|KEY|PRIMARY|FOREIGN|CONSTRAINT|CHECK|PARTITION|SYSTEM)\b)([\w$]+)", re.I)
_RENAME = re.compile(r"^RENAME\s+(?:COLUMN\s+([\w$]+)\s+TO\s+([\w$]+)|(?:TO\s+|AS\s+)?(?!INDEX\b|KEY\b)([\w$.]+))", re.I)
_CHANGE = re.compile(r"^CHANGE\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?([\w$]+)\s+([\w$]+)", re.I)


def check(text: str, no_transaction: bool = False) -> Iterator[Hit]:
    created: set[str] = set()
    fk_checks_off = False
    for chunk in split(text, "mysql"):
        for statement in mysql_parts(chunk):
            sql = normalize(statement.text, "mysql")
            if m := _FK_CHECKS.match(sql):
                fk_checks_off = m.group(1).lower() in ("0", "off", "false")
            elif m := _CREATE.match(sql):
                created.add(ident(m.group(1)))
            elif m := _DROP.match(sql):
                dropped = [ident(n) for n in m.group(1).split(",")]
                if [n for n in dropped if n not in created]:
                    yield Hit("drop-table", statement.line, statement.text)
            elif m := _RENAME_TABLE.match(sql):
                pairs = [p.split() for p in top_level_parts(m.group(1))]
                if any(p and ident(p[0]) not in created for p in pairs):
                    yield Hit("rename", statement.line, statement.text)
            elif m := _CREATE_INDEX.match(sql):
                if (m.group(1) or "").strip().upper() in ("FULLTEXT", "SPATIAL") and ident(m.group(2)) not in created \
                        and not _online(m.group(3)):
                    yield Hit("alter-table-lock", statement.line, statement.text)
            elif (m := _ALTER.match(sql)) and ident(m.group(1)) not in created:
                for rule_id, detail in _alter(m.group(2), fk_checks_off):
                    yield Hit(rule_id, statement.line, statement.text, detail)


def _online(clauses: str) -> bool:
    """LOCK=NONE or ALGORITHM=INSTANT: the server refuses the ALTER rather than copy or lock."""
    lock = _LOCK.search(clauses)
    algorithm = _ALGORITHM.search(clauses)
    return bool((lock and lock.group(1).upper() == "NONE") or (algorithm and algorithm.group(1).upper() == "INSTANT"))


def _alter(clauses: str, fk_checks_off: bool) -> Iterator[tuple[str, str]]:
    online = _online(clauses)
    algorithm = _ALGORITHM.search(clauses)
    lock = _LOCK.search(clauses)
    copy: list[str] = []
    locking: list[str] = []
    if algorithm and algorithm.group(1).upper() == "COPY":
        copy.append("ALGORITHM=COPY")
    if lock and lock.group(1).upper() in ("SHARED", "EXCLUSIVE"):
        locking.append(f"LOCK={lock.group(1).upper()}")
    parts = top_level_parts(clauses)
    if any(_DROP_PRIMARY.match(p) for p in parts) and not any(_ADD_PRIMARY.match(p) for p in parts):
        copy.append("drops the primary key without adding another")  # drop and add together runs in place
    for part in parts:
        for pattern, why in _COPY_CLAUSES:
            if pattern.match(part):
                copy.append(why)
        if _FOREIGN.match(part) and not fk_checks_off:
            copy.append("adds a foreign key with foreign_key_checks on")
        if _LOCKING.match(part):
            locking.append("adds a FULLTEXT/SPATIAL index")
        if m := _DROP_COLUMN.match(part):
            yield "drop-column", m.group(1)
        if m := _RENAME.match(part):
            yield "rename", (f"{m.group(1)} to {m.group(2)}" if m.group(1) else f"to {m.group(3)}")
        elif (m := _CHANGE.match(part)) and m.group(1).lower() != m.group(2).lower():
            yield "rename", f"{m.group(1)} to {m.group(2)}"
    if copy and not online:
        yield "alter-table-copy", "; ".join(dict.fromkeys(copy))
    if locking and not online:
        yield "alter-table-lock", "; ".join(dict.fromkeys(locking))


_ONLINE_TARGET = re.compile(r"^\s*ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\b", re.I)
_PARTITION_OR_RENAME_ONLY = re.compile(r"^(?:RENAME|(?:ADD|DROP|REORGANIZE|TRUNCATE|COALESCE|EXCHANGE|REMOVE)\s+PARTITION)", re.I)


def online_alter(statement: str) -> str:
    """``ALTER TABLE ...`` with ``, ALGORITHM=INPLACE, LOCK=NONE`` added unless it names an algorithm or lock already.

    For the opt-in setting that makes the server refuse an ALTER it would run by
    copying or locking the table. Other statements come back unchanged.
    """
    if not _ONLINE_TARGET.match(statement):
        return statement
    sql = normalize(statement, "mysql")
    m = _ALTER.match(sql)
    if not m or _ALGORITHM.search(m.group(2)) or _LOCK.search(m.group(2)):
        return statement
    parts = top_level_parts(m.group(2))
    if not parts or any(_PARTITION_OR_RENAME_ONLY.match(p) for p in parts):
        return statement
    # On a line of its own: a trailing line comment would swallow it otherwise.
    return statement.rstrip().rstrip(";").rstrip() + "\n, ALGORITHM=INPLACE, LOCK=NONE"
