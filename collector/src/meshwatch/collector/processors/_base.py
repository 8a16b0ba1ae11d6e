"""What every part-B processor shares: identity, the next consumer, start and shutdown.

Processors here are stateless "function" transforms over whole batches (Vector's
word): they edit ``batch.message`` in place, call ``mark_modified()`` only when
something changed (so untouched data leaves as the very bytes that came in), and
hand the batch on. ``Refused`` from downstream propagates unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from ..component import ComponentId, Consumer, CreateSettings, Host
from ..signals import Signal
from ..telemetry import Telemetry

__all__ = ["InPlaceProcessor"]


class InPlaceProcessor:
    """Base of the processors that edit a batch in place (not the ``batch`` processor, which regroups batches).

    Subclasses implement ``process(batch) -> bool`` (True = keep forwarding).
    """

    def __init__(self, settings: CreateSettings, next_consumer: Consumer) -> None:
        self.id: ComponentId = settings.id
        self.signal: Signal | None = settings.signal
        self.next = next_consumer
        self.telemetry: Telemetry = settings.telemetry
        self.logger = logging.getLogger(f"meshwatch.collector.processor.{settings.id}")

    def start(self, host: Host) -> None:
        self.logger = host.logger

    def shutdown(self, timeout: float) -> None:
        return None

    def process(self, batch: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def consume(self, batch: Any) -> None:
        if self.process(batch):
            self.next.consume(batch)
