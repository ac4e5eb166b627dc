"""The status server's login and logout, as answers to requests: who may read, and what to send back.

The server (http.py) hands over the request's headers and form body and sends
the :class:`Answer`; everything about tokens, cookies and the login page is here.
Scripts and Prometheus keep sending ``Authorization: Bearer <token>``; a browser
posts the token once to ``/login`` and then carries the session cookie.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from orchestrator.page import CONTENT_SECURITY_POLICY, render_login
from orchestrator.session import Sessions, cookie_value

__all__ = ["MAX_FORM", "Answer", "authorized", "login", "login_page", "logout"]

log = logging.getLogger("http")

MAX_FORM = 4096
"""Bytes of a login form body read at most."""

_HTML = "text/html; charset=utf-8"


@dataclass
class Answer:
    code: int
    body: bytes
    content_type: str = _HTML
    headers: dict[str, str] = field(default_factory=dict)


def _secure(headers: Mapping[str, str]) -> bool:
    # Behind a TLS-terminating proxy the cookie is marked Secure; over plain HTTP it could not be sent back.
    return headers.get("X-Forwarded-Proto", "").lower() == "https"


def authorized(sessions: Sessions, token: str | None, headers: Mapping[str, str]) -> bool:
    """No token configured, a matching bearer token, or a valid session cookie."""
    if not token:
        return True
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8")):
        return True
    return sessions.valid(cookie_value(headers.get("Cookie")))


def login_page(problem: str | None = None, code: int = 200, version: str = "") -> Answer:
    """The token form (``code`` 401 when it stands in for a page that needs a login)."""
    return Answer(code, render_login(problem, version).encode("utf-8"),
                  headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


def _same_origin(headers: Mapping[str, str]) -> bool:
    """A form post from a page of this server (or from a client that sends no Origin, like curl)."""
    origin = headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == headers.get("Host", "")


def login(sessions: Sessions, headers: Mapping[str, str], body: bytes, version: str = "") -> Answer:
    """POST /login: a right token gets a session cookie and goes to the fleet page; a wrong one the form again."""
    if not _same_origin(headers):
        return Answer(403, b"forbidden: a login form must be posted from this server's own page\n", "text/plain; charset=utf-8")
    given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[-1]
    if not sessions.token_matches(given):
        log.warning("login refused from %s: wrong token", headers.get("X-Forwarded-For") or "a client")
        return login_page("That token is not daemon.http.token.", 401, version)
    value = sessions.issue()
    return Answer(303, b"", headers={"Location": "./", "Set-Cookie": sessions.set_cookie(value, _secure(headers))})


def logout(sessions: Sessions, headers: Mapping[str, str]) -> Answer:
    """POST /logout: the session is revoked and its cookie cleared; then the login form."""
    sessions.revoke(cookie_value(headers.get("Cookie")))
    return Answer(303, b"", headers={"Location": "login", "Set-Cookie": sessions.clear_cookie(_secure(headers))})
