"""What the three SQL scanners share: lazily compiled patterns and identifier classes."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable


def lazy(pattern: str, flags: int = 0) -> Callable[[], re.Pattern[str]]:
    """A module-level pattern compiled on its first call, then the same object every call.

    The PostgreSQL patterns alone take ~150 ms to compile; a run that splits only
    SQLite (or nothing) should not pay that at import. Scanners call each one once
    per file and keep the result in a local. The lead and run patterns end in ``*+``
    and always match (possibly empty); their ``m is None`` branches are never taken.
    """
    return functools.cache(lambda: re.compile(pattern, flags))


_ASCII = frozenset(map(chr, range(128)))
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_DIGITS = frozenset("0123456789")


def _ranges(chars: Iterable[str]) -> str:
    """ASCII characters as the inside of a regex class: ``\\x00-\\x23\\x25``..."""
    codes = sorted(map(ord, chars))
    out, i = [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        out.append(f"\\x{codes[i]:02x}" + (f"-\\x{codes[j]:02x}" if j > i else ""))
        i = j + 1
    return "".join(out)


def every_but_ascii(allowed: Iterable[str]) -> str:
    """A class of the ``allowed`` ASCII characters and every non-ASCII one, written as its complement.

    ``[0-9A-Za-z_\\x80-\\U0010ffff]`` compiles in 3-10 ms (the re compiler walks the
    range one code point at a time, and every code point's case under IGNORECASE);
    ``[^...]`` over the ASCII characters it leaves out matches the same characters
    and compiles at once. The PostgreSQL patterns hold dozens of these.
    """
    return f"[^{_ranges(_ASCII - frozenset(allowed))}]"


def ascii_but(excluded: Iterable[str]) -> str:
    """A class of the ASCII characters not in ``excluded`` (so never a non-ASCII one)."""
    return f"[{_ranges(_ASCII - frozenset(excluded))}]"


# Characters that continue an identifier in PostgreSQL and MySQL (any non-ASCII
# character is a letter to both lexers), and those that may start one, as sets
# of their ASCII members and as regex classes.
IDCH_ASCII = _LETTERS | _DIGITS | {"$"}
IDSTART_ASCII = _LETTERS
ID_CHAR = every_but_ascii(IDCH_ASCII)
ID_START = every_but_ascii(IDSTART_ASCII)
BLOCK_COMMENT = r"/\*(?:[^*]++|\*(?!/))*+\*/"
