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
_pattern: re.Pattern[str] | None = None  # all secrets as one trie-shaped regex; rebuilt after a registration


def register_secret(value: str | None) -> None:
    """Remember a secret so that it never leaves the process in clear."""
    # Very short values would mask ordinary words in messages; they are still
    # kept out of messages by never formatting config objects into them.
    global _pattern
    if value and len(value) >= 3:
        with _guard:
            if value not in _secrets:
                _secrets.add(value)
                _pattern = None


_Trie = dict[str, "_Trie"]


def _trie_regex(words: set[str]) -> str:
    """One regex matching any of ``words``, longest first, shaped as a trie.

    Discovered fleets register one password per tenant (10,000 and more); a
    trie lets the regex engine follow one branch per position instead of
    trying every secret, so a message costs microseconds, not milliseconds.
    """
    trie: _Trie = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: _Trie) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if "" in node:  # a secret ends here; a longer one through this node is tried first
            return f"(?:{'|'.join(branches)})?" if branches else ""
        return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"

    return emit(trie)


def _secret_pattern() -> re.Pattern[str] | None:
    global _pattern
    with _guard:
        if _pattern is None and _secrets:
            _pattern = re.compile(_trie_regex(_secrets))
        return _pattern


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and URL password masked."""
    if not text:
        return text
    pattern = _secret_pattern()
    if pattern is not None:
        text = pattern.sub(_MASK, text)
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
