"""Connection fields of the config entry that are in effect on the server: MySQL ``charset``, ``connection_timeout``."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.conftest import mysql_connect


def test_mysql_charset_from_config_is_the_session_charset(mysql_db: Any, project: Any, orchestrator: Any) -> None:
    dbid = project.add_target("mysql", "m1", {**mysql_db, "charset": "latin1"})
    project.add_set("s1", [dbid])
    project.write("s1", "001_probe.py",
                  "def up(db):\n"
                  "    client, conn = db.query('SELECT @@character_set_client, @@character_set_connection')[0]\n"
                  "    db.execute('CREATE TABLE cs_probe (client VARCHAR(40), conn VARCHAR(40))')\n"
                  "    db.execute('INSERT INTO cs_probe VALUES (%s, %s)', (client, conn))\n")
    code, _, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 0, err
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT client, conn FROM `{mysql_db['dbname']}`.cs_probe")
        assert cur.fetchall() == (("latin1", "latin1"),)
        cur.execute(f"SELECT version, status FROM `{mysql_db['dbname']}`.migration")
        assert cur.fetchall() == (("001_probe", "applied"),)


@pytest.mark.parametrize("driver", ["postgresql", "redis"])
def test_a_server_that_never_answers_is_unreachable_after_connection_timeout(
    driver: str, pg_db: Any, redis_prefix: Any, project: Any, orchestrator: Any
) -> None:
    entry = {"postgresql": pg_db, "redis": redis_prefix}[driver]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # accepts TCP connections, never answers
        dbid = project.add_target(driver, "x", {**entry, "port": silent.getsockname()[1], "connection_timeout": 1})
        project.add_set("s1", [dbid])
        project.write("s1", "001_t.redis" if driver == "redis" else "001_t.sql",
                      "SET k v\n" if driver == "redis" else "CREATE TABLE t (id INT);\n")
        code, out, err = orchestrator("up", "all", project.config, dbid, "s1")
    assert code == 3, err
    errors = [line for line in err.splitlines() if " | ERROR | " in line]
    assert len(errors) == 1 and f"{dbid}: unreachable" in errors[0] and "1 s" in errors[0].replace("1s", "1 s"), errors
    assert "Traceback" not in out + err
