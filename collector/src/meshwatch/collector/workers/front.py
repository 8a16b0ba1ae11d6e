"""The front of ``--workers N``: one listener per configured receiver port, spreading connections.

Python's GIL keeps one collector process on one core, so several worker processes share
each OTLP port. The receivers bind their own sockets without ``SO_REUSEPORT`` (a port in
use is an error, on purpose), so the supervisor holds the public port itself and relays
each accepted TCP connection, bytes unchanged (TLS, HTTP/1.1, HTTP/2 alike), to one
worker's private loopback port. Connections are spread round-robin over the workers
that are up; a worker that refuses (dead, restarting) is skipped for the next one.
A connection stays on its worker for its life, as with ``SO_REUSEPORT``: a gRPC client
with one channel reaches one worker, many clients reach all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Front", "Listener"]

log = logging.getLogger("meshwatch.collector.workers")

#: Bytes read at once from either side.
_CHUNK = 256 * 1024


@dataclass
class Listener:
    """A public ``host:port`` and, per worker, the private loopback port behind it."""

    name: str  # e.g. "otlp/grpc"
    host: str
    port: int
    worker_ports: list[int]
    #: Connections relayed to each worker (index: worker), read by the self-metrics.
    relayed: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.relayed = [0] * len(self.worker_ports)


class Front:
    """Accepts on every listener in an asyncio loop of its own thread and relays to the workers."""

    def __init__(self, listeners: list[Listener], is_up: Callable[[int], bool]) -> None:
        self.listeners = listeners
        self._is_up = is_up
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="workers-front", daemon=True)
        self._next = {listener.name: itertools.count() for listener in listeners}

    def bind(self) -> None:
        """Listen on every public port now (a port in use fails here, before any worker starts)."""
        for listener in self.listeners:
            sock = socket.socket(socket.AF_INET6 if ":" in listener.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((listener.host, listener.port))
            except OSError as exc:
                sock.close()
                self.close()
                raise OSError(
                    f"cannot listen for {listener.name} on {listener.host}:{listener.port}: {exc.strerror or exc}"
                ) from None
            sock.listen(1024)
            sock.setblocking(False)
            server = self._loop.run_until_complete(
                asyncio.start_server(lambda r, w, lst=listener: self._relay(lst, r, w), sock=sock)
            )
            self._servers.append(server)

    def start(self) -> None:
        self._thread.start()

    def stop_accepting(self) -> None:
        """Close the public ports; connections already relayed go on until their worker closes them."""

        def shut() -> None:
            for server in self._servers:
                server.close()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(shut)
        else:
            shut()

    def close(self) -> None:
        """Stop accepting and stop relaying (after the workers stopped: nothing is left to relay)."""
        self.stop_accepting()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        with contextlib.suppress(RuntimeError):
            self._loop.close()

    async def _relay(self, listener: Listener, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        workers = len(listener.worker_ports)
        start = next(self._next[listener.name])
        for attempt in range(workers):
            index = (start + attempt) % workers
            if not self._is_up(index):
                continue
            try:
                worker_r, worker_w = await asyncio.open_connection("127.0.0.1", listener.worker_ports[index])
            except OSError:
                continue
            listener.relayed[index] += 1
            await asyncio.gather(_pipe(client_r, worker_w), _pipe(worker_r, client_w))
            return
        log.warning("%s: no worker is up to take a connection; closing it", listener.name)
        client_w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then close the writing side (the peer sees the same end)."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
