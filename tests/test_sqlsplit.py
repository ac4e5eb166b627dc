"""Unit tests for orchestrator.sqlsplit: where each engine's client ends a statement.

Pure tests, no servers. The multi-statement samples below (PG_*, MY_*, SQ_*) were
also run statement by statement against PostgreSQL 15, MariaDB 10.11 and SQLite
when they were written, and the real-world counts were checked against psql's
and the mariadb client's own per-statement output.
"""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

import pytest

from orchestrator.sqlsplit import Statement, line_of, split
from tests.conftest import realworld



def texts(sql: str, dialect: str) -> list[str]:
    return [s.text for s in split(sql, dialect)]


# --- common rules -------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_blank_and_comment_only_pieces_are_not_yielded(dialect: str) -> None:
    sql = "\n\n  ;;\n-- only a comment\n;\n/* block\n comment */ ;\n  \t\n"
    assert texts(sql, dialect) == []
    assert texts("", dialect) == []


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_last_statement_without_delimiter_is_yielded(dialect: str) -> None:
    assert texts("SELECT 1;\nSELECT 2\n", dialect) == ["SELECT 1", "SELECT 2"]
    assert texts("SELECT 1;\n-- trailing comment\n", dialect) == ["SELECT 1"]


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_inner_comments_kept_leading_stripped(dialect: str) -> None:
    sql = "-- head\n/* more */\nSELECT 1 /* inner; */ -- tail;\n  , 2;"
    assert texts(sql, dialect) == ["SELECT 1 /* inner; */ -- tail;\n  , 2"]


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_semicolons_in_quotes(dialect: str) -> None:
    sql = "INSERT INTO t VALUES ('a;b', 'it''s;');\nSELECT \"col;x\" FROM t;"
    assert texts(sql, dialect) == ["INSERT INTO t VALUES ('a;b', 'it''s;')", 'SELECT "col;x" FROM t']


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_non_ascii(dialect: str) -> None:
    sql = "INSERT INTO t VALUES ('ünïcødé; 日本語 🎉');\n-- commentaire: été;\nSELECT 'ß' AS \"straße\";"
    out = list(split(sql, dialect))
    assert [s.text for s in out] == ["INSERT INTO t VALUES ('ünïcødé; 日本語 🎉')", "SELECT 'ß' AS \"straße\""]
    assert [s.line for s in out] == [1, 3]


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
@pytest.mark.parametrize("tail", ["'never closed; SELECT 2;", '"never closed; SELECT 2;', "/* never closed; SELECT 2;"])
def test_unterminated_quote_or_comment_yields_the_rest(dialect: str, tail: str) -> None:
    sql = "SELECT 1;\nSELECT " + tail + "\nSELECT 3;"
    # (SQLite ends an unclosed /* at the end of input, so there it is even valid)
    assert texts(sql, dialect) == ["SELECT 1", "SELECT " + tail + "\nSELECT 3;"]


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_statements_are_numbered_and_lined(dialect: str) -> None:
    sql = (
        "/* a comment\n"  # 1
        "   over three\n"  # 2
        "   lines; */\n"  # 3
        "CREATE TABLE a (\n"  # 4
        "  id int\n"  # 5
        ");  -- done\n"  # 6
        "\n"  # 7
        "-- next\n"  # 8
        "INSERT INTO a VALUES (1); INSERT INTO a\n"  # 9
        "VALUES (2);\r\n"  # 10
        "\r\n"  # 11
        "  SELECT 3"  # 12
    )
    out = list(split(sql, dialect))
    assert [(s.number, s.line) for s in out] == [(1, 4), (2, 9), (3, 9), (4, 12)]
    assert out[0].text == "CREATE TABLE a (\n  id int\n)"
    assert out[2].text == "INSERT INTO a\nVALUES (2)"


def test_line_of() -> None:
    sql = "-- x\n\nSELECT 1,\n  2,\n  nope FROM t;\nSELECT 2;"
    first, second = split(sql, "postgresql")
    assert first.line == 3
    assert line_of(first, 0) == 3
    assert line_of(first, first.text.index("nope")) == 5
    # a server position past the text (or negative) is clamped, not an error
    assert line_of(first, 10_000) == 5
    assert line_of(first, -3) == 3
    assert line_of(second, 0) == 6


def test_statement_is_frozen() -> None:
    s = Statement(1, 1, "SELECT 1")
    with pytest.raises(AttributeError):
        s.text = "x"  # type: ignore[misc]


def test_unknown_dialect_fails_at_call() -> None:
    with pytest.raises(ValueError, match="oracle"):
        split("SELECT 1", "oracle")


def test_big_file_of_inserts() -> None:
    # Several MB of one-line INSERTs: checks the count and that splitting is a
    # sequence of slices (the timing is reported by hand, not asserted).
    row = "INSERT INTO events (id, kind, note) VALUES ({0}, 'k{0}', 'a; b -- (c) /* d */ ''e''');\n"
    sql = "".join(row.format(i) for i in range(60_000))
    assert len(sql) > 5_000_000
    for dialect in ("postgresql", "mysql", "sqlite"):
        count = 0
        last = None
        for last in split(sql, dialect):
            count += 1
        assert count == 60_000
        assert last is not None and last.line == 60_000 and last.text == row.format(59_999)[:-2]


# --- PostgreSQL -----------------------------------------------------------------

PG_QUOTING = r"""
SELECT 'semi;colon', 'it''s' AS "quoted;ident", U&'d\0061t;a';
SELECT E'\'; still a string', e'back\\slash;', E'\\';
SELECT date'2024-01-01', name'x\';
/* outer /* nested; */ still comment; */ SELECT 1 /* x /* y */ z; */;
SELECT $$ dollar; 'quote $$, $tag$ a $$ b; $tag$, $a_1$ ; $a_1$;
PREPARE q(int) AS SELECT $1 AS a$b$c;
"""


def test_pg_quoting() -> None:
    assert texts(PG_QUOTING, "postgresql") == [
        "SELECT 'semi;colon', 'it''s' AS \"quoted;ident\", U&'d\\0061t;a'",
        "SELECT E'\\'; still a string', e'back\\\\slash;', E'\\\\'",
        # a trailing E of an identifier does not make an E'' string
        "SELECT date'2024-01-01', name'x\\'",
        "SELECT 1 /* x /* y */ z; */",
        "SELECT $$ dollar; 'quote $$, $tag$ a $$ b; $tag$, $a_1$ ; $a_1$",
        "PREPARE q(int) AS SELECT $1 AS a$b$c",
    ]


PG_FUNCTIONS = """
CREATE OR REPLACE FUNCTION f() RETURNS trigger AS $fn$
BEGIN
  PERFORM $$ inner; $$;
  NEW.t := now();
  RETURN NEW;
END;
$fn$ LANGUAGE plpgsql;

DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT 1 LOOP
    RAISE NOTICE 'x;';
  END LOOP;
END $$;

DO LANGUAGE plpgsql
$body$ BEGIN NULL; END $body$;
"""


def test_pg_dollar_quoted_bodies_and_do_blocks() -> None:
    out = list(split(PG_FUNCTIONS, "postgresql"))
    assert len(out) == 3
    assert out[0].text.startswith("CREATE OR REPLACE FUNCTION") and out[0].text.endswith("LANGUAGE plpgsql")
    assert out[1].text.startswith("DO $$") and out[1].text.endswith("END $$")
    assert out[2].text.startswith("DO LANGUAGE") and out[2].text.endswith("$body$")
    assert [s.line for s in out] == [2, 10, 18]


PG_ATOMIC = """
CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT CASE WHEN a IS NULL THEN 0 ELSE a END + b;
END;
CREATE OR REPLACE PROCEDURE ins(x int) LANGUAGE sql
BEGIN ATOMIC
  INSERT INTO t VALUES (x);
  INSERT INTO t VALUES (CASE WHEN x > 0 THEN x END);
  SELECT CASE x WHEN 1 THEN 'one;' ELSE 'other' END;
END;
BEGIN;
SELECT CASE WHEN true THEN 1 END;
COMMIT;
"""


def test_pg_begin_atomic() -> None:
    out = texts(PG_ATOMIC, "postgresql")
    assert len(out) == 5
    assert out[0].startswith("CREATE FUNCTION add") and out[0].endswith("a END + b;\nEND")
    assert out[1].startswith("CREATE OR REPLACE PROCEDURE") and out[1].endswith("END;\nEND")
    # outside CREATE FUNCTION/PROCEDURE, BEGIN is a transaction and CASE is plain
    assert out[2:] == ["BEGIN", "SELECT CASE WHEN true THEN 1 END", "COMMIT"]


def test_pg_escape_string_keeps_escaping_after_a_doubled_quote() -> None:
    assert texts("SELECT E'a''\\';b';\nSELECT 2", "postgresql") == ["SELECT E'a''\\';b'", "SELECT 2"]


def test_pg_semicolon_inside_parentheses_does_not_split() -> None:
    sql = (
        "CREATE RULE r AS ON INSERT TO a DO ALSO (INSERT INTO b VALUES (1); NOTIFY a);\n"
        "SELECT ((((((1))))));\n"
        "SELECT (1; SELECT 2"
    )
    assert texts(sql, "postgresql") == [
        "CREATE RULE r AS ON INSERT TO a DO ALSO (INSERT INTO b VALUES (1); NOTIFY a)",
        "SELECT ((((((1))))))",
        "SELECT (1; SELECT 2",
    ]


def test_pg_follows_psql_heuristic_even_where_it_glues() -> None:
    # psql 15 sends exactly these three queries: its BEGIN/CASE/END count runs
    # over the whole statement, so "RETURN begin" keeps the next lines attached.
    sql = (
        "CREATE FUNCTION f(begin int) RETURNS int LANGUAGE sql RETURN begin; select 2;\n"
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT t.end FROM (SELECT 1 AS end) t; END;\n"
        "select 4;\n"
    )
    out = texts(sql, "postgresql")
    assert len(out) == 2 and out[0].endswith("t; END") and out[1] == "select 4"


def test_pg_unterminated_dollar_quote_and_nested_comment() -> None:
    assert texts("SELECT 1; DO $$ BEGIN; SELECT 2;", "postgresql") == ["SELECT 1", "DO $$ BEGIN; SELECT 2;"]
    assert texts("SELECT 1; /* a /* b */ SELECT 2;", "postgresql") == ["SELECT 1", "/* a /* b */ SELECT 2;"]


def test_pg_double_dash_is_always_a_comment() -> None:
    assert texts("SELECT 1--x;\n;SELECT 2", "postgresql") == ["SELECT 1--x;", "SELECT 2"]


# --- MySQL / MariaDB ------------------------------------------------------------

MY_QUOTING = r"""
SELECT 'a\';b', "c\";d", 'e'';f', "g"";h" AS `i;j`, 1 AS `k``;l`;
SELECT 1 # hash comment;
, 2;
SELECT 3 -- dash comment;
, 4 --5;
/*!40101 SET @saved = @@character_set_client; */;
/*M!100100 SET @x = 1; */;
"""


def test_my_quoting_and_comments() -> None:
    assert texts(MY_QUOTING, "mysql") == [
        "SELECT 'a\\';b', \"c\\\";d\", 'e'';f', \"g\"\";h\" AS `i;j`, 1 AS `k``;l`",
        "SELECT 1 # hash comment;\n, 2",
        # '--' needs a blank after it; '--5' is minus minus five
        "SELECT 3 -- dash comment;\n, 4 --5",
        # executable comments are statements, with no split inside
        "/*!40101 SET @saved = @@character_set_client; */",
        "/*M!100100 SET @x = 1; */",
    ]


MY_DELIMITERS = """
DROP TRIGGER IF EXISTS trg;
-- switch
DELIMITER $$
CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW
BEGIN
  IF NEW.a < 0 THEN SET NEW.a = 0; END IF;
END$$
CREATE PROCEDURE p1() BEGIN SELECT '$$'; SELECT 1; END $$
DELIMITER ;
delimiter //
CREATE FUNCTION f1() RETURNS INT DETERMINISTIC
BEGIN
  RETURN 1; -- a // in a comment
END//
Delimiter ;
SELECT 1;
"""


def test_my_delimiter_blocks() -> None:
    out = list(split(MY_DELIMITERS, "mysql"))
    assert [s.text.split(None, 2)[:2] for s in out] == [
        ["DROP", "TRIGGER"],
        ["CREATE", "TRIGGER"],
        ["CREATE", "PROCEDURE"],
        ["CREATE", "FUNCTION"],
        ["SELECT", "1"],
    ]
    assert out[1].text.endswith("END IF;\nEND")
    assert out[2].text == "CREATE PROCEDURE p1() BEGIN SELECT '$$'; SELECT 1; END"
    assert out[3].text.endswith("-- a // in a comment\nEND")
    assert [s.line for s in out] == [2, 5, 9, 12, 17]


def test_my_unterminated_comment_with_custom_delimiter() -> None:
    sql = "DELIMITER //\nSELECT 1//\nSELECT /* open // SELECT 2//"
    assert texts(sql, "mysql") == ["SELECT 1", "SELECT /* open // SELECT 2//"]


def test_my_delimiter_argument_forms() -> None:
    sql = "DELIMITER ';;'  \nSELECT 1;;\nDELIMITER\t|| trailing words\nSELECT 2||\nDELIMITER \\x\nSELECT 3||"
    # a delimiter with a backslash is refused by the client: the old one stays
    assert texts(sql, "mysql") == ["SELECT 1", "SELECT 2", "SELECT 3"]
    # 'delimiter' not at the start of a statement is just a word
    assert texts("SELECT delimiter FROM t;\nSELECT 2", "mysql") == ["SELECT delimiter FROM t", "SELECT 2"]


MY_BOOTSTRAP = """
CREATE DEFINER=`root`@`localhost` PROCEDURE p_if(IN x INT)
BEGIN
  IF x > 0 THEN
    SELECT 'pos;';
  ELSEIF x < 0 THEN
    SELECT 'neg';
  ELSE
    BEGIN
      SELECT 'zero';
    END;
  END IF;
END;
CREATE PROCEDURE p_case(x INT)
BEGIN
  CASE x
    WHEN 1 THEN SELECT CASE WHEN x > 0 THEN 'a' ELSE 'b' END;
    ELSE SELECT 2;
  END CASE;
END;
CREATE OR REPLACE PROCEDURE p_loops()
outer_block: BEGIN
  DECLARE i INT DEFAULT 0;
  DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN SET i = -1; END;
  WHILE i < 3 DO SET i = i + 1; END WHILE;
  REPEAT SET i = i - 1; UNTIL i <= 0 END REPEAT;
  lp: LOOP LEAVE lp; END LOOP lp;
  FOR j IN 1..2 DO SET i = j; END FOR;
END outer_block;
CREATE DEFINER = CURRENT_USER TRIGGER trg_b BEFORE UPDATE ON t FOR EACH ROW SET NEW.end = NEW.begin;
CREATE FUNCTION f(x INT) RETURNS INT DETERMINISTIC RETURN CASE WHEN x > 0 THEN 1 ELSE 0 END;
CREATE EVENT ev ON SCHEDULE EVERY 1 DAY DO BEGIN DELETE FROM t WHERE a < 0; END;
BEGIN;
START TRANSACTION;
SELECT CASE WHEN 1 THEN 2 END;
COMMIT;
"""


def test_my_bootstrap_compound_statements() -> None:
    out = texts(MY_BOOTSTRAP, "mysql")
    assert [s.split("\n", 1)[0] for s in out] == [
        "CREATE DEFINER=`root`@`localhost` PROCEDURE p_if(IN x INT)",
        "CREATE PROCEDURE p_case(x INT)",
        "CREATE OR REPLACE PROCEDURE p_loops()",
        # no BEGIN: the trigger's first ';' ends it
        "CREATE DEFINER = CURRENT_USER TRIGGER trg_b BEFORE UPDATE ON t FOR EACH ROW SET NEW.end = NEW.begin",
        "CREATE FUNCTION f(x INT) RETURNS INT DETERMINISTIC RETURN CASE WHEN x > 0 THEN 1 ELSE 0 END",
        "CREATE EVENT ev ON SCHEDULE EVERY 1 DAY DO BEGIN DELETE FROM t WHERE a < 0; END",
        "BEGIN",
        "START TRANSACTION",
        "SELECT CASE WHEN 1 THEN 2 END",
        "COMMIT",
    ]
    assert out[0].endswith("END IF;\nEND")
    assert out[1].endswith("END CASE;\nEND")
    assert out[2].endswith("END FOR;\nEND outer_block")


def test_my_compound_only_after_create_routine() -> None:
    # CREATE TABLE is never a compound context, even with columns named like keywords
    sql = "CREATE TABLE event (id INT, `begin` INT, case_no INT);\nSELECT 1;"
    assert texts(sql, "mysql") == ["CREATE TABLE event (id INT, `begin` INT, case_no INT)", "SELECT 1"]
    # an anonymous compound statement is one too
    sql = "BEGIN NOT ATOMIC SELECT 1; SELECT 2; END;\nSELECT 3"
    assert texts(sql, "mysql") == ["BEGIN NOT ATOMIC SELECT 1; SELECT 2; END", "SELECT 3"]


def test_my_unterminated_compound_yields_the_rest() -> None:
    sql = "CREATE PROCEDURE p() BEGIN SELECT 1;\nSELECT 2;"
    assert texts(sql, "mysql") == ["CREATE PROCEDURE p() BEGIN SELECT 1;\nSELECT 2;"]


# --- SQLite ---------------------------------------------------------------------

SQ_SCRIPT = """
PRAGMA foreign_keys = ON;
CREATE TABLE [my;table] (id INTEGER PRIMARY KEY, `b;c` TEXT, "d;e" TEXT, body TEXT);
CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize = 'porter unicode61');
CREATE TRIGGER trg AFTER INSERT ON [my;table]
WHEN new.body <> 'end;'
BEGIN
  INSERT INTO docs (title, body) VALUES (
    CASE WHEN new.`b;c` IS NULL THEN 'none; really' ELSE new.`b;c` END, -- comment; END;
    new.body);
  /* END; */ UPDATE [my;table] SET "d;e" = CASE new.id WHEN 1 THEN 'one' END WHERE id = new.id;
END;
CREATE TEMP TRIGGER t2 BEFORE DELETE ON [my;table] BEGIN SELECT RAISE(ABORT, 'no;'); END;
BEGIN;
INSERT INTO [my;table] (body) VALUES ('x;y');
COMMIT;
pragma user_version = 3
"""


def test_sqlite_script() -> None:
    out = list(split(SQ_SCRIPT, "sqlite"))
    assert [" ".join(s.text.split()[:3]) for s in out] == [
        "PRAGMA foreign_keys =",
        "CREATE TABLE [my;table]",
        "CREATE VIRTUAL TABLE",
        "CREATE TRIGGER trg",
        "CREATE TEMP TRIGGER",
        "BEGIN",
        "INSERT INTO [my;table]",
        "COMMIT",
        "pragma user_version =",
    ]
    assert out[3].text.endswith("WHERE id = new.id;\nEND")
    assert out[-1].text == "pragma user_version = 3"
    assert [s.line for s in out] == [2, 3, 4, 5, 13, 14, 15, 16, 17]


def test_sqlite_script_runs() -> None:
    # SQLite needs no server, so the split statements are checked for real here.
    conn = sqlite3.connect(":memory:")
    try:
        for s in split(SQ_SCRIPT, "sqlite"):
            conn.execute(s.text)
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        assert conn.execute("SELECT title, body FROM docs").fetchall() == [("none; really", "x;y")]
    finally:
        conn.close()


def _shell_split(sql: str) -> list[str]:
    # The sqlite3 shell's rule, without our tokenizer: grow the buffer to each
    # ';' and cut where sqlite3_complete() says the statement is complete.
    out, start = [], 0
    for i, c in enumerate(sql):
        if c == ";" and sqlite3.complete_statement(sql[start : i + 1]):
            out.append(sql[start:i])
            start = i + 1
    out.append(sql[start:])
    comment = re.compile(r"(?:\s+|--[^\n]*|/\*.*?(?:\*/|\Z))*", re.S)
    return [p.strip() for p in (p[comment.match(p).end() :] for p in out) if p.strip()]  # type: ignore[union-attr]


def test_sqlite_agrees_with_complete_statement() -> None:
    pieces = [
        "CREATE TRIGGER a AFTER INSERT ON t BEGIN SELECT 1; SELECT CASE WHEN 1 THEN 2 END; END;",
        "CREATE TRIGGER b AFTER INSERT ON t BEGIN SELECT 'END;'; END ;",
        "SELECT 'x;y', \"a;b\", [c;d], `e;f`;",
        "-- c;\nSELECT 2;",
        "/* c; */ SELECT 3;",
        "EXPLAIN CREATE TRIGGER c AFTER INSERT ON t BEGIN SELECT 1; END;",
        "CREATE TRIGGER d AFTER INSERT ON t BEGIN SELECT 1;",
    ]
    for i in range(len(pieces)):
        sql = "\n".join(pieces[i:] + pieces[:i])
        assert texts(sql, "sqlite") == _shell_split(sql), sql


def test_sqlite_agrees_with_complete_statement_on_random_scripts() -> None:
    # seeded soup of fragments, unterminated quotes and comments included
    fragments = [
        "SELECT 1", ";", " ", "\n", "'a;b'", "'", '"', '"x;"', "`", "`q;`", "[", "[z;]", "]",
        "--c;\n", "-", "/*", "*/", "/* k; */", "CREATE TRIGGER t AFTER INSERT ON x BEGIN ",
        "END", "END;", "CASE WHEN 1 THEN 2 END", "BEGIN", "EXPLAIN ", "CREATE ", "TEMP ", "TRIGGER ", "é",
    ]
    rng = random.Random(20240501)
    for _ in range(3000):
        sql = "".join(rng.choice(fragments) for _ in range(rng.randint(1, 20)))
        assert texts(sql, "sqlite") == _shell_split(sql), sql


def test_sqlite_long_unfinished_trigger_stays_linear() -> None:
    # a trigger missing its END swallows the rest of the file, like the shell
    sql = "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n" + "INSERT INTO b VALUES (1);\n" * 200_000
    (only,) = split(sql, "sqlite")
    assert only.text.count(";") == 200_000


# --- real-world migration sets ----------------------------------------------------


def _realworld(name: str) -> list[Path]:
    folder = realworld(name)
    return sorted(folder.glob("*.sql"), key=lambda p: int(p.name.split("_", 1)[0]))


def _assert_sane(statements: list[Statement], text: str) -> None:
    assert [s.number for s in statements] == list(range(1, len(statements) + 1))
    lines = [s.line for s in statements]
    assert lines == sorted(lines)
    file_lines = text.split("\n")
    for s in statements:
        assert s.text and s.text == s.text.strip()
        assert not s.text.startswith(("--", "/*", "#")), s.text[:40]
        assert not s.text.endswith(";")
        # the statement really starts on the line it claims
        assert file_lines[s.line - 1].lstrip().startswith(s.text.split("\n", 1)[0].strip()[:20])


# Counts per file, checked against psql 15 (one command tag per statement) and by
# running each yielded statement on its own, in order, on an empty database.
HARBOR_COUNTS = {
    "0001": 54, "0002": 8, "0003": 1, "0004": 57, "0005": 3, "0010": 18, "0011": 2, "0012": 1,
    "0015": 16, "0030": 41, "0031": 5, "0040": 30, "0041": 1, "0050": 57, "0051": 2, "0052": 2,
    "0053": 4, "0060": 7, "0061": 1, "0070": 5, "0071": 1, "0080": 8, "0081": 1, "0082": 1,
    "0090": 9, "0091": 1, "0100": 2, "0110": 16, "0111": 1, "0120": 18, "0130": 2, "0140": 4,
    "0150": 3, "0160": 7, "0170": 7, "0171": 1, "0180": 1, "0181": 3, "0190": 6,
}  # fmt: skip


def test_realworld_harbor_postgresql() -> None:
    files = _realworld("harbor-postgres")
    counts, do_blocks, functions = {}, [], []
    for path in files:
        text = path.read_text(encoding="utf-8")
        statements = list(split(text, "postgresql"))
        _assert_sane(statements, text)
        counts[path.name[:4]] = len(statements)
        for s in statements:
            if re.match(r"DO\b", s.text, re.I):
                do_blocks.append(s)
                assert s.text.endswith("$$"), s.text[-40:]
                assert s.text.count("$$") == 2
            if re.match(r"CREATE\s+(OR\s+REPLACE\s+)?FUNCTION", s.text, re.I):
                functions.append(s)
                assert s.text.count("$$") == 2
        if path.name.startswith("0004"):
            # '/**' inside a string literal is not a comment
            (s,) = [s for s in statements if "'/**\"}'" in s.text]
            assert s.line == 77 and s.text.endswith("::jsonb)")
            assert statements[s.number].text.startswith("ALTER TABLE replication_policy RENAME")
        if path.name.startswith("0061"):
            # the file has no final ';'
            assert statements[-1].text.startswith("UPDATE harbor_user SET email=NULL")
    assert counts == HARBOR_COUNTS
    assert sum(counts.values()) == 407
    assert len(do_blocks) == 27
    assert len(functions) == 1 and functions[0].text.endswith("END;\n$$")


FLIPT_COUNTS = {
    0: 6, 1: 1, 2: 2, 3: 1, 4: 2, 5: 26, 6: 1, 7: 1,
    8: 3, 9: 4, 10: 8, 11: 12, 12: 1, 13: 1, 14: 1, 15: 4,
}  # fmt: skip


def test_realworld_flipt_mysql() -> None:
    files = _realworld("flipt-mysql")
    counts = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        statements = list(split(text, "mysql"))
        _assert_sane(statements, text)
        counts[int(path.name.split("_", 1)[0])] = len(statements)
        for s in statements:
            assert ";" not in s.text and "\n--" not in s.text
            assert re.match(r"(CREATE|ALTER|INSERT|UPDATE|DELETE|DROP)\b", s.text), s.text[:40]
    assert counts == FLIPT_COUNTS
    assert sum(counts.values()) == 74


def test_identifier_classes_written_as_complements_match_what_the_ranges_matched() -> None:
    """The classes are written as complements of ASCII sets (fast to compile); every code point agrees with the range form."""
    import re

    from orchestrator.sqlsplit._lexical import ID_CHAR, ID_START, ascii_but, every_but_ascii

    pairs = [
        (ID_CHAR, "[0-9A-Za-z_$\x80-\U0010ffff]"),
        (ID_START, "[A-Za-z_\x80-\U0010ffff]"),
        (every_but_ascii(set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")), "[0-9A-Za-z_\x80-\U0010ffff]"),
        (ascii_but(set("'\"`#;-/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_$")),
         "[^'\"`#;\\-/0-9A-Za-z_$\x80-\U0010ffff]"),
    ]
    # every BMP code point, and every 257th beyond it (the ranges are contiguous there)
    points = [*range(0x10000), *range(0x10000, 0x110000, 257), 0x10FFFF]
    for flags in (0, re.IGNORECASE):
        for fast, ranged in pairs:
            fast_re, ranged_re = re.compile(fast, flags), re.compile(ranged, flags)
            differ = [hex(c) for c in points if bool(fast_re.match(chr(c))) != bool(ranged_re.match(chr(c)))]
            assert differ == [], (fast, ranged, flags, differ[:5])
