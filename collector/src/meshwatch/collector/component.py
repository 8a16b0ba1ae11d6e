"""The small seams of the collector: consumer, component, factory (one Protocol per kind), host.

The core (config, graph, queue, self-telemetry) knows only these Protocols and
never imports a concrete receiver, processor, exporter or connector. Components
are registered by type name (``otlp``, ``batch``, ``spanmetrics``, ...) and built
from their own config section, as in the OpenTelemetry Collector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol, overload, runtime_checkable

from .batch import Batch
from .signals import Signal
from .telemetry import Telemetry

__all__ = [
    "Kind",
    "ComponentId",
    "Refused",
    "PartiallyAccepted",
    "Consumer",
    "Component",
    "Factory",
    "ReceiverFactory",
    "ProcessorFactory",
    "ExporterFactory",
    "ConnectorFactory",
    "Capabilities",
    "make_factory",
    "is_factory",
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
    """What a running component may use from the collector around it.

    Not its self-telemetry: that is ``CreateSettings.telemetry``, given at creation, so a
    component's instruments exist (and count) from the moment it is built.
    """

    #: Folder for this collector's durable state (queues, dead letters).
    storage_dir: Path
    logger: logging.Logger

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
    """What the graph tells a factory about the component it creates."""

    id: ComponentId
    signal: Signal | None  # the pipeline's signal (None for receivers serving several)
    #: The collector's self-telemetry, the one owner of every metric it serves on :8888: count
    #: through its contract instruments, register your own with ``telemetry.counter(...)`` (or
    #: ``gauge``/``histogram``). One per collector, so two collectors in a process never share series.
    telemetry: Telemetry
    host_name: str = "meshwatch-collector"


@dataclass(frozen=True)
class Capabilities:
    """What the graph must know about a component before wiring it (the Collector's ``consumer.Capabilities``).

    Required of every factory, with no default: a component that changes the batch it
    is handed and did not say so would share that batch with its neighbours.
    """

    #: ``consume`` changes the batch in place; a fan-out then gives it its own copy.
    mutates_data: bool


class ReceiverCreate(Protocol):
    def __call__(self, settings: CreateSettings, config: Any, next: Mapping[Signal, Consumer]) -> Component: ...


class ProcessorCreate(Protocol):
    def __call__(self, settings: CreateSettings, config: Any, next: Consumer) -> Component: ...


class ExporterCreate(Protocol):
    def __call__(self, settings: CreateSettings, config: Any) -> Component: ...


class ConnectorCreate(Protocol):
    def __call__(self, settings: CreateSettings, config: Any, next: Mapping[Signal, Consumer]) -> Component: ...


class _FactoryFields(Protocol):
    #: The component type, as written in the config (``otlp`` in ``otlp/jaeger``).
    type: str
    kind: Kind
    #: The signals it takes (receivers: serves; connectors: accepts as an exporter).
    signals: frozenset[Signal]
    #: The signals it emits: a connector's as a receiver; for the other kinds, ``signals``.
    output_signals: frozenset[Signal]
    #: A pydantic model; the config loader validates the section against it (errors name the key).
    config_model: type[Any]
    capabilities: Capabilities


class ReceiverFactory(_FactoryFields, Protocol):
    """``next``: one consumer per signal the receiver's pipelines carry."""

    def create(self, settings: CreateSettings, config: Any, next: Mapping[Signal, Consumer]) -> Component: ...


class ProcessorFactory(_FactoryFields, Protocol):
    """Created once per pipeline it is in (``settings.signal`` = that pipeline's), ``next`` its successor."""

    def create(self, settings: CreateSettings, config: Any, next: Consumer) -> Component: ...


class ExporterFactory(_FactoryFields, Protocol):
    """Created once per exporter id and signal; the end of a pipeline, so no ``next``."""

    def create(self, settings: CreateSettings, config: Any) -> Component: ...


class ConnectorFactory(_FactoryFields, Protocol):
    """Created once per input signal; ``next`` has one consumer per output signal, feeding every
    pipeline of that signal that names the connector as a receiver (and only those)."""

    def create(self, settings: CreateSettings, config: Any, next: Mapping[Signal, Consumer]) -> Component: ...


#: Any factory; the graph calls ``create`` with the ``next`` its kind's Protocol names.
Factory = ReceiverFactory | ProcessorFactory | ExporterFactory | ConnectorFactory


@dataclass(frozen=True)
class _BuiltFactory:
    type: str
    kind: Kind
    signals: frozenset[Signal]
    output_signals: frozenset[Signal]
    config_model: type[Any]
    capabilities: Capabilities
    _create: Callable[..., Component]

    def create(self, settings: CreateSettings, config: Any, *next: Any) -> Component:
        return self._create(settings, config, *next)


@overload
def make_factory(
    kind: Literal[Kind.RECEIVER],
    type: str,
    *,
    signals: Iterable[Signal],
    config_model: type[Any],
    create: ReceiverCreate,
    capabilities: Capabilities,
) -> ReceiverFactory: ...
@overload
def make_factory(
    kind: Literal[Kind.PROCESSOR],
    type: str,
    *,
    signals: Iterable[Signal],
    config_model: type[Any],
    create: ProcessorCreate,
    capabilities: Capabilities,
) -> ProcessorFactory: ...
@overload
def make_factory(
    kind: Literal[Kind.EXPORTER],
    type: str,
    *,
    signals: Iterable[Signal],
    config_model: type[Any],
    create: ExporterCreate,
    capabilities: Capabilities,
) -> ExporterFactory: ...
@overload
def make_factory(
    kind: Literal[Kind.CONNECTOR],
    type: str,
    *,
    signals: Iterable[Signal],
    output_signals: Iterable[Signal],
    config_model: type[Any],
    create: ConnectorCreate,
    capabilities: Capabilities,
) -> ConnectorFactory: ...
def make_factory(
    kind: Kind,
    type: str,
    *,
    signals: Iterable[Signal],
    config_model: type[Any],
    create: Callable[..., Component],
    capabilities: Capabilities,
    output_signals: Iterable[Signal] | None = None,
) -> Factory:
    """The one way to build a factory (like the Collector's ``receiver.NewFactory``).

    ``create``'s ``next`` depends on ``kind`` (see the per-kind Protocols); ``capabilities``
    is required; ``output_signals`` only for connectors, which must say what they emit.
    """
    if not isinstance(capabilities, Capabilities):
        raise TypeError(f"{kind.value} factory '{type}': capabilities must be a Capabilities value")
    if kind is Kind.CONNECTOR and not output_signals:
        raise TypeError(f"connector factory '{type}': say which signals it emits (output_signals)")
    if kind is not Kind.CONNECTOR and output_signals is not None:
        raise TypeError(f"{kind.value} factory '{type}': only connectors have output_signals")
    inputs = frozenset(signals)
    if not inputs:
        raise TypeError(f"{kind.value} factory '{type}': no signals")
    return _BuiltFactory(
        type, kind, inputs, frozenset(output_signals) if output_signals else inputs, config_model, capabilities, create
    )


def is_factory(obj: object) -> bool:
    """Whether ``obj`` was made by ``make_factory``: the registry refuses anything else, by this
    test rather than by looking for a factory's attributes on whatever an entry point holds."""
    return isinstance(obj, _BuiltFactory)
