"""How fleet results look: status table, plan listing, progress bar and summary lines.

On a terminal the status table and the progress bar use rich; otherwise output
is plain aligned text and log lines, stable for scripts and log collectors.
``--json`` prints one JSON document instead (schema in the README). rich is
imported only when a terminal asks for it, so scripted runs stay lean.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

from orchestrator.state import utc

if TYPE_CHECKING:
    from orchestrator.checks import Validation
    from orchestrator.config import Config
    from orchestrator.inventory import Resolution
    from orchestrator.lint import Finding
    from orchestrator.state import BindingStatus, FleetReport

__all__ = ["binding_line", "lint", "lint_findings", "progress", "report", "summary_line", "table_rows", "targets", "utc", "validation"]

log = logging.getLogger("fleet")

_HEADERS = ("SET", "TARGET", "STATE", "APPLIED", "LAST VERSION", "LAST APPLIED (UTC)", "OUT OF ORDER", "ERROR")
_STYLES = {"current": "green", "pending": "yellow", "held": "blue", "capped": "dim", "failed": "bold red", "drift": "magenta",
           "unreachable": "red", "locked": "cyan", "applied": "green"}


def _tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(total: int, command: str, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar over ``total`` targets when stderr is a terminal; a no-op otherwise.

    Yields ``advance()``, safe to call from worker threads. While the bar shows,
    log lines are routed through its console so they print above it.
    """
    if not enabled or total < 2 or not _tty(sys.stderr):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    bar = Progress(TextColumn(f"{command}"), BarColumn(), MofNCompleteColumn(), TextColumn("targets"),
                   TimeElapsedColumn(), console=console, transient=True)
    task = bar.add_task(command, total=total)
    # Only handlers writing to this terminal are rerouted; files and other streams stay as they are.
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr]
    with bar:
        # The bar redraws on stderr; log lines must pass through its console or they tear it.
        # Inside the bar sys.stderr is rich's proxy: a line written there is printed above the bar, which
        # is then redrawn; the console's own file would put the line after the bar's text on its row.
        previous = [h.setStream(sys.stderr) for h in handlers]
        try:
            yield lambda: bar.advance(task)
        finally:
            for handler, stream in zip(handlers, previous, strict=True):
                if stream is not None:
                    handler.setStream(stream)


def _category(b: BindingStatus, command: str) -> str:
    if command == "catch-up" and b.applied_now and b.state in ("current", "pending"):
        return "applied"
    return b.state


def binding_line(b: BindingStatus, command: str) -> None:
    """The log line for one finished binding during catch-up (status and plan print a table instead)."""
    where = f"{b.dbid}/{b.set_id}"
    if command != "catch-up":
        log.debug("%s: %s", where, b.state)
        return
    n = len(b.applied_now)
    did = f"applied {n} migration{'s' if n != 1 else ''}, then " if n else ""
    # Errors that already name the target and their state (unreachable, locked) are not prefixed twice.
    if b.error and b.error.startswith((f"{b.dbid}: {b.state}", f"{where} {b.state}")):
        line = f"{did}{b.error}" if not did else f"{where}: {did}{b.error}"
    else:
        line = f"{where}: {did}{b.state}: {b.error}"
    if b.state in ("failed", "unreachable"):
        log.error("%s", line)
    elif b.state in ("drift", "locked"):
        log.warning("%s", line)
    elif n:
        log.info("%s: applied %d migration%s (%d ms)", where, n, "s" if n != 1 else "", b.duration_ms)
    elif b.state == "pending" and b.waiting:
        log.error("%s", line)  # a pending file with nothing to run: not applied, said once per change
    elif b.state == "pending":
        log.info("%s: %d pending, not applied (apply: %s)", where, len(b.pending), b.apply)
    else:
        log.debug("%s: current", where)


def _state_text(b: BindingStatus) -> str:
    if b.state == "pending":
        return f"pending {len(b.pending)}"
    if b.state == "held":
        return f"held {len(b.held)}"
    if b.state == "capped":
        return f"capped {len(b.capped)}"
    return b.state


def table_rows(report: FleetReport) -> list[tuple[str, ...]]:
    """The status table's cells, one tuple per binding, in _HEADERS order."""
    return [
        (b.set_id, b.dbid, _state_text(b), str(b.applied), b.last_version or "-", utc(b.last_apply_time) or "-",
         ", ".join(b.out_of_order) or "-", b.error or b.hold_reason or "")
        for b in report.bindings
    ]


def _plain_table(rows: list[tuple[str, ...]], stream: IO[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(_HEADERS)]
    for row in [_HEADERS, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        stream.write("  ".join(cells).rstrip() + "\n")


def _rich_table(report: FleetReport, stream: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = table_rows(report)
    table = Table(show_edge=False, header_style="bold")
    for i, header in enumerate(_HEADERS):
        # Set, target, state, counts, versions and times never wrap (a version split over two lines
        # reads as two); the out-of-order list and the error fold instead.
        keep = header not in ("OUT OF ORDER", "ERROR")
        widest = max([len(header), *(len(r[i]) for r in rows)])
        table.add_column(header, no_wrap=keep, min_width=widest if keep else None, overflow="fold",
                         justify="right" if header == "APPLIED" else "left")
    for b, row in zip(report.bindings, rows, strict=True):
        table.add_row(*row[:2], Text(row[2], style=_STYLES.get(b.state, "")), *row[3:])
    Console(file=stream).print(table)


def summary_line(report: FleetReport) -> str:
    """One closing line: bindings per outcome, migrations applied, wall time."""
    counts: dict[str, int] = {}
    for b in report.bindings:
        category = _category(b, report.command)
        counts[category] = counts.get(category, 0) + 1
    order = ("applied", "current", "pending", "held", "capped", "failed", "drift", "locked", "unreachable")
    parts = ", ".join(f"{counts[c]} {c}" for c in order if counts.get(c)) or "nothing selected"
    head = f"{report.command}: {len(report.targets)} target{'s' if len(report.targets) != 1 else ''}, " \
           f"{len(report.bindings)} binding{'s' if len(report.bindings) != 1 else ''}: {parts}"
    seconds = f"{report.wall_ms / 1000:.2f} s"
    if report.command == "catch-up":
        n = sum(len(b.applied_now) for b in report.bindings)
        return f"{head}; {n} migration{'s' if n != 1 else ''} applied in {seconds}"
    if report.command == "plan":
        todo = [b for b in report.bindings if b.pending and b.apply == "auto" and b.state not in ("failed", "unreachable")]
        n = sum(len(b.pending) for b in todo)
        return f"{head}; catch-up would apply {n} migration{'s' if n != 1 else ''} on {len({b.dbid for b in todo})} " \
               f"target(s); nothing was changed ({seconds})"
    return f"{head} ({seconds})"


def _plan_text(report: FleetReport, stream: IO[str]) -> None:
    by_target: dict[str, list[BindingStatus]] = {}
    for b in report.bindings:
        by_target.setdefault(b.dbid, []).append(b)
    for dbid, bindings in by_target.items():
        stream.write(f"{dbid}\n")
        for b in bindings:
            stream.writelines(f"{line}\n" for line in _plan_lines(b))


def _plan_lines(b: BindingStatus) -> list[str]:
    """One binding's block under its target in the plan listing."""
    if b.state in ("failed", "unreachable", "locked"):
        # The target heads this block: an error that opens with it would say it twice.
        error = (b.error or "").removeprefix(f"{b.dbid}: ").removeprefix(f"{b.dbid}/{b.set_id} ")
        head = [f"  {b.set_id}: {error if error.startswith(b.state) else f'{b.state}: {error}'}"]
        if b.state != "failed":
            return head
        return head + ([f"  {b.set_id}: blocked, {len(b.pending)} pending not applied until resolved"] if b.pending else [])
    lines = [_plan_head(b)] if b.pending or b.state == "current" else []
    for version in b.pending:
        flag = "  (out of order: older than the newest applied)" if version in b.out_of_order else ""
        lines.append(f"      {version}{flag}")
    if b.pending and b.error:
        lines.append(f"    warning: {b.error}")
    if b.state == "drift":
        lines += [f"    drift: {line}" for line in b.drift]
    if b.held:
        lines.append(f"  {b.set_id}: held {len(b.held)} ({b.hold_reason or 'rollout'}): {', '.join(b.held)}")
    if b.capped:
        lines.append(f"  {b.set_id}: capped {len(b.capped)} (past its until or pin): {', '.join(b.capped)}")
    return lines


def _plan_head(b: BindingStatus) -> str:
    if not b.pending:
        return f"  {b.set_id}: current, nothing to apply"
    if b.apply == "report":
        return f"  {b.set_id}: {len(b.pending)} pending, not applied (apply: report)"
    return f"  {b.set_id}: would apply {len(b.pending)}, in this order:"


def report(result: FleetReport, stream: IO[str], as_json: bool = False) -> None:
    """Print a fleet report: JSON, or a table (status), a listing (plan) or nothing but the summary (catch-up)."""
    if as_json:
        stream.write(json.dumps(result.to_json(), indent=2) + "\n")
        log.info("%s", summary_line(result))
        return
    if result.command == "status":
        if _tty(stream):
            _rich_table(result, stream)
        else:
            _plain_table(table_rows(result), stream)
    elif result.command == "plan":
        _plan_text(result, stream)
    for name, line in result.rollouts.items():
        stream.write(f"rollout {name}: {line}\n")
    stream.write(summary_line(result) + "\n")
    stream.flush()


def lint_findings(findings: Sequence[Finding], stream: IO[str]) -> None:
    """One line per lint finding, errors first, each in file and line order."""
    for finding in sorted(findings, key=lambda f: (f.severity != "error", f.file, f.line, f.rule)):
        stream.write(str(finding) + "\n")


def lint(findings: Sequence[Finding], stream: IO[str], as_json: bool = False) -> None:
    """``orchestrator lint``: the findings, then a summary line (JSON: an object with the findings and the exit code)."""
    errors = sum(1 for f in findings if f.severity == "error")
    if as_json:
        stream.write(json.dumps({"command": "lint", "exit_code": 1 if errors else 0, "errors": errors,
                                 "warnings": len(findings) - errors, "findings": [f.as_dict() for f in findings]},
                                indent=2) + "\n")
        return
    lint_findings(findings, stream)
    stream.write(f"lint: {errors} error{'s' if errors != 1 else ''}, {len(findings) - errors} "
                 f"warning{'s' if len(findings) - errors != 1 else ''}\n")
    stream.flush()


def validation(result: Validation, stream: IO[str], as_json: bool = False) -> None:
    """Print validate's findings, one per line, then a summary."""
    if as_json:
        stream.write(json.dumps(result.to_json(), indent=2) + "\n")
        return
    for line in result.findings:
        stream.write(line + "\n")
    lint_findings(result.lint, stream)
    for line in result.unreachable:
        stream.write(line + "\n")
    n = len(result.findings) + result.lint_errors
    verdict = "clean" if not n and not result.unreachable else f"{n} finding{'s' if n != 1 else ''}"
    warnings = len(result.lint) - result.lint_errors
    extra = f", {warnings} lint warning{'s' if warnings != 1 else ''}" if warnings else ""
    extra += f", {len(result.unreachable)} target ledger(s) not checked (unreachable)" if result.unreachable else ""
    extra += ", offline: no ledger read" if result.offline else ""
    stream.write(f"validate: {verdict} in {result.sets} set(s) and {result.targets} target(s){extra} "
                 f"({result.wall_ms / 1000:.2f} s)\n")
    stream.flush()


def targets(config: Config, resolution: Resolution | None, stream: IO[str], as_json: bool = False) -> None:
    """``orchestrator targets``: every target with where it came from and the sets bound to it, then the sources."""
    bound: dict[str, list[str]] = {}
    for spec in config.sets.values():
        for dbid in spec.targets:
            bound.setdefault(dbid, []).append(spec.name)
    rows: list[dict[str, Any]] = [
        {"dbid": dbid, "driver": db.driver, "source": config.origin.get(dbid, "databases"), "sets": bound.get(dbid, [])}
        for dbid, db in config.databases.items()]
    sources = [{"name": s.name, "kind": s.kind, "up": s.up, "targets": s.targets, "error": s.error}
               for s in (resolution.sources if resolution is not None else [])]
    if as_json:
        stream.write(json.dumps({"targets": rows, "sources": sources,
                                 "problems": resolution.problems if resolution is not None else []}, indent=2) + "\n")
        return
    table = [("TARGET", "SOURCE", "SETS")] + [(r["dbid"], r["source"], ", ".join(r["sets"]) or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(2)]
    for row in table:
        stream.write(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}\n")
    for source in sources:
        state = "up" if source["up"] else f"DOWN: {source['error']}"
        stream.write(f"inventory {source['name']} ({source['kind']}): {source['targets']} targets, {state}\n")
    stream.write(f"{len(rows)} targets\n")
    stream.flush()
