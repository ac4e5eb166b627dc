"""Shell completion: set names, dbids and versions come from the config named on the command line."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from orchestrator import completion


def test_completers_read_the_config_named_before_them(project: Any, sqlite_db: Any, monkeypatch: Any) -> None:
    project.add_target("sqlite", "a", sqlite_db)
    project.add_target("sqlite", "b", sqlite_db)
    project.add_set("app", ["sqlite.a"])
    project.add_set("audit", ["sqlite.b"])
    project.write("app", "001_users.sql", "CREATE TABLE u (id INTEGER);\n")
    project.write("app", "002_more.sql", "CREATE TABLE v (id INTEGER);\n")
    config = str(project.config)
    args = Namespace(config=config, set="app")
    assert completion.set_names("a", args) == ["app", "audit"] and completion.set_names("au", args) == ["audit"]
    assert completion.dbids("sqlite.", args) == ["sqlite.a", "sqlite.b"]
    assert completion.versions("", args) == ["001_users", "002_more"]
    assert completion.set_names("", Namespace(config=str(project.root / "missing.json"))) == []  # nothing, and no output
    monkeypatch.chdir(project.root)
    assert completion.up_arguments("", Namespace(args=[])) == ["sets/", "config.json"]
    assert completion.up_arguments("a", Namespace(args=[])) == ["all"]
    assert completion.up_arguments("", Namespace(args=["all"])) == ["sets/", "config.json"]
    assert completion.up_arguments("sqlite.", Namespace(args=["2", config])) == ["sqlite.a", "sqlite.b"]
    assert completion.up_arguments("ap", Namespace(args=[config, "sqlite.a"])) == ["app"]
