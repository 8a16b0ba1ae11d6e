"""What both OTLP transports do with a request body: decode once, hand on, count, answer.

Transport code (gRPC, HTTP) only maps the ``Outcome`` to its own status codes; the
rules (what is malformed, what is backpressure, what is counted under which reason)
live here once.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from ..batch import Batch
from ..component import Consumer, PartiallyAccepted, Refused
from ..signals import ITEM_NAMES, REJECTED_FIELDS, RESPONSE_TYPES, Signal
from ..telemetry import Telemetry
from ._validate import remove_invalid

__all__ = ["Outcome", "Ingest", "bearer_matches"]

log = logging.getLogger("meshwatch.collector.receiver")


@dataclass
class Outcome:
    """How a request ended: ``ok``; else ``reason`` (metric label), ``message``, ``retryable``."""

    ok: bool
    items: int = 0
    reason: str = ""
    message: str = ""
    retryable: bool = False
    retry_after: float = 1.0
    #: On success: items refused for good by part of the pipeline (OTLP ``partial_success``).
    rejected: int = 0


class Ingest:
    """One receiver's entry into the pipelines, shared by its transports."""

    def __init__(self, receiver: str, consumers: dict[Signal, Consumer], telemetry: Telemetry) -> None:
        self.receiver = receiver
        self.consumers = consumers
        self.telemetry = telemetry

    def refuse(self, transport: str, signal: Signal, reason: str, message: str, items: int = 1) -> Outcome:
        """Count a request refused before it could be decoded.

        Its items are unknown (decoding it is what failed, or would be unsafe), so it
        counts as 1 item: every refused request stays visible in the refused counter.
        """
        self.telemetry.refused(self.receiver, transport, signal.value, reason, items)
        return Outcome(False, items, reason, message)

    def refuse_connection(self, transport: str, reason: str) -> None:
        """Count a connection closed before its request line said which signal it was for
        (e.g. headers slower than ``read_header_timeout``): ``signal="unknown"``, 1 item."""
        self.telemetry.refused(self.receiver, transport, "unknown", reason, 1)

    def push_back(self, transport: str, signal: Signal, reason: str, message: str, retry_after: float = 1.0) -> Outcome:
        """Count a request refused as backpressure before it was read: the sender retries it.

        Answered like a full queue (gRPC RESOURCE_EXHAUSTED + ``RetryInfo``, HTTP 429 +
        ``Retry-After``) and, like every request refused unread, counted as 1 item.
        """
        self.telemetry.refused(self.receiver, transport, signal.value, reason, 1)
        return Outcome(False, 1, reason, message, retryable=True, retry_after=retry_after)

    def memory_push_back(self, transport: str, signal: Signal) -> Outcome:
        """A request refused for memory before it was decoded (or read): retry later."""
        return self.push_back(
            transport, signal, "memory_limit", "the collector is above its memory limit; retry later", 1.0
        )

    def protobuf(self, transport: str, signal: Signal, raw: bytes, peer: str = "") -> Outcome:
        size = len(raw)
        if not self.telemetry.reserve_decoding(size):
            return self.memory_push_back(transport, signal)
        reserved = [size]
        try:
            try:
                batch = Batch.from_bytes(signal, raw, receiver=self.receiver, transport=transport, peer=peer)
            except (DecodeError, ValueError, RuntimeError) as exc:
                return self.refuse(transport, signal, "malformed", f"cannot decode the OTLP protobuf request: {exc}")
            return self.batch(transport, batch, reserved)
        finally:
            if reserved[0]:
                self.telemetry.release_decoding(size)

    def batch(self, transport: str, batch: Batch, reserved: list[int] | None = None) -> Outcome:
        """Hand a decoded batch on; ``reserved`` (a request's decoding reservation) is released
        just before the pipeline takes it, where the memory limiter counts it instead."""
        signal = batch.signal
        items = batch.items
        consumer = self.consumers.get(signal)
        if consumer is None:
            # The receiver is not in a pipeline of this signal: say so, like an unknown route.
            return self.refuse(
                transport,
                signal,
                "unsupported_signal",
                f"this collector has no {signal} pipeline for this receiver",
                items,
            )
        if items == 0:
            return Outcome(True, 0)
        invalid, problem = remove_invalid(signal, batch.message, batch.unmodified_raw)
        if invalid:
            # Refused one by one, so a bad span cannot take its neighbours with it later,
            # when the exporter merges queued requests into one send the backend refuses.
            self.telemetry.refused(self.receiver, transport, signal.value, "invalid_id", invalid)
            batch.mark_modified()
            items -= invalid
            if items == 0:
                return Outcome(True, invalid, "invalid_id", problem, rejected=invalid)
        if reserved and reserved[0]:
            self.telemetry.release_decoding(reserved[0])
            reserved[0] = 0
        try:
            consumer.consume(batch)
        except Refused as refused:
            self.telemetry.refused(self.receiver, transport, signal.value, refused.reason, items)
            return Outcome(False, items, refused.reason, str(refused), refused.retryable, refused.retry_after)
        except PartiallyAccepted as partial:
            rejected = min(partial.rejected, items)
            self.telemetry.refused(self.receiver, transport, signal.value, partial.reason, rejected)
            if items - rejected:
                self.telemetry.accepted(self.receiver, transport, signal.value, items - rejected)
            message = f"{problem}; {partial}" if invalid else str(partial)
            return Outcome(True, items + invalid, partial.reason, message, rejected=rejected + invalid)
        except Exception as exc:  # a bug downstream must not take the receiver down; the sender retries
            log.exception("%s: pipeline error on %d %s", self.receiver, items, ITEM_NAMES[signal])
            self.telemetry.refused(self.receiver, transport, signal.value, "internal_error", items)
            return Outcome(False, items, "internal_error", f"internal error: {type(exc).__name__}", True, 1.0)
        self.telemetry.accepted(self.receiver, transport, signal.value, items)
        if invalid:
            return Outcome(True, items + invalid, "invalid_id", problem, rejected=invalid)
        return Outcome(True, items)


def response_message(signal: Signal, outcome: Outcome) -> Any:
    """The signal's Export*ServiceResponse, with ``partial_success`` when items were rejected."""
    response = RESPONSE_TYPES[signal]()
    if outcome.rejected:
        setattr(response.partial_success, REJECTED_FIELDS[signal], outcome.rejected)
        response.partial_success.error_message = outcome.message
    return response


def bearer_matches(given: str | bytes, token: str) -> bool:
    """Whether an ``Authorization`` value carries ``token`` (scheme case-insensitive, RFC 6750 §2.1)."""
    value = given.decode("latin-1") if isinstance(given, bytes) else given
    scheme, _, credentials = value.strip().partition(" ")
    # Compared in constant time, as bytes (compare_digest refuses non-ASCII str).
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode("latin-1", "replace"), token.encode()
    )
