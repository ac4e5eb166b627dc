"""SQLite rules: the table-rebuild pattern without foreign-key handling, destructive drops and renames.

SQLite changes most of a table's shape by rebuilding it: create the new table, copy
the rows, ``DROP TABLE x``, ``ALTER TABLE new_x RENAME TO x``. With foreign keys on,
the drop deletes (or cascades to) referencing rows; with them off, nothing checks the
references afterwards. SQLite's own procedure turns them off outside the transaction
(``PRAGMA foreign_keys`` does nothing inside one) and runs ``PRAGMA foreign_key_check``
before committing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from orchestrator.lint.rules import Hit
from orchestrator.lint.sqltext import ident, normalize
from orchestrator.sqlsplit import split

__all__ = ["check"]

_NAME = r"([\w$.]+)"
_CREATE = re.compile(rf"^CREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.I)
_DROP = re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_NAME}", re.I)
_ALTER = re.compile(rf"^ALTER\s+TABLE\s+{_NAME}\s+(.*)$", re.I)
_RENAME_TO = re.compile(rf"^RENAME\s+TO\s+{_NAME}", re.I)
_RENAME_COLUMN = re.compile(r"^RENAME\s+(?:COLUMN\s+)?(?!TO\b)([\w$]+)\s+TO\s+([\w$]+)", re.I)
_DROP_COLUMN = re.compile(r"^DROP\s+(?:COLUMN\s+)?([\w$]+)", re.I)
_FK_CHECK = re.compile(r"^PRAGMA\s+(?:main\s*\.\s*)?foreign_key_check\b", re.I)


def check(text: str, no_transaction: bool = False) -> Iterator[Hit]:
    created: set[str] = set()
    dropped: dict[str, tuple[int, str]] = {}  # table -> (line, statement) of its DROP TABLE
    rebuilt: dict[str, tuple[int, str]] = {}  # table -> the RENAME TO that completed a rebuild, until checked
    for statement in split(text, "sqlite"):
        sql = normalize(statement.text, "sqlite")
        if _FK_CHECK.match(sql):
            rebuilt.clear()  # the references were checked after the rebuilds before it
        elif m := _CREATE.match(sql):
            created.add(ident(m.group(1)))
        elif m := _DROP.match(sql):
            name = ident(m.group(1))
            if name not in created:
                dropped[name] = (statement.line, statement.text)
        elif m := _ALTER.match(sql):
            table, clause = ident(m.group(1)), m.group(2)
            if r := _RENAME_TO.match(clause):
                new_name = ident(r.group(1))
                if new_name in dropped:  # the rebuild pattern: the new table takes over the old one's name
                    del dropped[new_name]
                    rebuilt[new_name] = (statement.line, statement.text)
                elif table not in created:
                    yield Hit("rename", statement.line, statement.text, f"{table} to {new_name}")
            elif (r := _RENAME_COLUMN.match(clause)) and table not in created:
                yield Hit("rename", statement.line, statement.text, f"{r.group(1)} to {r.group(2)}")
            elif (r := _DROP_COLUMN.match(clause)) and table not in created:
                yield Hit("drop-column", statement.line, statement.text, r.group(1))
    for line, text_ in dropped.values():
        yield Hit("drop-table", line, text_)
    for table, (line, text_) in rebuilt.items():
        yield Hit("rebuild-foreign-keys", line, text_, table)
