"""A TCP proxy that adds a fixed one-way delay, to measure a fleet as if its servers were far away.

Each listening port forwards to one upstream server; every chunk read from either
side is written to the other side ``--delay-ms`` later (order kept), so each round
trip costs twice the delay on top of the real one. The TCP handshake itself is not
delayed (the client connects to the local proxy): a real far connect costs one more
round trip than measured here, for orchestrator and the floor alike. Usage::

    python bench/latency_proxy.py --delay-ms 10 pg=127.0.0.1:5432 my=127.0.0.1:3306 rd=127.0.0.1:6379

It prints one JSON line ``{"pg": PORT, ...}`` once listening; on SIGUSR1 one JSON
line of counts per upstream since the last such line (connections, and turns: a
chunk that followed a chunk in the other direction, about two per round trip),
and on SIGTERM or SIGINT the last such line before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections import Counter

CHUNK = 1 << 16


class Proxy:
    def __init__(self, name: str, host: str, port: int, delay: float, stats: Counter[str]):
        self.name, self.host, self.port, self.delay, self.stats = name, host, port, delay, stats

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            client_writer.close()
            return
        self.stats[f"{self.name}.connections"] += 1
        last = {"dir": ""}
        try:
            await asyncio.gather(self._pump(client_reader, up_writer, "up", last), self._pump(up_reader, client_writer, "down", last),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # the proxy is stopping
            pass
        for writer in (client_writer, up_writer):
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str, last: dict[str, str]) -> None:
        """Forward reader -> writer, each chunk ``delay`` after it arrived; EOF travels with the same delay."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await reader.read(CHUNK)
                if last["dir"] != direction:
                    last["dir"] = direction
                    self.stats[f"{self.name}.turns"] += 1
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time(), b""))
        await sender


async def serve(upstreams: dict[str, tuple[str, int]], delay: float, host: str) -> None:
    stats: Counter[str] = Counter()
    servers = {}
    for name, (up_host, up_port) in upstreams.items():
        proxy = Proxy(name, up_host, up_port, delay, stats)
        servers[name] = await asyncio.start_server(proxy.handle, host, 0, backlog=1024)
    print(json.dumps({name: server.sockets[0].getsockname()[1] for name, server in servers.items()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def report() -> None:
        print(json.dumps(dict(stats)), flush=True)
        stats.clear()

    loop.add_signal_handler(signal.SIGUSR1, report)
    await stop.wait()
    for server in servers.values():
        server.close()
    report()
    os._exit(0)  # open relays die with the process, without asyncio's complaints about pending tasks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay added to every chunk, each direction")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (ports are chosen by the system)")
    parser.add_argument("upstream", nargs="+", help="NAME=HOST:PORT")
    args = parser.parse_args()
    upstreams = {}
    for item in args.upstream:
        name, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        if not name or not host or not port.isdigit():
            parser.error(f"upstream {item!r}: expected NAME=HOST:PORT")
        upstreams[name] = (host, int(port))
    try:
        import uvloop  # optional: less of the proxy's CPU taken from what it measures
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(upstreams, args.delay_ms / 1000, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
