"""OTLP over HTTP: a small ASGI app served by uvicorn (httptools parser) on its own thread.

``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` with ``application/x-protobuf`` or
``application/json`` bodies, optionally gzip-compressed. Answers per the OTLP spec:
400 malformed, 401 unauthenticated, 413 too large (checked on the compressed and the
decompressed size, so a zip bomb is stopped after ``max_request_body_size`` bytes of
output), 415 unsupported content type, 429 (queue full, memory limit, more than
``max_concurrent_requests`` requests in progress) or 503 (shutting down) with
``Retry-After``; error bodies are a ``google.rpc.Status`` in the
request's encoding. Decoding and the durable write run on a thread pool, so the event
loop keeps accepting while a batch waits for its fsync. Connections (the header and
handshake deadline, ``max_connections``, running out of descriptors): ``_http_conn``.

TLS: uvicorn serves our own ``SSLContext``; its SNI callback, which OpenSSL calls on
every ClientHello (with or without a server name), first looks whether the
certificate files changed (``ServerCertificates.poll``) and hands the connection the
context of the files now in service, so a rotated certificate needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.rpc import status_pb2

from ..batch import Batch
from ..otlp_json import parse_json_request, response_json
from ..signals import Signal
from ._http_conn import ConnectionGate, ListeningSocket, ServerLoop, connection_protocol, default_max_connections
from ._ingest import Ingest, Outcome, bearer_matches, response_message
from ._tls import ServerCertificates

__all__ = ["HttpTransport"]

log = logging.getLogger("meshwatch.collector.receiver")

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


class _TooLarge(Exception):
    pass


class HttpTransport:
    def __init__(
        self,
        ingest: Ingest,
        endpoint: str,
        *,
        max_request_bytes: int,
        bearer_token: str | None,
        paths: dict[Signal, str],
        max_workers: int = 16,
        max_concurrent_requests: int | None = None,
        read_header_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_connections: int | None = None,
        on_fatal: Any = None,
        tls: ServerCertificates | None = None,
    ) -> None:
        self._on_fatal = on_fatal
        self.tls = tls
        self.ingest = ingest
        self.endpoint = endpoint
        self.max_request_bytes = max_request_bytes
        self._token = bearer_token
        #: Requests in progress (read, decoded, or waiting for the durable write); more get 429.
        self.max_concurrent_requests = max_concurrent_requests or max_workers * 8
        #: A connection whose request line and headers take longer is closed (slowloris).
        self.read_header_timeout = read_header_timeout
        #: A body that takes longer to arrive is answered 408 (counted as ``timeout``).
        self.read_timeout = read_timeout
        #: Open connections; more are answered 503 + Retry-After at once (``connection_limit``).
        self.max_connections = max_connections or default_max_connections()
        self._in_flight = 0  # only touched on the event loop's thread
        self.routes = {path: signal for signal, path in paths.items()}
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="otlp-http")
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        import uvicorn

        host, _, port = self.endpoint.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        gate = ConnectionGate(self.max_connections, self._connection_refused, tls=self.tls is not None)
        sock = ListeningSocket(family, gate)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen for OTLP/HTTP on {self.endpoint}: {exc.strerror or exc}") from None
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            log_config=None,  # keep the collector's JSON logging
            interface="asgi3",
            proxy_headers=False,
            access_log=False,
            lifespan="off",
            http=connection_protocol(self.read_header_timeout, gate),
            loop="asyncio",
            timeout_keep_alive=30,
            server_header=False,
            ws="none",  # OTLP has no WebSocket: nothing of it to import
        )
        # Load (import everything) here, not on the server thread: started means ready, and an
        # import cannot fail later for want of file descriptors.
        config.load()
        if self.tls is not None:
            config.ssl = self._ssl_context(self.tls)  # our context, not one uvicorn would build from file names
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            loop = ServerLoop(handshake_timeout=self.read_header_timeout)
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_until_complete(self._server.serve(sockets=[sock]))
            except BaseException as exc:  # the server thread must not die unnoticed
                if self._on_fatal is not None:
                    self._on_fatal(exc)
                raise
            finally:
                loop.close()
            if not self._server.should_exit and self._on_fatal is not None:
                self._on_fatal(RuntimeError(f"the OTLP/HTTP server on {self.endpoint} stopped unexpectedly"))

        self._thread = threading.Thread(target=run, name=f"otlp-http {self.endpoint}", daemon=True)
        self._thread.start()
        ready.wait(10)

    @staticmethod
    def _ssl_context(tls: ServerCertificates) -> ssl.SSLContext:
        first = tls.server_context()

        def on_hello(connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
            try:
                tls.poll()
            except Exception as exc:  # raising here would fail the handshake: keep the current certificate
                log.warning("OTLP/HTTP: TLS reload failed, keeping the current certificate: %s", exc)
            current = tls.context
            if current is not None and current is not connection.context:
                connection.context = current  # this handshake goes on with the current certificate

        first.sni_callback = on_hello
        tls.context = first
        return first

    def stop(self, grace: float) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(grace + 1)
        self._pool.shutdown(wait=True, cancel_futures=False)

    # --- the ASGI app ---------------------------------------------------------------------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        signal = self.routes.get(path)
        headers = dict(scope["headers"])
        ctype_raw = headers.get(b"content-type", b"").decode("latin-1")
        ctype = ctype_raw.split(";")[0].strip().lower()
        as_json = ctype == _JSON
        if signal is None:
            await self._answer(send, 404, as_json, 5, f"no OTLP endpoint at {path}; use {', '.join(self.routes)}")
            return
        if scope["method"] != "POST":
            await self._answer(send, 405, as_json, 12, "OTLP/HTTP takes POST", extra=[(b"allow", b"POST")])
            return
        if self._token is not None:
            given = [value for key, value in scope["headers"] if key == b"authorization"]
            if len(given) > 1:
                # Proxies and servers disagree on which of two values counts: refuse, never guess.
                outcome = self.ingest.refuse(
                    "http", signal, "unauthenticated", "more than one Authorization header; send exactly one"
                )
                await self._answer(send, 401, as_json, 16, outcome.message)
                return
            if not given or not bearer_matches(given[0], self._token):
                outcome = self.ingest.refuse("http", signal, "unauthenticated", "missing or wrong bearer token")
                await self._answer(send, 401, as_json, 16, outcome.message)
                return
        if self._in_flight >= self.max_concurrent_requests:
            outcome = self.ingest.push_back(
                "http",
                signal,
                "concurrency_limit",
                f"more than {self.max_concurrent_requests} concurrent requests; retry later",
            )
            await self._reply(send, signal, outcome, as_json)
            return
        self._in_flight += 1
        try:
            await self._serve(scope, receive, send, signal, headers, as_json, ctype, ctype_raw)
        finally:
            self._in_flight -= 1

    async def _serve(  # noqa: PLR0917
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        signal: Signal,
        headers: dict[bytes, bytes],
        as_json: bool,
        ctype: str,
        ctype_raw: str,
    ) -> None:
        if ctype not in (_PROTOBUF, _JSON):
            outcome = self.ingest.refuse(
                "http",
                signal,
                "unsupported_media_type",
                f"Content-Type {ctype_raw or '(none)'!r} is not supported; use {_PROTOBUF} or {_JSON}",
            )
            await self._answer(send, 415, as_json, 3, outcome.message)
            return
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            outcome = self.ingest.refuse(
                "http", signal, "unsupported_media_type", f"Content-Encoding {encoding!r} is not supported; use gzip"
            )
            await self._answer(send, 415, as_json, 3, outcome.message)
            return
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared <= self.max_request_bytes and self.ingest.telemetry.memory_refuses(declared):
            await self._reply(send, signal, self.ingest.memory_push_back("http", signal), as_json)  # body unread
            return
        try:
            if declared > self.max_request_bytes:
                raise _TooLarge(f"Content-Length {declared}")
            body = await asyncio.wait_for(self._read_body(receive), self.read_timeout)
            if encoding == "gzip":
                body = self._gunzip(body)
        except TimeoutError:
            outcome = self.ingest.refuse(
                "http",
                signal,
                "timeout",
                f"the request body did not arrive within read_timeout ({self.read_timeout:g}s)",
            )
            await self._answer(send, 408, as_json, 4, outcome.message)
            return
        except _TooLarge as exc:
            outcome = self.ingest.refuse(
                "http",
                signal,
                "too_large",
                f"request body ({exc}) is larger than max_request_body_size ({self.max_request_bytes} bytes)",
            )
            await self._answer(send, 413, as_json, 3, outcome.message)
            return
        except ValueError as exc:
            outcome = self.ingest.refuse("http", signal, "malformed", str(exc))
            await self._answer(send, 400, as_json, 3, outcome.message)
            return
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self._pool, self._consume, signal, body, as_json, scope.get("client"))
        await self._reply(send, signal, outcome, as_json)

    async def _reply(self, send: Any, signal: Signal, outcome: Outcome, as_json: bool) -> None:
        """Success (with ``partial_success`` if items were rejected), 400, or 429/503 with Retry-After."""
        ctype = _JSON if as_json else _PROTOBUF
        if outcome.ok and outcome.rejected:
            response = response_message(signal, outcome)
            await self._send(send, 200, ctype, response_json(response) if as_json else response.SerializeToString())
        elif outcome.ok:
            await self._send(send, 200, ctype, b"{}" if as_json else b"")
        elif not outcome.retryable:
            await self._answer(send, 400, as_json, 3, outcome.message)
        else:
            status = 503 if outcome.reason in ("shutting_down", "backend_unavailable", "internal_error") else 429
            retry_after = str(max(1, math.ceil(outcome.retry_after))).encode()
            code = 8 if status == 429 else 14  # RESOURCE_EXHAUSTED / UNAVAILABLE
            await self._answer(send, status, as_json, code, outcome.message, extra=[(b"retry-after", retry_after)])

    def _consume(self, signal: Signal, body: bytes, as_json: bool, client: Any) -> Outcome:
        peer = f"{client[0]}:{client[1]}" if client else ""
        if not as_json:
            return self.ingest.protobuf("http", signal, body, peer)
        try:
            message = parse_json_request(signal, body)
        except ValueError as exc:
            return self.ingest.refuse("http", signal, "malformed", f"cannot decode the OTLP/JSON request: {exc}")
        return self.ingest.batch("http", Batch.from_message(signal, message, receiver=self.ingest.receiver, peer=peer))

    async def _read_body(self, receive: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ValueError("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                raise _TooLarge(f"more than {self.max_request_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _connection_refused(self, reason: str) -> None:
        """A connection closed before a request said its signal: headers too slow (``timeout``),
        beyond ``max_connections`` (``connection_limit``), or no descriptor left (``too_many_open_files``)."""
        self.ingest.refuse_connection("http", reason)

    def _gunzip(self, body: bytes) -> bytes:
        """Decompress at most ``max_request_bytes`` (+1 to notice more): a zip bomb stops there."""
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = decompressor.decompress(body, self.max_request_bytes + 1)
        except zlib.error as exc:
            raise ValueError(f"Content-Encoding is gzip but the body is not valid gzip: {exc}") from None
        if len(out) > self.max_request_bytes or decompressor.unconsumed_tail:
            raise _TooLarge(f"more than {self.max_request_bytes} bytes once decompressed")
        if not decompressor.eof:
            raise ValueError("Content-Encoding is gzip but the body is not valid gzip: it ends early")
        return out

    @staticmethod
    async def _send(send: Any, status: int, ctype: str, body: bytes, extra: list | None = None) -> None:
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        headers.extend(extra or [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(  # noqa: PLR0917
        self, send: Any, status: int, as_json: bool, code: int, message: str, extra: list | None = None
    ) -> None:
        """An error answer: ``google.rpc.Status`` in the request's encoding, as the OTLP spec asks."""
        rpc = status_pb2.Status(code=code, message=message)
        if as_json:
            await self._send(send, status, _JSON, response_json(rpc), extra)
        else:
            await self._send(send, status, _PROTOBUF, rpc.SerializeToString(), extra)
        if status >= 500:
            log.warning("OTLP/HTTP %d: %s", status, message)

    def close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(1)
