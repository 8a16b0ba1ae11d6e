"""The durable queue: order, limits, persistence across reopen, corrupt-tail recovery (pure unit tests)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from meshwatch.collector.component import Refused
from meshwatch.collector.queue import DiskQueue, MemoryQueue


def _open(folder: Path, **kw) -> DiskQueue:
    kw.setdefault("max_items", 1000)
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("fsync", "always")
    return DiskQueue(folder, **kw)


def _drain(queue: DiskQueue | MemoryQueue) -> list[bytes]:
    out = []
    while records := queue.get(10_000, 1 << 30, timeout=0.01):
        out.extend(r.payload for r in records)
        queue.ack(records)
    return out


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_records_come_back_in_order_and_survive_reopen(tmp_path: Path, fsync: str) -> None:
    queue = _open(tmp_path, fsync=fsync)
    for i in range(20):
        queue.put(f"record-{i}".encode(), items=2)
    assert queue.stats()[0] == 40
    first = queue.get(max_items=6, max_bytes=1 << 20, timeout=1)
    assert [r.payload for r in first] == [b"record-0", b"record-1", b"record-2"]
    queue.ack(first)
    queue.close()

    reopened = _open(tmp_path, fsync=fsync)
    assert reopened.recovered_items == 34
    assert _drain(reopened) == [f"record-{i}".encode() for i in range(3, 20)]
    assert reopened.stats()[0] == 0
    reopened.close()
    assert _open(tmp_path).recovered_items == 0


def test_unacknowledged_records_are_sent_again_after_a_crash(tmp_path: Path) -> None:
    queue = _open(tmp_path)
    for i in range(5):
        queue.put(bytes([i]) * 10, items=1)
    taken = queue.get(2, 1 << 20, timeout=1)  # handed to a worker, never acknowledged
    assert len(taken) == 2
    # no close(): the process "dies" here
    again = _open(tmp_path)
    assert again.recovered_items == 5
    assert len(_drain(again)) == 5


def test_out_of_order_acks_only_move_the_cursor_past_finished_records(tmp_path: Path) -> None:
    queue = _open(tmp_path)
    for i in range(4):
        queue.put(bytes([65 + i]), items=1)
    a = queue.get(1, 1 << 20, timeout=1)
    b = queue.get(1, 1 << 20, timeout=1)
    queue.ack(b)  # the second finished first; the first is still being sent
    queue.close()
    again = _open(tmp_path)
    assert a[0].payload == b"A"
    # A is sent again (it was not done), B is not sent again only if the cursor could pass it:
    # it cannot (A is before it), so B comes back too: at-least-once, never loss.
    assert _drain(again) == [b"A", b"B", b"C", b"D"]


def test_full_queue_refuses_with_a_retryable_answer(tmp_path: Path) -> None:
    queue = _open(tmp_path, max_items=10)
    queue.put(b"x" * 100, items=8)
    with pytest.raises(Refused) as refused:
        queue.put(b"y" * 100, items=8)
    assert refused.value.reason == "queue_full" and refused.value.retryable
    assert refused.value.retry_after >= 1
    taken = queue.get(100, 1 << 20, timeout=1)
    queue.ack(taken)
    queue.put(b"y" * 100, items=8)  # room again


def test_byte_limit_and_oversized_record_in_an_empty_queue(tmp_path: Path) -> None:
    queue = _open(tmp_path, max_bytes=2048)
    queue.put(b"z" * 4000, items=1)  # bigger than the limit, but the queue was empty
    with pytest.raises(Refused):
        queue.put(b"z" * 10, items=1)


@pytest.mark.parametrize(
    ("damage", "survivors"),
    [
        ("torn_tail", 9),  # the last record was half written when the process died
        ("flipped_bit", 9),  # a bit of the last record's payload changed on disk
        ("garbage_tail", 10),  # random bytes after the last good record
    ],
)
def test_corrupt_tail_is_truncated_counted_and_start_up_goes_on(tmp_path: Path, damage: str, survivors: int) -> None:
    queue = _open(tmp_path)
    for i in range(10):
        queue.put(f"payload-{i:02d}".encode() * 10, items=3)
    queue.close()
    segment = sorted(tmp_path.glob("segment-*.q"))[-1]
    data = bytearray(segment.read_bytes())
    if damage == "torn_tail":
        data = data[:-7]
    elif damage == "flipped_bit":
        data[-5] ^= 0x01
    else:
        data += b"\x07garbage-without-a-valid-header"
    segment.write_bytes(bytes(data))

    reopened = _open(tmp_path)
    assert reopened.corrupt_records == 1
    assert reopened.corrupt_items == (1 if damage == "garbage_tail" else 3)
    payloads = _drain(reopened)
    assert len(payloads) == survivors
    assert payloads[0] == b"payload-00" * 10
    # new records after the truncation are readable after another reopen
    reopened.put(b"after", items=1)
    reopened.close()
    last = _open(tmp_path)
    assert _drain(last) == [b"after"]


def test_a_damaged_record_mid_segment_costs_only_that_record(tmp_path: Path) -> None:
    queue = _open(tmp_path, segment_bytes=1000)
    for i in range(30):
        queue.put(f"r{i:02d}".encode() * 20, items=2)  # 60-byte payloads, 80-byte records
    queue.close()
    segments = sorted(tmp_path.glob("segment-*.q"))
    assert len(segments) >= 2
    data = bytearray(segments[0].read_bytes())
    data[80 * 4 + 30] ^= 0xFF  # inside the fifth record's payload
    segments[0].write_bytes(bytes(data))
    reopened = _open(tmp_path, segment_bytes=1000)
    assert (reopened.corrupt_records, reopened.corrupt_items) == (1, 2)
    payloads = _drain(reopened)
    assert payloads == [f"r{i:02d}".encode() * 20 for i in range(30) if i != 4]


def test_corrupt_cursor_file_resends_rather_than_loses(tmp_path: Path) -> None:
    queue = _open(tmp_path)
    for i in range(3):
        queue.put(bytes([i]), items=1)
    queue.ack(queue.get(1, 1 << 20, timeout=1))
    queue.close()
    (tmp_path / "cursor").write_bytes(b"\xff" * 20)
    assert len(_drain(_open(tmp_path))) == 3


def test_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    queue = _open(tmp_path, segment_bytes=100)
    for _ in range(20):
        queue.put(b"q" * 60, items=1)
    assert len(list(tmp_path.glob("segment-*.q"))) >= 10
    _drain(queue)
    assert len(list(tmp_path.glob("segment-*.q"))) == 1  # only the one being written


def test_group_commit_many_writers(tmp_path: Path) -> None:
    queue = _open(tmp_path, max_items=100_000, max_bytes=1 << 26)

    def writer(n: int) -> None:
        for i in range(200):
            queue.put(f"{n}-{i}".encode(), items=1)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert queue.stats()[0] == 1600
    queue.close()
    assert len(_drain(_open(tmp_path, max_items=100_000))) == 1600


def test_memory_queue_has_the_same_behaviour() -> None:
    queue = MemoryQueue(max_items=5, max_bytes=1 << 20)
    queue.put(b"a", items=3)
    with pytest.raises(Refused):
        queue.put(b"b", items=3)
    taken = queue.get(10, 1 << 20, timeout=0.1)
    assert [r.payload for r in taken] == [b"a"]
    items, max_items, size, max_bytes, age = queue.stats()
    assert (items, max_items, max_bytes) == (3, 5, 1 << 20), "taken but not acked: still held"
    assert size >= len(b"a")  # the payload and the record's own overhead
    assert 0.0 <= age < 5.0
    queue.ack(taken)
    assert queue.stats()[0] == 0


@pytest.mark.parametrize(("err", "reason"), [(errno.ENOSPC, "queue_full"), (errno.EIO, "queue_io_error")])
def test_a_refused_write_is_a_retryable_refusal_and_the_queue_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, reason: str
) -> None:
    """A full disk (or a failing write) refuses that put, cuts the partial record off, and the next put works."""
    queue = _open(tmp_path)
    queue.put(b"before", items=1)
    real_writev = os.writev
    failures = [err]

    def writev(fd: int, buffers: list[bytes]) -> int:
        if failures:
            real_writev(fd, [buffers[0][:3]])  # the kernel wrote a little, then refused
            raise OSError(failures.pop(), os.strerror(err))
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", writev)
    with pytest.raises(Refused) as refused:
        queue.put(b"refused", items=1)
    assert refused.value.reason == reason and refused.value.retryable
    queue.put(b"after", items=1)  # space came back: no restart needed
    assert queue.stats()[0] == 2
    queue.close()
    assert _drain(_open(tmp_path)) == [b"before", b"after"], "the refused record is gone, the rest intact"


def test_new_records_are_handed_out_from_memory_and_a_backlog_from_disk(tmp_path: Path, monkeypatch) -> None:
    """The newest records' payloads (up to ``hot_limit`` bytes) reach the exporter without a read;
    the rest of a backlog is read back from the file, byte for byte the same."""
    queue = _open(tmp_path, max_bytes=1 << 20)
    queue.hot_limit = 3000  # room for three 1000-byte payloads
    reads: list[int] = []
    read_payload = queue._read_payload
    monkeypatch.setattr(queue, "_read_payload", lambda record: reads.append(record.offset) or read_payload(record))
    payloads = [bytes([i]) * 1000 for i in range(5)]
    for payload in payloads:
        queue.put(payload, items=1)
    assert queue.hot_bytes == 3000
    assert _drain(queue) == payloads
    assert len(reads) == 2, "the two records beyond hot_limit are read from disk, the first three are not"
    assert queue.hot_bytes == 0
    queue.put(b"after the backlog", items=1)
    assert _drain(queue) == [b"after the backlog"]
    assert len(reads) == 2
    queue.close()


def test_a_record_refused_by_a_failed_fsync_gives_its_memory_back(tmp_path: Path, monkeypatch) -> None:
    queue = _open(tmp_path)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(Refused) as refused:
        queue.put(b"x" * 500, items=1)
    assert refused.value.reason == "queue_io_error"
    assert queue.hot_bytes == 0
    monkeypatch.undo()
    queue.put(b"kept", items=1)
    assert _drain(queue) == [b"kept"]
    queue.close()


def test_both_queues_are_the_queue_protocol_and_say_whether_they_survive_a_restart(tmp_path) -> None:
    """The exporter branches on ``durable`` and ``held_bytes()``, never on the queue's class."""
    import inspect

    from meshwatch.collector import queued_exporter
    from meshwatch.collector.queue import DiskQueue, MemoryQueue, Queue

    disk = DiskQueue(tmp_path / "q", max_items=10, max_bytes=1 << 20)
    memory = MemoryQueue(max_items=10, max_bytes=1 << 20)
    try:
        for queue, durable in ((disk, True), (memory, False)):
            assert queue.durable is durable
            queue.put(b"x" * 100, 1)
            assert queue.held_bytes() >= 100  # the disk queue keeps its newest payloads in memory too
            members = {name for name, _ in inspect.getmembers(Queue) if not name.startswith("_")} | {"__len__"}
            assert all(hasattr(queue, name) for name in members)
    finally:
        disk.close()
        memory.close()
    assert "isinstance(self._queue" not in inspect.getsource(queued_exporter)
