"""``validate``: check config, sets and ledgers without changing anything.

The config is checked by loading it (a fault is a ConfigError, exit 2). Every set
is checked for every engine bound to it: entries that would be ignored (unknown
extension, stray files in a migration folder), numeric prefixes that sort out of
numeric order, a migration with no file for an engine, and each file read,
decoded, its directives parsed, SQL split, Redis commands parsed and Python
compiled. Every reachable target's ledger is then compared with the files (the
fleet status read: drift and failed rows). One line per finding.
"""

from __future__ import annotations

import ast
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import MigrationError, OrchestratorError, exit_code_for_state, worst_exit_code
from orchestrator.fleet import prepare, read_status
from orchestrator.state import SetInfo, one_line

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.lint import Finding

__all__ = ["Validation", "validate", "validation"]


@dataclass
class Validation:
    """Findings of ``validate``, one line each; targets whose ledger could not be read are listed apart."""

    findings: list[str]
    unreachable: list[str]
    sets: int = 0
    targets: int = 0
    wall_ms: int = 0
    lint: list[Finding] = field(default_factory=list)  # the linter's findings: errors fail, warnings only show
    offline: bool = False  # no ledger was read

    @property
    def lint_errors(self) -> int:
        return sum(1 for f in self.lint if f.severity == "error")

    @property
    def exit_code(self) -> int:
        """A finding counts as a failed binding, a ledger not checked as an unreachable one (1 before 3, else 0)."""
        codes = [exit_code_for_state("failed")] if self.findings or self.lint_errors else []
        if self.unreachable:
            codes.append(exit_code_for_state("unreachable"))
        return worst_exit_code(codes)

    def to_json(self) -> dict[str, Any]:
        return {"command": "validate", "exit_code": self.exit_code, "sets": self.sets, "targets": self.targets,
                "findings": list(self.findings), "unreachable": list(self.unreachable), "wall_ms": self.wall_ms,
                "lint": [f.as_dict() for f in self.lint], "offline": self.offline}


def _ignored_entries(info: SetInfo) -> list[str]:
    from orchestrator.sets import ENGINE_FILES

    assert info.mset is not None
    mset = info.mset
    known = {m.path.name for m in mset.migrations}
    engine_files = {name for names in ENGINE_FILES.values() for name in names}
    findings = []
    for entry in sorted(os.scandir(mset.folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name == "__pycache__" or entry.name.endswith(".down.sql"):
            continue  # hidden files, caches and forward-only down files are ignored on purpose
        if entry.name not in known:
            findings.append(f"{mset.name}/{entry.name}: ignored (unknown extension; use .sql, .py, .redis or a folder)")
        elif entry.is_dir():
            for child in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if not child.name.startswith(".") and child.name != "__pycache__" and child.name not in engine_files:
                    findings.append(f"{mset.name}/{entry.name}/{child.name}: ignored (expected {', '.join(sorted(engine_files))})")
    return findings


def _check_set(info: SetInfo, drivers: dict[str, int]) -> list[str]:
    """Every file of a set, for every engine it is bound to (``drivers``: engine -> bound targets)."""
    from orchestrator.sets import numeric_order_warning

    if info.error is not None or info.mset is None:
        return [info.error or f"{info.spec.name}: unreadable"]
    mset = info.mset
    findings = _ignored_entries(info)
    warning = numeric_order_warning(mset)
    if warning:
        findings.append(warning)
    seen: set[str] = set()
    for migration in mset.migrations:
        for driver, bound in drivers.items():
            try:
                script = migration.script_for(driver)
            except MigrationError as exc:
                findings.append(f"{one_line(exc)}; {bound} {driver} target(s) are bound to {mset.name}")
                continue
            # A generic file is checked once, though each SQL dialect splits it on its own.
            if str(script.path) in seen:
                continue
            seen.add(str(script.path))
            try:
                script.prepare()
                empty = script.emptiness(driver)
                if empty is not None:  # catch-up would refuse it: never applied, never recorded
                    findings.append(f"{script.label}: {empty}")
                elif script.kind == "py" and not any(
                        isinstance(node, ast.FunctionDef) and node.name == "up" for node in ast.parse(script.text()).body):
                    findings.append(f"{script.label}: defines no up(db) function")
            except OrchestratorError as exc:
                findings.append(one_line(exc))
    return findings


def validation(config: Config | str | Path, set_name: str | None = None, target: str | None = None,
               workers: int | None = None, config_name: str | None = None, offline: bool = False) -> Validation:
    """Check the selected sets' files (and lint them) and every reachable target's ledger against them; changes nothing.

    ``config`` is a loaded Config or a path to config.json. ``offline`` reads no ledger: no connection at all.
    """
    from orchestrator.lint import engines_of, lint_set

    started = time.monotonic()
    run = prepare(config, set_name, target, config_name=config_name)
    result = Validation([], [], sets=len(run.infos), targets=len(run.groups), offline=offline)
    for info in run.infos.values():
        drivers: dict[str, int] = {}
        for dbid, names in run.groups.items():
            if info.spec.name in names:
                driver = dbid.split(".", 1)[0]
                drivers[driver] = drivers.get(driver, 0) + 1
        result.findings.extend(_check_set(info, drivers))
        if info.mset is not None:
            result.lint.extend(lint_set(info.mset, set(drivers) | engines_of(info.spec.patterns)))
    if offline:
        result.wall_ms = int((time.monotonic() - started) * 1000)
        return result
    for b in read_status(run, workers).bindings:
        if b.set_error:
            continue  # already a finding of the set
        if b.state == "unreachable":
            result.unreachable.append(f"{b.error} (ledger of {b.set_id} not checked)")
        elif b.state == "failed":
            result.findings.append(b.error or f"{b.dbid}/{b.set_id}: failed")
        result.findings.extend(b.drift)
    result.wall_ms = int((time.monotonic() - started) * 1000)
    return result


def validate(config: Config | str | Path, set_name: str | None = None, target: str | None = None) -> list[str]:
    """One line per finding (file problems, drift, failed rows, unreachable targets); empty when clean."""
    result = validation(config, set_name, target)
    return result.findings + result.unreachable
