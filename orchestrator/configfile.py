"""A JSON config file read into plain data, and pydantic's errors turned into one line.

This module knows the file, not the schema (``config`` owns the models): JSON with
every key that appears twice refused, ``${NAME}`` / ``${NAME:-default}`` expanded
from the environment (``$${NAME}`` stays literal), and a validation error told as
``<file>: <json.path>: <what is wrong>`` with a "did you mean" for a misspelt field.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError

if TYPE_CHECKING:  # reading and expanding a file needs no pydantic (see orchestrator.plainconfig)
    from pydantic import BaseModel, ValidationError

__all__ = ["Expanded", "expand", "json_path", "one_line_error", "read_json"]

_ENV_REF = re.compile(r"(\$?)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Expanded(str):
    """A string that came out of ``${NAME}`` expansion: the environment only holds strings."""


def read_json(path: Path, name: str) -> dict[str, Any]:
    """The top-level JSON object of *path* (*name* in messages); ConfigError on any fault."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not an error
    except FileNotFoundError:
        raise ConfigError(f"{name}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read config: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{name}: invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: (top level): expected a JSON object")
    return data


def json_path(loc: tuple[Any, ...]) -> str:
    """``("databases", "mysql", 0, "port")`` -> ``databases.mysql[0].port``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


class _Object(dict[str, Any]):
    """A JSON object that remembers keys it held twice (json keeps the last one silently)."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice: list[str] = []
        for key, _ in pairs:
            if key in seen:
                twice.append(key)
            seen.add(key)
        obj.duplicates = tuple(twice)
    return obj


def expand(node: Any, env: Mapping[str, str], name: str, loc: tuple[Any, ...] = ()) -> Any:
    """*node* with ``${NAME}`` references replaced from *env*; ConfigError for an unset one or a key given twice."""
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1):  # $${NAME} is a literal ${NAME}
                return m.group(0)[1:]
            if m.group(2) in env:
                return env[m.group(2)]
            if m.group(3) is not None:
                return m.group(3)
            raise ConfigError(f"{name}: {json_path(loc)}: environment variable {m.group(2)} is not set "
                              f"(export it, or write ${{{m.group(2)}:-default}})")

        return Expanded(_ENV_REF.sub(sub, node)) if "${" in node else node
    if isinstance(node, list):
        return [expand(item, env, name, (*loc, i)) for i, item in enumerate(node)]
    if isinstance(node, dict):
        if isinstance(node, _Object) and node.duplicates:
            key = node.duplicates[0]
            raise ConfigError(f"{name}: {json_path((*loc, key))}: appears twice in the same object; keep one")
        return {key: expand(value, env, name, (*loc, key)) for key, value in node.items()}
    return node


_TYPE_HELP = {
    "model_type": "expected a JSON object",
    "model_attributes_type": "expected a JSON object",
    "dict_type": "expected a JSON object",
    "list_type": "expected a JSON list",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "bool_type": "expected true or false",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
}


MAX_FAULTS = 20
"""Faults of one config file reported at once; more are counted in a last line."""


def one_line_error(exc: ValidationError, name: str, root: type[BaseModel], pattern_help: Mapping[str, str]) -> ConfigError:
    """pydantic's errors for a file validated as *root*: one line per fault, up to :data:`MAX_FAULTS`.

    *pattern_help* says in words what each of the schema's regex patterns expects.
    The lines are joined with newlines; the CLI logs each as its own error line.
    """
    errors = exc.errors(include_url=False)
    lines = [_describe(err, name, root, pattern_help) for err in errors[:MAX_FAULTS]]
    if len(errors) > MAX_FAULTS:
        lines.append(f"{name}: ... and {len(errors) - MAX_FAULTS} more faults")
    return ConfigError("\n".join(dict.fromkeys(lines)))  # a fault pydantic reports twice (unions) is said once


def _describe(err: Any, name: str, root: type[BaseModel], pattern_help: Mapping[str, str]) -> str:
    # Drop the discriminator noise pydantic adds for unions and plain-str dict keys.
    loc = tuple(p for p in err["loc"] if p not in ("[key]",))
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "extra_forbidden":
        import difflib  # only a bad config pays for it

        known = _fields_at(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1) if loc else []
        msg = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})" if known else "")
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "string_pattern_mismatch":
        msg = pattern_help.get(str(err.get("ctx", {}).get("pattern")), msg)
    else:
        msg = _TYPE_HELP.get(err["type"], msg)
    return f"{name}: {json_path(loc)}: {msg}"


def _fields_at(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config object at a JSON path (for 'did you mean')."""
    model: Any = root
    skip_key = False
    for part in loc:
        if isinstance(part, int):
            continue
        if skip_key:  # a key of a dict such as migrations.sets
            skip_key = False
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        if part not in fields:
            return []
        annotation = fields[part].annotation
        skip_key = typing.get_origin(annotation) is dict
        model = _model_in(annotation)
        if model is None:
            return []
    return sorted(f.alias or n for n, f in model.model_fields.items())


def _model_in(annotation: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
