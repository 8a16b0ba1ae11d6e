"""OTLP over gRPC: generic handlers with identity (de)serializers.

gRPC hands the handler the request's bytes untouched; they are decoded exactly once
(``Batch.from_bytes``) and, when no processor changes them, leave the collector as
the very same bytes. Refusals carry the OTLP spec's status codes: INVALID_ARGUMENT
for bad data, UNAUTHENTICATED, and RESOURCE_EXHAUSTED (queue full, memory limit) or
UNAVAILABLE (shutting down) with a ``RetryInfo`` detail, so the sender backs off and
retries instead of dropping.

Admission happens before a request's body is read, in a server interceptor: a call
over ``max_concurrent_requests`` (served or waiting for a worker) is refused with
RESOURCE_EXHAUSTED + ``RetryInfo`` and counted (``concurrency_limit``), and a call
without the right bearer token with UNAUTHENTICATED. gRPC's own concurrency cap is
not used: it answers RESOURCE_EXHAUSTED with no retry hint, which senders (the
OpenTelemetry Collector among them) treat as permanent, and counts nothing. For the
same reason gRPC's message-size limit is off: our handler answers every oversized
request with the documented INVALID_ARGUMENT and counts it (gRPC has no streaming
body, so such a request is read whole first; the concurrency limit bounds how many).

TLS: ``grpc.dynamic_ssl_server_credentials``, whose fetcher gRPC calls before every
new connection's handshake; it returns a new certificate configuration only when the
files changed (``ServerCertificates.poll``). grpcio's Python API has no TLS version
setting (its BoringSSL always negotiates 1.2 or 1.3), so ``min_version: "1.3"`` is
enforced per call instead: a call on a TLS 1.2 connection is refused with
PERMISSION_DENIED before its body is read, and counted (``tls_version``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from ..signals import GRPC_SERVICES, Signal
from ._ingest import Ingest, Outcome, bearer_matches, response_message
from ._tls import ServerCertificates

__all__ = ["GrpcTransport"]

log = logging.getLogger("meshwatch.collector.receiver")


class _CountingPool(futures.ThreadPoolExecutor):
    """A thread pool that knows how many calls it serves or holds (gRPC submits one task per call)."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.in_flight = 0
        self._count_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        with self._count_lock:
            self.in_flight += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)  # also runs for a task cancelled at shutdown
        return future

    def _done(self, _future: Any) -> None:
        with self._count_lock:
            self.in_flight -= 1


class _Gate(grpc.ServerInterceptor):
    """Refuses a call before its body is read: unauthenticated, or over the concurrency limit."""

    def __init__(self, transport: GrpcTransport) -> None:
        self.transport = transport
        self._methods = {f"/{service}/Export": signal for signal, service in GRPC_SERVICES.items()}

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        signal = self._methods.get(handler_call_details.method)
        if signal is None:
            return continuation(handler_call_details)  # UNIMPLEMENTED, from gRPC
        outcome = self.transport.admit(signal, handler_call_details.invocation_metadata)
        if outcome is None:
            if not self.transport.tls13_only:
                return continuation(handler_call_details)
            return self._tls13_only(signal, continuation(handler_call_details))

        # A request-streaming handler never reads the request: refusing costs no body.
        def refuse(_requests: Any, context: grpc.ServicerContext) -> bytes:
            if outcome.reason == "unauthenticated":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, outcome.message)
            GrpcTransport._abort(context, outcome)
            return b""  # not reached: abort raises

        return grpc.stream_unary_rpc_method_handler(refuse)

    def _tls13_only(self, signal: Signal, handler: Any) -> Any:
        """The call's handler behind a check of its connection's TLS version (read from the auth context)."""
        serve = handler.unary_unary

        def gated(requests: Any, context: grpc.ServicerContext) -> bytes:
            version = b"".join(context.auth_context().get("ssl_tls_version") or [b"unknown"]).decode()
            if version != "TLSv1.3":
                outcome = self.transport.ingest.refuse(
                    "grpc",
                    signal,
                    "tls_version",
                    f"this receiver requires TLS 1.3 (min_version); the connection is {version}",
                )
                context.abort(grpc.StatusCode.PERMISSION_DENIED, outcome.message)
            return serve(next(requests), context)

        return grpc.stream_unary_rpc_method_handler(gated)


class GrpcTransport:
    def __init__(
        self,
        ingest: Ingest,
        endpoint: str,
        *,
        max_request_bytes: int,
        bearer_token: str | None,
        max_workers: int = 16,
        max_concurrent_requests: int | None = None,
        channel_args: list[tuple[str, int]] | None = None,
        tls: ServerCertificates | None = None,
    ) -> None:
        self.ingest = ingest
        #: Keepalive and connection-age arguments (``protocols.grpc.keepalive``).
        self._channel_args = list(channel_args or [])
        self.tls = tls
        #: min_version "1.3": calls on TLS 1.2 connections are refused (gRPC cannot refuse the handshake).
        self.tls13_only = tls is not None and tls.tls.min_version == "1.3"
        self.endpoint = endpoint
        self.max_request_bytes = max_request_bytes
        self._token = bearer_token
        self._server: grpc.Server | None = None
        self._pool: _CountingPool | None = None
        self.port = 0
        self._max_workers = max_workers
        #: Calls served or waiting for a worker; more are refused with RESOURCE_EXHAUSTED + RetryInfo.
        self.max_concurrent_requests = max_concurrent_requests or max_workers * 8

    def start(self) -> None:
        handlers = [
            grpc.method_handlers_generic_handler(
                GRPC_SERVICES[signal],
                {"Export": grpc.unary_unary_rpc_method_handler(self._handler(signal))},  # identity (de)serializers
            )
            for signal in Signal
        ]
        self._pool = _CountingPool(max_workers=self._max_workers, thread_name_prefix="otlp-grpc")
        server = grpc.server(
            self._pool,
            handlers=handlers,
            interceptors=[_Gate(self)],
            options=[
                # No gRPC limit: our handler answers (and counts) oversized requests of any size.
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.so_reuseport", 0),  # a port already in use is an error, not shared
                *self._channel_args,
            ],
            # No maximum_concurrent_rpcs: _Gate refuses first, with a retry hint, and counts.
        )
        try:
            if self.tls is None:
                port = server.add_insecure_port(self.endpoint)
            else:
                credentials = grpc.dynamic_ssl_server_credentials(
                    self._certificate_configuration(),
                    self._fetch_certificate_configuration,
                    require_client_authentication=self.tls.require_client_cert,
                )
                port = server.add_secure_port(self.endpoint, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.endpoint}: {exc}") from None
        if not port:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.endpoint} (address in use?)")
        self.port = port
        server.start()
        self._server = server

    def _certificate_configuration(self) -> Any:
        assert self.tls is not None
        cert, key, client_ca = self.tls.files
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)

    def _fetch_certificate_configuration(self) -> Any:
        """Called by gRPC before each new connection's handshake: a new configuration if the files changed."""
        try:
            return self._certificate_configuration() if self.tls is not None and self.tls.poll() else None
        except Exception as exc:  # an exception here would fail the handshake: keep the current certificate
            log.warning("OTLP/gRPC on %s: TLS reload failed, keeping the current certificate: %s", self.endpoint, exc)
            return None

    def stop(self, grace: float) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)

    def admit(self, signal: Signal, metadata: Any) -> Outcome | None:
        """None to serve the call, else the counted refusal (called on gRPC's polling thread)."""
        if self._token is not None:
            given = [value for key, value in metadata or () if key == "authorization"]
            if len(given) > 1:
                return self.ingest.refuse(
                    "grpc", signal, "unauthenticated", "more than one authorization value; send exactly one"
                )
            if not given or not bearer_matches(given[0], self._token):
                return self.ingest.refuse("grpc", signal, "unauthenticated", "missing or wrong bearer token")
        if self.ingest.telemetry.memory_refuses():
            return self.ingest.memory_push_back("grpc", signal)  # before gRPC reads the call's bytes
        assert self._pool is not None
        if self._pool.in_flight >= self.max_concurrent_requests:
            return self.ingest.push_back(
                "grpc",
                signal,
                "concurrency_limit",
                f"more than {self.max_concurrent_requests} concurrent requests; retry later",
            )
        return None

    def _handler(self, signal: Signal) -> Any:
        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            if len(request) > self.max_request_bytes:
                outcome = self.ingest.refuse(
                    "grpc",
                    signal,
                    "too_large",
                    f"request of {len(request)} bytes is larger than max_request_body_size "
                    f"({self.max_request_bytes} bytes); send smaller batches",
                )
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, outcome.message)
            outcome = self.ingest.protobuf("grpc", signal, request, context.peer())
            if outcome.ok:
                return response_message(signal, outcome).SerializeToString() if outcome.rejected else b""
            self._abort(context, outcome)
            return b""  # not reached: abort raises

        return export

    @staticmethod
    def _abort(context: grpc.ServicerContext, outcome: Outcome) -> None:
        if not outcome.retryable:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, outcome.message)
        code = grpc.StatusCode.UNAVAILABLE if outcome.reason == "shutting_down" else grpc.StatusCode.RESOURCE_EXHAUSTED
        delay = max(0.0, outcome.retry_after)
        retry_info = error_details_pb2.RetryInfo(
            retry_delay=Duration(seconds=int(delay), nanos=int((delay - math.floor(delay)) * 1e9))
        )
        status = status_pb2.Status(code=code.value[0], message=outcome.message)
        status.details.add().Pack(retry_info)
        context.set_trailing_metadata(
            (
                ("grpc-status-details-bin", status.SerializeToString()),  # the gRPC rich-error form (Go SDK)
                ("google.rpc.retryinfo-bin", retry_info.SerializeToString()),  # what the Python SDK reads
            )
        )
        context.abort(code, outcome.message)
