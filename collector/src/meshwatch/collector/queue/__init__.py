"""Exporter queues: durable on local disk (``DiskQueue``) or in memory (``MemoryQueue``).

Both hold opaque records (one serialized OTLP request each, with its item count) and
have the same small interface: ``put`` (returns once the record is durable per the
fsync policy, or raises ``Refused("queue_full")``), ``get`` (records handed to one
worker), ``ack`` (the worker is done with them: they are removed), ``stats``, ``close``.
"""

from ._record import Record
from .disk import DiskQueue
from .memory import MemoryQueue

__all__ = ["Record", "DiskQueue", "MemoryQueue"]
