"""The CLI for people and CI: help, completion, quiet mode, JSON logs, one console, and the commands
Flyway and dbmate users reach for (status --exit-code, up --to, wait, config-schema), against real servers."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from orchestrator import cli
from orchestrator.config import json_schema
from tests.conftest import pg_connect
from tests.test_daemon import ROOT, free_port

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_no_arguments_prints_the_commands(capsys: Any) -> None:
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    for command in ("create", "up", "resolve", "status", "catch-up", "wait", "config-schema", "daemon"):
        assert re.search(rf"^\s+{re.escape(command)}\s+\S", out, re.M), command


def test_every_command_and_argument_has_a_one_line_help() -> None:
    parser = cli._parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert all(c.help for c in choices._choices_actions)
    for name, sub in subcommands(parser).items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS and "\n" not in action.help, (name, action.dest)
    usage = subcommands(parser)["up"].format_usage()
    assert "[all|N] CONFIG DBID SET" in usage and "[[all|N]" not in usage


def complete(line: str, monkeypatch: Any) -> list[str]:
    """What the shell would offer for ``line``, through argcomplete's own hook (as bash calls it)."""
    import argcomplete
    import argcomplete.io

    for key, value in {"_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": "bash", "COMP_LINE": line, "COMP_POINT": str(len(line)),
                       "_ARGCOMPLETE_IFS": "\v", "_ARGCOMPLETE_COMP_WORDBREAKS": " \t\n\"'><=;|&(:"}.items():
        monkeypatch.setenv(key, value)
    class Finder(argcomplete.CompletionFinder):
        def _init_debug_stream(self) -> None:  # argcomplete's hook for pytest: fd 9 is pytest's
            argcomplete.io.debug_stream = io.StringIO()

    out = io.StringIO()
    with pytest.raises(SystemExit):
        Finder()(cli._parser(), exit_method=sys.exit, output_stream=out)
    return sorted(w.strip() for w in out.getvalue().split("\v") if w.strip())


def test_completion_of_commands_options_sets_and_dbids(project: Any, sqlite_db: Any, monkeypatch: Any) -> None:
    project.add_target("sqlite", "alpha", sqlite_db)
    project.add_target("sqlite", "beta", sqlite_db)
    project.add_set("app", ["sqlite.alpha"])
    project.add_set("audit", ["sqlite.beta"])
    config = str(project.config)
    assert {"catch-up", "config-schema", "create", "cluster"} <= set(complete("orchestrator c", monkeypatch))
    assert "--exit-code" in complete("orchestrator status x --e", monkeypatch)
    assert complete(f"orchestrator status {config} --set a", monkeypatch) == ["app", "audit"]
    assert complete(f"orchestrator resolve {config} sqlite.", monkeypatch) == ["sqlite.alpha", "sqlite.beta"]
    assert complete(f"orchestrator up all {config} sqlite.alpha au", monkeypatch) == ["audit"]


def sqlite_project(project: Any, tmp_path: Path, targets: int = 2, files: int = 3) -> Path:
    dbids = [project.add_target("sqlite", f"t{i}", {"path": str(tmp_path / f"t{i}.db")}) for i in range(targets)]
    project.add_set("s1", dbids)
    for n in range(files):
        project.write("s1", f"00{n}_a.sql", f"CREATE TABLE a{n} (id INTEGER);\n")
    return project.config


def test_quiet_prints_nothing_but_errors(project: Any, tmp_path: Path, orchestrator: Any) -> None:
    config = sqlite_project(project, tmp_path)
    assert orchestrator("-q", "status", config) == (0, "", "")
    assert orchestrator("catch-up", "-q", config) == (0, "", "")
    assert orchestrator("-q", "status", config) == (0, "", "")
    code, out, err = orchestrator("-q", "status", config, "--target", "nope.*")
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "| ERROR |" in err


def test_json_logs_one_object_per_line(project: Any, tmp_path: Path) -> None:
    config = sqlite_project(project, tmp_path)
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--log-format", "json", "catch-up", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(r) and r["time"].endswith("Z") for r in lines)
    assert any(r["message"].startswith("sqlite.t0/s1: applying: 000_a") for r in lines)


def test_progress_bar_and_log_lines_never_share_a_row(project: Any, tmp_path: Path) -> None:
    config = sqlite_project(project, tmp_path, targets=6)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "catch-up", str(config)], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env={**os.environ, "COLUMNS": "140", "TERM": "xterm"})
    os.close(slave)
    raw = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    assert proc.wait(60) == 0
    rows = []
    for row in raw.decode("utf-8", "replace").split("\r\n"):
        rows.append(ANSI.sub("", row.split("\x1b[2K")[-1]).rsplit("\r", 1)[-1])  # what stays on the row once drawn
    log_rows = [r for r in rows if " | INFO | " in r]
    assert len(log_rows) >= 6 * 3, rows
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} \| INFO \| ", r) for r in log_rows), [r for r in log_rows if not r[:1].isdigit()][:3]


def test_status_table_keeps_a_version_on_one_line(project: Any, tmp_path: Path) -> None:
    long_name = "2024-01-11_14-30-00_create_the_audit_log_with_a_long_descriptive_name"
    dbids = [project.add_target("sqlite", "t0", {"path": str(tmp_path / "t0.db")})]
    project.add_set("s1", dbids)
    project.write("s1", f"{long_name}.sql", "CREATE TABLE a (id INTEGER);\n")
    project.write("s1", "2024-01-12_00-00-00_broken.sql", "INSERT INTO nope VALUES (1);\n" + "-- padding\n" * 3)
    config = project.config
    subprocess.run([sys.executable, "-m", "orchestrator", "catch-up", str(config)], capture_output=True, timeout=120)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "status", str(config)], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "140", "TERM": "xterm"})
    os.close(slave)
    raw = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    proc.wait(60)
    text = ANSI.sub("", raw.decode("utf-8", "replace"))
    assert long_name in text, text


# -- commands ---------------------------------------------------------------------------------------


def pg_project(project: Any, pg_db: Any, files: int = 4) -> Path:
    project.add_target("postgresql", "p", pg_db)
    project.add_set("app", ["postgresql.p"])
    for n in range(1, files + 1):
        project.write("app", f"00{n}_t{n}.sql", f"CREATE TABLE t{n} (id INTEGER);\n")
    return project.config


def ledger(pg_db: Any) -> list[str]:
    with pg_connect(pg_db["dbname"]) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM migration WHERE set_id = 'app' ORDER BY version")]


def test_status_exit_code_gates_on_pending(project: Any, pg_db: Any, orchestrator: Any) -> None:
    config = pg_project(project, pg_db)
    assert orchestrator("status", config)[0] == 0  # without the flag pending is not a failure
    assert orchestrator("status", "--exit-code", config)[0] == 4
    assert orchestrator("catch-up", config)[0] == 0 and ledger(pg_db) == ["001_t1", "002_t2", "003_t3", "004_t4"]
    assert orchestrator("status", "--exit-code", config)[0] == 0


def test_up_to_applies_exactly_up_to_the_version(project: Any, pg_db: Any, orchestrator: Any) -> None:
    config = pg_project(project, pg_db)
    assert orchestrator("up", "--to", "002_t2", config, "postgresql.p", "app")[0] == 0
    assert ledger(pg_db) == ["001_t1", "002_t2"]
    with pg_connect(pg_db["dbname"]) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 't%' ORDER BY 1")]
    assert tables == ["t1", "t2"]
    assert orchestrator("up", "--to", "002_t2", config, "postgresql.p", "app")[0] == 0 and ledger(pg_db) == ["001_t1", "002_t2"]
    code, _, err = orchestrator("up", "--to", "009_nope", config, "postgresql.p", "app")
    assert code == 2 and "--to '009_nope' is not a version of set app" in err
    assert orchestrator("up", "--to", "004_t4", "1", config, "postgresql.p", "app")[0] == 0
    assert ledger(pg_db) == ["001_t1", "002_t2", "003_t3"]  # a count still counts
    assert orchestrator("up", "--to", "004_t4", config, "postgresql.p", "app")[0] == 0 and len(ledger(pg_db)) == 4


def test_wait_command(project: Any, pg_db: Any, orchestrator: Any) -> None:
    project.add_target("postgresql", "p", pg_db)
    project.add_target("postgresql", "gone", {**pg_db, "port": free_port(), "connection_timeout": 1})
    config = project.config
    assert orchestrator("wait", config, "--target", "postgresql.p", "--timeout", "10s")[0] == 0
    code, _, err = orchestrator("wait", config, "--timeout", "1s")
    assert code == 3 and "postgresql.gone: still not accepting connections after 1s" in err and "ERROR | orchestrator - postgresql.p:" not in err
    assert orchestrator("wait", config, "--timeout", "soon")[0] == 2


def test_config_schema_is_generated_shipped_and_validates_real_configs(orchestrator: Any) -> None:
    code, out, _ = orchestrator("config-schema")
    schema = json.loads(out)
    assert code == 0 and schema == json_schema()
    shipped = json.loads((ROOT / "orchestrator" / "config.schema.json").read_text())
    assert shipped == schema, "orchestrator/config.schema.json is stale: orchestrator config-schema > orchestrator/config.schema.json"
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    configs = [json.loads((ROOT / name).read_text()) for name in ("config.json", "deploy/config.json")]
    readme = (ROOT / "README.md").read_text()
    configs += [doc for doc in (json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, re.S))
                if isinstance(doc, dict) and {"databases", "migrations"} & set(doc)]
    assert len(configs) >= 3
    for doc in configs:
        assert not list(validator.iter_errors(doc)), [e.message for e in validator.iter_errors(doc)]
    assert list(validator.iter_errors({"daemon": {"workers": "many"}}))  # and it does refuse


def test_every_config_fault_at_once_one_line_each(tmp_path: Path, orchestrator: Any) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"databases": {"sqlite": [{"host_id": "a"}, {"host_id": "b b", "path": "x.db"}]},
                                  "daemon": {"workers": 0, "retry_min": "soon"}}))
    code, _, err = orchestrator("status", config)
    errors = [line for line in err.splitlines() if "| ERROR |" in line]
    assert code == 2 and len(errors) == 4, err
    assert any("databases.sqlite[0].path: required field is missing" in line for line in errors)
    assert any("daemon.workers" in line for line in errors) and any("daemon.retry_min" in line for line in errors)
    many = {"databases": {"sqlite": [{"host_id": f"h{i}"} for i in range(25)]}}
    config.write_text(json.dumps(many))
    code, _, err = orchestrator("status", config)
    errors = [line for line in err.splitlines() if "| ERROR |" in line]
    assert code == 2 and len(errors) == 21 and errors[-1].endswith("... and 5 more faults"), err


@pytest.mark.parametrize("engine", ["postgresql", "mysql", "sqlite", "redis"])
def test_repair_changes_only_the_checksum_and_records_who(engine: str, project: Any, request: Any, orchestrator: Any) -> None:
    from orchestrator import config as config_module
    from orchestrator.targets import open_target

    entry = request.getfixturevalue({"postgresql": "pg_db", "mysql": "mysql_db", "sqlite": "sqlite_db", "redis": "redis_prefix"}[engine])
    dbid = project.add_target(engine, "x", entry)
    project.add_set("app", [dbid])
    ext, body, edited = (("redis", "SET k 1\n", "SET k 1\n# reviewed: comment only\n") if engine == "redis"
                         else ("sql", "CREATE TABLE t1 (id INTEGER);\n", "-- reviewed: comment only\nCREATE TABLE t1 (id INTEGER);\n"))
    path = project.write("app", f"001_a.{ext}", body)
    config = project.config
    assert orchestrator("catch-up", config)[0] == 0

    def rows() -> dict[str, Any]:
        loaded = config_module.load(config)
        target = open_target(loaded.database(dbid), loaded.table)
        target.connect(readonly=True)
        try:
            return target.applied("app")
        finally:
            target.close()

    before = rows()["001_a"]
    path.write_text(edited)
    code, out, _ = orchestrator("status", config)
    assert code == 1 and "drift" in out
    code, _, err = orchestrator("repair", config, dbid, "app", "001_a")
    assert code == 0, err
    after = rows()["001_a"]
    assert after.checksum != before.checksum and after.checksum
    assert (after.apply_time, after.status, after.duration_ms, after.set_id) == (before.apply_time, before.status, before.duration_ms, before.set_id)
    assert after.applied_by.startswith(before.applied_by + "; checksum ") and " accepted by " in after.applied_by
    assert re.search(r" at \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$", after.applied_by)
    assert orchestrator("status", config)[0] == 0
    assert orchestrator("repair", config, dbid, "app", "009_nope")[0] == 2


def test_daemon_logs_json_when_the_config_asks(project: Any, tmp_path: Path) -> None:
    config = sqlite_project(project, tmp_path, targets=1)
    data = json.loads(config.read_text())
    data["daemon"] = {"log_format": "auto"}  # not a terminal here: JSON
    config.write_text(json.dumps(data))
    result = subprocess.run([sys.executable, "-m", "orchestrator", "daemon", str(config), "--once"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(r["message"].startswith("sqlite.t0/s1: applying: 000_a") and r["time"].endswith("Z") for r in lines)
    text = subprocess.run([sys.executable, "-m", "orchestrator", "--log-format", "text", "daemon", str(config), "--once"],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and not text.stderr.lstrip().startswith("{")  # the command line wins
