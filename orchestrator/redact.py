"""The one redaction helper every outward string passes through.

Config loading registers each password and token it reads; ``redact`` replaces
those values, and any ``user:password@`` in a URL, with ``********``. Logging
gets the same treatment through :class:`RedactingFilter`.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["RedactingFilter", "redact", "register_secret"]

_MASK = "********"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.I)
_KEYWORD_PASSWORD = re.compile(r"\b(password|passwd|pwd|token)=('[^']*'|\S+)", re.I)
_secrets: set[str] = set()
_guard = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret so that it never leaves the process in clear."""
    # Very short values would mask ordinary words in messages; they are still
    # kept out of messages by never formatting config objects into them.
    if value and len(value) >= 3:
        with _guard:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and URL password masked."""
    if not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group("scheme") + _MASK + "@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group(1)}={_MASK}", text)


class RedactingFilter(logging.Filter):
    """Masks secrets in log records (message and arguments are merged first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are for -v only; never let one carry a secret either.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
