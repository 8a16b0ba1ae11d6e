"""The durable queue's fsync policy: ack after the fsync that covers the record, group commit,
latency of a sequential sender, directory fsyncs, fsync errors (pure unit tests).

``os.fdatasync`` / ``os.fsync`` are replaced by recording or failing fakes through
``monkeypatch``: the order of calls is the thing under test, not the disk.
"""

from __future__ import annotations

import errno
import os
import stat
import statistics
import threading
import time
from pathlib import Path

import pytest

from meshwatch.collector.component import Refused
from meshwatch.collector.queue import DiskQueue

HEADER = 20  # bytes of framing before each payload (see queue/_record.py)


def _drain(queue: DiskQueue) -> list[bytes]:
    out = []
    while records := queue.get(10_000, 1 << 30, timeout=0.01):
        out.extend(r.payload for r in records)
        queue.ack(records)
    return out


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _segment_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("segment-*.q"))


class _Putter(threading.Thread):
    """``queue.put`` on its own thread; remembers the outcome and logs its ack in ``events``."""

    def __init__(self, queue: DiskQueue, payload: bytes, events: list) -> None:
        super().__init__(daemon=True)
        self.queue, self.payload, self.events = queue, payload, events
        self.error: BaseException | None = None
        self.returned = threading.Event()

    def run(self) -> None:
        try:
            self.queue.put(self.payload, items=1)
            self.events.append(("ack", self.payload))
        except BaseException as exc:  # the test looks at it
            self.error = exc
        self.returned.set()


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_no_ack_before_the_fsync_that_covers_the_record(tmp_path: Path, monkeypatch, fsync: str) -> None:
    queue = DiskQueue(tmp_path, max_items=1000, max_bytes=1 << 20, fsync=fsync)
    real = os.fdatasync
    events: list = []  # ("sync", n, bytes covered) before the call returns, ("synced", n), ("ack", payload)
    entered, gate = threading.Event(), threading.Event()
    calls = [0]

    def slow_first_sync(fd: int) -> None:
        calls[0] += 1
        n = calls[0]
        events.append(("sync", n, os.fstat(fd).st_size))
        if n == 1:
            entered.set()
            assert gate.wait(10)
        real(fd)
        events.append(("synced", n))

    monkeypatch.setattr(os, "fdatasync", slow_first_sync)
    first = _Putter(queue, b"a" * 100, events)
    first.start()
    assert entered.wait(5), "a writer that finds no fsync running starts one at once"
    later = [_Putter(queue, bytes([c]) * 100, events) for c in b"bc"]
    for putter in later:
        putter.start()  # they arrive while the first fsync runs
    _wait_for(lambda: _segment_bytes(tmp_path) == 3 * (HEADER + 100))
    time.sleep(0.1)
    assert not any(p.returned.is_set() for p in [first, *later]), "acknowledged before its fsync ended"
    assert queue.get(10, 1 << 20, timeout=0.05) == [], "a record was handed to the exporter before it was durable"

    gate.set()
    for putter in [first, *later]:
        assert putter.returned.wait(5) and putter.error is None
    position = {event[:2] if event[0] != "ack" else event: i for i, event in enumerate(events)}
    sync1 = next(e for e in events if e[:2] == ("sync", 1))
    assert sync1[2] == HEADER + 100, "the first fsync covered only the first record"
    assert position[("ack", b"a" * 100)] > position[("synced", 1)]
    # b and c were written after the first fsync began: only a later fsync covers them ...
    for payload, end in ((b"b" * 100, 2 * (HEADER + 100)), (b"c" * 100, 3 * (HEADER + 100))):
        covering = [e for e in events if e[0] == "sync" and e[2] >= end]
        assert covering, f"no fsync covered {payload[:1]!r}"
        assert position[("ack", payload)] > position[("synced", covering[0][1])]
    # ... and one fsync commits both together.
    assert calls[0] == 2
    assert [r.payload for r in queue.get(10, 1 << 20, timeout=1)] == [bytes([c]) * 100 for c in b"abc"]
    queue.close()


def test_never_acknowledges_without_an_fsync(tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    monkeypatch.setattr(os, "fsync", calls.append)
    queue = DiskQueue(tmp_path, max_items=1000, max_bytes=1 << 20, fsync="never")
    queue.put(b"x", items=1)
    assert [r.payload for r in queue.get(10, 1 << 20, timeout=0.1)] == [b"x"]
    assert calls == []
    queue.close()


def test_a_sequential_writer_is_not_slowed_by_the_default_policy(tmp_path: Path) -> None:
    """The shipped default (``interval``, 50 ms) costs what ``always`` costs: one fsync, not a tick."""
    default = DiskQueue(tmp_path / "default", max_items=10**6, max_bytes=1 << 30)
    assert default.fsync == "interval" and default.fsync_interval == 0.05
    always = DiskQueue(tmp_path / "always", max_items=10**6, max_bytes=1 << 30, fsync="always")
    payload = os.urandom(4096)
    latencies: dict[str, list[float]] = {"default": [], "always": []}
    for _ in range(5):  # interleaved, so a slow moment of the disk hits both
        for name, queue in (("default", default), ("always", always)):
            for _ in range(20):
                start = time.perf_counter()
                queue.put(payload, items=1)
                latencies[name].append(time.perf_counter() - start)
    default.close()
    always.close()
    median_default = statistics.median(latencies["default"])
    median_always = statistics.median(latencies["always"])
    print(f"\nsequential put→ack median: default {median_default * 1e3:.2f} ms, always {median_always * 1e3:.2f} ms")
    assert median_default <= 1.5 * median_always + 0.002


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_a_lone_writer_waits_for_its_own_fsync_only(tmp_path: Path, monkeypatch, fsync: str) -> None:
    """One sequential writer: one fdatasync per put, run on the writer's own thread, and nothing else.

    No hand-off to a flusher thread (a thread switch per put, and a tick if it sleeps), no
    second fsync, no wait for a timer: with a disk whose fsync takes 20 ms a put takes 20 ms.
    """
    real = os.fdatasync
    calls: list[int] = []

    def slow_disk(fd: int) -> None:
        calls.append(threading.get_ident())
        time.sleep(0.02)
        real(fd)

    queue = DiskQueue(tmp_path / "q", max_items=10**6, max_bytes=1 << 30, fsync=fsync, fsync_interval=0.05)
    monkeypatch.setattr(os, "fdatasync", slow_disk)
    latencies = []
    for _ in range(10):
        start = time.perf_counter()
        queue.put(os.urandom(4096), items=1)
        latencies.append(time.perf_counter() - start)
    monkeypatch.setattr(os, "fdatasync", real)
    queue.close()
    assert calls == [threading.get_ident()] * 10
    print(f"\nlone writer, 20 ms fsync: put median {statistics.median(latencies) * 1e3:.1f} ms")
    assert statistics.median(latencies) < 0.02 + 0.01  # one fsync, not one fsync plus an interval


@pytest.mark.parametrize("segment_bytes", [32 << 20, 2000], ids=["one-segment", "rolling-every-10-puts"])
@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_concurrent_writers_share_fsyncs(tmp_path: Path, monkeypatch, fsync: str, segment_bytes: int) -> None:
    real = os.fdatasync
    calls = [0]

    def slow_disk(fd: int) -> None:  # 5 ms per fsync, so writers surely overlap
        calls[0] += 1
        time.sleep(0.005)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_disk)
    queue = DiskQueue(tmp_path, max_items=10**6, max_bytes=1 << 30, fsync=fsync, segment_bytes=segment_bytes)
    writers, each = 8, 25
    latencies: list[float] = []

    def write(n: int) -> None:
        for i in range(each):
            start = time.perf_counter()
            queue.put(f"{n}-{i}".encode().ljust(180, b"."), items=1)
            latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    print(
        f"\n{writers * each} puts from {writers} writers: {calls[0]} fdatasyncs in {elapsed:.2f} s, "
        f"slowest put {max(latencies) * 1e3:.1f} ms"
    )
    assert calls[0] <= writers * each / 2, "concurrent writers did not share fsyncs"
    # A writer that rolls the segment waits for that segment's fsync, not for a lull in the
    # writes to the next one (which under load may never come).
    assert max(latencies) < 0.25
    queue.close()
    assert sorted(_drain(DiskQueue(tmp_path, max_items=10**6, max_bytes=1 << 30))) == sorted(
        f"{n}-{i}".encode().ljust(180, b".") for n in range(writers) for i in range(each)
    )


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_an_fsync_error_refuses_the_waiting_writers_and_writing_goes_on_in_a_new_segment(
    tmp_path: Path, monkeypatch, fsync: str
) -> None:
    queue = DiskQueue(tmp_path, max_items=1000, max_bytes=1 << 20, fsync=fsync)
    queue.put(b"acked-1", items=1)
    queue.put(b"acked-2", items=1)
    bad_inode = os.stat(max(tmp_path.glob("segment-*.q"))).st_ino
    before = _segment_bytes(tmp_path)

    real = os.fdatasync
    synced_inodes: list[int] = []
    entered, gate = threading.Event(), threading.Event()

    def failing_disk(fd: int) -> None:
        inode = os.fstat(fd).st_ino
        synced_inodes.append(inode)
        if len(synced_inodes) == 1:
            entered.set()
            assert gate.wait(10)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing_disk)
    events: list = []
    leader = _Putter(queue, b"lost-1", events)
    leader.start()
    assert entered.wait(5)
    followers = [_Putter(queue, f"lost-{i}".encode(), events) for i in (2, 3)]
    for f in followers:
        f.start()  # they arrive while the failing fsync runs
    _wait_for(lambda: _segment_bytes(tmp_path) == before + 3 * (HEADER + 6))
    gate.set()
    for putter in [leader, *followers]:
        assert putter.returned.wait(5)
        assert isinstance(putter.error, Refused), f"{putter.payload!r} was not refused: {putter.error!r}"
        assert putter.error.retryable and putter.error.reason == "queue_io_error"
    assert events == [], "a write the failed fsync was to cover was acknowledged"
    assert queue.fsync_errors == 1

    queue.put(b"after", items=1)  # the next write succeeds ...
    assert synced_inodes.count(bad_inode) == 1, "the failed fsync was retried on the same segment"
    assert synced_inodes[-1] != bad_inode  # ... in a new segment
    assert queue.stats()[0] == 3  # the refused records are not in the queue
    taken = queue.get(10, 1 << 20, timeout=1)
    assert [r.payload for r in taken] == [b"acked-1", b"acked-2", b"after"]
    assert taken[2].segment > taken[0].segment
    # no close(): the process dies here; nothing acknowledged is lost, nothing refused comes back
    monkeypatch.setattr(os, "fdatasync", real)
    reopened = DiskQueue(tmp_path, max_items=1000, max_bytes=1 << 20, fsync=fsync)
    assert reopened.corrupt_records == 0
    assert _drain(reopened) == [b"acked-1", b"acked-2", b"after"]
    reopened.close()


def _fs_log(monkeypatch, folder: Path) -> list[tuple[str, str]]:
    """Record segment creations and deletions, folder fsyncs and cursor fsyncs, in order."""
    log: list[tuple[str, str]] = []
    real_open, real_fsync, real_unlink = os.open, os.fsync, os.unlink

    def opening(path, flags, mode=0o777, **kw):
        if flags & os.O_CREAT and Path(path).name.startswith("segment-") and not Path(path).exists():
            log.append(("create", Path(path).name))
        return real_open(path, flags, mode, **kw)

    def syncing(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            log.append(("fsync-dir", ""))
        elif info.st_ino == os.stat(folder / "cursor").st_ino:
            log.append(("fsync-cursor", ""))
        real_fsync(fd)

    def unlinking(path, *args, **kw):
        log.append(("delete", Path(path).name))
        real_unlink(path, *args, **kw)

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "fsync", syncing)
    monkeypatch.setattr(os, "unlink", unlinking)
    return log


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_segment_create_roll_and_delete_are_fsynced_in_the_folder(tmp_path: Path, monkeypatch, fsync: str) -> None:
    tmp_path.joinpath("cursor").touch()
    log = _fs_log(monkeypatch, tmp_path)
    queue = DiskQueue(tmp_path, max_items=1000, max_bytes=1 << 20, fsync=fsync, segment_bytes=300)
    for i in range(12):  # 120-byte records: a new segment every third put
        queue.put(bytes([i]) * 100, items=1)
        log.append(("ack", max(tmp_path.glob("segment-*.q")).name))  # the record is in the newest segment
    created = [name for kind, name in log if kind == "create"]
    assert len(created) >= 4
    for name in created:  # the entry of every segment is durable before a record in it is acknowledged
        made = log.index(("create", name))
        acks = [i for i, e in enumerate(log) if e == ("ack", name)]
        assert acks, name
        assert ("fsync-dir", "") in log[made : acks[0]], f"{name}: acknowledged before the folder was fsynced"

    log.clear()
    assert len(_drain(queue)) == 12
    deleted = [i for i, (kind, name) in enumerate(log) if kind == "delete" and name.startswith("segment-")]
    assert deleted, "acknowledged segments were not deleted"
    assert ("fsync-cursor", "") in log[: deleted[0]], "a segment was deleted before the cursor passing it was durable"
    assert ("fsync-dir", "") in log[deleted[-1] :], "the deletions were not fsynced in the folder"
    queue.close()


def test_a_segment_that_cannot_be_created_refuses_then_recovers(tmp_path: Path, monkeypatch) -> None:
    queue = DiskQueue(tmp_path, max_items=1000, max_bytes=1 << 20, fsync="always", segment_bytes=200)
    queue.put(b"k" * 190, items=1)  # fills the first segment (210 bytes with its header)
    real = os.fsync
    failures = [1]

    def folder_sync_fails_once(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and failures:
            failures.pop()
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", folder_sync_fails_once)
    with pytest.raises(Refused) as refused:
        queue.put(b"r" * 10, items=1)  # needs a new segment, whose entry cannot be made durable
    assert refused.value.retryable and refused.value.reason == "queue_io_error"
    queue.put(b"s" * 10, items=1)  # the next write tries again and succeeds
    assert _drain(queue) == [b"k" * 190, b"s" * 10]
    queue.close()
