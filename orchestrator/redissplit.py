"""Redis command lines split into arguments exactly as ``redis-cli`` splits them."""

from __future__ import annotations

__all__ = ["split_redis_args"]

_SPACE = b" \t\n\v\f\r"
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"


def split_redis_args(line: str) -> list[str | bytes]:
    """Split one command line exactly as redis-cli does (its ``sdssplitargs``).

    Inside double quotes ``\\xHH`` is a byte and ``\\n \\r \\t \\b \\a`` are control
    characters (any other ``\\c`` is ``c``); inside single quotes only ``\\'`` is
    special; outside quotes a backslash is literal. A closing quote must end the
    argument. An argument is ``str``, or ``bytes`` when escapes make it invalid
    UTF-8. Raises ValueError for unbalanced quotes.
    """
    data, i = line.encode("utf-8"), 0
    args: list[bytes] = []
    n = len(data)
    while True:
        while i < n and data[i] in _SPACE:
            i += 1
        if i >= n:
            return [_text_or_bytes(a) for a in args]
        current, quote = bytearray(), 0
        while True:
            c = data[i] if i < n else 0
            if quote == 0x22:  # "
                if c == 0x5C and i + 3 < n and data[i + 1] == 0x78 and data[i + 2] in _HEX and data[i + 3] in _HEX:
                    current.append(int(data[i + 2 : i + 4], 16))
                    i += 4
                    continue
                if c == 0x5C and i + 1 < n:
                    i += 1
                    current.append(_ESCAPES.get(data[i], data[i]))
                elif c == 0x22:
                    if i + 1 < n and data[i + 1] not in _SPACE:
                        raise ValueError("a closing double quote must be followed by a space")
                    i += 1
                    break
                elif i >= n:
                    raise ValueError("unbalanced double quotes")
                else:
                    current.append(c)
            elif quote == 0x27:  # '
                if c == 0x5C and i + 1 < n and data[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and data[i + 1] not in _SPACE:
                        raise ValueError("a closing single quote must be followed by a space")
                    i += 1
                    break
                elif i >= n:
                    raise ValueError("unbalanced single quotes")
                else:
                    current.append(c)
            elif i >= n or c in b" \n\r\t":
                break
            elif c in (0x22, 0x27):
                quote = c
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))


def _text_or_bytes(arg: bytes) -> str | bytes:
    try:
        return arg.decode("utf-8")
    except UnicodeDecodeError:
        return arg
