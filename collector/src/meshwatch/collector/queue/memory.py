"""The in-memory queue (``sending_queue.persistent: false``): same interface, nothing on disk.

For tests, debugging and data one can afford to lose on restart; bounded the same way,
so a slow backend still makes the receivers push back instead of growing memory.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from ..component import Refused
from ._record import HEADER, Record

__all__ = ["MemoryQueue"]


class MemoryQueue:
    """Bounded in items and bytes, held in process memory: gone with the process."""

    durable = False

    def __init__(self, *, max_items: int, max_bytes: int, name: str = "") -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.name = name
        self.corrupt_items = 0
        self.corrupt_records = 0
        self.recovered_items = 0
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._pending: deque[Record] = deque()
        self._outstanding: set[int] = set()
        self._oldest: dict[int, float] = {}
        self._items = 0
        self._bytes = 0
        self._seq = 0
        self._closed = False

    def put(self, payload: bytes, items: int) -> None:
        size = HEADER.size + len(payload)
        with self._lock:
            if self._closed:
                raise Refused("shutting_down", "the collector is shutting down", retryable=True)
            if self._items and (self._items + items > self.max_items or self._bytes + size > self.max_bytes):
                raise Refused("queue_full", f"exporter queue {self.name} is full ({self._items} items)", retryable=True)
            self._seq += 1
            self._pending.append(Record(0, self._seq, len(payload), items, time.time(), payload))
            self._items += items
            self._bytes += size
            self._readable.notify()

    def get(self, max_items: int, max_bytes: int, timeout: float, *, at_least_one: bool = True) -> list[Record]:
        with self._lock:
            if not self._pending and not self._closed:
                self._readable.wait(timeout)
            if not self._pending or self._closed:
                return []
            taken: list[Record] = []
            items = size = 0
            while self._pending:
                record = self._pending[0]
                if (taken or not at_least_one) and (
                    items + record.items > max_items or size + record.length > max_bytes
                ):
                    break
                self._pending.popleft()
                self._oldest[record.offset] = record.enqueued_at
                taken.append(record)
                items += record.items
                size += record.length
            return taken

    def ack(self, records: list[Record]) -> None:
        with self._lock:
            for record in records:
                record.payload = None
                self._oldest.pop(record.offset, None)
                self._items -= record.items
                self._bytes -= record.size

    def stats(self) -> tuple[int, int, int, int, float]:
        with self._lock:
            heads = [self._pending[0].enqueued_at] if self._pending else []
            if self._oldest:
                heads.append(min(self._oldest.values()))
            age = max(0.0, time.time() - min(heads)) if heads else 0.0
            return self._items, self.max_items, self._bytes, self.max_bytes, age

    def __len__(self) -> int:
        return self._items

    def held_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._readable.notify_all()
