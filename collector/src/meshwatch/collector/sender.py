"""The contract between a push exporter and the shared queue-and-retry machinery.

An exporter that pushes to a backend (Jaeger over OTLP, Elasticsearch bulk,
Prometheus remote-write) only knows how to *send one batch*. Durability,
batching of queued records, retry with backoff and jitter, throttling, dead
letters and the self-telemetry around them live once, in
``meshwatch.collector.queued_exporter``, as the OpenTelemetry Collector keeps
them in ``exporterhelper``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from pydantic import Field

from .batch import Batch
from .component import Host
from .duration import Duration
from .model import StrictModel

__all__ = [
    "SendResult",
    "TransientError",
    "PermanentError",
    "Sender",
    "ProbesBackend",
    "tcp_reachable",
    "QueueSettings",
    "RetrySettings",
    "ExporterSettings",
]


@dataclass
class SendResult:
    """What became of one ``send``.

    * everything accepted: ``SendResult()``;
    * some items must be sent again (e.g. Elasticsearch answered 429 for some
      documents): ``retry`` is a batch with only those items, ``retry_after`` the
      backend's hint in seconds if it gave one;
    * some items were refused for good (e.g. a mapping conflict): ``rejected``
      counts them, ``rejected_reason`` says why in a word, and ``dead_letters``
      holds one JSON-serialisable record per refused item (the item and the
      backend's error), which the queue writes to the exporter's dead-letter file.
    """

    retry: Batch | None = None
    retry_after: float | None = None
    rejected: int = 0
    rejected_reason: str = ""
    dead_letters: list[dict] = field(default_factory=list)


class TransientError(Exception):
    """The whole batch failed but may succeed later (backend down, 5xx, 429, timeout)."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(Exception):
    """The whole batch can never be accepted (e.g. 400 for the request as a whole)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Sender(Protocol):
    """Sends one batch to a backend. Called from one worker thread at a time per sender,
    unless it says ``thread_safe``. ``TransientError`` sets the exporter's ``backend_up``
    gauge to 0, any other outcome to 1.
    """

    #: True when its client is thread-safe (a gRPC channel, the Elasticsearch client): the queued
    #: exporter then lets its ``num_consumers`` workers send concurrently. A class attribute.
    thread_safe: bool

    def start(self, host: Host) -> None: ...

    def send(self, batch: Batch) -> SendResult:
        """Return the outcome, or raise ``TransientError`` / ``PermanentError`` for the whole batch."""
        ...

    def shutdown(self) -> None: ...


@runtime_checkable
class ProbesBackend(Protocol):
    """A sender that can tell, without sending data, whether its backend takes connections again.

    The queued exporter asks during a long backoff after a connection failure, so delivery
    resumes within about a second of the backend's return instead of at the end of a
    backoff that may have grown to ``max_interval`` (30 s by default).
    """

    def backend_reachable(self, timeout: float) -> bool: ...


def tcp_reachable(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` (closed at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class QueueSettings(StrictModel):
    """``sending_queue``: the exporter's durable queue (names as in the OTel Collector where they exist)."""

    enabled: bool = True
    #: Persist to disk (True) or keep in memory only (False: lost on restart, for tests and debug).
    persistent: bool = True
    num_consumers: int = Field(2, ge=1, le=64)
    #: Limit in items (spans, metric points, log records); a full queue makes receivers push back.
    queue_size: int = Field(1_000_000, ge=1)
    #: Limit in bytes on disk.
    max_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    #: When a write is made durable before the sender is acknowledged: ``interval`` and
    #: ``always`` (the same policy) ack after an fdatasync that covers the batch, shared by
    #: concurrent writers (group commit); ``never`` leaves it to the OS (survives a process
    #: crash, not a power cut).
    fsync: Literal["always", "interval", "never"] = "interval"
    #: Accepted for compatibility; no effect since group commit (see docs/collector.md).
    fsync_interval: Duration = Field(0.05, gt=0, le=10)
    #: Folder for the queue files; default ``<storage_dir>/queues/<exporter id>``.
    directory: str | None = None


class RetrySettings(StrictModel):
    """``retry_on_failure``: exponential backoff with jitter, as the OTel Collector's."""

    enabled: bool = True
    initial_interval: Duration = Field(0.5, gt=0)
    max_interval: Duration = Field(30.0, gt=0)
    multiplier: float = Field(1.5, ge=1)
    randomization_factor: float = Field(0.5, ge=0, le=1)
    #: Give up on a batch after this many seconds (0 = never: data waits on disk until
    #: the backend is back or the queue is full, when receivers push back).
    max_elapsed_time: Duration = Field(0.0, ge=0)


class BatchingSettings(StrictModel):
    """How queued records are combined into one send."""

    max_items: int = Field(8192, ge=1)
    #: Under the 4 MiB that gRPC servers accept by default (the OpenTelemetry Collector's
    #: ``max_recv_msg_size_mib: 4``): a bigger merged send is refused by them, every time.
    max_bytes: int = Field(4_000_000, ge=1024)
    #: When fewer than ``max_items`` are waiting, wait up to this long for more before
    #: sending (fewer, bigger sends; the data is already durable, so nobody waits on it).
    linger: Duration = Field(0.0, ge=0, le=10)


class ExporterSettings(StrictModel):
    """Settings every queued exporter accepts beside its own."""

    timeout: Duration = Field(10.0, gt=0)
    sending_queue: QueueSettings = Field(default_factory=QueueSettings)
    retry_on_failure: RetrySettings = Field(default_factory=RetrySettings)
    batch: BatchingSettings = Field(default_factory=BatchingSettings)
