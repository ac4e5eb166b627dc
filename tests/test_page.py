"""The fleet page: ordering, chips as filters, search, filters kept in the URL, unknown values, full errors.

Rendering is tested on fixed snapshots; the browser tests serve the page from a
small server (the page's real Content-Security-Policy included) and drive headless
Chromium over the DevTools protocol: clicks, form submits and a 3,000-binding fleet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from orchestrator import page
from orchestrator.fleet import BindingStatus
from tests.browser import Browser

CONFIG = "/etc/orchestrator/config.json"
DAEMON = {"config": CONFIG, "host": "h", "pid": 7, "version": "test", "sets": {"app": {"schedule": "every 5m"}}}
RESOLVE_ERROR = (f"mysql.m/app: 002_add failed at statement 2: (1146, \"Table 'x.nope' doesn't exist\"); fix the database, then run "
                 f"'orchestrator resolve {CONFIG} mysql.m app 002_add --retry|--mark-applied|--forget'")


def fleet_rows(targets: int = 6, failing: int = 4) -> list[tuple[BindingStatus, dict[str, Any]]]:
    """``targets`` x 3 sets, all current but one failing binding on target ``failing``."""
    rows = []
    for i in range(targets):
        dbid = f"postgresql.t{i:04d}"
        for set_id in ("app", "billing", "cache"):
            if i == failing and set_id == "billing":
                rows.append((BindingStatus(set_id, dbid, "failed", applied=2, pending=["003"],
                                           error=f"{dbid}/billing: 003.sql: statement 1 (line 1): relation \"x\" does not exist"),
                             {"next_retry": 1_700_000_060.0, "failures": 1}))
            else:
                rows.append((BindingStatus(set_id, dbid, "current", applied=3, last_version="003", last_apply_time=1_700_000_000), {}))
    return rows


def mixed_rows() -> list[tuple[BindingStatus, dict[str, Any]]]:
    return [
        (BindingStatus("app", "sqlite.a", "current", applied=3, last_version="003", last_apply_time=1_700_000_000), {}),
        (BindingStatus("app", "sqlite.b", "pending", applied=1, pending=["002", "003"]), {}),
        (BindingStatus("app", "postgresql.gone", "unreachable", error="postgresql.gone: unreachable: connection refused"),
         {"next_retry": 1_700_000_060.0, "failures": 2}),
        (BindingStatus("app", "mysql.m", "failed", applied=1, error=RESOLVE_ERROR), {"next_retry": 1_700_000_090.0, "failures": 3}),
        (BindingStatus("app", "redis.r", "drift", applied=3, drift=["app/002_add.redis: changed since it was applied on redis.r "
                                                                    "(checksum 0123456789ab, file now ba9876543210)"],
                       error="app/002_add.redis: changed since it was applied on redis.r (checksum 0123456789ab, file now ba9876543210)"), {}),
        (BindingStatus("app", "sqlite.held", "held", applied=2, pending=["003"]), {}),
        (BindingStatus("app", "sqlite.odd", "", applied=0), {}),
    ]


def targets_in_order(html: str) -> list[str]:
    import re

    return re.findall(r'<th class="target" data-target="([^"]+)"', html)


def test_targets_needing_a_person_come_first() -> None:
    html = page.render_page(mixed_rows(), DAEMON, ready=True, now=1_700_000_030)
    assert targets_in_order(html) == ["mysql.m", "redis.r", "postgresql.gone", "sqlite.held", "sqlite.odd", "sqlite.b", "sqlite.a"]
    assert targets_in_order(page.render_page(fleet_rows(300, failing=257), DAEMON, ready=True))[0] == "postgresql.t0257"


def test_chips_are_filter_links_and_their_counts_match_the_table() -> None:
    rows = mixed_rows()
    rows.append((BindingStatus("cache", "mysql.m", "failed", applied=1, error="x",
                               drift=["cache/001.sql: changed since it was applied on mysql.m (checksum a, file now b)"]), {}))
    html = page.render_page(rows, DAEMON, ready=True, now=1_700_000_030)
    assert 'href="?state=failed" data-count-state="failed">failed <b>2</b></a>' in html
    assert 'data-count-state="drift">drift <b>2</b>' in html  # the failed binding with a drift finding counts too
    assert 'data-count-state="all">all <b>8</b>' in html and 'data-count-state="held">held <b>1</b>' in html
    for state, expected in (("failed", 2), ("drift", 2), ("unreachable", 1), ("current", 1)):
        filtered = page.render_page(rows, DAEMON, ready=True, query={"state": state})
        shown = filtered.count('class="cell st-') - filtered.count(" dim\"")
        assert shown == expected, state
        assert f"showing {expected} of 8 bindings" in filtered
        assert 'aria-current="true" data-count-state="' + state + '"' in filtered


def test_search_filters_by_target_and_by_set_and_keeps_the_state() -> None:
    rows = fleet_rows(6)
    by_target = page.render_page(rows, DAEMON, ready=True, query={"q": "T0002"})
    assert targets_in_order(by_target) == ["postgresql.t0002"] and by_target.count('data-state="current"') == 3
    by_set = page.render_page(rows, DAEMON, ready=True, query={"q": "bill"})
    assert len(targets_in_order(by_set)) == 6 and 'data-set="app"' not in by_set and 'data-set="billing"' in by_set
    both = page.render_page(rows, DAEMON, ready=True, query={"q": "bill", "state": "failed"})
    assert targets_in_order(both) == ["postgresql.t0004"]
    assert 'href="?state=current&amp;q=bill"' in both and 'name="state" value="failed"' in both and 'value="bill"' in both
    none = page.render_page(rows, DAEMON, ready=True, query={"q": "nothing-like-this"})
    assert "no binding matches this filter" in none and "showing 0 of 18 bindings" in none


def test_unknown_values_show_as_unknown() -> None:
    html = page.render_page(mixed_rows(), DAEMON, ready=True, query={"q": "gone"})
    assert "applied unknown" in html and "pending unknown" in html and "last apply unknown" in html and "0 applied" not in html
    odd = page.render_page(mixed_rows(), DAEMON, ready=True, query={"q": "odd"})
    assert 'data-state="unknown"' in odd and "applied unknown" in odd


def test_full_error_and_the_command_to_run() -> None:
    html = page.render_page(mixed_rows(), DAEMON, ready=True, now=1_700_000_030)
    # the whole message, up to the fix it names, and the command on its own
    assert "--retry|--mark-applied|--forget&#x27;</div></details>" in html
    assert f"<code>orchestrator resolve {CONFIG} mysql.m app 002_add --retry|--mark-applied|--forget</code>" in html
    assert f"<code>orchestrator repair {CONFIG} redis.r app 002_add</code>" in html
    assert f"<code>orchestrator wait {CONFIG} --target postgresql.gone</code>" in html


def test_a_failure_only_resolve_clears_promises_no_retry() -> None:
    html = page.render_page(mixed_rows(), DAEMON, ready=True, now=1_700_000_030, query={"q": "mysql"})
    assert "attempt" not in html and "blocked until resolved; re-read 2023-11-14 22:14:50Z (in 60s)" in html
    gone = page.render_page(mixed_rows(), DAEMON, ready=True, now=1_700_000_030, query={"q": "gone"})
    assert "retry 2023-11-14 22:14:20Z (in 30s), attempt 3" in gone


def test_errors_are_escaped_and_nothing_loads_from_elsewhere() -> None:
    rows = [(BindingStatus("app", "sqlite.a", "failed", error="<script>alert(1)</script>" * 20), {})]
    html = page.render_page(rows, DAEMON, ready=True)
    assert html.count("<script>") == 1 and "&lt;script&gt;alert(1)" in html
    searched = page.render_page(rows, DAEMON, ready=True, query={"q": '"><script>x</script>'})
    assert searched.count("<script>") == 1 and "&quot;&gt;&lt;script&gt;x" in searched
    assert "http://" not in html and "https://" not in html and " src=" not in html
    login = page.render_login("wrong token", version="1.0")
    assert 'method="post" action="login"' in login and 'type="password"' in login and "wrong token" in login


# -- in the browser ---------------------------------------------------------------------------------


@pytest.fixture
def page_server() -> Iterator[Any]:
    """Serves page.render_page over a settable snapshot, with the header the status server sends."""

    class Handler(BaseHTTPRequestHandler):
        rows: list[tuple[BindingStatus, dict[str, Any]]] = []

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            split = urlsplit(self.path)
            if split.path != "/":
                self.send_error(404)
                return
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            body = page.render_page(Handler.rows, DAEMON, ready=True, refresh=3600, query=query).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", page.CONTENT_SECURITY_POLICY)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.rows = Handler  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def test_page_in_chromium_chips_search_and_url(page_server: Any, tmp_path: Path) -> None:
    page_server.rows.rows = mixed_rows()
    url = f"http://127.0.0.1:{page_server.server_address[1]}/"
    with Browser(tmp_path / "profile") as b:
        b.goto(url)
        assert b.eval("document.querySelector('tbody th.target').dataset.target") == "mysql.m"
        assert b.eval("document.querySelectorAll('td.cell:not(.unbound)').length") == 7
        b.act("document.querySelector('a[data-count-state=unreachable]').click()")
        assert b.eval("location.search") == "?state=unreachable"
        assert b.eval("[...document.querySelectorAll('td.cell:not(.dim)')].map(c => c.dataset.target)") == ["postgresql.gone"]
        # search keeps the chip's state and lands in the URL, so the view can be shared
        b.act("document.getElementById('q').value = 'sqlite'; document.querySelector('form[role=search]').submit()")
        assert b.eval("location.search") == "?q=sqlite&state=unreachable"
        assert b.eval("document.querySelectorAll('td.cell:not(.unbound):not(.dim)').length") == 0
        b.act("document.querySelector('a[data-count-state=all]').click()")
        assert b.eval("location.search") == "?q=sqlite"
        assert b.eval("[...document.querySelectorAll('tbody th.target')].map(t => t.dataset.target)") == ["sqlite.held", "sqlite.odd", "sqlite.b", "sqlite.a"]
        # a long error unfolds to its end, with the command to run
        b.goto(url + "?state=failed")
        assert b.eval("document.querySelector('details.error').open") is False
        b.eval("document.querySelector('details.error summary').click()")
        assert b.eval("document.querySelector('details.error').open") is True
        assert b.eval("document.querySelector('details.error .full').innerText").endswith("--retry|--mark-applied|--forget'")
        # the page's own script runs under its Content-Security-Policy ('/' focuses the search box)
        b.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: '/'}))")
        assert b.eval("document.activeElement.id") == "q"


def test_page_in_chromium_with_3000_bindings(page_server: Any, tmp_path: Path) -> None:
    page_server.rows.rows = fleet_rows(1000, failing=731)
    url = f"http://127.0.0.1:{page_server.server_address[1]}/"
    with Browser(tmp_path / "profile") as b:
        b.goto(url)
        # time from navigation start to a laid-out page, measured by the browser itself
        elapsed = b.eval("document.body.offsetHeight, performance.now()")
        assert elapsed < 2000, f"{elapsed:.0f} ms to load and lay out 3,000 bindings"
        assert b.eval("document.querySelectorAll('td.cell:not(.unbound)').length") == 3000
        assert b.eval("document.querySelector('[data-count-state=failed] b').textContent") == "1"
        top = b.eval("document.querySelector('td[data-state=failed]').getBoundingClientRect().bottom")
        assert 0 < top <= b.eval("innerHeight"), "the failing binding is on the first screen"


def test_login_see_the_page_log_out_in_chromium(tmp_path: Path) -> None:
    """The status server bound with a token: a browser logs in through the form, reads the page, logs out."""
    from orchestrator.http import StatusServer
    from tests.test_http import TOKEN, FakeSource, request, sample_rows

    source = FakeSource(sample_rows())
    server = StatusServer(source, _NoMetrics(), "127.0.0.1", 0, lambda: TOKEN)
    server.start()
    url = server.url
    try:
        with Browser(tmp_path / "profile") as b:
            b.goto(url)
            assert b.eval("document.querySelector('form#login') !== null") and b.eval("document.querySelectorAll('td.cell').length") == 0
            b.act("document.getElementById('token').value = 'wrong'; document.getElementById('login').submit()")
            assert "not daemon.http.token" in b.eval("document.body.innerText")
            b.act(f"document.getElementById('token').value = {TOKEN!r}; document.getElementById('login').submit()")
            assert b.eval("location.pathname") == "/" and b.eval("document.querySelectorAll('td.cell:not(.unbound)').length") == 4
            assert b.eval("document.cookie") == ""  # HttpOnly: no script can read it
            cookies = b.call("Network.getCookies", urls=[url])["cookies"]
            (cookie,) = cookies
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
            b.goto(url + "status")  # the link on the page works with the cookie too
            assert '"bindings"' in b.eval("document.body.innerText")
            b.goto(url + "?state=failed")
            assert b.eval("document.querySelectorAll('td.cell:not(.unbound):not(.dim)').length") == 1
            b.act("document.querySelector('form.logout button').click()")
            assert b.eval("document.querySelector('form#login') !== null")
            b.goto(url)
            assert b.eval("document.querySelector('form#login') !== null")  # logged out: the form again
            # the revoked cookie is refused even if a copy of it is sent again
            assert request(server, "GET", "/status", {"Cookie": f"{cookie['name']}={cookie['value']}"})[0] == 401
        # scripts and Prometheus keep using the header
        assert request(server, "GET", "/metrics", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert request(server, "GET", "/status")[0] == 401 and request(server, "POST", "/status")[0] == 405
    finally:
        server.stop()


class _NoMetrics:
    def render(self) -> tuple[bytes, str]:
        return b"", "text/plain"
