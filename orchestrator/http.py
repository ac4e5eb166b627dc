"""The daemon's read-only status server: health, readiness, status JSON, metrics and a fleet page.

:class:`StatusServer` serves whatever a :class:`StatusSource` (the daemon) holds
in memory: every request reads the latest snapshot and no request opens a
database connection, so a slow or dead target never stalls a probe or a scrape.
Endpoints: ``/healthz`` (the process answers), ``/readyz`` (first status refresh
done and the scheduler running), ``/status`` (the JSON of ``status --json`` plus a
``daemon`` section), ``/metrics`` (Prometheus text from the daemon's
registry) and ``/`` (a self-refreshing page with a sets x targets grid, no
external assets). Only GET and HEAD are served; nothing here changes anything.
Bound to a non-loopback address the server requires ``Authorization: Bearer
<token>`` on every endpoint but the two probes, and refuses to start without a
token (:func:`check_http_config`).
"""

from __future__ import annotations

import functools
import hmac
import html
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from orchestrator import defaults
from orchestrator.errors import ConfigError
from orchestrator.redact import redact
from orchestrator.state import STATES

if TYPE_CHECKING:
    from orchestrator.config import HttpConfig
    from orchestrator.state import BindingStatus

__all__ = ["MetricsSource", "StatusServer", "StatusSource", "check_http_config", "is_loopback", "render_page"]

log = logging.getLogger("http")


class StatusSource(Protocol):
    """What the server reads; the daemon implements it from its in-memory snapshot."""

    def ready(self) -> tuple[bool, str]:
        """(ready, reason when not): first status refresh done and scheduler running."""

    def rows(self) -> list[tuple[BindingStatus, dict[str, Any]]]:
        """Every binding's latest status with the daemon's notes (``next_retry`` Unix seconds, ``failures``)."""

    def status(self) -> dict[str, Any]:
        """The ``/status`` document: ``status --json`` plus a ``daemon`` section."""

    # Optional: ``version() -> Hashable``, cheap, equal between two calls only if status() and rows()
    # would return the same; the server then builds /status and the page once per version.


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or "": may resolve to anything, so treat it as exposed


def check_http_config(http: HttpConfig, where: str) -> None:
    """Raise ConfigError when a non-loopback bind has no token (a fleet's status is not for everyone)."""
    token = http.token.get_secret_value() if http.token is not None else ""
    if not is_loopback(http.host) and not token:
        raise ConfigError(
            f"{where}: daemon.http.host {http.host!r} is not a loopback address, so daemon.http.token is required; "
            "set it (e.g. \"${ORCHESTRATOR_TOKEN}\") or bind to 127.0.0.1"
        )


class MetricsSource(Protocol):
    """What serves ``/metrics``: the daemon's Prometheus registry (:class:`orchestrator.daemon.metrics.Metrics`)."""

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of one scrape."""


# -- the fleet page --------------------------------------------------------------


def _when(ts: float | None, now: float) -> str:
    if not ts:
        return ""
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = now - ts
    ago = abs(delta)
    span = f"{int(ago)}s" if ago < 120 else f"{int(ago // 60)}m" if ago < 7200 else f"{int(ago // 3600)}h" if ago < 172800 else f"{int(ago // 86400)}d"
    return f"{stamp} ({span} ago)" if delta >= 0 else f"{stamp} (in {span})"


def _iso_to_ts(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _cell(binding: BindingStatus, notes: dict[str, Any], now: float) -> str:
    e = html.escape
    pending = len(binding.pending)
    lines = [f'<div class="state">{e(binding.state)}</div>',
             f'<div class="counts"><span class="applied">{binding.applied} applied</span> · '
             f'<span class="pending">{pending} pending</span></div>']
    if binding.out_of_order:
        lines.append(f'<div class="note">{len(binding.out_of_order)} out of order</div>')
    if binding.last_version:
        lines.append(f'<div class="last" title="{e(binding.last_version)}">last {e(_when(binding.last_apply_time, now) or binding.last_version)}</div>')
    if binding.applied_now:
        lines.append(f'<div class="note">applied {len(binding.applied_now)} in last run</div>')
    problems = ([binding.error] if binding.error else []) + list(binding.drift)
    for problem in problems[:3]:
        text = redact(problem)
        short = text if len(text) <= 160 else text[:157] + "..."
        lines.append(f'<div class="error" title="{e(text)}">{e(short)}</div>')
    if notes.get("next_retry") is not None:
        lines.append(f'<div class="retry">retry {e(_when(notes["next_retry"], now))}, attempt {notes.get("failures", 0) + 1}</div>')
    title = f"{binding.set_id} on {binding.dbid}: {binding.state}"
    return (f'<td class="cell st-{e(binding.state)}" data-set="{e(binding.set_id)}" data-target="{e(binding.dbid)}" '
            f'data-state="{e(binding.state)}" data-pending="{pending}" title="{e(title)}">' + "".join(lines) + "</td>")


@functools.lru_cache(maxsize=1)
def _template() -> Template:
    return Template(resources.files("orchestrator").joinpath("templates/fleet.html").read_text(encoding="utf-8"))


def render_page(rows: list[tuple[BindingStatus, dict[str, Any]]], daemon: dict[str, Any], ready: bool,
                now: float | None = None, refresh: int = defaults.PAGE_REFRESH) -> str:
    """The fleet page: one row per target, one column per set, each cell colored by state."""
    e = html.escape
    now = time.time() if now is None else now
    set_info: dict[str, Any] = daemon.get("sets", {})
    sets = sorted({b.set_id for b, _ in rows} | set(set_info))
    targets = sorted({b.dbid for b, _ in rows})
    by_key = {(b.set_id, b.dbid): (b, n) for b, n in rows}
    counts = dict.fromkeys(STATES, 0)
    for b, _ in rows:
        counts[b.state] = counts.get(b.state, 0) + 1
    summary = "".join(f'<span class="chip st-{e(s)}" data-count-state="{e(s)}">{e(s)} <b>{n}</b></span>' for s, n in counts.items())
    head = ['<th class="corner">target \\ set</th>']
    for name in sets:
        info = set_info.get(name, {})
        sub = [e(info.get("schedule") or "on start-up and file changes")]
        if info.get("apply") == "report":
            sub.append("report only")
        next_ts = _iso_to_ts(info.get("next_run"))
        if next_ts:
            sub.append("next " + e(_when(next_ts, now)))
        if info.get("running"):
            sub.append("running")
        head.append(f'<th data-set="{e(name)}"><div class="set">{e(name)}</div><div class="sub">{" · ".join(sub)}</div></th>')
    body = []
    for dbid in targets:
        cells = [f'<th class="target" data-target="{e(dbid)}">{e(dbid)}</th>']
        for name in sets:
            hit = by_key.get((name, dbid))
            unbound = f'<td class="cell unbound" data-set="{e(name)}" data-target="{e(dbid)}" data-state="unbound">·</td>'
            cells.append(_cell(hit[0], hit[1], now) if hit else unbound)
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not targets:
        body.append(f'<tr><td class="empty" colspan="{len(sets) + 1}">{"no bindings yet" if ready else "waiting for the first status refresh"}</td></tr>')
    meta = [f"{e(str(daemon.get('host', '')))} pid {e(str(daemon.get('pid', '')))}"]
    if daemon.get("shard"):
        meta.append(f"shard {e(str(daemon['shard']))}")
    started = _iso_to_ts(daemon.get("started_at"))
    if started:
        meta.append(f"started {e(_when(started, now))}")
    meta.append("ready" if ready else "not ready")
    if daemon.get("stopping"):
        meta.append("stopping")
    reload_info = daemon.get("reload") or {}
    if reload_info.get("error"):
        meta.append(f'<span class="bad">last reload failed: {e(redact(str(reload_info["error"])))}</span>')
    return _template().substitute(
        refresh=int(refresh),
        summary=summary,
        meta=" · ".join(meta),
        head="".join(head),
        body="\n".join(body),
        generated=e(datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%SZ")),
        version=e(str(daemon.get("version", ""))),
    )


# -- the server ------------------------------------------------------------------


class _Prepared:
    """A response body built once per state of the source and shared by every request that finds that state.

    ``key`` (the source's ``version``) tells whether the state changed; the body is
    rebuilt only then. Without a key, each request gets a body built after it
    arrived, but requests arriving during a build share the next one (single flight).
    Either way no answer predates its request, and a burst of N requests costs one
    or two builds, not N.
    """

    def __init__(self, build: Callable[[], tuple[bytes, str]], key: Callable[[], Hashable] | None):
        self._build, self._key = build, key
        self._cond = threading.Condition()
        self._started = self._finished = 0
        self._building = False
        self._value: tuple[bytes, str] | None = None
        self._value_key: Hashable = None

    def get(self) -> tuple[bytes, str]:
        key = self._key() if self._key is not None else None
        with self._cond:
            need = self._started + 1
            while True:
                if self._value is not None and (self._value_key == key if key is not None else self._finished >= need):
                    return self._value
                if self._building:
                    self._cond.wait()
                    continue
                self._building = True
                self._started += 1
                number = self._started
                self._cond.release()
                value = None
                try:
                    value = self._build()
                finally:
                    self._cond.acquire()
                    self._building = False
                    if value is not None:
                        self._value, self._value_key, self._finished = value, key, number
                    self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Backlog for bursts (a fleet of probes and scrapers at once); socketserver's default of 5
    # makes the kernel drop connections beyond it, and clients wait out SYN retransmits.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], owner: StatusServer):
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "orchestrator"
    sys_version = ""
    timeout = 10  # seconds: an idle or trickling client does not hold a thread for ever

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse(self) -> None:
        self._send(405, b"method not allowed: this server is read-only (GET, HEAD)\n", "text/plain; charset=utf-8",
                   head=False, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def _authorized(self) -> bool:
        token = self.server.owner.token()
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8"))

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path == "/healthz":  # probes stay open: they reveal nothing and kubelets send no token
                return self._send(200, b"ok\n", "text/plain; charset=utf-8", head)
            if path == "/readyz":
                ready, reason = owner.source.ready()
                return self._send(200 if ready else 503, (b"ready\n" if ready else f"not ready: {reason}\n".encode()),
                                  "text/plain; charset=utf-8", head)
            if path not in ("/", "/status", "/metrics"):
                return self._send(404, b"not found: try /, /status, /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8", head)
            if not self._authorized():
                return self._send(401, b"unauthorized: send 'Authorization: Bearer <daemon.http.token>'\n", "text/plain; charset=utf-8",
                                  head, extra={"WWW-Authenticate": 'Bearer realm="orchestrator"'})
            body, content_type = owner.body(path)
            return self._send(200, body, content_type, head)
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception as exc:  # a bug in rendering must not kill the server thread silently
            log.error("serving %s failed: %s: %s", path, type(exc).__name__, redact(str(exc)))
            return self._send(500, b"internal error; see the daemon log\n", "text/plain; charset=utf-8", head)

    def _send(self, code: int, body: bytes, content_type: str, head: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type.startswith("text/html"):
            # The page embeds no script and loads nothing from elsewhere.
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class StatusServer:
    """A threaded HTTP server in a background thread over a :class:`StatusSource`."""

    def __init__(self, source: StatusSource, metrics: MetricsSource, host: str, port: int,
                 token: Callable[[], str | None], refresh: int = defaults.PAGE_REFRESH):
        self.source = source
        self.metrics = metrics
        self.token = token
        self.refresh = refresh
        self._host, self._port = host, port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        # Bodies are built once per state of the source and shared (see _Prepared).
        key = getattr(source, "version", None)
        self._bodies = {"/status": _Prepared(self._status_body, key), "/metrics": _Prepared(self.metrics.render, None),
                        "/": _Prepared(self._page_body, key)}

    def body(self, path: str) -> tuple[bytes, str]:
        """(body, content type) of ``/status``, ``/metrics`` or ``/``, as of a moment after the call began."""
        return self._bodies[path].get()

    def _status_body(self) -> tuple[bytes, str]:
        text = json.dumps(self.source.status(), indent=2, ensure_ascii=False, default=str)
        return redact(text).encode("utf-8") + b"\n", "application/json"

    def _page_body(self) -> tuple[bytes, str]:
        status = self.source.status()
        ready, _ = self.source.ready()
        page = render_page(self.source.rows(), status.get("daemon", {}), ready, refresh=self.refresh)
        return redact(page).encode("utf-8"), "text/html; charset=utf-8"

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound: port 0 in the config picks a free one."""
        if self._httpd is None:
            return self._host, self._port
        return self._host, int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self) -> None:
        """Bind and serve in a thread; ConfigError (exit 2) when the address cannot be bound."""
        try:
            self._httpd = _Server((self._host, self._port), self)
        except OSError as exc:
            raise ConfigError(f"daemon.http: cannot listen on {self._host}:{self._port}: {exc.strerror or exc}; "
                              "pick another daemon.http.host or port") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="orchestrator-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
