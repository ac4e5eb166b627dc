"""Browser sessions for the status server: a signed cookie in place of the bearer token.

A person types ``daemon.http.token`` into the login page once; the server answers
with a session cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` behind HTTPS)
holding a random session id, a timestamp and a signature (itsdangerous). The token
itself is never in the cookie, a URL or a log. The signing key is derived from the
token, so replicas sharing a token accept each other's sessions and changing the
token ends every session. Logging out revokes the session id in this process and
clears the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie

from itsdangerous import BadSignature, URLSafeTimedSerializer

__all__ = ["COOKIE", "MAX_AGE", "Sessions", "cookie_value"]

COOKIE = "orchestrator_session"
MAX_AGE = 12 * 3600
"""Seconds a session lasts after login."""

_SALT = "orchestrator-session"


def cookie_value(header: str | None) -> str | None:
    """The session cookie's value from a ``Cookie`` request header, if any."""
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


class Sessions:
    """Issues and checks session cookies for the token ``token()`` returns (read on each call: a reload may change it)."""

    def __init__(self, token: Callable[[], str | None], max_age: int = MAX_AGE):
        self._token = token
        self.max_age = max_age
        self._revoked: dict[str, float] = {}  # session id -> when its cookie would expire anyway
        self._lock = threading.Lock()

    def _serializer(self, token: str) -> URLSafeTimedSerializer:
        # A key of its own, derived from the token: the signature reveals nothing about the token.
        key = hmac.new(token.encode("utf-8"), b"orchestrator session signing key", hashlib.sha256).digest()
        return URLSafeTimedSerializer(key, salt=_SALT)

    def token_matches(self, given: str) -> bool:
        """Constant-time comparison with the configured token; False when none is configured."""
        token = self._token()
        return bool(token) and hmac.compare_digest(given.encode("utf-8"), (token or "").encode("utf-8"))

    def issue(self) -> str:
        """A new session cookie value; raises when no token is configured."""
        token = self._token()
        if not token:
            raise ValueError("no daemon.http.token: there is nothing to log in to")
        return self._serializer(token).dumps({"sid": secrets.token_urlsafe(18)})

    def _session_id(self, value: str | None) -> str | None:
        token = self._token()
        if not token or not value:
            return None
        try:
            data = self._serializer(token).loads(value, max_age=self.max_age)
        except BadSignature:  # also an expired one (SignatureExpired is a BadSignature)
            return None
        sid = data.get("sid") if isinstance(data, dict) else None
        return sid if isinstance(sid, str) else None

    def valid(self, value: str | None) -> bool:
        """True for a cookie this token signed, younger than ``max_age`` and not logged out."""
        sid = self._session_id(value)
        if sid is None:
            return False
        with self._lock:
            return sid not in self._revoked

    def revoke(self, value: str | None) -> None:
        """Log a session out: its cookie is refused from now on, even if a copy of it is sent again."""
        sid = self._session_id(value)
        if sid is None:
            return
        now = time.time()
        with self._lock:
            self._revoked = {k: t for k, t in self._revoked.items() if t > now}
            self._revoked[sid] = now + self.max_age

    def set_cookie(self, value: str, secure: bool) -> str:
        """The ``Set-Cookie`` header value for a new session."""
        return (f"{COOKIE}={value}; Path=/; Max-Age={self.max_age}; HttpOnly; SameSite=Strict"
                + ("; Secure" if secure else ""))

    @staticmethod
    def clear_cookie(secure: bool) -> str:
        """The ``Set-Cookie`` header value that removes the session cookie."""
        return f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
