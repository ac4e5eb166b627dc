"""Log formats: the C tool's text line, text with an ISO date and zone, and JSON lines for collectors."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from orchestrator.log import fields, setup_logging
from orchestrator.redact import register_secret


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    setup_logging(0)  # back to stderr for the tests that follow


def test_json_lines_carry_utc_time_level_logger_message_and_binding_fields(stream: io.StringIO) -> None:
    setup_logging(0, stream=stream, log_format="json")
    register_secret("hunter2-json")
    log = logging.getLogger("migrations")
    log.info("applying: %s", "002_add", extra=fields("postgresql.p1", "app", "002_add"))
    log.warning("password is hunter2-json")
    try:
        raise ValueError("bad")
    except ValueError:
        log.error("failed", exc_info=True)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one JSON object
    assert [(r["level"], r["logger"], r["message"]) for r in lines] == [
        ("INFO", "migrations", "applying: 002_add"), ("WARNING", "migrations", "password is ********"), ("ERROR", "migrations", "failed")]
    assert (lines[0]["dbid"], lines[0]["set"], lines[0]["version"]) == ("postgresql.p1", "app", "002_add")
    assert "dbid" not in lines[1] and "ValueError: bad" in lines[2]["exc_info"]
    stamp = datetime.fromisoformat(lines[0]["time"].replace("Z", "+00:00"))
    assert lines[0]["time"].endswith("Z") and stamp.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 600


def test_text_lines_with_a_date_in_utc(stream: io.StringIO) -> None:
    setup_logging(0, stream=stream, log_time="utc")
    logging.getLogger("daemon").info("hello")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \| INFO \| daemon - hello\n", stream.getvalue())


def test_local_time_names_its_offset_and_the_default_stays_the_c_tools() -> None:
    code = ("import logging; from orchestrator.log import setup_logging\n"
            "setup_logging(0, log_time='local'); logging.getLogger('a').info('x')\n"
            "setup_logging(0); logging.getLogger('a').info('y')\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TZ": "Etc/GMT-2"},
                         timeout=60).stderr.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+02:00 \| INFO \| a - x", err[0]), err
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} \| INFO \| a - y", err[1]), err


def test_redaction_masks_any_of_thousands_of_secrets_longest_first() -> None:
    # A discovered fleet registers one password per tenant; every one stays masked, and a secret that
    # extends another is masked whole rather than leaving its tail in clear.
    from orchestrator.redact import redact, register_secret

    tenants = [f"pw-{i:05d}-{'x' * (i % 7)}" for i in range(5000)]
    for secret in tenants:
        register_secret(secret)
    register_secret("s3cr(e)t.*")
    register_secret("s3cr(e)t.*+tail")
    line = f"tenant_17 failed: auth {tenants[17]} / {tenants[4999]} / s3cr(e)t.*+tail / s3cr(e)t.*"
    masked = redact(line)
    assert masked == "tenant_17 failed: auth ******** / ******** / ******** / ********"
    assert redact("nothing secret here") == "nothing secret here"
