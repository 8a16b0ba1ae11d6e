"""OTLP over gRPC: generic handlers with identity (de)serializers.

gRPC hands the handler the request's bytes untouched; they are decoded exactly once
(``Batch.from_bytes``) and, when no processor changes them, leave the collector as
the very same bytes. Refusals carry the OTLP spec's status codes: INVALID_ARGUMENT
for bad data, UNAUTHENTICATED, and RESOURCE_EXHAUSTED (queue full, memory limit) or
UNAVAILABLE (shutting down) with a ``RetryInfo`` detail, so the sender backs off and
retries instead of dropping.
"""

from __future__ import annotations

import hmac
import logging
import math
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from ..signals import Signal
from ._ingest import Ingest, Outcome, response_message

__all__ = ["GrpcTransport", "SERVICES"]

log = logging.getLogger("meshwatch.collector.receiver")

SERVICES = {
    Signal.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    Signal.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
    Signal.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
}


class GrpcTransport:
    def __init__(
        self,
        ingest: Ingest,
        endpoint: str,
        *,
        max_request_bytes: int,
        bearer_token: str | None,
        max_workers: int = 16,
    ) -> None:
        self.ingest = ingest
        self.endpoint = endpoint
        self.max_request_bytes = max_request_bytes
        self._token = f"Bearer {bearer_token}".encode() if bearer_token else None
        self._server: grpc.Server | None = None
        self.port = 0
        self._max_workers = max_workers

    def start(self) -> None:
        handlers = [
            grpc.method_handlers_generic_handler(
                SERVICES[signal],
                {"Export": grpc.unary_unary_rpc_method_handler(self._handler(signal))},  # identity (de)serializers
            )
            for signal in Signal
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="otlp-grpc"),
            handlers=handlers,
            options=[
                # Above our own limit, so our handler answers (and counts) oversized requests;
                # only requests over twice the limit are refused by gRPC itself.
                ("grpc.max_receive_message_length", 2 * self.max_request_bytes),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.so_reuseport", 0),  # a port already in use is an error, not shared
            ],
            maximum_concurrent_rpcs=self._max_workers * 8,
        )
        try:
            port = server.add_insecure_port(self.endpoint)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.endpoint}: {exc}") from None
        if not port:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.endpoint} (address in use?)")
        self.port = port
        server.start()
        self._server = server

    def stop(self, grace: float) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)

    def _handler(self, signal: Signal) -> Any:
        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            if self._token is not None and not self._authorized(context):
                outcome = self.ingest.refuse("grpc", signal, "unauthenticated", "missing or wrong bearer token")
                context.abort(grpc.StatusCode.UNAUTHENTICATED, outcome.message)
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

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        assert self._token is not None
        for key, value in context.invocation_metadata():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._token)
        return False

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
