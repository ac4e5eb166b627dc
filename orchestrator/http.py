"""The daemon's read-only status server: health, readiness, status JSON, metrics and a fleet page.

:class:`StatusServer` serves whatever a :class:`StatusSource` (the daemon) holds
in memory: every request reads the latest snapshot and no request opens a
database connection, so a slow or dead target never stalls a probe or a scrape.
Endpoints: ``/healthz`` (the process answers), ``/readyz`` (first status refresh
done and the scheduler running), ``/status`` (the JSON of ``status --json`` plus a
``daemon`` section), ``/metrics`` (Prometheus text from the daemon's
registry) and ``/`` (the fleet page of :mod:`orchestrator.page`, filtered by
``?state=&q=``). Only GET and HEAD are served, plus POST to ``/login`` and
``/logout``; nothing here changes the fleet. Bound to a non-loopback address the
server requires ``Authorization: Bearer <token>`` or a session cookie from
``/login`` (:mod:`orchestrator.weblogin`) on every endpoint but the two probes, and
refuses to start without a token (:func:`check_http_config`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Hashable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from orchestrator import __version__, defaults, weblogin
from orchestrator.errors import ConfigError
from orchestrator.page import CONTENT_SECURITY_POLICY, render_page
from orchestrator.redact import redact
from orchestrator.session import Sessions

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
        self._send(405, b"method not allowed: this server is read-only (GET, HEAD; POST only to /login and /logout)\n",
                   "text/plain; charset=utf-8", head=False, extra={"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def do_POST(self) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path.rstrip("/")
        if path not in ("/login", "/logout"):
            return self._refuse()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= weblogin.MAX_FORM:
                return self._send(413, b"form too large\n", "text/plain; charset=utf-8", head=False)
            body = self.rfile.read(length)
            headers = dict(self.headers.items())
            answer = (weblogin.login(owner.sessions, headers, body, owner.version) if path == "/login"
                      else weblogin.logout(owner.sessions, headers))
            return self._send(answer.code, answer.body, answer.content_type, head=False, extra=answer.headers)
        except (BrokenPipeError, ConnectionResetError, ValueError):
            return None

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        try:
            if path == "/healthz":  # probes stay open: they reveal nothing and kubelets send no token
                return self._send(200, b"ok\n", "text/plain; charset=utf-8", head)
            if path == "/readyz":
                ready, reason = owner.source.ready()
                return self._send(200 if ready else 503, (b"ready\n" if ready else f"not ready: {reason}\n".encode()),
                                  "text/plain; charset=utf-8", head)
            if path == "/login":
                if not owner.token():  # nothing to log in to
                    return self._send(303, b"", "text/plain; charset=utf-8", head, extra={"Location": "./"})
                answer = weblogin.login_page(version=owner.version)
                return self._send(answer.code, answer.body, answer.content_type, head)
            if path not in ("/", "/status", "/metrics"):
                return self._send(404, b"not found: try /, /status, /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8", head)
            if not weblogin.authorized(owner.sessions, owner.token(), dict(self.headers.items())):
                if path == "/":  # a browser: the login form, still with 401 for scripts
                    answer = weblogin.login_page(code=401, version=owner.version)
                    return self._send(401, answer.body, answer.content_type, head,
                                      extra={"WWW-Authenticate": 'Bearer realm="orchestrator"'})
                return self._send(401, b"unauthorized: send 'Authorization: Bearer <daemon.http.token>' or log in at /login\n",
                                  "text/plain; charset=utf-8", head, extra={"WWW-Authenticate": 'Bearer realm="orchestrator"'})
            if path == "/" and split.query:
                body, content_type = owner.page(parse_qs(split.query))
            else:
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
            # The pages load nothing from elsewhere and run only their own script (allowed by its hash).
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
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
        self.sessions = Sessions(token)
        self.version = __version__
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

    def _page_body(self, query: dict[str, str] | None = None) -> tuple[bytes, str]:
        status = self.source.status()
        ready, _ = self.source.ready()
        page = render_page(self.source.rows(), status.get("daemon", {}), ready, refresh=self.refresh, query=query,
                           logout=bool(self.token()))
        return redact(page).encode("utf-8"), "text/html; charset=utf-8"

    def page(self, query: dict[str, list[str]]) -> tuple[bytes, str]:
        """The fleet page filtered by ``?state=&q=``: built per request (the shared body is the unfiltered one)."""
        return self._page_body({k: v[-1] for k, v in query.items() if k in ("state", "q")})

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
