"""The migration linter: every rule fires on its dangerous form and stays quiet on its safe twin; waivers; real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.lint import RULES, SetMemory, exit_code, lint_text
from orchestrator.lint.mysql import online_alter
from tests.conftest import realworld

NT = "-- orchestrator: no-transaction\n"

# rule id -> (engine, kind, firing text, safe twin)
CASES = {
    "index-not-concurrent": ("postgresql", "sql", "CREATE INDEX i ON t (a);",
                             NT + "CREATE INDEX CONCURRENTLY i ON t (a);"),
    "index-not-concurrent/new-table": ("postgresql", "sql", "CREATE INDEX i ON t (a);",
                                       "CREATE TABLE t (a int);\nCREATE INDEX i ON t (a);"),
    "concurrently-in-transaction": ("postgresql", "sql", "CREATE INDEX CONCURRENTLY i ON t (a);",
                                    NT + "CREATE INDEX CONCURRENTLY i ON t (a);"),
    "constraint-not-valid": ("postgresql", "sql", "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES u (id);",
                             NT + "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES u (id) NOT VALID;\n"
                             "ALTER TABLE t VALIDATE CONSTRAINT f;"),
    "constraint-not-valid/check": ("postgresql", "sql", "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);",
                                   "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID;"),
    "unique-constraint": ("postgresql", "sql", "ALTER TABLE t ADD CONSTRAINT u UNIQUE (a);",
                          "ALTER TABLE t ADD CONSTRAINT u UNIQUE USING INDEX t_a_key;"),
    "validate-same-transaction": ("postgresql", "sql",
                                  "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID;\nALTER TABLE t VALIDATE CONSTRAINT c;",
                                  NT + "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID;\nALTER TABLE t VALIDATE CONSTRAINT c;"),
    "column-type-rewrite": ("postgresql", "sql", "ALTER TABLE t ALTER COLUMN a TYPE bigint;",
                            "CREATE TABLE t (a varchar(10));\nCOMMIT;\nALTER TABLE t ALTER COLUMN a TYPE varchar(20);"),
    "set-not-null": ("postgresql", "sql", "ALTER TABLE t ALTER COLUMN a SET NOT NULL;",
                     NT + "ALTER TABLE t ADD CONSTRAINT a_nn CHECK (a IS NOT NULL) NOT VALID;\n"
                     "ALTER TABLE t VALIDATE CONSTRAINT a_nn;\nALTER TABLE t ALTER COLUMN a SET NOT NULL;"),
    "volatile-default": ("postgresql", "sql", "ALTER TABLE t ADD COLUMN id uuid DEFAULT gen_random_uuid();",
                         "ALTER TABLE t ADD COLUMN created timestamptz DEFAULT now();"),
    "volatile-default/serial": ("postgresql", "sql", "ALTER TABLE t ADD COLUMN n bigserial;",
                                "ALTER TABLE t ADD COLUMN n bigint;"),
    "vacuum-full": ("postgresql", "sql", NT + "VACUUM FULL t;", NT + "VACUUM t;"),
    "cluster": ("postgresql", "sql", "CLUSTER t USING t_pkey;", "CREATE TABLE t (a int primary key);\nCLUSTER t USING t_pkey;"),
    "reindex-not-concurrent": ("postgresql", "sql", "REINDEX TABLE t;", NT + "REINDEX TABLE CONCURRENTLY t;"),
    "lock-table": ("postgresql", "sql", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE;", "SELECT 1 FROM t LIMIT 1;"),
    "enum-value-used": ("postgresql", "sql", "ALTER TYPE mood ADD VALUE 'meh';\nUPDATE t SET m = 'meh' WHERE m = 'sad';",
                        NT + "ALTER TYPE mood ADD VALUE 'meh';\nUPDATE t SET m = 'meh' WHERE m = 'sad';"),
    "drop-table": ("postgresql", "sql", "DROP TABLE t;", "CREATE TABLE scratch (a int);\nDROP TABLE scratch;"),
    "drop-column": ("postgresql", "sql", "ALTER TABLE t DROP COLUMN a;", "ALTER TABLE t ADD COLUMN b int;"),
    "rename": ("postgresql", "sql", "ALTER TABLE t RENAME COLUMN a TO b;", "ALTER TABLE t ADD COLUMN b int;"),
    "alter-table-copy": ("mysql", "sql", "ALTER TABLE t MODIFY a BIGINT NOT NULL;",
                         "ALTER TABLE t MODIFY a BIGINT NOT NULL, ALGORITHM=INPLACE, LOCK=NONE;"),
    "alter-table-copy/fk": ("mysql", "sql", "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES u (id);",
                            "SET foreign_key_checks = 0;\nALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES u (id);"),
    "alter-table-copy/primary": ("mysql", "sql", "ALTER TABLE t DROP PRIMARY KEY;",
                                 "ALTER TABLE t DROP PRIMARY KEY, ADD PRIMARY KEY (a, b);"),
    "alter-table-lock": ("mysql", "sql", "ALTER TABLE t ADD FULLTEXT INDEX ft (body);", "ALTER TABLE t ADD INDEX i (body);"),
    "drop-table/mysql": ("mysql", "sql", "DROP TABLE IF EXISTS `t`;", "CREATE TABLE `t` (a int);\nDROP TABLE `t`;"),
    "drop-column/mysql": ("mysql", "sql", "ALTER TABLE t DROP COLUMN a;", "ALTER TABLE t DROP INDEX a;"),
    "rename/mysql": ("mysql", "sql", "ALTER TABLE t CHANGE a b INT;", "ALTER TABLE t CHANGE a a INT, LOCK=NONE;"),
    "rebuild-foreign-keys": ("sqlite", "sql",
                             "CREATE TABLE t_new (a int);\nINSERT INTO t_new SELECT a FROM t;\nDROP TABLE t;\n"
                             "ALTER TABLE t_new RENAME TO t;",
                             NT + "PRAGMA foreign_keys = OFF;\nBEGIN;\nCREATE TABLE t_new (a int);\nINSERT INTO t_new SELECT a FROM t;\n"
                             "DROP TABLE t;\nALTER TABLE t_new RENAME TO t;\nPRAGMA foreign_key_check;\nCOMMIT;\n"
                             "PRAGMA foreign_keys = ON;"),
    "drop-column/sqlite": ("sqlite", "sql", "ALTER TABLE t DROP COLUMN a;", "ALTER TABLE t ADD COLUMN a int;"),
    "redis-keys": ("redis", "redis", "KEYS app:*\n", "SCAN 0 MATCH app:* COUNT 100\n"),
    "redis-keys/py": ("redis", "py", "def up(db):\n    for k in db.connection.keys('app:*'):\n        pass\n",
                      "def up(db):\n    for k in db.connection.scan_iter(match='app:*', count=500):\n        pass\n"),
    "redis-flush": ("redis", "redis", "FLUSHDB\n", "UNLINK app:cache\n"),
    "redis-flush/py": ("redis", "py", "def up(db):\n    db.connection.flushall()\n",
                       "def up(db):\n    db.connection.delete('app:cache')\n"),
    "redis-scan-unbounded": ("redis", "py", "def up(db):\n    for k in db.connection.scan_iter():\n        pass\n",
                             "def up(db):\n    for k in db.connection.scan_iter('app:*'):\n        pass\n"),
}


def rules_of(findings):
    return [f.rule for f in findings]


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_fires_and_its_safe_twin_does_not(case):
    rule_id = case.split("/")[0]
    engine, kind, firing, safe = CASES[case]
    fired = lint_text(firing, engine, label="s/1." + kind, kind=kind)
    assert rule_id in rules_of(fired), fired
    finding = next(f for f in fired if f.rule == rule_id)
    assert finding.severity == RULES[rule_id].severity and finding.file == "s/1." + kind
    assert finding.safe == RULES[rule_id].safe and finding.statement and finding.line >= 1
    assert rule_id not in rules_of(lint_text(safe, engine, label="s/1." + kind, kind=kind))


def test_every_rule_has_a_case():
    assert {case.split("/")[0] for case in CASES} == set(RULES)


def test_finding_names_file_line_and_statement():
    text = "-- widen\nCREATE TABLE a (x int);\n\nCREATE INDEX i\n  ON t (a);\n"
    [finding] = lint_text(text, "postgresql", label="s1/0002.sql")
    assert (finding.file, finding.line, finding.statement) == ("s1/0002.sql", 4, "CREATE INDEX i ON t (a)")
    assert str(finding).startswith("s1/0002.sql:4: error index-not-concurrent: CREATE INDEX without CONCURRENTLY")
    assert exit_code([finding]) == 1
    assert exit_code(lint_text("ALTER TABLE t DROP COLUMN a;", "postgresql", label="x")) == 0  # warnings alone


def test_statement_waiver_silences_exactly_the_named_rule_for_that_statement():
    text = ("-- orchestrator: allow index-not-concurrent\nCREATE INDEX i ON t (a);\n"
            "CREATE INDEX j ON t (b);\n"
            "-- orchestrator: allow drop-table\nALTER TABLE t DROP COLUMN c;\n")
    found = lint_text("SELECT 1;\n" + text, "postgresql", label="x")
    assert [(f.rule, f.line) for f in found] == [("index-not-concurrent", 4), ("drop-column", 6)]


def test_file_waiver_in_the_leading_block_covers_the_whole_file():
    text = "-- orchestrator: allow index-not-concurrent, drop-column\nCREATE INDEX i ON t (a);\nCREATE INDEX j ON t (b);\n" \
           "ALTER TABLE t DROP COLUMN c;\nDROP TABLE u;\n"
    assert rules_of(lint_text(text, "postgresql", label="x")) == ["drop-table"]


def test_waiver_of_an_unknown_rule_is_an_error_finding():
    found = lint_text("-- orchestrator: allow drop-tabel\nDROP TABLE t;\n", "postgresql", label="s/1.sql")
    assert [(f.rule, f.severity, f.line) for f in found] == [("directive", "error", 1), ("drop-table", "warning", 2)]
    assert "unknown rule 'drop-tabel'" in found[0].message


def test_set_memory_carries_validated_checks_to_later_files():
    memory = SetMemory()
    first = lint_text(NT + "ALTER TABLE t ADD CONSTRAINT c CHECK (a IS NOT NULL) NOT VALID;\n", "postgresql", label="1",
                      memory=memory)
    second = lint_text("ALTER TABLE t VALIDATE CONSTRAINT c;\n", "postgresql", label="2", memory=memory)
    third = lint_text("ALTER TABLE t ALTER COLUMN a SET NOT NULL;\n", "postgresql", label="3", memory=memory)
    assert first == second == third == []


def test_unparsable_statement_is_left_to_the_server():
    assert lint_text("CREATE INDEX i ON t (a;\nDROP TABLE t;", "postgresql", label="x") == []


def test_mysql_online_alter_adds_algorithm_and_lock_once():
    assert online_alter("ALTER TABLE t ADD COLUMN a int") == "ALTER TABLE t ADD COLUMN a int\n, ALGORITHM=INPLACE, LOCK=NONE"
    assert online_alter("ALTER TABLE t ADD a int, LOCK=SHARED") == "ALTER TABLE t ADD a int, LOCK=SHARED"
    assert online_alter("ALTER TABLE t RENAME TO u") == "ALTER TABLE t RENAME TO u"
    assert online_alter("INSERT INTO t VALUES (1)") == "INSERT INTO t VALUES (1)"


def test_mysql_online_alter_is_refused_by_the_server_instead_of_copying(mysql_db):
    from tests.conftest import mysql_connect

    import pymysql

    with mysql_connect(mysql_db["dbname"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (a INT, b VARCHAR(10)) ENGINE=InnoDB")
        cur.execute(online_alter("ALTER TABLE t ADD COLUMN c INT"))  # in place: accepted
        with pytest.raises(pymysql.err.MySQLError) as info:
            cur.execute(online_alter("ALTER TABLE t MODIFY a BIGINT"))  # would copy: refused
        assert "LOCK=NONE" in str(info.value) or "ALGORITHM" in str(info.value)
        cur.execute("SHOW COLUMNS FROM t")
        assert [(r[0], r[1]) for r in cur.fetchall()] == [("a", "int(11)"), ("b", "varchar(10)"), ("c", "int(11)")]


# Error findings in the real-world corpus, each read and confirmed: PostgreSQL indexes built without
# CONCURRENTLY on live tables, UNIQUE constraints, SET NOT NULL and type changes that rewrite
# (int -> bigint, timestamp USING); MySQL MODIFY of timestamp precision and foreign keys added with
# checks on (both copy the table). Anything else at error level is a false positive.
REVIEWED = {
    "harbor-postgres": {"index-not-concurrent": 29, "column-type-rewrite": 13, "unique-constraint": 7, "set-not-null": 5},
    "flipt-mysql": {"alter-table-copy": 23},
}


def _lint_folder(folder: Path, engine: str) -> list:
    memory = SetMemory()
    findings = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".sql", ".redis"):
            kind = "redis" if path.suffix == ".redis" else "sql"
            findings += lint_text(path.read_text(encoding="utf-8"), engine, label=path.name, kind=kind, memory=memory)
    return findings


@pytest.mark.parametrize("name, engine", [("harbor-postgres", "postgresql"), ("flipt-mysql", "mysql")])
def test_realworld_errors_are_the_reviewed_true_positives(name, engine):
    counts: dict[str, int] = {}
    for finding in _lint_folder(realworld(name), engine):
        if finding.severity == "error":
            counts[finding.rule] = counts.get(finding.rule, 0) + 1
    assert counts == REVIEWED[name]


def test_realworld_widening_and_primary_key_swap_are_not_flagged():
    harbor = _lint_folder(realworld("harbor-postgres"), "postgresql")
    assert not [f for f in harbor if f.rule == "column-type-rewrite" and "varchar" in f.statement.lower()]
    flipt = _lint_folder(realworld("flipt-mysql"), "mysql")
    assert not [f for f in flipt if "PRIMARY KEY" in f.statement and f.rule == "alter-table-copy"]


@pytest.mark.parametrize("folder, engine", [("postgresql", "postgresql"), ("mysql", "mysql"), ("mysql/multi", "mysql"),
                                            ("sqlite", "sqlite"), ("redis", "redis")])
def test_test_data_files_have_no_error_findings(folder, engine):
    data = Path(__file__).resolve().parent / "data" / folder
    assert [str(f) for f in _lint_folder(data, engine) if f.severity == "error"] == []


# --- the CLI: lint, validate (--offline) and plan ------------------------------------------------

def _lint_project(project):
    dbid = project.add_target("postgresql", "p1", {"ip": "192.0.2.1", "port": 5432, "user": "u", "dbname": "nowhere",
                                                    "connection_timeout": 1})
    project.add_set("s1", ["postgresql.*"])
    project.write("s1", "001_create.sql", "CREATE TABLE t (a int);\nCREATE INDEX t_a ON t (a);\n")
    project.write("s1", "002_index.sql", "CREATE INDEX t_a2 ON t (a);\n")
    project.write("s1", "003_drop.sql", "ALTER TABLE t DROP COLUMN a;\n")
    return dbid


def test_lint_command_needs_no_database_and_exits_1_on_errors(project, orchestrator):
    _lint_project(project)
    code, out, err = orchestrator("lint", project.config)
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0].startswith("s1/002_index.sql:1: error index-not-concurrent: ")
    assert lines[1].startswith("s1/003_drop.sql:1: warning drop-column: ")
    assert lines[-1] == "lint: 1 error, 1 warning"
    import json

    code, out, _ = orchestrator("lint", project.config, "--set", "s1", "--json")
    data = json.loads(out)
    assert (code, data["exit_code"], data["errors"], data["warnings"]) == (1, 1, 1, 1)
    assert data["findings"][0]["rule"] == "index-not-concurrent" and data["findings"][0]["line"] == 1


def test_lint_warnings_alone_exit_0_and_waivers_apply(project, orchestrator):
    _lint_project(project)
    project.write("s1", "002_index.sql", "-- orchestrator: allow index-not-concurrent\nCREATE INDEX t_a2 ON t (a);\n")
    code, out, _ = orchestrator("lint", project.config)
    assert code == 0 and out.splitlines()[-1] == "lint: 0 errors, 1 warning"


def test_lint_unknown_set_is_a_usage_error(project, orchestrator):
    _lint_project(project)
    code, _, err = orchestrator("lint", project.config, "--set", "nope")
    assert code == 2 and "unknown set 'nope'" in err


def test_validate_offline_connects_nowhere_and_reports_lint(project, orchestrator):
    _lint_project(project)
    code, out, err = orchestrator("validate", project.config, "--offline")
    assert code == 1, err
    assert "s1/002_index.sql:1: error index-not-concurrent" in out
    assert out.splitlines()[-1].startswith("validate: 1 finding in 1 set(s) and 1 target(s), 1 lint warning, offline: no ledger read")
    project.write("s1", "002_index.sql", "-- orchestrator: no-transaction\nCREATE INDEX CONCURRENTLY t_a2 ON t (a);\n")
    code, out, err = orchestrator("validate", project.config, "--offline")
    assert code == 0, out + err


def test_plan_lists_the_lint_findings_after_the_plan(project, orchestrator, pg_db):
    dbid = project.add_target("postgresql", "p1", pg_db)
    project.add_set("s1", [dbid])
    project.write("s1", "001_create.sql", "CREATE TABLE t (a int);\n")
    project.write("s1", "002_index.sql", "CREATE INDEX t_a2 ON t (a);\n")
    code, out, err = orchestrator("plan", project.config)
    assert code == 0, err
    assert "s1/002_index.sql:1: error index-not-concurrent" in out
