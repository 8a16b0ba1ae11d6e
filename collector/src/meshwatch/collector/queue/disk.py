"""A durable FIFO queue on local disk: segment files, a read cursor, group commit.

Layout of a queue folder::

    segment-000000000001.q   records, appended (see ``_record`` for the framing)
    segment-000000000002.q   a new segment every ``segment_bytes``, at every open and after an fsync error
    cursor                   position of the oldest record not yet acknowledged

Why it is built this way:

* **Acknowledge after durable, at the cost of one fsync.** ``put`` writes the record,
  then waits for an ``fdatasync`` that started after the write (group commit). A writer
  that finds no fsync running starts one at once; writers that arrive while it runs are
  committed together by the next one, which starts as soon as it ends. A lone sequential
  sender waits one fsync; N concurrent senders share fsyncs. ``always`` and ``interval``
  are the same policy: the old ``interval`` (a flusher every ``fsync_interval``) made a
  sequential sender wait for the next tick, ~50 ms per request, and a tick cannot batch
  more than group commit already does under load (see docs/collector.md). ``never``
  acknowledges after the write to the page cache (survives a crash of the process, not
  of the machine). A record is handed to the exporter only once it is durable.
* **A failed fsync is never retried.** After an ``fdatasync`` error the kernel may have
  dropped the dirty pages and a second fsync would report success for data that is not
  on disk. The writers it was to cover are refused (retryable: the sender keeps the data),
  the segment's unsynced tail is cut off, and writing goes on in a new segment.
* **Directory entries are durable too.** The folder is fsynced after a segment is created
  (before anything in it is acknowledged) and after segments are deleted (the cursor is
  fsynced first, so a deleted segment is never still needed).
* **Never stall on a bad file.** At open every record after the cursor is read back and
  its CRC checked. At the first bad or torn record the segment is truncated there, the
  loss is counted (``corrupt_items``) and start-up goes on; the OTel Collector's
  file_storage stalls instead (core #9451).
* **Records written here are not read back while the queue is short.** The payload of a
  record stays in memory from ``put`` until ``get`` hands it out, as long as such payloads
  add up to at most ``hot_bytes`` (8 MiB): a sender that keeps up costs no ``pread`` and
  no copy; a backlog beyond that is read from disk. What is handed out is still only
  records whose fsync ended.
* **At-least-once, in order of writing.** Records are handed out in order; the cursor
  only moves past records every worker is done with, so after a crash the records that
  were being sent are sent again (duplicates, never loss). Segments wholly behind the
  cursor are deleted.
"""

from __future__ import annotations

import contextlib
import errno
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
#: Seconds between two log lines about I/O errors.
_IO_LOG_EVERY = 10.0
#: Payload bytes of recently written records kept in memory, so the exporter sends them without
#: reading them back from the file (a syscall and a copy per record); older records are read.
HOT_BYTES = 8 * 1024 * 1024


def _segment_name(number: int) -> str:
    return f"segment-{number:012d}.q"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Commit:
    """A written record waiting for the fsync that covers it (``done``), or refused (``error``)."""

    __slots__ = ("done", "error", "record")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.done = False
        self.error: Refused | None = None


class DiskQueue:
    """Bounded in items and bytes; safe for many writers and many readers (threads)."""

    durable = True

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
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be always, interval or never, not {fsync!r}")
        self.fsync = fsync
        #: Kept for configuration compatibility; group commit needs no timer (see the module docstring).
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        self.name = name or str(directory)
        #: Items and records found corrupt (and dropped) when the queue was opened.
        self.corrupt_items = 0
        self.corrupt_records = 0
        #: Records found at open (they will be sent again).
        self.recovered_items = 0

        #: fdatasync errors seen; each one refused its waiting writers and started a new segment.
        self.fsync_errors = 0
        #: Puts refused because the file system was full (ENOSPC/EDQUOT from the write).
        self.disk_full_refusals = 0
        self._io_logged_at = -_IO_LOG_EVERY
        self._io_unlogged = 0

        self._durable_writes = fsync != "never"
        self._lock = threading.Lock()
        self._files_lock = threading.Lock()  # the cursor and folder descriptors, while segments are deleted
        self._readable = threading.Condition(self._lock)
        self._synced = threading.Condition(self._lock)  # a group fsync ended
        self._unsynced: deque[_Commit] = deque()  # written to the current segment, not yet durable, in order
        self._syncing = False
        self._pending: deque[Record] = deque()  # durable, not yet handed out, in order
        self._outstanding: deque[Record] = deque()  # handed out, in order, some maybe done
        self._items = 0
        self._bytes = 0
        #: Payload bytes held in memory for records not yet handed out (at most ``hot_limit``).
        self.hot_bytes = 0
        self.hot_limit = min(HOT_BYTES, max_bytes)
        self._closed = False
        self._read_fds: dict[int, int] = {}

        self._write_fd = -1  # -1: no segment open for writing (creating one failed); the next put retries
        self._write_segment = 0
        self._write_offset = 0
        self._durable_offset = 0  # end of the last durable record in the write segment

        self.directory.mkdir(parents=True, exist_ok=True)
        if self._durable_writes:  # the folder's own entry, in case it was just created
            _fsync_path(self.directory.parent)
        self._dir_fd = os.open(self.directory, os.O_RDONLY)
        self._cursor_fd = os.open(self.directory / "cursor", os.O_RDWR | os.O_CREAT, 0o600)
        self._cursor: tuple[int, int] = (0, 0)
        self._recover()
        self._start_segment(self._last_segment + 1)

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
                continue  # wholly acknowledged before the last stop: deleted below
            start = cursor[1] if number == cursor[0] else 0
            self._scan_segment(number, path, start)
        first = self._pending[0] if self._pending else None
        self._cursor = (first.segment, first.offset) if first else (self._last_segment + 1, 0)
        self._write_cursor(*self._cursor)
        self._delete_segments([number for number in segments if number < self._cursor[0]])
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

    def _fsync_dir(self) -> None:
        """Make the folder's entries (segments created or deleted) durable."""
        if self._durable_writes:
            os.fsync(self._dir_fd)

    def _start_segment(self, number: int) -> None:
        """Open segment ``number`` for appending; its directory entry is durable before it is used."""
        fd = os.open(self.directory / _segment_name(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._fsync_dir()
            offset = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        self._write_fd = fd
        self._write_segment = number
        self._write_offset = self._durable_offset = offset
        self._last_segment = number

    def _next_segment_locked(self) -> None:
        """Writing moves to a new segment; a failure is a retryable refusal (the next put tries again)."""
        try:
            self._start_segment(self._last_segment + 1)
        except OSError as exc:
            raise Refused(
                "queue_io_error",
                f"exporter queue {self.name}: cannot create a segment: {exc.strerror or exc}",
                retryable=True,
            ) from exc

    def _delete_segments(self, numbers: list[int]) -> None:
        """Delete segments wholly behind the cursor (their read descriptors already closed).

        Runs without the queue lock (two fsyncs, once per segment, would stall every
        writer); ``_files_lock`` keeps ``close`` from closing the descriptors meanwhile.
        """
        if not numbers:
            return
        with self._files_lock:
            fsync = self._durable_writes and not self._closed  # close() fsyncs the cursor itself
            if fsync:
                try:  # the cursor that makes them unneeded reaches the disk before they leave it
                    os.fsync(self._cursor_fd)
                except OSError as exc:  # a stale cursor on disk only means duplicates after a power cut
                    log.warning("queue %s: fsync of the cursor failed: %s", self.name, exc)
            for number in numbers:
                (self.directory / _segment_name(number)).unlink(missing_ok=True)
            if fsync:
                try:
                    self._fsync_dir()
                except OSError as exc:  # deleted segments may come back after a power cut: resent, not lost
                    log.warning("queue %s: fsync of the queue folder failed: %s", self.name, exc)

    def put(self, payload: bytes, items: int) -> None:
        """Append one record; return once it is durable per the fsync policy.

        Raises ``Refused("queue_full", retryable=True)`` when the limits would be passed
        (a record larger than the limits is still taken when the queue is empty, so a
        big batch cannot be refused forever), and ``Refused("queue_io_error",
        retryable=True)`` when the fsync that was to cover the record failed (nothing of
        the record is kept; the next put goes to a new segment).
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
            while self._write_fd < 0 or self._write_offset >= self.segment_bytes:  # until a segment takes it
                self._roll_locked()
            try:
                written = os.writev(self._write_fd, [header, payload])
            except OSError as exc:
                raise self._write_failed_locked(exc) from exc
            if written != size:  # a short write on a regular file means the disk is full
                raise self._write_failed_locked(OSError(errno.ENOSPC, "no space left (short write)"))
            record = Record(self._write_segment, self._write_offset, len(payload), items, now)
            if type(payload) is bytes and self.hot_bytes + record.length <= self.hot_limit:  # immutable only
                record.payload = payload  # handed to the exporter without a read (see the module docstring)
                self.hot_bytes += record.length
            self._write_offset += size
            self._items += items
            self._bytes += size
            if not self._durable_writes:
                self._pending.append(record)
                self._readable.notify()
                return
            commit = _Commit(record)
            self._unsynced.append(commit)
            while not commit.done:
                if self._syncing:
                    self._synced.wait()  # the running fsync may not cover this record: wait for the next
                else:
                    self._sync_locked()
            if commit.error is not None:
                raise commit.error

    def _write_failed_locked(self, error: OSError) -> Refused:
        """The refusal for a write the kernel refused; the queue stays usable for the next put.

        A full disk (``ENOSPC``, ``EDQUOT``) is ``queue_full``: the sender retries; writing moves
        to a new segment so that the full ones are deleted once sent, and writes succeed again
        without a restart. Any other error is ``queue_io_error`` (the next fsync of the segment, which
        would fail on a failing disk, moves writing to a new segment). Either way the segment
        is cut back to where this record began.
        """
        with contextlib.suppress(OSError):
            os.ftruncate(self._write_fd, self._write_offset)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            self.disk_full_refusals += 1
            if self._write_offset > 0:
                # Start an empty segment now: the full one can then be deleted as soon as the
                # exporter has sent it, which is what gives the disk space back. Without this the
                # write segment never rolls (it cannot grow) and is never deleted: refused for good.
                with contextlib.suppress(Refused):
                    self._roll_locked()
            return Refused(
                "queue_full",
                f"exporter queue {self.name}: disk full ({error.strerror or error})",
                retryable=True,
                retry_after=self._retry_hint(),
            )
        self._log_io_error(
            "queue %s: write to %s failed (%s); refusing it (the sender retries)",
            self.name,
            _segment_name(self._write_segment),
            error.strerror or error,
        )
        return Refused(
            "queue_io_error",
            f"exporter queue {self.name}: the write failed ({error.strerror or error})",
            retryable=True,
        )

    def _retry_hint(self) -> float:
        """Seconds a refused sender should wait: longer the older the queue's head is."""
        head = self._head()
        age = time.time() - head.enqueued_at if head else 0.0
        return float(min(30.0, max(1.0, age / 10)))

    def _sync_locked(self) -> None:
        """One group fsync covering every record written so far (called holding the lock).

        The lock is released during the fsync, so writers go on appending; they are
        covered by the next one. Only one runs at a time (``_syncing``), and the write
        segment is never swapped while it runs.
        """
        fd = self._write_fd
        covered = len(self._unsynced)
        self._syncing = True
        self._lock.release()
        error: OSError | None = None
        try:
            os.fdatasync(fd)
        except OSError as exc:
            error = exc
        finally:
            self._lock.acquire()
            self._syncing = False
            self._synced.notify_all()  # whoever waits and is not covered starts the next one
        if error is None:
            for _ in range(covered):
                commit = self._unsynced.popleft()
                commit.done = True
                self._pending.append(commit.record)
            if covered:
                self._durable_offset = commit.record.offset + commit.record.size
                self._readable.notify(covered)
        else:
            self._fail_segment_locked(error)

    def _fail_segment_locked(self, error: OSError, *, write_on: bool = True) -> None:
        """An fsync of the write segment failed: refuse its unsynced records, write on in a new segment."""
        self.fsync_errors += 1
        refused = len(self._unsynced)
        self._log_io_error(
            "queue %s: fdatasync of %s failed (%s); refusing %d waiting writes (senders retry)%s",
            self.name,
            _segment_name(self._write_segment),
            error.strerror or error,
            refused,
            "; writing on in a new segment" if write_on else "",
        )
        message = f"exporter queue {self.name}: the write could not be made durable ({error.strerror or error})"
        while self._unsynced:
            commit = self._unsynced.popleft()
            self._items -= commit.record.items
            self._bytes -= commit.record.size
            self._drop_hot_locked(commit.record)
            commit.error = Refused("queue_io_error", message, retryable=True)
            commit.done = True
        # The kernel may have dropped those pages: never fsync this descriptor again (a
        # second fsync could report success for them), and cut the refused records off so
        # a restart does not resend data the senders were told to retry.
        with contextlib.suppress(OSError):
            os.ftruncate(self._write_fd, self._durable_offset)
        with contextlib.suppress(OSError):
            os.close(self._write_fd)
        self._write_fd = -1
        self._write_offset = self._durable_offset
        if not write_on:
            return
        try:
            self._next_segment_locked()
        except Refused as exc:
            self._log_io_error("queue %s: %s; the next write tries again", self.name, exc)

    def _log_io_error(self, message: str, *args: object) -> None:
        """Log an I/O error, at most once per ``_IO_LOG_EVERY`` seconds (a dying disk fails every write)."""
        now = time.monotonic()
        if now - self._io_logged_at < _IO_LOG_EVERY:
            self._io_unlogged += 1
            return
        if self._io_unlogged:
            message += f" ({self._io_unlogged} more I/O errors since the last message)"
        log.error(message, *args)
        self._io_logged_at = now
        self._io_unlogged = 0

    def _roll_locked(self) -> None:
        """Move writing to a new segment (called from ``put`` holding the lock).

        Every record of the current segment is made durable (or refused) first, so the
        unsynced records always belong to the write segment and a running fsync never
        sees its descriptor closed.
        """
        segment = self._write_segment
        # Only this segment's records matter: once another writer has rolled, writes to the
        # new segment must not keep this one waiting.
        while self._write_segment == segment and self._write_fd >= 0 and (self._syncing or self._unsynced):
            if self._syncing:
                self._synced.wait()
            else:
                self._sync_locked()
        if self._closed:
            raise Refused("shutting_down", "the collector is shutting down", retryable=True)
        if self._write_segment != segment:
            return  # another writer rolled it, or a failed fsync started a new one
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        self._next_segment_locked()

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
                self._drop_hot_locked(record, keep=True)
        for record in taken:
            if record.payload is None:
                record.payload = self._read_payload(record)
        return taken

    def _drop_hot_locked(self, record: Record, *, keep: bool = False) -> None:
        """The record's payload no longer counts as held by the queue (handed out, or refused)."""
        if record.payload is not None and not record.done:
            self.hot_bytes -= record.length
            if not keep:
                record.payload = None

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
            head = self._head()
            cursor = (head.segment, head.offset) if head else (self._write_segment, self._write_offset)
            old_segment = self._cursor[0]
            self._cursor = cursor
            if self._closed:
                return
            self._write_cursor(*cursor)
            doomed = list(range(old_segment, cursor[0]))
            for number in doomed:
                fd = self._read_fds.pop(number, None)
                if fd is not None:
                    os.close(fd)
        self._delete_segments(doomed)

    # --- state ----------------------------------------------------------------------------

    def _head(self) -> Record | None:
        """The oldest record still in the queue (being sent, waiting, or waiting for its fsync)."""
        if self._outstanding:
            return self._outstanding[0]
        if self._pending:
            return self._pending[0]
        return self._unsynced[0].record if self._unsynced else None

    def stats(self) -> tuple[int, int, int, int, float]:
        """``(items, max_items, bytes, max_bytes, oldest_age_seconds)``."""
        with self._lock:
            head = self._head()
            age = max(0.0, time.time() - head.enqueued_at) if head else 0.0
            return self._items, self.max_items, self._bytes, self.max_bytes, age

    def __len__(self) -> int:
        return self._items

    def held_bytes(self) -> int:
        """The payloads of the newest records kept in memory to hand out without a read (``hot_bytes``)."""
        return self.hot_bytes

    def close(self) -> None:
        """Make everything durable, persist the cursor, wake the readers. Unsent records stay on disk."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._readable.notify_all()
            while self._syncing:
                self._synced.wait()
            if self._write_fd >= 0:
                try:
                    os.fsync(self._write_fd)
                except OSError as exc:
                    self._fail_segment_locked(exc, write_on=False)
                for commit in self._unsynced:  # durable now: their writers are acknowledged
                    commit.done = True
                self._unsynced.clear()
                if self._write_fd >= 0:
                    os.close(self._write_fd)
                    self._write_fd = -1
            self._synced.notify_all()
            self._write_cursor(*self._cursor)
            with self._files_lock:
                with contextlib.suppress(OSError):
                    os.fsync(self._cursor_fd)
                os.close(self._cursor_fd)
                os.close(self._dir_fd)
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
