"""Logging set-up shared by the CLI and the daemon.

Lines look like the C tool's: ``14:02:11.532 | INFO | migrations - applying: <version>``.
``-v`` adds debug lines, ``-q`` keeps errors only. Everything goes through the
redaction filter.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from orchestrator.redact import RedactingFilter

__all__ = ["setup_logging"]

FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)s | %(name)s - %(message)s"
DATE_FORMAT = "%H:%M:%S"


def setup_logging(verbosity: int = 0, stream: TextIO | None = None) -> None:
    """Configure the root logger: ``verbosity`` -1 errors only, 0 info, 1+ debug."""
    level = logging.ERROR if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter (scheduler internals, HTTP access) only at debug.
    for noisy in ("apscheduler", "urllib3", "redis"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
