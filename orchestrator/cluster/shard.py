"""``--shard auto/N``: this replica's index from the environment Kubernetes gives it."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from orchestrator.errors import ConfigError

__all__ = ["INDEX_VARIABLES", "resolve_shard"]

# Checked in this order; the first one set wins. JOB_COMPLETION_INDEX is set in every pod of
# an Indexed Job; POD_INDEX is the StatefulSet pod-index label passed through the downward API.
INDEX_VARIABLES = ("ORCHESTRATOR_SHARD_INDEX", "JOB_COMPLETION_INDEX", "POD_INDEX")


def resolve_shard(text: str, env: Mapping[str, str] | None = None) -> str:
    """``auto/N`` → ``I/N`` with I from the environment; any other text is returned as it is.

    ConfigError (exit 2, one line) when none of the variables is set or the one set is not a number."""
    m = re.fullmatch(r"\s*auto\s*/\s*(\S+)\s*", text)
    if not m:
        return text
    env = os.environ if env is None else env
    for name in INDEX_VARIABLES:
        value = env.get(name)
        if value is not None and value.strip() != "":
            if not value.strip().isdigit():
                raise ConfigError(f"daemon: --shard {text}: {name}={value!r} is not a shard index (0, 1, ...)")
            return f"{int(value)}/{m.group(1)}"
    raise ConfigError(f"daemon: --shard {text}: none of {', '.join(INDEX_VARIABLES)} is set; "
                      "set one to this replica's index, or give --shard I/N")
