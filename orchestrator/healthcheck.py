"""Container health check: ``python -m orchestrator.healthcheck [CONFIG]``.

Asks the daemon's ``/healthz`` on the address ``daemon.http`` in config.json gives,
so the Dockerfile's HEALTHCHECK follows a changed port instead of assuming 8787.
A wildcard bind (``0.0.0.0``, ``::``) is asked on loopback. Exit 0 healthy, 1 not;
one line on stderr says why (never a secret: only host, port and the HTTP answer).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from orchestrator.errors import OrchestratorError

__all__ = ["DEFAULT_CONFIG", "healthz_url", "main"]

DEFAULT_CONFIG = "/etc/orchestrator/config.json"


def healthz_url(config_path: str) -> str:
    """The URL of ``/healthz`` for the daemon that ``config_path`` configures."""
    from orchestrator.config import load

    http = load(config_path).daemon.http
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(http.host, http.host)
    host = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{host}:{http.port}/healthz"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        url = healthz_url(args[0] if args else DEFAULT_CONFIG)
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OrchestratorError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
    except (OSError, urllib.error.URLError) as exc:
        print(f"unhealthy: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
