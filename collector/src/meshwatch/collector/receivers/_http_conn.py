"""The OTLP/HTTP receiver's connections: how many, how long before a request, and out of descriptors.

uvicorn bounds none of this, so three small pieces around it, one job each:

* ``connection_protocol`` — uvicorn's httptools protocol with two limits. A connection
  whose request line and headers take longer than ``read_header_timeout`` (from the
  connection, or from a request's first byte) is closed. A connection beyond
  ``max_connections`` open ones is answered at once, before it sends anything, with
  ``503`` + ``Retry-After: 1`` + ``Connection: close`` and closed once the client has
  read it (or after a second). Answering, rather than leaving it in the kernel's
  backlog, tells an OTLP sender to retry after the hint (not after its own timeout),
  is counted, and costs a descriptor for an instant only, so a flood of idle
  connections cannot hold more than ``max_connections`` of them.
* ``ListeningSocket`` — when ``accept()`` fails because the process is out of file
  descriptors, the connections waiting in the backlog are refused through one
  descriptor kept in reserve (plaintext: the same 503; TLS: closed) and the event loop
  is told there is nothing to accept; asyncio alone would log the failure up to 1,024
  times per loop turn (a 67 MB log in 30 s) while every client waited in the backlog.
* ``ServerLoop`` — the event loop uvicorn's server runs on, giving a TLS handshake
  ``read_header_timeout`` too (uvicorn asks asyncio for no deadline, whose default is
  60 s): a client that opens a connection to a TLS receiver and sends nothing is closed
  then, like a plaintext one. (A handshake that fails or times out is not counted:
  asyncio tells the protocol nothing of it.)

Everything here runs on the receiver's event-loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from typing import Any

from google.rpc import status_pb2

__all__ = ["ConnectionGate", "ListeningSocket", "ServerLoop", "connection_protocol", "default_max_connections"]

log = logging.getLogger("meshwatch.collector.receiver")

#: How long a refused connection may stay open for its client to read the 503.
_LINGER = 1.0
#: At most one "out of file descriptors" line this often (with the count since the last one).
_LOG_EVERY = 10.0
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


def default_max_connections() -> int:
    """Half the process's open-file limit: the other half for gRPC, the queues, the backends."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(8, soft // 2)


def _unavailable(message: str) -> bytes:
    """A whole HTTP/1.1 503 answer (``google.rpc.Status``, protobuf: no request told us its encoding)."""
    body = status_pb2.Status(code=14, message=message).SerializeToString()  # UNAVAILABLE
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/x-protobuf\r\n"
        "retry-after: 1\r\n"
        "connection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGate:
    """Open connections of one HTTP receiver against ``max_connections``, and what refusing costs.

    ``count(reason)`` is told of every connection refused (``connection_limit``,
    ``too_many_open_files``) or timed out (``timeout``).
    """

    def __init__(self, max_connections: int, count: Any, *, tls: bool) -> None:
        self.max_connections = max_connections
        self.count = count
        self.tls = tls
        self.open = 0
        self.answer = _unavailable(f"more than {max_connections} connections; retry later")
        self.out_of_files_answer = _unavailable("the collector is out of file descriptors; retry later")
        self._unlogged = 0
        self._logged_at = -_LOG_EVERY

    def out_of_files(self, refused: int) -> None:
        """``accept()`` failed for want of descriptors; ``refused`` waiting connections were refused."""
        for _ in range(refused):
            self.count("too_many_open_files")
        self._unlogged += refused
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            log.error(
                "OTLP/HTTP: out of file descriptors (the open-file limit is reached); %d connections refused "
                "with 503 since the last such line; raise `ulimit -n` or lower protocols.http.max_connections",
                self._unlogged,
            )
            self._logged_at = now
            self._unlogged = 0


class ListeningSocket(socket.socket):
    """A listening socket whose ``accept()`` degrades to refusals when descriptors run out (see module)."""

    def __init__(self, family: int, gate: ConnectionGate) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        self.gate = gate
        self._reserve: int | None = None
        self._take_reserve()
        #: Until then, accept() says "nothing waiting" (asyncio was told to wait a second).
        self._quiet_until = 0.0

    def _take_reserve(self) -> None:
        if self._reserve is None:
            with contextlib.suppress(OSError):
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def accept(self) -> tuple[socket.socket, Any]:
        if time.monotonic() < self._quiet_until:
            raise BlockingIOError(errno.EAGAIN, "waiting for file descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_FILES:
                raise
            refused = self._refuse_waiting()
            self.gate.out_of_files(refused)
            if refused or self._reserve is not None:
                raise BlockingIOError(errno.EAGAIN, "backlog refused") from None
            # No descriptor to refuse with: let asyncio pause accepting for a second, once.
            self._quiet_until = time.monotonic() + 1.0
            raise

    def _refuse_waiting(self) -> int:
        """Refuse every connection in the backlog through the reserve descriptor."""
        if self._reserve is None:
            self._take_reserve()
            return 0
        os.close(self._reserve)
        self._reserve = None
        refused = 0
        try:
            while refused < 1024:
                try:
                    fd, _addr = self._accept()
                except OSError:  # empty backlog (EAGAIN), or the freed descriptor went elsewhere
                    break
                conn = socket.socket(self.family, socket.SOCK_STREAM, fileno=fd)
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    if not self.gate.tls:
                        with contextlib.suppress(BlockingIOError):
                            conn.recv(65536)  # what already came: closing with it unread would reset
                        conn.send(self.gate.out_of_files_answer)
                        conn.shutdown(socket.SHUT_WR)
                conn.close()
                refused += 1
        finally:
            self._take_reserve()
        return refused

    def close(self) -> None:
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        super().close()


class ServerLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with a deadline on TLS handshakes: uvicorn calls ``create_server``
    without ``ssl_handshake_timeout``, so a client that opened TLS and sent nothing was
    kept 60 s (asyncio's default), past the header timeout of every other connection."""

    def __init__(self, handshake_timeout: float) -> None:
        super().__init__()
        self.handshake_timeout = handshake_timeout

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs.get("ssl") is not None and kwargs.get("ssl_handshake_timeout") is None:
            kwargs["ssl_handshake_timeout"] = self.handshake_timeout
        return await super().create_server(*args, **kwargs)


def connection_protocol(timeout: float, gate: ConnectionGate) -> Any:
    """uvicorn's httptools protocol with the header timeout and the connection limit (see module).

    Falls back to uvicorn's own protocol name (neither limit) if its class moved.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        log.warning("uvicorn's httptools protocol moved: OTLP/HTTP runs without a header timeout or connection limit")
        return "httptools"

    class LimitedProtocol(HttpToolsProtocol):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None
        _admitted = False
        _refused: asyncio.Transport | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            gate.count("timeout")
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            if gate.open >= gate.max_connections:
                self._refuse(transport)
                return
            gate.open += 1
            self._admitted = True
            super().connection_made(transport)
            self._arm()

        def _refuse(self, transport: Any) -> None:
            """Answer 503 before the client says anything, then close once it has read it."""
            gate.count("connection_limit")
            self._refused = transport
            transport.write(gate.answer)
            if transport.can_write_eof():
                transport.write_eof()  # our side is done; the client closes when it has read
                self.loop.call_later(_LINGER, transport.close)
            else:
                transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refused is None:
                super().data_received(data)

        def eof_received(self) -> Any:
            if self._refused is not None:
                self._refused.close()
                return None
            return super().eof_received()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._refused is not None:
                self._refused = None
                return
            if self._admitted:
                self._admitted = False
                gate.open -= 1
            super().connection_lost(exc)

    return LimitedProtocol
