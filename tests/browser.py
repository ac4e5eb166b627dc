"""Headless Chromium driven over the DevTools protocol, for tests of the fleet and login pages.

Just enough of the protocol to load a URL, wait for the load event, run an
expression and read its value: navigation, clicks and form posts happen in the
real browser, with its real cookie jar and the server's Content-Security-Policy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket  # websocket-client, a test dependency

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,800"]


def chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is required for this test: apt-get install -y chromium (.ci/run installs it)"
    return browser


class Browser:
    """One headless Chromium with one page; ``with Browser(tmp_path) as b: b.goto(url); b.eval("document.title")``."""

    def __init__(self, profile: Path):
        self.proc = subprocess.Popen([chromium(), *ARGS, "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        for _ in range(600):  # the browser writes its port once it listens
            if port_file.exists() and port_file.read_text().strip():
                break
            assert self.proc.poll() is None, "chromium exited at start"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            pages = [t for t in json.load(response) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def _wait_event(self, method: str) -> dict[str, Any]:
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    del self.events[: i + 1]
                    return event
            self.events.append(json.loads(self.ws.recv()))

    def goto(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")

    def act(self, expression: str) -> None:
        """Run ``expression`` (a click, a form submit) and wait for the page it navigates to."""
        self.events.clear()
        self.eval(expression)
        self._wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        return [json.dumps(e["params"]) for e in self.events
                if e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error"]

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
