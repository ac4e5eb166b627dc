"""What the three SQL scanners share: lazily compiled patterns and identifier classes."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable


def lazy(pattern: str, flags: int = 0) -> Callable[[], re.Pattern[str]]:
    """A module-level pattern compiled on its first call, then the same object every call.

    The PostgreSQL patterns alone take ~150 ms to compile; a run that splits only
    SQLite (or nothing) should not pay that at import. Scanners call each one once
    per file and keep the result in a local. The lead and run patterns end in ``*+``
    and always match (possibly empty); their ``m is None`` branches are never taken.
    """
    return functools.cache(lambda: re.compile(pattern, flags))


# Characters that continue an identifier in PostgreSQL and MySQL (any non-ASCII
# character is a letter to both lexers), and those that may start one.
IDCH = "0-9A-Za-z_$\x80-\U0010ffff"
IDSTART = "A-Za-z_\x80-\U0010ffff"
BLOCK_COMMENT = r"/\*(?:[^*]++|\*(?!/))*+\*/"
