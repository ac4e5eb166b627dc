"""The fleet page and the login page of the status server, as HTML strings.

Pure functions of a snapshot (bindings with the daemon's notes) and the query of
the request: no I/O but reading the templates. The page is one row per target and
one column per set. Targets with a binding that needs a person (failed, drift,
locked, unreachable, held, or a state this page does not know) come first, so a
failure is on the first screen of a fleet of thousands. Filters live in the URL
(``?state=failed&q=pg``) so a filtered view can be shared and survives the page's
own reload; the server applies them, so the page needs no script for them. The
one inline script only reloads the page and pauses while someone types in the
search box; :data:`CONTENT_SECURITY_POLICY` allows exactly that script by hash.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import re
import shlex
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from orchestrator import defaults
from orchestrator.redact import redact

if TYPE_CHECKING:
    from orchestrator.fleet import BindingStatus

__all__ = ["CONTENT_SECURITY_POLICY", "PROBLEM_STATES", "render_login", "render_page", "sort_key"]

PROBLEM_STATES = ("failed", "drift", "locked", "unreachable", "held")
"""States that need a person, worst first; their targets head the page."""

_KNOWN = (*PROBLEM_STATES, "pending", "capped", "current")  # capped: held at a version cap on purpose
_SHORT = 160  # characters of an error shown before the rest folds away

_SCRIPT = """\
(function () {
  var seconds = Number(document.body.getAttribute("data-refresh")), box = document.getElementById("q");
  function typing() { return box && (document.activeElement === box || box.value !== box.defaultValue); }
  function tick() { if (typing()) { setTimeout(tick, 1000); } else { location.reload(); } }
  if (seconds > 0) { setTimeout(tick, seconds * 1000); }
  document.addEventListener("keydown", function (event) {
    if (event.key === "/" && box && document.activeElement !== box) { event.preventDefault(); box.focus(); }
  });
})();
"""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")

CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""The header for both pages: nothing from elsewhere, only the page's own script, forms post back here only."""

# A command an error names, as the messages quote it: ...then run 'orchestrator resolve ...'
_QUOTED_COMMAND = re.compile(r"'(orchestrator [^']+)'")
# A drift finding starts with the file's label: "<set>/<version>.sql: changed since it was applied on ..."
_DRIFT_VERSION = re.compile(r"^[^/\s]+/(?P<version>[^/:\s]+?)(?:\.[A-Za-z]+|/[^:\s]*)?: changed since")


def _rank(state: str) -> int:
    if state in PROBLEM_STATES:
        return PROBLEM_STATES.index(state)
    if state not in _KNOWN:
        return len(PROBLEM_STATES)  # a state this page does not know: show it early rather than bury it
    return len(PROBLEM_STATES) + 1 + _KNOWN.index(state) - len(PROBLEM_STATES)


def _state(binding: BindingStatus) -> str:
    return binding.state or "unknown"


def _binding_rank(binding: BindingStatus) -> int:
    rank = _rank(_state(binding))
    return min(rank, _rank("drift")) if binding.drift else rank


def sort_key(dbid: str, bindings: Iterable[BindingStatus]) -> tuple[int, str]:
    """Where a target's row goes: its worst binding first, then the dbid."""
    return min((_binding_rank(b) for b in bindings), default=len(_KNOWN) + 1), dbid


def _resolve_only(binding: BindingStatus) -> bool:
    """A failure the ledger records: the daemon only re-reads it until someone runs 'resolve'."""
    return binding.state == "failed" and "orchestrator resolve" in (binding.error or "")


def _unknown_counts(binding: BindingStatus) -> bool:
    """The ledger was not read: 0 applied would be a guess."""
    return binding.state == "unreachable" or binding.set_error or not binding.state


def _matches_state(binding: BindingStatus, wanted: str) -> bool:
    # The drift chip counts every binding carrying drift findings, also one that is failed as well,
    # so the chip's number is what the filtered table shows.
    return _state(binding) == wanted or (wanted == "drift" and bool(binding.drift))


def _matches_text(binding: BindingStatus, needle: str) -> bool:
    return not needle or needle in binding.dbid.lower() or needle in binding.set_id.lower()


def _when(ts: float | None, now: float) -> str:
    if not ts:
        return ""
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = now - ts
    ago = abs(delta)
    span = (f"{int(ago)}s" if ago < 120 else f"{int(ago // 60)}m" if ago < 7200
            else f"{int(ago // 3600)}h" if ago < 172800 else f"{int(ago // 86400)}d")
    return f"{stamp} ({span} ago)" if delta >= 0 else f"{stamp} (in {span})"


def _iso_to_ts(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _command(binding: BindingStatus, problem: str, config: str) -> str:
    """The exact command a person runs next for this problem."""
    quoted = _QUOTED_COMMAND.search(problem)
    if quoted:
        return quoted.group(1)
    where = f"{shlex.quote(config)} --set {shlex.quote(binding.set_id)} --target {shlex.quote(binding.dbid)}"
    drift = _DRIFT_VERSION.match(problem)
    if drift:  # after reviewing that the edit is harmless
        return (f"orchestrator repair {shlex.quote(config)} {shlex.quote(binding.dbid)} {shlex.quote(binding.set_id)} "
                f"{shlex.quote(drift.group('version'))}")
    if binding.state == "unreachable":
        return f"orchestrator wait {shlex.quote(config)} --target {shlex.quote(binding.dbid)}"
    if binding.state == "failed":
        return f"orchestrator catch-up {where}"  # after fixing the file or the database
    return f"orchestrator status {where}"


def _problem(binding: BindingStatus, text: str, config: str) -> str:
    e = html.escape
    text = redact(text)
    fix = f'<div class="fix">run <code>{e(_command(binding, text, config))}</code></div>'
    if len(text) <= _SHORT:
        return f'<div class="error">{e(text)}</div>{fix}'
    # The whole message stays one click away: the fix it names is usually at its end.
    return (f'<details class="error"><summary>{e(text[:_SHORT - 3])}...</summary>'
            f'<div class="full">{e(text)}</div></details>{fix}')


def _cell(binding: BindingStatus, notes: Mapping[str, Any], now: float, config: str, dim: bool) -> str:
    e = html.escape
    state = _state(binding)
    pending = len(binding.pending)
    lines = [f'<div class="state">{e(state)}</div>']
    if _unknown_counts(binding):
        lines.append('<div class="counts"><span class="applied">applied unknown</span> · '
                     '<span class="pending">pending unknown</span></div>')
    else:
        lines.append(f'<div class="counts"><span class="applied">{binding.applied} applied</span> · '
                     f'<span class="pending">{pending} pending</span></div>')
    if binding.out_of_order:
        lines.append(f'<div class="note">{len(binding.out_of_order)} out of order</div>')
    if binding.last_version:
        when = _when(binding.last_apply_time, now) or "time unknown"
        lines.append(f'<div class="last" title="{e(binding.last_version)}">last {e(when)}</div>')
    elif _unknown_counts(binding):
        lines.append('<div class="last">last apply unknown</div>')
    if binding.holder:
        lines.append(f'<div class="note">held by {e(binding.holder)}</div>')
    if binding.applied_now:
        lines.append(f'<div class="note">applied {len(binding.applied_now)} in last run</div>')
    if notes.get("owner"):  # cluster mode: the replica that last worked on it, and when
        stale = ", stale" if notes.get("stale") else ""
        lines.append(f'<div class="note owner">by {e(notes["owner"])} at {e(str(notes.get("updated") or "?"))}{stale}</div>')
    if binding.drift and state != "drift":
        lines.append(f'<div class="note">also drifted: {len(binding.drift)} finding(s)</div>')
    if binding.held:  # a rollout holds it back: the wave and why (waiting for a wave, or a soak)
        lines.append(f'<div class="note">wave {e(binding.wave or "?")}: {len(binding.held)} held: '
                     f'{e(binding.hold_reason or "rollout")}</div>')
    if binding.capped:
        lines.append(f'<div class="note">{len(binding.capped)} capped (until or pin)</div>')
    problems = ([binding.error] if binding.error else []) + [d for d in binding.drift if d != binding.error]
    lines.extend(_problem(binding, problem, config) for problem in problems)
    if _resolve_only(binding):
        # The daemon never re-runs it: promising a retry would be wrong.
        look = _when(notes["next_retry"], now) if notes.get("next_retry") is not None else ""
        lines.append('<div class="retry">blocked until resolved' + (f"; re-read {e(look)}" if look else "") + "</div>")
    elif notes.get("next_retry") is not None:
        lines.append(f'<div class="retry">retry {e(_when(notes["next_retry"], now))}, attempt {notes.get("failures", 0) + 1}</div>')
    title = f"{binding.set_id} on {binding.dbid}: {state}"
    classes = f"cell st-{e(state)}" + (" dim" if dim else "")
    return (f'<td class="{classes}" data-set="{e(binding.set_id)}" data-target="{e(binding.dbid)}" '
            f'data-state="{e(state)}" data-pending="{pending}" title="{e(title)}">' + "".join(lines) + "</td>")


@functools.cache
def _template(name: str) -> Template:
    return Template(resources.files("orchestrator").joinpath(f"templates/{name}").read_text(encoding="utf-8"))


def _link(state: str, needle: str) -> str:
    query = {k: v for k, v in (("state", state), ("q", needle)) if v}
    return "?" + urlencode(query) if query else "?"


def render_page(rows: list[tuple[BindingStatus, dict[str, Any]]], daemon: Mapping[str, Any], ready: bool,
                now: float | None = None, refresh: int = defaults.PAGE_REFRESH,
                query: Mapping[str, str] | None = None, logout: bool = False) -> str:
    """The fleet page for ``query`` (``state``: a chip, ``q``: text in a dbid or set name); ``logout`` adds the button."""
    e = html.escape
    now = time.time() if now is None else now
    query = query or {}
    wanted = (query.get("state") or "").strip()
    needle = (query.get("q") or "").strip()
    lowered = needle.lower()
    config = str(daemon.get("config") or "CONFIG")
    set_info: Mapping[str, Any] = daemon.get("sets") or {}

    by_target: dict[str, list[BindingStatus]] = {}
    notes_of: dict[tuple[str, str], dict[str, Any]] = {}
    for binding, notes in rows:
        by_target.setdefault(binding.dbid, []).append(binding)
        notes_of[(binding.set_id, binding.dbid)] = notes

    counts = dict.fromkeys(_KNOWN, 0)
    for binding, _ in rows:
        state = _state(binding)
        counts[state] = counts.get(state, 0) + 1
        if binding.drift and state != "drift":
            counts["drift"] += 1
    everything = ' aria-current="true"' if not wanted else ""
    chips = [f'<a class="chip all" href="{e(_link("", needle))}"{everything} data-count-state="all">all <b>{len(rows)}</b></a>']
    for state in sorted(counts, key=_rank):
        current = ' aria-current="true"' if state == wanted else ""
        chips.append(f'<a class="chip st-{e(state)}" href="{e(_link(state, needle))}"{current} '
                     f'data-count-state="{e(state)}">{e(state)} <b>{counts[state]}</b></a>')

    def shown(binding: BindingStatus) -> bool:
        return (not wanted or _matches_state(binding, wanted)) and _matches_text(binding, lowered)

    filtering = bool(wanted or needle)
    matching = [b for b, _ in rows if shown(b)]
    targets = sorted({b.dbid for b in matching}, key=lambda dbid: sort_key(dbid, by_target[dbid]))
    if filtering:
        sets = sorted({b.set_id for b in matching})
    else:  # a configured set with no binding yet still gets its column
        sets = sorted({b.set_id for b, _ in rows} | set(set_info))

    head = ['<th class="corner">target \\ set</th>']
    for name in sets:
        info = set_info.get(name) or {}
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
        mine = {b.set_id: b for b in by_target[dbid]}
        for name in sets:
            hit = mine.get(name)
            if hit is None:
                cells.append(f'<td class="cell unbound" data-set="{e(name)}" data-target="{e(dbid)}" data-state="unbound">·</td>')
            else:
                cells.append(_cell(hit, notes_of[(name, dbid)], now, config, dim=filtering and not shown(hit)))
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not targets:
        empty = ("no binding matches this filter" if filtering and rows
                 else "no bindings yet" if ready else "waiting for the first status refresh")
        body.append(f'<tr><td class="empty" colspan="{len(sets) + 1}">{empty}</td></tr>')

    showing = f"showing {len(matching)} of {len(rows)} bindings on {len(targets)} targets"
    if filtering:
        what = [f"state {e(wanted)}"] if wanted else []
        what += [f"search “{e(needle)}”"] if needle else []
        showing += f' · {", ".join(what)} · <a href="?">clear</a>'
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
    for source in (daemon.get("inventory") or {}).get("sources") or ():
        if not source.get("up"):  # its last good list is still served: say so, with why
            meta.append(f'<span class="bad" data-inventory="{e(str(source.get("name")))}">{e(redact(str(source.get("error"))))}'
                        f' (keeping its last {e(str(source.get("targets")))} targets)</span>')
    hidden = f'<input type="hidden" name="state" value="{e(wanted)}">' if wanted else ""
    return _template("fleet.html").substitute(
        refresh=int(refresh),
        chips="".join(chips),
        needle=e(needle),
        hidden=hidden,
        showing=showing,
        meta=" · ".join(meta),
        head="".join(head),
        body="\n".join(body),
        generated=e(datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%SZ")),
        version=e(str(daemon.get("version", ""))),
        logout='<form class="logout" method="post" action="logout"><button type="submit">log out</button></form>' if logout else "",
        script=_SCRIPT,
    )


def render_login(problem: str | None = None, version: str = "") -> str:
    """The token form; ``problem`` is shown above it (a wrong token, an expired session)."""
    e = html.escape
    return _template("login.html").substitute(
        problem=f'<p class="bad" role="alert">{e(problem)}</p>' if problem else "",
        version=e(version),
    )
