"""The migration linter: what a migration will lock or destroy, told before it runs, with no database.

:func:`lint_text` checks one file's text for one engine; :func:`lint_set` checks every
file of a set for the engines its targets use. Each :class:`Finding` names a rule
(:data:`RULES`), its severity, the file, line and statement, and the safe form.
``-- orchestrator: allow RULE[,RULE]`` in the comment lines directly above a
statement waives those rules for it; in the file's leading comment block, for the
whole file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from orchestrator import directives
from orchestrator.lint.rules import RULES, Finding, Hit, Rule

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.sets import MigrationSet, Script

__all__ = ["ENGINES", "RULES", "Finding", "Rule", "SetMemory", "engines_of", "exit_code", "lint_config", "lint_script",
           "lint_set", "lint_text"]

ENGINES = ("postgresql", "mysql", "sqlite", "redis")


class SetMemory:
    """What the files of one set tell the ones after them (PostgreSQL: validated NOT NULL checks)."""

    def __init__(self) -> None:
        from orchestrator.lint.postgresql import SetMemory as PgMemory

        self.postgresql = PgMemory()


def _hits(text: str, engine: str, kind: str, no_transaction: bool, memory: SetMemory) -> Iterator[Hit]:
    if kind == "sql" and engine == "postgresql":
        from orchestrator.lint import postgresql

        yield from postgresql.check(text, no_transaction, memory.postgresql)
    elif kind == "sql" and engine == "mysql":
        from orchestrator.lint import mysql

        yield from mysql.check(text, no_transaction)
    elif kind == "sql" and engine == "sqlite":
        from orchestrator.lint import sqlite

        yield from sqlite.check(text, no_transaction)
    elif kind == "redis":
        from orchestrator.lint import redis

        yield from redis.check_commands(text)
    elif kind == "py" and engine == "redis":
        from orchestrator.lint import redis

        yield from redis.check_python(text)


def _short(statement: str, limit: int = 160) -> str:
    one_line = " ".join(statement.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def lint_text(text: str, engine: str, *, label: str, kind: str = "sql", no_transaction: bool | None = None,
              memory: SetMemory | None = None) -> list[Finding]:
    """Findings for one migration file's text run on *engine*, waivers applied, in line order."""
    text = text.lstrip("\ufeff")
    found, problems = directives.leading(text, kind)
    if no_transaction is None:
        no_transaction = found.no_transaction
    findings: list[Finding] = []
    for line, problem in problems:
        findings.append(Finding("directive", "error", label, line, text.splitlines()[line - 1].strip(), problem,
                                "write one of: " + ", ".join(directives.KNOWN)))
    lines = text.splitlines()
    waived_everywhere = found.allow
    for rule_id in sorted(found.allow - RULES.keys()):
        findings.append(_unknown_rule(label, lines, rule_id))
    seen: set[tuple[str, int]] = set()
    for hit in _hits(text, engine, kind, no_transaction, memory or SetMemory()):
        if (hit.rule, hit.line) in seen or hit.rule in waived_everywhere:
            continue
        seen.add((hit.rule, hit.line))
        waived = directives.statement_waivers(lines, hit.line, kind)
        for rule_id in sorted(waived - RULES.keys()):
            findings.append(_unknown_rule(label, lines, rule_id, hit.line - 1))
        if hit.rule in waived:
            continue
        rule = RULES[hit.rule]
        message = rule.why + (f" ({hit.detail})" if hit.detail else "")
        findings.append(Finding(rule.id, rule.severity, label, hit.line, _short(hit.statement), message, rule.safe))
    unique = {(f.rule, f.line, f.message): f for f in findings}
    return sorted(unique.values(), key=lambda f: (f.line, f.rule))


def _unknown_rule(label: str, lines: list[str], rule_id: str, near: int | None = None) -> Finding:
    line = near or next((i for i, text in enumerate(lines, 1) if rule_id in text.lower()), 1)
    return Finding("directive", "error", label, line, lines[line - 1].strip() if lines else "",
                   f"'allow' names unknown rule {rule_id!r}", "use a rule id from the README's rule table: " + ", ".join(RULES))


def lint_script(script: Script, engine: str, memory: SetMemory | None = None) -> list[Finding]:
    """Findings for the file *script* as a target of *engine* runs it."""
    return lint_text(script.text(), engine, label=script.label, kind=script.kind, memory=memory)


def lint_set(migration_set: MigrationSet, engines: Iterable[str]) -> list[Finding]:
    """Findings for every file of a set that a target of one of *engines* runs, each file once per finding.

    A file an engine has no script for is skipped here (validate reports it);
    SetError for an unreadable file propagates.
    """
    from orchestrator.errors import MigrationError, SetError

    engines = sorted(set(engines))
    memories = {engine: SetMemory() for engine in engines}
    findings: dict[tuple[str, int, str], Finding] = {}
    for version in migration_set.versions:
        migration = migration_set.get(version)
        if migration is None:
            continue
        for engine in engines:
            try:
                script = migration.script_for(engine)
                found = lint_script(script, engine, memories[engine])
            except (MigrationError, SetError):
                continue  # no file for this engine, or an unreadable one: validate names it
            for finding in found:
                findings.setdefault((finding.file, finding.line, finding.rule), finding)
    return list(findings.values())


def engines_of(patterns: Iterable[str]) -> set[str]:
    """The engines a set's target patterns and dbids name (``postgresql.*`` -> postgresql); no database needed."""
    return {p.split(".", 1)[0] for p in patterns} & set(ENGINES)


def lint_config(config: Config, set_name: str | None = None) -> list[Finding]:
    """Findings for every set of a loaded config (or one), for the engines bound to it; SetError for an unreadable set."""
    from orchestrator.sets import discover

    findings: list[Finding] = []
    for spec in config.sets.values():
        if set_name is None or spec.name == set_name:
            findings += lint_set(discover(spec.name, spec.folder), engines_of((*spec.patterns, *spec.targets)))
    return findings


def exit_code(findings: Iterable[Finding]) -> int:
    """1 when any finding is an error; warnings alone exit 0."""
    return 1 if any(f.severity == "error" for f in findings) else 0
