"""Logging set-up shared by the CLI and the daemon.

Lines look like the C tool's: ``14:02:11.532 | INFO | migrations - applying: <version>``.
``log_time`` "utc" or "local" puts the date and zone in front instead
(``2024-05-01T14:02:11.532Z``, ``2024-05-01T16:02:11.532+02:00``). ``log_format``
"json" writes one JSON object per line for log collectors (python-json-logger):
``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, plus ``dbid``, ``set``
and ``version`` when the call passes them (``extra=fields(...)``).
``-v`` adds debug lines, ``-q`` keeps errors only. Everything goes through the
redaction filter.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from orchestrator.redact import RedactingFilter

__all__ = ["LOG_FORMATS", "LOG_TIMES", "fields", "setup_logging"]

LOG_FORMATS = ("text", "json")
LOG_TIMES = ("utc", "local")

FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)s | %(name)s - %(message)s"
DATE_FORMAT = "%H:%M:%S"


def _iso(created: float, log_time: str) -> str:
    moment = datetime.fromtimestamp(created, UTC if log_time == "utc" else None)
    text = (moment if log_time == "utc" else moment.astimezone()).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if log_time == "utc" else text


class _DatedFormatter(logging.Formatter):
    """The text line with an ISO 8601 date, time and zone in front."""

    def __init__(self, log_time: str):
        super().__init__("%(asctime)s | %(levelname)s | %(name)s - %(message)s")
        self._log_time = log_time

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso(record.created, self._log_time)


def _json_formatter() -> logging.Formatter:
    """One JSON object per line; the time is always UTC so collectors never guess a zone.

    Built on first use: python-json-logger costs about 10 ms to import, on every command otherwise.
    """
    from pythonjsonlogger.json import JsonFormatter

    class _JsonFormatter(JsonFormatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
            return _iso(record.created, "utc")

    return _JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                          rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}, json_ensure_ascii=False)


def fields(dbid: str | None = None, set_id: str | None = None, version: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about a binding: JSON lines carry them as ``dbid``, ``set``, ``version``."""
    return {k: v for k, v in (("dbid", dbid), ("set", set_id), ("version", version)) if v is not None}


def setup_logging(verbosity: int = 0, stream: TextIO | None = None, log_format: str = "text",
                  log_time: str | None = None) -> None:
    """Configure the root logger: ``verbosity`` -1 errors only, 0 info, 1+ debug; ``log_format`` text or json;
    ``log_time`` None (the C tool's local ``HH:MM:SS.mmm``), "utc" or "local" (with date and zone)."""
    level = logging.ERROR if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = _json_formatter()
    elif log_time in LOG_TIMES:
        formatter = _DatedFormatter(log_time)
    else:
        formatter = logging.Formatter(FORMAT, DATE_FORMAT)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter (scheduler internals, HTTP access) only at debug.
    for noisy in ("apscheduler", "urllib3", "redis"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
