"""A durable FIFO queue on local disk: segment files, a read cursor, group commit.

Layout of a queue folder::

    segment-000000000001.q   records, appended (see ``_record`` for the framing)
    segment-000000000002.q   a new segment every ``segment_bytes`` and at every open
    cursor                   position of the oldest record not yet acknowledged

Why it is built this way:

* **Acknowledge after durable.** ``put`` writes the record, then waits until it is
  fsynced according to the policy: ``always`` (group commit: concurrent writers share
  one fsync, whoever arrives while one runs waits for the next), ``interval`` (a
  flusher fsyncs at most every ``fsync_interval``; writers wait for it) or ``never``
  (the page cache: survives a crash of the process, not of the machine).
* **Never stall on a bad file.** At open every record after the cursor is read back
  and its CRC checked. At the first bad or torn record the segment is truncated
  there, the loss is counted (``corrupt_items``) and start-up goes on; the OTel
  Collector's file_storage stalls instead (core #9451).
* **At-least-once, in order of writing.** Records are handed out in order; the
  cursor only moves past records every worker is done with, so after a crash the
  records that were being sent are sent again (duplicates, never loss). Segments
  wholly behind the cursor are deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Literal

from ..component import Refused
from ._record import HEADER, Record, frame_header, payload_crc

__all__ = ["DiskQueue"]

log = logging.getLogger("meshwatch.collector.queue")

_SEGMENT = re.compile(r"^segment-(\d{12})\.q$")
_CURSOR = struct.Struct("<QQI")  # segment, offset, crc32 of the first 16 bytes
#: A header claiming more items than this is garbage, not a count.
_SANE_ITEMS = 50_000_000


def _segment_name(number: int) -> str:
    return f"segment-{number:012d}.q"


class DiskQueue:
    """Bounded in items and bytes; safe for many writers and many readers (threads)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        max_items: int,
        max_bytes: int,
        fsync: Literal["always", "interval", "never"] = "interval",
        fsync_interval: float = 0.05,
        segment_bytes: int = 32 * 1024 * 1024,
        name: str = "",
    ) -> None:
        self.directory = Path(directory)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        self.name = name or str(directory)
        #: Items and records found corrupt (and dropped) when the queue was opened.
        self.corrupt_items = 0
        self.corrupt_records = 0
        #: Records found at open (they will be sent again).
        self.recovered_items = 0

        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._pending: deque[Record] = deque()  # not yet handed out, in order
        self._outstanding: deque[Record] = deque()  # handed out, in order, some maybe done
        self._items = 0
        self._bytes = 0
        self._closed = False
        self._read_fds: dict[int, int] = {}

        # group commit state
        self._sync_cond = threading.Condition()
        self._write_seq = 0
        self._synced_seq = 0
        self._syncing = False

        self.directory.mkdir(parents=True, exist_ok=True)
        self._cursor_fd = os.open(self.directory / "cursor", os.O_RDWR | os.O_CREAT, 0o600)
        self._cursor: tuple[int, int] = (0, 0)
        self._recover()
        self._open_new_segment(self._last_segment + 1)
        self._flusher: threading.Thread | None = None
        if fsync == "interval":
            self._flusher = threading.Thread(target=self._flush_loop, name=f"queue-fsync {self.name}", daemon=True)
            self._flusher.start()

    # --- recovery -------------------------------------------------------------------------

    def _read_cursor(self) -> tuple[int, int] | None:
        data = os.pread(self._cursor_fd, _CURSOR.size, 0)
        if len(data) != _CURSOR.size:
            return None
        segment, offset, crc = _CURSOR.unpack(data)
        if zlib.crc32(data[:16]) != crc:
            log.warning("queue %s: cursor file is corrupt; resending from the oldest segment", self.name)
            return None
        return segment, offset

    def _write_cursor(self, segment: int, offset: int) -> None:
        head = struct.pack("<QQ", segment, offset)
        os.pwrite(self._cursor_fd, head + struct.pack("<I", zlib.crc32(head)), 0)

    def _recover(self) -> None:
        segments = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT.match(p.name)) is not None
        )
        self._last_segment = segments[-1] if segments else 0
        cursor = self._read_cursor() or (segments[0] if segments else 0, 0)
        for number in segments:
            path = self.directory / _segment_name(number)
            if number < cursor[0]:
                path.unlink(missing_ok=True)  # wholly acknowledged before the last stop
                continue
            start = cursor[1] if number == cursor[0] else 0
            self._scan_segment(number, path, start)
        first = self._pending[0] if self._pending else None
        self._cursor = (first.segment, first.offset) if first else (self._last_segment + 1, 0)
        self._write_cursor(*self._cursor)
        for number in segments:
            if number < self._cursor[0]:
                (self.directory / _segment_name(number)).unlink(missing_ok=True)
        self.recovered_items = self._items
        if self.recovered_items or self.corrupt_records:
            log.info(
                "queue %s: recovered %d items in %d records; dropped %d corrupt records (%d items)",
                self.name,
                self.recovered_items,
                len(self._pending),
                self.corrupt_records,
                self.corrupt_items,
            )

    def _scan_segment(self, number: int, path: Path, start: int) -> None:
        data = path.read_bytes()
        view = memoryview(data)
        offset = start
        end = len(data)
        while offset < end:
            problem = ""
            items = 0
            if end - offset < HEADER.size:
                problem = "torn header"
            else:
                length, crc, items, enqueued_at = HEADER.unpack_from(data, offset)
                body = offset + HEADER.size
                if body + length > end:
                    problem = "torn record"
                elif payload_crc(items, enqueued_at, view[body : body + length]) != crc:
                    problem = "checksum mismatch"
            if problem:
                lost = items if 0 < items < _SANE_ITEMS else 1
                self.corrupt_records += 1
                self.corrupt_items += lost
                resume = self._next_good_record(data, view, offset + 1)
                log.warning(
                    "queue %s: %s in %s at byte %d; %s (about %d items lost)",
                    self.name,
                    problem,
                    path.name,
                    offset,
                    f"skipping to the next good record at byte {resume}" if resume else "truncating the segment there",
                    lost,
                )
                if resume is None:
                    with contextlib.suppress(OSError):
                        os.truncate(path, offset)
                    break
                offset = resume
                continue
            record = Record(number, offset, length, items, enqueued_at)
            self._pending.append(record)
            self._items += items
            self._bytes += record.size
            offset = body + length

    @staticmethod
    def _next_good_record(data: bytes, view: memoryview, start: int) -> int | None:
        """The offset of the next record whose header is plausible and whose CRC matches.

        Used after a damaged record in the middle of a segment, so one flipped bit costs
        one record, not the rest of the segment. Plausibility checks (length fits, sane
        item count, a queue-time between 2001 and 2100) keep the CRC computations rare.
        """
        end = len(data)
        for offset in range(start, end - HEADER.size + 1):
            length, crc, items, enqueued_at = HEADER.unpack_from(data, offset)
            body = offset + HEADER.size
            if body + length > end or not 0 < items < _SANE_ITEMS or not 1e9 < enqueued_at < 4.1e9:
                continue
            if payload_crc(items, enqueued_at, view[body : body + length]) == crc:
                return offset
        return None

    # --- writing --------------------------------------------------------------------------

    def _open_new_segment(self, number: int) -> None:
        path = self.directory / _segment_name(number)
        self._write_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._write_segment = number
        self._write_offset = os.fstat(self._write_fd).st_size
        self._last_segment = number
        self._write_state = (self._write_fd, self._write_seq)

    def put(self, payload: bytes, items: int) -> None:
        """Append one record; return once it is durable per the fsync policy.

        Raises ``Refused("queue_full", retryable=True)`` when the limits would be passed
        (a record larger than the limits is still taken when the queue is empty, so a
        big batch cannot be refused forever).
        """
        now = time.time()
        header = frame_header(payload, items, now)
        size = len(header) + len(payload)
        with self._lock:
            if self._closed:
                raise Refused("shutting_down", "the collector is shutting down", retryable=True)
            if self._items and (self._items + items > self.max_items or self._bytes + size > self.max_bytes):
                raise Refused(
                    "queue_full",
                    f"exporter queue {self.name} is full ({self._items} items, {self._bytes} bytes)",
                    retryable=True,
                    retry_after=self._retry_hint(),
                )
            if self._write_offset >= self.segment_bytes:
                self._roll_segment()
            written = os.writev(self._write_fd, [header, payload])
            if written != size:  # a short write on a regular file means the disk is full
                with contextlib.suppress(OSError):
                    os.ftruncate(self._write_fd, self._write_offset)
                raise Refused("queue_full", f"exporter queue {self.name}: disk full", retryable=True)
            record = Record(self._write_segment, self._write_offset, len(payload), items, now)
            self._write_offset += size
            self._pending.append(record)
            self._items += items
            self._bytes += size
            self._write_seq += 1
            seq = self._write_seq
            self._write_state = (self._write_fd, seq)
            self._readable.notify()
        self._wait_durable(seq)

    def _retry_hint(self) -> float:
        """Seconds a refused sender should wait: longer the older the queue's head is."""
        head = self._outstanding[0] if self._outstanding else (self._pending[0] if self._pending else None)
        age = time.time() - head.enqueued_at if head else 0.0
        return float(min(30.0, max(1.0, age / 10)))

    def _roll_segment(self) -> None:
        # Called with the write lock held. Wait for a running group fsync to finish with
        # the old descriptor, then swap descriptors while holding ``_sync_cond`` so a
        # syncer never sees a closed one. (Lock order: ``_lock`` then ``_sync_cond``;
        # the syncer takes only ``_sync_cond``.)
        with self._sync_cond:
            while self._syncing:
                self._sync_cond.wait()
            if self.fsync != "never":
                os.fdatasync(self._write_fd)
            os.close(self._write_fd)
            self._open_new_segment(self._write_segment + 1)
            self._synced_seq = self._write_seq
            self._sync_cond.notify_all()

    def _wait_durable(self, seq: int) -> None:
        if self.fsync == "never":
            return
        with self._sync_cond:
            while self._synced_seq < seq:
                if self.fsync == "always" and not self._syncing:
                    self._sync_once_locked()
                else:
                    self._sync_cond.wait(1.0)
                    if self._closed and self._synced_seq < seq:
                        raise Refused("shutting_down", "the collector is shutting down", retryable=True)

    def _sync_once_locked(self) -> None:
        """One fsync covering every record written so far (called holding ``_sync_cond``)."""
        self._syncing = True
        fd, target = self._write_state
        self._sync_cond.release()
        try:
            os.fdatasync(fd)
        finally:
            self._sync_cond.acquire()
            self._syncing = False
        self._synced_seq = max(self._synced_seq, target)
        self._sync_cond.notify_all()

    def _flush_loop(self) -> None:
        while not self._closed:
            time.sleep(self.fsync_interval)
            with self._sync_cond:
                if self._synced_seq < self._write_seq and not self._syncing:
                    with contextlib.suppress(OSError):
                        self._sync_once_locked()

    # --- reading --------------------------------------------------------------------------

    def get(self, max_items: int, max_bytes: int, timeout: float, *, at_least_one: bool = True) -> list[Record]:
        """Hand out the next records (at least one, up to the limits); ``[]`` after ``timeout``."""
        with self._lock:
            if not self._pending and not self._closed:
                self._readable.wait(timeout)
            if not self._pending or self._closed:
                return []
            taken: list[Record] = []
            items = 0
            size = 0
            while self._pending:
                record = self._pending[0]
                if (taken or not at_least_one) and (
                    items + record.items > max_items or size + record.length > max_bytes
                ):
                    break
                self._pending.popleft()
                self._outstanding.append(record)
                taken.append(record)
                items += record.items
                size += record.length
        for record in taken:
            record.payload = self._read_payload(record)
        return taken

    def _read_payload(self, record: Record) -> bytes:
        fd = self._read_fds.get(record.segment)
        if fd is None:
            with self._lock:
                fd = self._read_fds.get(record.segment)
                if fd is None:
                    fd = os.open(self.directory / _segment_name(record.segment), os.O_RDONLY)
                    self._read_fds[record.segment] = fd
        data = os.pread(fd, record.length, record.offset + HEADER.size)
        if len(data) != record.length:
            raise OSError(f"queue {self.name}: short read of {record.length} bytes at {record.offset}")
        return data

    def ack(self, records: list[Record]) -> None:
        """The worker is done with these records (sent, dead-lettered or expired)."""
        with self._lock:
            for record in records:
                record.done = True
                record.payload = None
                self._items -= record.items
                self._bytes -= record.size
            moved = False
            while self._outstanding and self._outstanding[0].done:
                self._outstanding.popleft()
                moved = True
            if not moved:
                return
            head = self._outstanding[0] if self._outstanding else (self._pending[0] if self._pending else None)
            cursor = (head.segment, head.offset) if head else (self._write_segment, self._write_offset)
            old_segment = self._cursor[0]
            self._cursor = cursor
            if not self._closed:
                self._write_cursor(*cursor)
            for number in range(old_segment, cursor[0]):
                fd = self._read_fds.pop(number, None)
                if fd is not None:
                    os.close(fd)
                (self.directory / _segment_name(number)).unlink(missing_ok=True)

    # --- state ----------------------------------------------------------------------------

    def stats(self) -> tuple[int, int, int, int, float]:
        """``(items, max_items, bytes, max_bytes, oldest_age_seconds)``."""
        with self._lock:
            head = self._outstanding[0] if self._outstanding else (self._pending[0] if self._pending else None)
            age = max(0.0, time.time() - head.enqueued_at) if head else 0.0
            return self._items, self.max_items, self._bytes, self.max_bytes, age

    def __len__(self) -> int:
        return self._items

    def close(self) -> None:
        """Make everything durable, persist the cursor, wake the readers. Unsent records stay on disk."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._readable.notify_all()
            with contextlib.suppress(OSError):
                os.fsync(self._write_fd)
            os.close(self._write_fd)
            self._write_cursor(*self._cursor)
            with contextlib.suppress(OSError):
                os.fsync(self._cursor_fd)
            os.close(self._cursor_fd)
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
        with self._sync_cond:
            self._synced_seq = self._write_seq
            self._sync_cond.notify_all()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
