"""Exporter queues: durable on local disk (``DiskQueue``) or in memory (``MemoryQueue``).

Both hold opaque records (one serialized OTLP request each, with its item count) and
have the same small interface: ``put`` (returns once the record is durable per the
fsync policy, or raises ``Refused("queue_full")``), ``get`` (records handed to one
worker), ``ack`` (the worker is done with them: they are removed), ``stats``, ``close``.
"""

from typing import Protocol

from ._record import Record
from .disk import DiskQueue
from .memory import MemoryQueue

__all__ = ["Queue", "Record", "DiskQueue", "MemoryQueue"]


class Queue(Protocol):
    """What an exporter's workers use; ``DiskQueue`` and ``MemoryQueue`` both are one."""

    #: True when records outlive the process (left for the next start at a stop); False when
    #: what is left at a stop is lost (and counted as dropped by the exporter).
    durable: bool

    def put(self, payload: bytes, items: int) -> None:
        """Return once the record is held (durable per the fsync policy), or raise ``Refused("queue_full")``."""
        ...

    def get(self, max_items: int, max_bytes: int, timeout: float, *, at_least_one: bool = True) -> list[Record]: ...

    def ack(self, records: list[Record]) -> None:
        """The worker is done with ``records``: they are removed."""
        ...

    def stats(self) -> tuple[int, int, int, int, float]:
        """``(items, max_items, bytes, max_bytes, oldest_age_seconds)``."""
        ...

    def held_bytes(self) -> int:
        """Bytes of records this queue keeps in process memory (for the memory limiter)."""
        ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...
