"""Webhook notifications: one JSON POST per event, from a background queue.

Events are ``binding.failed``, ``rollout.held`` and ``run.finished``. Each hook has
its own queue and thread, so a slow or dead receiver never slows migrations or
another hook: ``send`` only enqueues. A delivery that fails is retried with
exponential backoff (in order, per hook) until ``max_age``; then it is dropped,
counted in ``undelivered`` and logged in one line. A body is signed
``X-Orchestrator-Signature: sha256=<hex HMAC-SHA256 of the body>`` when the hook has
a secret. URLs are logged as scheme://host:port only (webhook URLs often carry a
token in their path), and secrets never enter a payload.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["EVENTS", "Hook", "Notifier", "Once", "event", "safe_url", "sign"]

log = logging.getLogger("notify")

EVENTS = ("binding.failed", "rollout.held", "run.finished")
_QUEUE_LIMIT = 10_000  # per hook; beyond it events are dropped (and counted), never blocking a run


@dataclass(frozen=True)
class Hook:
    """One receiver: where to POST, which events, and the HMAC secret (optional)."""

    url: str
    events: frozenset[str] = frozenset(EVENTS)
    secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for a body: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def safe_url(url: str) -> str:
    """scheme://host[:port] of a URL, for logs (the path or query may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def event(kind: str, set_id: str | None = None, target: str | None = None, version: str | None = None,
          state: str | None = None, error: str | None = None, text: str | None = None, **extra: Any) -> dict[str, Any]:
    """An event payload: the fixed fields, a ``text`` line a chat webhook shows as is, and any extras."""
    if text is None:
        where = " ".join(p for p in (set_id and f"set {set_id}", target and f"on {target}",
                                     version and f"at {version}") if p)
        text = f"orchestrator {kind}" + (f": {where}" if where else "") + (f" ({state})" if state else "") + \
            (f": {error}" if error else "")
    payload: dict[str, Any] = {"event": kind, "set": set_id, "target": target, "version": version, "state": state,
                               "error": error, "text": text,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    payload.update(extra)
    return payload


class Once:
    """Remembers which events were already sent: a failure fires once, not on every retry."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()

    def first(self, key: tuple[str, ...], value: str = "") -> bool:
        """True the first time ``key`` is seen with ``value`` (a new value counts as new)."""
        with self._lock:
            if self._seen.get(key) == value:
                return False
            self._seen[key] = value
            return True

    def forget(self, key: tuple[str, ...]) -> None:
        """The condition ended (the binding recovered): the next one is new again."""
        with self._lock:
            self._seen.pop(key, None)


class _Outbox:
    """One hook's queue and delivery thread."""

    def __init__(self, hook: Hook, owner: Notifier):
        self.hook = hook
        self.owner = owner
        self.queue: deque[tuple[float, bytes, str]] = deque()
        self.cond = threading.Condition()
        self.busy = False
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name=f"notify {safe_url(hook.url)}", daemon=True)
        self.thread.start()

    def put(self, body: bytes, kind: str) -> None:
        with self.cond:
            if len(self.queue) >= _QUEUE_LIMIT:
                self.owner.count_undelivered(1)
                log.warning("notify: %s queue full; %s dropped", safe_url(self.hook.url), kind)
                return
            self.queue.append((time.monotonic(), body, kind))
            self.cond.notify_all()

    def pending(self) -> int:
        with self.cond:
            return len(self.queue)

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                queued, body, kind = self.queue[0]
            attempt = 0
            while True:
                attempt += 1
                problem = self._post(body)
                if problem is None:
                    self.owner.count_delivered()
                    break
                permanent = problem.startswith("HTTP 4") and not problem.startswith(("HTTP 408", "HTTP 429"))
                if permanent or time.monotonic() - queued > self.owner.max_age:
                    self.owner.count_undelivered(1)
                    log.warning("notify: %s to %s undelivered after %d attempts: %s", kind, safe_url(self.hook.url),
                                attempt, problem)
                    break
                delay = min(self.owner.retry_cap, self.owner.retry_first * 2 ** min(attempt - 1, 30))
                with self.cond:
                    if self.cond.wait_for(lambda: self.closing, timeout=delay):
                        return  # closing: what is left is counted by close()
            with self.cond:
                self.queue.popleft()
                self.cond.notify_all()

    def _post(self, body: bytes) -> str | None:
        # Here, not at the top: urllib.request brings http.client and email in, on every command otherwise.
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json", "User-Agent": "orchestrator"}
        if self.hook.secret:
            headers["X-Orchestrator-Signature"] = sign(body, self.hook.secret)
        request = urllib.request.Request(self.hook.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.hook.timeout) as response:
                response.read()
            return None
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


class Notifier:
    """Delivers events to hooks in the background; ``send`` never blocks or raises."""

    def __init__(self, hooks: Iterable[Hook], retry_first: float = 0.5, retry_cap: float = 10.0,
                 max_age: float = 3600.0):
        self.retry_first, self.retry_cap, self.max_age = retry_first, max(retry_cap, retry_first), max_age
        self.delivered = 0
        self.undelivered = 0
        self._counter_lock = threading.Lock()
        self.hooks = tuple(hooks)
        self._outboxes = [_Outbox(hook, self) for hook in self.hooks]

    def __bool__(self) -> bool:
        return bool(self._outboxes)

    def wants(self, kind: str) -> bool:
        return any(kind in box.hook.events for box in self._outboxes)

    def send(self, payload: dict[str, Any]) -> None:
        """Queue one event for every hook that asked for its kind."""
        kind = str(payload.get("event"))
        body = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
        for box in self._outboxes:
            if kind in box.hook.events:
                box.put(body, kind)

    def pending(self) -> int:
        return sum(box.pending() for box in self._outboxes)

    def flush(self, wait: float) -> int:
        """Wait up to ``wait`` seconds for the queues to empty; returns how many events are still queued."""
        deadline = time.monotonic() + wait
        for box in self._outboxes:
            with box.cond:
                box.cond.wait_for(lambda b=box: not b.queue, timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[misc]
        return self.pending()

    def close(self, wait: float = 0.0) -> int:
        """Flush for up to ``wait`` seconds, then stop; events still queued are counted undelivered and logged once."""
        left = self.flush(wait) if wait > 0 else self.pending()
        for box in self._outboxes:
            with box.cond:
                box.closing = True
                box.cond.notify_all()
        if left:
            self.count_undelivered(left)
            log.warning("notify: %d event%s not delivered within %gs; giving up", left, "" if left == 1 else "s", wait)
        return left

    def count_delivered(self) -> None:
        with self._counter_lock:
            self.delivered += 1

    def count_undelivered(self, n: int) -> None:
        with self._counter_lock:
            self.undelivered += n
