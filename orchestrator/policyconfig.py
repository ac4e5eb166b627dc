"""config.json models of a set's rollout (``rollout``, ``until``, ``pins``) and of ``notify[]``.

:mod:`orchestrator.config` holds them in its schema and turns them into the
:class:`~orchestrator.rollout.Rollout`, :class:`~orchestrator.rollout.Caps` and
:class:`~orchestrator.notify.Hook` values the rest of the package uses.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, WithJsonSchema, model_validator

from orchestrator.durations import parse_duration
from orchestrator.errors import ConfigError
from orchestrator.notify import Hook
from orchestrator.redact import register_secret
from orchestrator.rollout import Budget, Caps, Rollout, Wave, parse_budget

__all__ = ["NotifyEntry", "RolloutEntry", "caps_of", "hooks_of", "rollout_of"]


def _seconds(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '10m' or a number of seconds, not a boolean")
    return parse_duration(value) if isinstance(value, str) else value


# The schemas say what the file may hold: seconds or text such as "10m"; a count or text such as "2%".
Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0),
                    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                                              {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?(ms|s|m|h|d)\s*)+$"}]})]
BudgetValue = Annotated[Budget, BeforeValidator(lambda v: v if isinstance(v, Budget) else parse_budget(v)),
                        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                                                  {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*%|\d+)\s*$"}]})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class _WaveEntry(_Strict):
    name: Annotated[str, Field(min_length=1)] | None = None
    targets: Annotated[list[str], Field(min_length=1)] | None = None
    percent: Annotated[float, Field(gt=0, le=100)] | None = None

    @model_validator(mode="after")
    def _not_both(self) -> _WaveEntry:
        if self.targets is not None and self.percent is not None:
            raise ValueError("give 'targets' or 'percent' (or neither, for the rest), not both")
        return self


class RolloutEntry(_Strict):
    """``migrations.sets.<name>.rollout``."""

    waves: list[_WaveEntry] = []
    max_failures: BudgetValue = Field(default=Budget(), json_schema_extra={"default": 0})
    soak: Seconds = 0.0


class NotifyEntry(_Strict):
    """``notify[]``: a webhook that gets a JSON POST per event (see orchestrator.notify)."""

    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]
    events: Annotated[list[Literal["binding.failed", "rollout.held", "run.finished"]], Field(min_length=1)] = ["binding.failed", "rollout.held", "run.finished"]
    secret: SecretStr | None = None
    timeout: Annotated[Seconds, Field(gt=0)] = 5.0


def _must_match(pattern: str, targets: Sequence[str], where: str, discovered: bool) -> None:
    # With an inventory, targets arrive at resolution: a pattern may match later.
    if not discovered and not any(fnmatch.fnmatchcase(d, pattern) for d in targets):
        raise ConfigError(f"{where}: {pattern!r} matches no target of the set")


def rollout_of(entry: RolloutEntry | None, targets: Sequence[str], where: str, discovered: bool = False) -> Rollout | None:
    """The set's rollout; a wave glob that matches none of the set's targets is a mistake, not an empty wave."""
    if entry is None:
        return None
    waves: list[Wave] = []
    for i, wave in enumerate(entry.waves):
        name = wave.name or f"wave {i + 1}"
        if any(w.name == name for w in waves):
            raise ConfigError(f"{where}.rollout.waves[{i}].name: wave {name!r} is named twice")
        for j, pattern in enumerate(wave.targets or ()):
            _must_match(pattern, targets, f"{where}.rollout.waves[{i}].targets[{j}]", discovered)
        waves.append(Wave(name, tuple(wave.targets) if wave.targets is not None else None, wave.percent))
    return Rollout(tuple(waves), entry.max_failures, entry.soak)


def caps_of(until: str | None, pins: dict[str, str], targets: Sequence[str], where: str, discovered: bool = False) -> Caps:
    """``until`` and ``pins`` of a set; a pin that matches none of its targets is an error."""
    for pattern in pins:
        _must_match(pattern, targets, f"{where}.pins", discovered)
    return Caps(until, tuple(pins.items()))


def hooks_of(entries: Sequence[NotifyEntry]) -> tuple[Hook, ...]:
    """The webhooks; their URLs (often holding a token) and secrets are redacted from every log line."""
    hooks = []
    for h in entries:
        register_secret(h.url)
        secret = h.secret.get_secret_value() if h.secret else None
        if secret:
            register_secret(secret)
        hooks.append(Hook(h.url, frozenset(h.events), secret, h.timeout))
    return tuple(hooks)
