"""The four small seams of the collector: consumer, component, factory, host.

The core (config, graph, queue, self-telemetry) knows only these Protocols and
never imports a concrete receiver, processor, exporter or connector. Components
are registered by type name (``otlp``, ``batch``, ``spanmetrics``, ...) and built
from their own config section, as in the OpenTelemetry Collector.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .batch import Batch
from .signals import Signal

__all__ = [
    "Kind",
    "ComponentId",
    "Refused",
    "PartiallyAccepted",
    "Consumer",
    "Component",
    "Factory",
    "Host",
    "CreateSettings",
]


class Kind(StrEnum):
    RECEIVER = "receiver"
    PROCESSOR = "processor"
    EXPORTER = "exporter"
    CONNECTOR = "connector"


@dataclass(frozen=True)
class ComponentId:
    """``type/name`` as written in the config (``otlp``, ``otlp/jaeger``)."""

    type: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ComponentId:
        type_, _, name = text.partition("/")
        return cls(type_.strip(), name.strip())

    def __str__(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type


class Refused(Exception):
    """The pipeline did not take a batch; nothing of it was kept.

    ``retryable`` tells the receiver which answer to give: True is backpressure
    (gRPC RESOURCE_EXHAUSTED / UNAVAILABLE, HTTP 429 or 503 with ``Retry-After``),
    so the sender's SDK keeps the data and retries; False is bad data (gRPC
    INVALID_ARGUMENT, HTTP 400) that no retry would fix. ``reason`` is a short
    machine word used as a metric label (``queue_full``, ``memory_limit``, ...).
    """

    def __init__(self, reason: str, message: str, *, retryable: bool, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class PartiallyAccepted(Exception):
    """The batch was taken, but ``rejected`` of its items were refused for good.

    Raised after the accepted part is safely taken (e.g. one of several pipelines
    refused bad data while the others queued it). The receiver answers success with
    an OTLP ``partial_success`` carrying ``rejected`` and the message.
    """

    def __init__(self, rejected: int, message: str, reason: str = "rejected") -> None:
        super().__init__(message)
        self.rejected = rejected
        self.reason = reason


@runtime_checkable
class Consumer(Protocol):
    """Anything a batch can be handed to: a processor, an exporter, a fan-out.

    ``consume`` returns once the batch is safely taken (for an exporter: durably
    queued), or raises ``Refused``. It never returns having silently lost data.
    """

    def consume(self, batch: Batch) -> None: ...


class Host(Protocol):
    """What a running component may use from the collector around it."""

    #: Folder for this collector's durable state (queues, dead letters).
    storage_dir: Path
    logger: logging.Logger

    def telemetry(self) -> Any:
        """The self-telemetry registry (see ``meshwatch.collector.telemetry``)."""
        ...

    def report_fatal(self, component: ComponentId, error: BaseException) -> None:
        """A component that cannot go on (e.g. a port in use) stops the collector with this error."""
        ...


@runtime_checkable
class Component(Protocol):
    id: ComponentId

    def start(self, host: Host) -> None:
        """Open ports, threads, files. Must not block; raise to refuse to start."""
        ...

    def shutdown(self, timeout: float) -> None:
        """Stop taking data, flush what is in hand (exporters: leave the rest in the queue)."""
        ...


@dataclass(frozen=True)
class CreateSettings:
    id: ComponentId
    signal: Signal | None  # the pipeline's signal (None for receivers serving several)
    host_name: str = "meshwatch-collector"


class Factory(Protocol):
    """Builds components of one type from their validated config section.

    ``config_model`` is a pydantic model; the config loader validates the YAML
    section against it (so errors name the bad key) before anything starts.

    Optional attributes the graph reads with ``getattr`` (additive, so older
    factories keep working):

    * on a factory of kind ``CONNECTOR``: ``signals`` are the signals it accepts as an
      exporter; ``output_signals`` (frozenset) the signals it emits as a receiver
      (default: same as ``signals``). It is created once per input signal, with
      ``settings.signal`` = that input signal and ``next_consumer`` = a ``Consumer``
      feeding every pipeline that names it as a receiver.
    * on a component: ``mutates_data = True`` when its ``consume`` changes the batch in
      place; a fan-out then gives it its own copy.
    """

    type: str
    kind: Kind
    signals: frozenset[Signal]
    config_model: type[Any]

    def create(self, settings: CreateSettings, config: Any, next_consumer: Any) -> Component:
        """``next_consumer``: a ``Consumer`` for processors and connectors, a
        ``dict[Signal, Consumer]`` for receivers, ``None`` for exporters."""
        ...
