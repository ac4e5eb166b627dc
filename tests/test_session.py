"""Session cookies for the login page: signed, never the token, expiring, revocable, ended by a token change."""

from __future__ import annotations

from typing import Any

from orchestrator.session import COOKIE, Sessions, cookie_value

TOKEN = "s3ssion-token-for-tests-4b1d"


def test_a_session_cookie_is_signed_and_never_holds_the_token() -> None:
    token = {"value": TOKEN}
    sessions = Sessions(lambda: token["value"])
    value = sessions.issue()
    assert TOKEN not in value and sessions.valid(value)
    # tamper with a character of the signature that carries only signature bits (the last may hold padding bits)
    tampered = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    assert tampered != value and not sessions.valid(tampered)
    assert not sessions.valid("") and not sessions.valid(None) and not sessions.valid("garbage")
    header = sessions.set_cookie(value, secure=False)
    assert header.startswith(f"{COOKIE}={value};") and "HttpOnly" in header and "SameSite=Strict" in header and "Secure" not in header
    assert "; Secure" in sessions.set_cookie(value, secure=True)
    assert cookie_value(f"a=1; {COOKIE}={value}; b=2") == value and cookie_value("a=1") is None and cookie_value(None) is None
    token["value"] = "another-token-after-a-reload"
    assert not sessions.valid(value)  # a new token ends every session


def test_logout_revokes_the_session_and_other_sessions_stay(monkeypatch: Any) -> None:
    sessions = Sessions(lambda: TOKEN)
    mine, other = sessions.issue(), sessions.issue()
    sessions.revoke(mine)
    assert not sessions.valid(mine) and sessions.valid(other)
    assert Sessions(lambda: TOKEN).valid(other)  # another replica with the same token accepts it


def test_sessions_expire_and_need_a_token(monkeypatch: Any) -> None:
    import itsdangerous.timed

    sessions = Sessions(lambda: TOKEN, max_age=60)
    value = sessions.issue()
    later = itsdangerous.timed.time.time() + 61
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: later)
    assert not sessions.valid(value)
    none = Sessions(lambda: None)
    assert not none.token_matches("") and not none.valid(value)
    assert Sessions(lambda: TOKEN).token_matches(TOKEN) and not Sessions(lambda: TOKEN).token_matches(TOKEN + "x")


def test_login_logout_and_who_is_authorized() -> None:
    from orchestrator.weblogin import authorized, login, logout

    sessions = Sessions(lambda: TOKEN)
    host = {"Host": "127.0.0.1:8787"}
    assert authorized(sessions, None, {}) and not authorized(sessions, TOKEN, {})
    assert authorized(sessions, TOKEN, {"Authorization": f"Bearer {TOKEN}"})
    wrong = login(sessions, {**host, "Origin": "http://127.0.0.1:8787"}, b"token=nope")
    assert wrong.code == 401 and b"not daemon.http.token" in wrong.body and "Set-Cookie" not in wrong.headers
    assert login(sessions, {**host, "Origin": "http://evil.example"}, f"token={TOKEN}".encode()).code == 403
    ok = login(sessions, {**host, "Origin": "http://127.0.0.1:8787"}, f"token={TOKEN}".encode())
    cookie = ok.headers["Set-Cookie"]
    assert ok.code == 303 and ok.headers["Location"] == "./" and TOKEN not in cookie and "HttpOnly" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert authorized(sessions, TOKEN, jar)
    out = logout(sessions, jar)
    assert out.code == 303 and "Max-Age=0" in out.headers["Set-Cookie"] and not authorized(sessions, TOKEN, jar)
    behind_tls = login(sessions, {**host, "X-Forwarded-Proto": "https"}, f"token={TOKEN}".encode())
    assert "; Secure" in behind_tls.headers["Set-Cookie"]
