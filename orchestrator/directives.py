"""The ``orchestrator:`` comment directives of a migration file.

A file's leading comment block may hold directive lines (``--`` in SQL, ``#`` in
Python and Redis files)::

    -- orchestrator: no-transaction
    -- orchestrator: lock-timeout=500ms lock-retries=20
    -- orchestrator: allow index-not-concurrent,drop-column

``allow RULE[,RULE]`` also waives lint rules for a single statement when it sits in
the comment lines directly above that statement. This module only reads text; it
imports no database client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["DIRECTIVE", "KNOWN", "DirectiveError", "Directives", "leading", "parse", "statement_waivers"]

DIRECTIVE = re.compile(r"^\s*(?:--|#)\s*orchestrator\s*:\s*(.*?)\s*$", re.I)
KNOWN = ("no-transaction", "lock-timeout=DURATION|off", "lock-retries=N", "allow RULE[,RULE]")
_ALLOW = re.compile(r"allow\s+(.+)", re.I)
_RULE_ID = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


class DirectiveError(ValueError):
    """A directive that cannot be read; the message names what is wrong, the caller adds file and line."""


@dataclass(frozen=True)
class Directives:
    """What a file's leading directive lines say. ``lock_timeout``: seconds, 0 for ``off``, None when unset."""

    no_transaction: bool = False
    lock_timeout: float | None = None
    lock_retries: int | None = None
    allow: frozenset[str] = field(default_factory=frozenset)

    def merge(self, other: Directives) -> Directives:
        return Directives(self.no_transaction or other.no_transaction,
                          other.lock_timeout if other.lock_timeout is not None else self.lock_timeout,
                          other.lock_retries if other.lock_retries is not None else self.lock_retries,
                          self.allow | other.allow)


def parse_timeout(text: str) -> float:
    """``"2s"``, ``"500ms"``... in seconds; ``"off"`` is 0 (wait as long as it takes)."""
    from orchestrator.durations import parse_duration

    if text.strip().lower() in ("off", "0"):
        return 0.0
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"invalid duration {text!r}: must be more than 0, or 'off'")
    return value


def parse(body: str) -> Directives:
    """One directive line's text after ``orchestrator:``; DirectiveError if it is not one this project knows."""
    allow = _ALLOW.fullmatch(body.strip())
    if allow:
        rules = [r.strip().lower() for r in allow.group(1).split(",")]
        bad = [r for r in rules if not _RULE_ID.fullmatch(r)]
        if bad or not rules:
            raise DirectiveError(f"'allow' takes rule ids separated by commas, e.g. 'allow drop-column,rename' (got {allow.group(1)!r})")
        return Directives(allow=frozenset(rules))
    found = Directives()
    for token in body.split():
        key, eq, value = token.partition("=")
        key = key.lower()
        if key == "no-transaction" and not eq:
            found = found.merge(Directives(no_transaction=True))
        elif key == "lock-timeout" and eq:
            try:
                found = Directives(found.no_transaction, parse_timeout(value), found.lock_retries, found.allow)
            except ValueError as exc:
                raise DirectiveError(f"lock-timeout: {exc}") from None
        elif key == "lock-retries" and eq:
            if not value.isdigit():
                raise DirectiveError(f"lock-retries takes a whole number of retries, e.g. lock-retries=20 (got {value!r})")
            found = Directives(found.no_transaction, found.lock_timeout, int(value), found.allow)
        else:
            raise DirectiveError(f"unknown directive {token!r} (known: {', '.join(KNOWN)})")
    if not body.split():
        raise DirectiveError(f"empty directive (known: {', '.join(KNOWN)})")
    return found


def _comment(kind: str) -> str:
    return "#" if kind in ("py", "redis") else "--"


def leading(text: str, kind: str = "sql") -> tuple[Directives, list[tuple[int, str]]]:
    """(merged directives of the leading comment block, [(line, problem)] for lines that are not valid directives)."""
    comment = _comment(kind)
    found = Directives()
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith(comment):
            break
        m = DIRECTIVE.match(stripped)
        if m:
            try:
                found = found.merge(parse(m.group(1)))
            except DirectiveError as exc:
                problems.append((number, str(exc)))
    return found, problems


def statement_waivers(lines: list[str], line: int, kind: str = "sql") -> frozenset[str]:
    """Rules waived by ``allow`` directives in the comment lines directly above file line *line* (1-based)."""
    comment = _comment(kind)
    waived: set[str] = set()
    index = line - 2
    while index >= 0:
        stripped = lines[index].strip()
        if not stripped.startswith(comment):
            break
        m = DIRECTIVE.match(stripped)
        if m and _ALLOW.fullmatch(m.group(1).strip()):
            try:
                waived |= parse(m.group(1)).allow
            except DirectiveError:
                pass  # validate reports it
        index -= 1
    return frozenset(waived)
