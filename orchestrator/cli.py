"""The command line: ``orchestrator <command> ...``.

``create`` and ``up`` keep the C Web Framework ``migrate`` syntax; ``resolve``,
``baseline``, fleet commands (``catch-up``, ``status``, ``plan``, ``validate``)
and ``daemon`` build on the same runner. Errors become one redacted line on
stderr; the exit code comes from the error's class or the fleet report, both from
the one table in :mod:`orchestrator.errors`: 0 done or current, 1 a migration failed
or a target is failed/drifted/locked, 2 usage or config error, 3 a target unreachable.
All argument handling lives here; :mod:`orchestrator.fleet` and
:mod:`orchestrator.checks` take plain values.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import __version__
from orchestrator.cliargs import fleet_filters, option_value, positional, print_json_schema
from orchestrator.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ConfigError,
    OrchestratorError,
)
from orchestrator.log import setup_logging
from orchestrator.redact import redact

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.inventory import Resolution
    from orchestrator.state import BindingStatus

__all__ = ["main"]

log = logging.getLogger("migrations")

_TEMPLATES = {
    "sql": "-- {name}\n-- Runs once per target, in name order, inside a transaction where the engine allows it.\n"
           "-- A first line '-- orchestrator: no-transaction' runs it outside one (e.g. CREATE INDEX CONCURRENTLY).\n\n",
    "py": '"""{name}."""\n\n\ndef up(db):\n    """Apply the change. db.execute(sql, params=None), db.query(sql, params=None) -> rows,\n'
          '    db.dbid, db.driver, db.connection (the native client). Return False or raise to fail."""\n',
    "redis": "# {name}\n# One command per line, quoted as in redis-cli; the file runs in MULTI/EXEC with the ledger write.\n",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"usage: {message} (see 'orchestrator {self.prog.split()[-1]} --help')" if " " in self.prog else f"usage: {message}")


def _parser() -> argparse.ArgumentParser:
    from orchestrator import completion
    from orchestrator.log import LOG_FORMATS, LOG_TIMES

    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="debug output (-vv for library debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (the exit code tells the rest)")
    common.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="log lines as text (default) or one JSON object per line (UTC time, level, logger, message, dbid/set/version)")
    common.add_argument("--log-time", choices=LOG_TIMES, default=None,
                        help="text log lines start with the date and time in UTC or local time with its offset (default: local HH:MM:SS.mmm)")
    parser = _Parser(prog="orchestrator", description="Keeps the schemas of a fleet of databases current.", parents=[common],
                     epilog="Shell completion (bash, zsh): eval \"$(register-python-argcomplete orchestrator)\". "
                            "'orchestrator COMMAND --help' describes a command.")
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, title="commands")

    p = sub.add_parser("create", parents=[common], help="write a new timestamped migration from a template")
    p.add_argument("name", help="what the migration does, e.g. add_users (letters, digits, '_', '-')")
    positional(p, "config")
    action = p.add_argument("dir", metavar="SET", help="set name in the config, or its folder")
    action.completer = completion.set_names  # type: ignore[attr-defined]
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--sql", dest="kind", action="store_const", const="sql", help="an SQL file (the default)")
    kind.add_argument("--py", dest="kind", action="store_const", const="py", help="a Python file with def up(db)")
    kind.add_argument("--redis", dest="kind", action="store_const", const="redis", help="a file of Redis commands")

    p = sub.add_parser("up", parents=[common], help="apply pending migrations of one set to one target (the C tool's syntax)",
                       usage="orchestrator up [-h] [-v] [-q] [--to VERSION] [--lock-wait SECONDS] [all|N] CONFIG DBID SET",
                       description="Apply pending migrations of SET to DBID: one (as the C tool), N, all, or all up to --to VERSION.")
    action = p.add_argument("args", nargs="+", metavar="[all|N] CONFIG DBID SET",
                            help="how many ('all' or a number; default 1), then config.json, target id and set")
    action.completer = completion.up_arguments  # type: ignore[attr-defined]
    p.add_argument("--to", default=None, metavar="VERSION", help="apply pending migrations up to and including VERSION")
    p.add_argument("--lock-wait", type=float, default=None, metavar="SECONDS", help="seconds to wait for a held lock (default 10)")

    p = sub.add_parser("resolve", parents=[common], help="clear a failed migration: resolve CONFIG DBID SET VERSION --retry|--mark-applied|--forget")
    positional(p, "config", "dbid", "set", "version")
    action_group = p.add_mutually_exclusive_group(required=True)
    for flag, text in (("retry", "forget the failed row so the next run applies the file again"),
                       ("mark-applied", "record it applied (you finished it by hand)"),
                       ("forget", "delete its row; it stays pending")):
        action_group.add_argument(f"--{flag}", dest="action", action="store_const", const=flag, help=text)

    p = sub.add_parser("repair", parents=[common], help="accept a changed file's checksum after a reviewed, harmless edit (records who and when)")
    positional(p, "config", "dbid", "set", "version")

    p = sub.add_parser("baseline", parents=[common], help="record migrations up to VERSION as applied without running them")
    positional(p, "config", "dbid", "set", "version")

    for name, text in (("catch-up", "apply everything pending on every binding"), ("status", "state of every (set, target)"),
                       ("plan", "what catch-up would apply, touching nothing"), ("validate", "check config, sets and ledgers")):
        p = sub.add_parser(name, parents=[common], help=text)
        fleet_filters(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "catch-up":
            p.add_argument("--workers", type=int, default=None, metavar="N", help="targets worked on at once (default daemon.workers)")
            p.add_argument("--lock-wait", type=float, default=None, metavar="SECONDS", help="seconds to wait for a held lock (default 10)")
            p.add_argument("--wait", action="store_true", help="go on through rollout soaks until done or stopped by failures")
        if name == "validate":
            p.add_argument("--offline", action="store_true",
                           help="check config, files and lint without connecting to any database (for CI)")
        if name == "status":
            p.add_argument("--exit-code", action="store_true",
                           help=f"exit {EXIT_PENDING} when any migration is pending (for CI gates), unless a worse state sets the code")

    p = sub.add_parser("lint", parents=[common], help="what the migrations will lock or destroy, with no database (errors exit 1)")
    positional(p, "config")
    action = p.add_argument("--set", dest="set_name", default=None, metavar="SET", help="only this set")
    action.completer = completion.set_names  # type: ignore[attr-defined]
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("wait", parents=[common], help="wait until the targets accept connections (for containers starting together)")
    positional(p, "config")
    action = p.add_argument("--target", default=None, metavar="PATTERN", help="only targets whose dbid matches this glob")
    action.completer = completion.dbids  # type: ignore[attr-defined]
    p.add_argument("--timeout", default="60s", metavar="DURATION", help="give up after this long, e.g. 60s, 5m (default 60s)")

    sub.add_parser("config-schema", parents=[common], help="print the JSON Schema of config.json (for editors and CI)")

    p = sub.add_parser("targets", parents=[common], help="every target (static and discovered), its source and its sets")
    positional(p, "config")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("import-c", parents=[common], help="convert C Web Framework migrations (dbquery SQL only) into .sql files")
    p.add_argument("src", metavar="SRC_DIR", help="folder of the C tool's migration .c files")
    p.add_argument("dest", metavar="DEST_DIR", help="set folder to write the .sql files into")
    p.add_argument("--force", action="store_true", help="overwrite .sql files that already exist in DEST_DIR")

    p = sub.add_parser("daemon", parents=[common], help="run the scheduler, watcher and status server")
    positional(p, "config")
    p.add_argument("--once", action="store_true", help="one catch-up, then exit with its exit code")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="this replica's share of the targets; auto/N takes I from ORCHESTRATOR_SHARD_INDEX, "
                        "JOB_COMPLETION_INDEX or POD_INDEX")

    p = sub.add_parser("cluster", parents=[common], help="cluster mode: the replicas and the queued work")
    p.add_argument("action", choices=["status"], help="what to show")
    positional(p, "config")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _resolve_set(config: Any, name: str) -> Any:
    """A set by config name, or by folder path (the C tool passes a directory), or a folder in the sets directory."""
    from orchestrator.sets import discover

    if name in config.sets:
        spec = config.sets[name]
        return discover(spec.name, spec.folder)
    for candidate in (Path(name), config.folder / name, config.sets_directory / name):
        if candidate.is_dir():
            folder = candidate.resolve()
            # A configured set's folder goes by the set's name: the ledger rows must match what catch-up reads.
            owner = next((spec for spec in config.sets.values() if spec.folder.resolve() == folder), None)
            if owner is not None:
                return discover(owner.name, owner.folder)
            return discover(folder.name, folder)
    known = ", ".join(sorted(config.sets)) or "none configured"
    raise ConfigError(f"unknown set {name!r}: not a set in {config.path.name} ({known}) nor a folder")


def _open(config: Any, dbid: str, readonly: bool = False) -> Any:
    from orchestrator.targets import open_target

    target = open_target(config.database(dbid), config.table)
    target.connect(readonly=readonly)
    return target


def _cmd_create(args: argparse.Namespace) -> int:
    from orchestrator import defaults
    from orchestrator.config import load

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", args.name):
        raise ConfigError(f"create: bad name {args.name!r}: use letters, digits, '_' and '-'")
    if len(args.name) > defaults.VERSION_MAX_LENGTH - 20:  # the version is "<stamp>_<name>"
        raise ConfigError(f"create: name is longer than {defaults.VERSION_MAX_LENGTH - 20} characters")
    config = load(args.config)
    if args.dir in config.sets:
        folder = config.sets[args.dir].folder
    else:  # a folder, as the C tool takes it: from here, or next to the config
        folder = next((c for c in (Path(args.dir), config.folder / args.dir) if c.is_dir()), Path(args.dir))
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"create: {folder} {problem} (sets in {config.path.name}: {', '.join(sorted(config.sets)) or 'none'})")
    kind = args.kind or "sql"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")
    path = folder / f"{stamp}_{args.name}.{kind}"
    try:
        with path.open("x", encoding="utf-8") as fh:
            fh.write(_TEMPLATES[kind].format(name=args.name))
    except FileExistsError:
        raise ConfigError(f"create: {path} already exists; wait a second or pick another name") from None
    print(path)
    return EXIT_OK


def _cmd_up(args: argparse.Namespace) -> int:
    from orchestrator import defaults
    from orchestrator.plainconfig import load_plain
    from orchestrator.runner import run

    positional = args.args
    if len(positional) == 3:
        limit: int | None = 1  # as the C tool: 'up' alone applies one
        config_path, dbid, set_name = positional
    elif len(positional) == 4:
        count, config_path, dbid, set_name = positional
        if count == "all":
            limit = None
        elif re.fullmatch(r"[0-9]+", count) and int(count) > 0:
            limit = int(count)
        else:
            raise ConfigError(f"up: count must be 'all' or a positive number, not {count!r}")
    else:
        raise ConfigError("usage: orchestrator up [all|N] CONFIG DBID SET")
    config = load_plain(config_path, target=dbid) or _load(config_path)[0]  # a plain config: no models to load
    migration_set = _resolve_set(config, set_name)
    set_name = migration_set.name
    if args.to is not None:
        import dataclasses

        versions = migration_set.versions
        if args.to not in versions:
            near = ", ".join(versions[-3:]) or "none"
            raise ConfigError(f"up: --to {args.to!r} is not a version of set {set_name} (its last: {near})")
        if len(positional) == 3:
            limit = None  # --to says where to stop; no count means all of them up to there
        # The runner sees the set only up to VERSION, so nothing after it can be applied, even in a race.
        migration_set = dataclasses.replace(migration_set, migrations=migration_set.migrations[: versions.index(args.to) + 1])
    if set_name in config.sets and dbid in config.databases and dbid not in config.sets[set_name].targets:
        log.warning("%s is not bound to %s in %s; applying as asked", set_name, dbid, config.path.name)
    target = _open(config, dbid)
    try:
        run(target, migration_set, limit=limit, lock_wait=defaults.LOCK_WAIT if args.lock_wait is None else args.lock_wait,
            config_name=config_path)
    finally:
        target.close()
    return EXIT_OK


def _with_target(args: argparse.Namespace, action: Any) -> Any:
    """Load the config, the set and one connected target; run ``action(target, set)``; close the target."""
    config, _ = _load(args.config)
    migration_set = _resolve_set(config, args.set)
    target = _open(config, args.dbid)
    try:
        return action(target, migration_set)
    finally:
        target.close()


def _cmd_resolve(args: argparse.Namespace) -> int:
    from orchestrator.runner import resolve

    _with_target(args, lambda target, mset: resolve(target, mset, args.version, args.action, config_name=args.config))
    return EXIT_OK


def _cmd_repair(args: argparse.Namespace) -> int:
    from orchestrator.runner import repair

    _with_target(args, lambda target, mset: repair(target, mset, args.version))
    return EXIT_OK


def _cmd_baseline(args: argparse.Namespace) -> int:
    from orchestrator.runner import baseline

    recorded = _with_target(args, lambda target, mset: baseline(target, mset, args.version))
    log.info("baseline: %d migration(s) recorded as applied up to %s", len(recorded), args.version)
    return EXIT_OK


def _check_fleet_args(config: Config, args: argparse.Namespace) -> None:
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise ConfigError(f"usage: --workers must be at least 1, not {workers}")
    if args.target is not None and not config.bindings(args.set_name, args.target):
        # As with an unknown --set: a filter that selects nothing is a mistake, not a clean run.
        bound = sorted({dbid for _, dbid in config.bindings(args.set_name)})
        where = f"set {args.set_name!r}" if args.set_name else "any set"
        shown = ", ".join(bound[:10]) + (f" and {len(bound) - 10} more" if len(bound) > 10 else "")
        raise ConfigError(f"{config.path.name}: --target {args.target!r} matches no target bound to {where} "
                          f"(bound: {shown or 'none'})")


def _cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator import render
    from orchestrator.checks import validation

    if args.offline:  # no inventory source is read either: they may be databases
        from orchestrator.config import load

        config, resolution = load(args.config), None
    else:
        config, resolution = _load(args.config)
    _check_fleet_args(config, args)
    result = validation(config, args.set_name, args.target, config_name=args.config, offline=args.offline)
    render.validation(result, sys.stdout, as_json=args.json)
    return _with_sources(result.exit_code, resolution)


def _cmd_lint(args: argparse.Namespace) -> int:
    from orchestrator import render
    from orchestrator.config import load
    from orchestrator.lint import exit_code, lint_config

    config = load(args.config)
    if args.set_name is not None and args.set_name not in config.sets:
        raise ConfigError(f"{config.path.name}: unknown set {args.set_name!r} (sets: {', '.join(sorted(config.sets)) or 'none'})")
    findings = lint_config(config, args.set_name)
    render.lint(findings, sys.stdout, as_json=args.json)
    return exit_code(findings)


def _cmd_fleet(args: argparse.Namespace) -> int:
    """``catch-up``, ``status`` and ``plan``: one log line per binding as it ends, then the report."""
    from orchestrator import defaults, render, waves
    from orchestrator.plainconfig import load_plain

    plain = load_plain(args.config)  # a plain config: no models to load (see orchestrator.plainconfig)
    config, resolution = (plain, None) if plain is not None else _load(args.config)
    _check_fleet_args(config, args)
    per_target: dict[str, int] = {}  # bindings per selected target: the bar advances when a target's last one ends
    for _, dbid in config.bindings(args.set_name, args.target):
        per_target[dbid] = per_target.get(dbid, 0) + 1
    with render.progress(len(per_target), args.command, enabled=not (args.json or args.quiet)) as advance:
        done: dict[str, int] = {}
        guard = threading.Lock()

        def on_result(st: BindingStatus) -> None:
            render.binding_line(st, args.command)
            with guard:
                done[st.dbid] = done.get(st.dbid, 0) + 1
                finished = done[st.dbid] == per_target.get(st.dbid, 0)
            if finished:
                advance()

        workers: int | None = getattr(args, "workers", None)
        if args.command == "catch-up":
            report = waves.catch_up_notifying(config, args.set_name, args.target, workers, on_result=on_result,
                                              lock_wait=defaults.LOCK_WAIT if args.lock_wait is None else args.lock_wait,
                                              config_name=args.config, wait=args.wait)
        else:
            report = waves.status(config, args.set_name, args.target, workers, on_result=on_result,
                                  config_name=args.config, command=args.command)
    if args.json or not args.quiet:  # -q: nothing but errors; --json was asked for explicitly
        render.report(report, sys.stdout, as_json=args.json)
    if args.command == "plan" and not (args.json or args.quiet):
        _plan_lint(config, args.set_name)
    code = report.exit_code
    if getattr(args, "exit_code", False) and code == EXIT_OK and any(b.pending for b in report.bindings):
        code = EXIT_PENDING
    return _with_sources(code, resolution)


def _plan_lint(config: Config, set_name: str | None) -> None:
    """plan also says what the migrations will lock or destroy (``orchestrator lint``); it changes no exit code."""
    from orchestrator import render
    from orchestrator.lint import lint_config

    try:
        findings = lint_config(config, set_name)
    except OrchestratorError:
        return  # an unreadable set is already in the plan
    render.lint_findings(findings, sys.stdout)


def _cmd_wait(args: argparse.Namespace) -> int:
    from orchestrator.config import parse_duration
    from orchestrator.wait import wait_for

    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        raise ConfigError(f"usage: --timeout {args.timeout!r}: {exc}") from None
    config, resolution = _load(args.config)
    missing = wait_for(config, args.target, timeout)
    for dbid, reason in missing.items():
        logging.getLogger("orchestrator").error("%s: still not accepting connections after %s: %s", dbid, args.timeout, reason)
    return _with_sources(EXIT_UNREACHABLE if missing else EXIT_OK, resolution)


def _load(path: str) -> tuple[Config, Resolution | None]:
    """The config with its inventory read once; a bad row or a failing source is one line each on stderr."""
    from orchestrator import inventory
    return inventory.load(path, report=True)


def _with_sources(code: int, resolution: Resolution | None) -> int:
    """A source that could not be read left its targets out of the run: as a target down, exit 3 at least."""
    return resolution.exit_code(code) if resolution is not None else code


def _cmd_targets(args: argparse.Namespace) -> int:
    from orchestrator import render
    config, resolution = _load(args.config)
    render.targets(config, resolution, sys.stdout, as_json=args.json)
    return _with_sources(EXIT_OK, resolution)


def _cmd_import_c(args: argparse.Namespace) -> int:
    from orchestrator.cimport import import_dir

    done, failed = import_dir(Path(args.src), Path(args.dest), force=args.force)
    for line in done:
        print(line)
    for line in failed:
        logging.getLogger("orchestrator").error("%s", line)
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_daemon(args: argparse.Namespace) -> int:
    from orchestrator import daemon

    return daemon.command(args)


def _cmd_cluster(args: argparse.Namespace) -> int:
    from orchestrator.cluster import status

    return status.command(args.config, args.json)


_COMMANDS = {
    "create": _cmd_create,
    "up": _cmd_up,
    "resolve": _cmd_resolve,
    "baseline": _cmd_baseline,
    "repair": _cmd_repair,
    "catch-up": _cmd_fleet,
    "status": _cmd_fleet,
    "plan": _cmd_fleet,
    "validate": _cmd_validate,
    "lint": _cmd_lint,
    "targets": _cmd_targets,
    "wait": _cmd_wait,
    "config-schema": lambda args: print_json_schema(),
    "daemon": _cmd_daemon,
    "cluster": _cmd_cluster,
    "import-c": _cmd_import_c,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (never raises for expected failures)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbosity = -1 if ("-q" in argv or "--quiet" in argv) else sum(a.count("v") for a in argv if re.fullmatch(r"-v+", a)) + argv.count("--verbose")
    # Logging is set up before parsing, so that a usage error is logged in the asked format too.
    setup_logging(verbosity, log_format=option_value(argv, "--log-format") or "text", log_time=option_value(argv, "--log-time"))
    parser = _parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell's completion hook runs us: complete and exit
        import argcomplete

        argcomplete.autocomplete(parser)
    if not argv:  # no command: say which there are
        parser.print_help()
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
        args.quiet = verbosity < 0  # -q before or after the command (a subcommand's default would hide the first)
        return _COMMANDS[args.command](args)
    except OrchestratorError as exc:
        for line in str(exc).splitlines() or [""]:  # several faults (a config's): one error line each
            logging.getLogger("orchestrator").error("%s", redact(line))
        return exc.exit_code
    except KeyboardInterrupt:
        logging.getLogger("orchestrator").error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line, the traceback only with -v
        logging.getLogger("orchestrator").error("internal error: %s: %s", type(exc).__name__, redact(str(exc)),
                                                exc_info=verbosity > 0)
        return EXIT_FAILED
