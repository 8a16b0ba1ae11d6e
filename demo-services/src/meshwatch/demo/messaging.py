"""The asynchronous hop: order events through NATS JetStream, with the trace carried in message headers.

OpenTelemetry has no NATS instrumentor, so this is the one place the demo writes
spans by hand, as the messaging semantic conventions describe: a PRODUCER span
``publish orders.placed`` whose W3C trace context is injected into the message
headers with the propagation API, and a CONSUMER span ``process orders.placed``
that is its child on the other side. The collector's service graph pairs the two
into an ``orders → notifications`` edge (``connection_type="messaging_system"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import BadRequestError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .deps import DependencyDown
from .faults import FaultState

__all__ = ["Broker", "STREAM", "ORDER_PLACED"]

STREAM = "ORDERS"
ORDER_PLACED = "orders.placed"
_tracer = trace.get_tracer("meshwatch.demo.messaging")
_log = logging.getLogger("meshwatch.demo.messaging")


def _attributes(subject: str, operation: str, kind: str) -> dict[str, Any]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
    }


class Broker:
    """A JetStream connection for one service: publish with context, consume with a durable consumer."""

    def __init__(self, url: str, service: str, faults: FaultState) -> None:
        self.url = url
        self.service = service
        self._faults = faults
        self._nc: Any = None
        self._js: Any = None
        self._consumer_task: asyncio.Task[None] | None = None
        self._subscription: Any = None
        self.processed = 0
        self.failed = 0

    async def connect(self) -> None:
        self._nc = await nats.connect(
            self.url,
            name=self.service,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            drain_timeout=5,  # a bound on stopping; close() leaves nothing to drain for long
        )
        self._js = self._nc.jetstream()
        config = StreamConfig(name=STREAM, subjects=["orders.>"], max_msgs=100_000, max_age=24 * 3600)
        try:
            await self._js.add_stream(config)
        except BadRequestError:  # exists with another config: bring it in line
            await self._js.update_stream(config)

    async def publish(self, subject: str, payload: dict[str, Any]) -> int:
        """Publish one event and wait for JetStream's ack (it is stored); returns its stream sequence."""
        if self._faults.is_down("nats"):
            raise DependencyDown("nats")
        with _tracer.start_as_current_span(
            f"publish {subject}", kind=SpanKind.PRODUCER, attributes=_attributes(subject, "publish", "send")
        ) as span:
            headers: dict[str, str] = {}
            propagate.inject(headers)  # traceparent (and uber-trace-id if that propagator is on)
            ack = await self._js.publish(subject, json.dumps(payload).encode(), headers=headers, timeout=5)
            span.set_attribute("messaging.message.id", f"{ack.stream}:{ack.seq}")
            return int(ack.seq)

    def start_consumer(
        self, subject: str, durable: str, handler: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> asyncio.Task[None]:
        """Consume ``subject`` in the background; a failed message is retried up to 3 times."""
        self._consumer_task = asyncio.create_task(self._consume(subject, durable, handler), name=f"consume {subject}")
        return self._consumer_task

    async def _consume(self, subject: str, durable: str, handler: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        config = ConsumerConfig(durable_name=durable, max_deliver=3, ack_wait=30)
        sub = self._subscription = await self._js.pull_subscribe(subject, durable=durable, config=config)
        while True:
            if self._faults.is_down("nats"):
                await asyncio.sleep(0.5)  # the broker is "unreachable": nothing is fetched
                continue
            try:
                messages = await sub.fetch(16, timeout=1)
            except NatsTimeout:
                continue
            except Exception:  # reconnecting: keep consuming once the broker is back
                _log.warning("fetch from %s failed; retrying", subject, exc_info=True)
                await asyncio.sleep(1)
                continue
            for message in messages:
                await self._process(subject, message, handler)

    async def _process(self, subject: str, message: Any, handler: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        parent = propagate.extract(message.headers or {})
        with _tracer.start_as_current_span(
            f"process {subject}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_attributes(subject, "process", "process"),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span.set_attribute("messaging.message.delivery_count", int(message.metadata.num_delivered))
            try:
                await handler(json.loads(message.data))
            except Exception as exc:
                self.failed += 1
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                # Inside the consumer span: the log line carries the producer's trace id.
                _log.error("processing %s failed (delivery %d)", subject, message.metadata.num_delivered, exc_info=exc)
                await message.nak(delay=1)
                return
            self.processed += 1
            await message.ack()

    async def close(self) -> None:
        if self._consumer_task is not None:
            self._consumer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer_task
        if self._subscription is not None:
            # A pull subscription whose fetch was cancelled never drains: without this, drain()
            # waited its whole timeout (30 s by default) and a stopped service was killed instead.
            # Unacknowledged messages are redelivered to the durable consumer after its ack_wait.
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
