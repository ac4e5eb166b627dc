"""A real TCP proxy on 127.0.0.1 in front of a server, which a test can cut or stall.

``cut()`` drops every connection (the peer sees a reset or EOF, as when a server
dies); ``stall()`` keeps every connection open but forwards nothing more in
either direction (a frozen server, or a link that silently stopped carrying
data: the client's kernel still sees the proxy's socket alive and acknowledging).
While stalled, new connections are accepted and never answered. ``cut_on`` and
``stall_on`` do it once, when a client sends bytes holding a marker, before that
chunk is forwarded: a test can hit an exact statement.

    with StallProxy("127.0.0.1", 5432) as p:
        p.stall_on("2024-01-02_b")   # the runner's ledger write of b never arrives
        ... point the target's port at p.port ...
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

__all__ = ["StallProxy"]


class StallProxy:
    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.down = False  # cut: new connections are refused (closed at once)
        self.stalled = threading.Event()  # stalled: nothing is forwarded, new connections hang
        self.triggered = threading.Event()  # set once a marker was seen
        self._marker: tuple[bytes, str] | None = None
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    # -- controls --------------------------------------------------------------

    def stall(self) -> None:
        self.stalled.set()

    def stall_on(self, marker: str | bytes) -> None:
        self._marker = (marker.encode() if isinstance(marker, str) else marker, "stall")

    def cut(self) -> None:
        with self._guard:
            self.down = True
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            _drop(s)

    def cut_on(self, marker: str | bytes) -> None:
        self._marker = (marker.encode() if isinstance(marker, str) else marker, "cut")

    def restore(self) -> None:
        """New connections work again; connections that were stalled stay stalled until ``close()``."""
        self.down = False
        self._marker = None
        self.stalled.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        with contextlib.suppress(OSError):
            self.listener.close()

    def __enter__(self) -> StallProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            if self.stalled.is_set():
                with self._guard:
                    self._sockets.add(client)  # accepted, never answered
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._guard:
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True, name="proxy-up").start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True, name="proxy-down").start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        tail = b""  # a marker may straddle two reads
        try:
            while data := src.recv(65536):
                marker = self._marker
                if from_client and marker is not None and marker[0] in tail + data:
                    self._marker = None
                    self.triggered.set()
                    if marker[1] == "cut":
                        self.cut()
                        return
                    self.stalled.set()
                if self.stalled.is_set():
                    self._closed.wait()  # hold this chunk and everything after it
                    return
                dst.sendall(data)
                if marker is not None:
                    tail = (tail + data)[-len(marker[0]):]
        except OSError:
            pass
        if not self.stalled.is_set():
            _drop(src)
            _drop(dst)


def _drop(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
