"""Durable queue, batching, retry, dead letters: the machinery every push exporter shares.

``queued_exporter(settings, config, sender)`` wraps a ``Sender`` (which only knows how
to send one batch) into a component the pipeline hands batches to:

* ``consume(batch)`` appends ``batch.raw`` to the exporter's queue and returns once it
  is durable per the fsync policy; that is when the receiver acknowledges the sender.
  A full queue raises ``Refused("queue_full", retryable=True)``: the receivers push back.
* ``num_consumers`` worker threads read records, merge several into one send (the
  concatenation of serialized ``Export*ServiceRequest`` messages is a valid merged
  request, so merging costs one ``bytes.join``), call ``sender.send`` and act on the
  outcome: success removes the records; ``TransientError`` (or a ``SendResult.retry``)
  retries with exponential backoff and jitter, never sooner than the backend's
  ``retry_after``; a ``PermanentError`` for a merged send splits it in halves and sends
  those (recursively), so only the request at fault is refused; ``PermanentError`` for
  one request and ``SendResult.rejected`` items go to the dead-letter file
  ``<storage>/deadletter/<exporter>.jsonl`` with their reason and are counted as
  ``dropped{reason="rejected"}``; ``retry_on_failure.max_elapsed_time`` gives
  up on a batch (``dropped{reason="expired"}``).
* A restart resumes from disk; records being sent at a crash are sent again
  (at-least-once; duplicates are rare, loss of acknowledged data does not happen).

Senders are called from one worker thread at a time unless they say ``thread_safe = True``.
"""

from __future__ import annotations

import base64
import logging
import random
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ._secrets import Scrubber, secret_values
from .batch import Batch
from .component import ComponentId, CreateSettings, Host, Refused
from .queue import DiskQueue, MemoryQueue, Queue, Record
from .sender import ExporterSettings, PermanentError, ProbesBackend, Sender, SendResult, TransientError
from .signals import Signal
from .telemetry import QueueStats, Telemetry

__all__ = ["QueuedExporter", "queued_exporter", "safe_name"]

log = logging.getLogger("meshwatch.collector.exporter")
#: During a backoff after a connection failure, how often the backend is probed (``ProbesBackend``).
_PROBE_EVERY = 1.0


def safe_name(component_id: ComponentId | str) -> str:
    """A file-name-safe spelling of a component id (``otlp/jaeger`` → ``otlp-jaeger``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(component_id))


class _DeadLetters:
    """Appends one JSON line per refused item (or whole refused request) to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        data = b"".join(orjson.dumps(line, default=str) + b"\n" for line in lines)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as file:
                file.write(data)


class QueuedExporter:
    """A push exporter: durable queue in front, ``Sender`` behind (see module docstring)."""

    def __init__(self, settings: CreateSettings, config: ExporterSettings, sender: Sender) -> None:
        if settings.signal is None:
            raise ValueError("a queued exporter serves exactly one signal")
        self.id = settings.id
        self.signal: Signal = settings.signal
        self.config = config
        #: Every secret in the config, removed from whatever this exporter logs or dead-letters.
        self._scrub = Scrubber(secret_values(config))
        self.sender = sender
        self._labels = (str(settings.id), str(settings.signal))
        self._queue: Queue | None = None
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._accepting = False
        self._send_lock: threading.Lock | None = None if sender.thread_safe else threading.Lock()
        self._telemetry: Telemetry = settings.telemetry
        self._dead: _DeadLetters | None = None
        self._host: Host | None = None
        #: Bytes of the batches being sent right now (read from the queue, merged, decoded by the sender).
        self._sending = 0
        self._sending_lock = threading.Lock()
        #: Labelled series of the hot path, set at start.
        self._queued_items: Any = None
        self._sent_items: Any = None
        self._send_seconds: Any = None
        self._backend_up: Any = None

    def held_bytes(self) -> int:
        """What this exporter holds in memory: an in-memory queue, and the batches being sent
        (their bytes and the message a sender decodes, ~3 times the bytes), for the memory limiter."""
        # an in-memory queue holds all its records; a disk queue the payloads of its newest ones
        queued = self._queue.held_bytes() if self._queue is not None else 0
        return queued + 3 * self._sending

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, host: Host) -> None:
        self._host = host
        self._telemetry.known_exporter(*self._labels)
        # The per-send series, looked up once (``labels()`` costs a lock and a hash per call).
        self._queued_items = self._telemetry.exporter_queued.labels(*self._labels)
        self._sent_items = self._telemetry.exporter_sent.labels(*self._labels)
        self._send_seconds = self._telemetry.exporter_send_duration.labels(*self._labels)
        self._backend_up = self._telemetry.exporter_backend_up.labels(*self._labels)
        queue_cfg = self.config.sending_queue
        name = f"{self.id}/{self.signal}"
        self._dead = _DeadLetters(host.storage_dir / "deadletter" / f"{safe_name(self.id)}.jsonl")
        self.sender.start(host)
        if queue_cfg.enabled and queue_cfg.persistent:
            folder = (
                Path(queue_cfg.directory) / str(self.signal)
                if queue_cfg.directory
                else host.storage_dir / "queues" / safe_name(self.id) / str(self.signal)
            )
            self._queue = DiskQueue(
                folder,
                max_items=queue_cfg.queue_size,
                max_bytes=queue_cfg.max_bytes,
                fsync=queue_cfg.fsync,
                fsync_interval=queue_cfg.fsync_interval,
                name=name,
            )
            if self._queue.corrupt_items:
                self._count_dropped("queue_corrupt", self._queue.corrupt_items)
        elif queue_cfg.enabled:
            self._queue = MemoryQueue(max_items=queue_cfg.queue_size, max_bytes=queue_cfg.max_bytes, name=name)
        if self._queue is not None:
            queue = self._queue
            self._telemetry.register_queue(QueueStats(*self._labels, queue.stats))
            self._telemetry.register_held(f"exporter {name}", self.held_bytes)
            for index in range(queue_cfg.num_consumers):
                worker = threading.Thread(target=self._work, name=f"export {name} #{index}", daemon=True)
                worker.start()
                self._workers.append(worker)
        self._set_up(1)
        self._accepting = True

    def shutdown(self, timeout: float) -> None:
        """Stop taking data, send what is queued until ``timeout``, leave the rest on disk."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        self._draining.set()
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for worker in self._workers:
            worker.join(2.0)
        if self._queue is not None:
            left = len(self._queue)
            if left and not self._queue.durable:
                self._count_dropped("shutdown", left)
                log.warning("%s: %d items in the in-memory queue were not sent before shutdown", self.id, left)
            elif left:
                log.info("%s: %d items stay queued on disk for the next start", self.id, left)
            self._queue.close()
            self._telemetry.unregister_queue(*self._labels)
            self._telemetry.unregister_held(f"exporter {self.id}/{self.signal}")
        self.sender.shutdown()

    # --- the pipeline side ----------------------------------------------------------------

    def consume(self, batch: Batch) -> None:
        if not self._accepting:
            raise Refused("shutting_down", f"exporter {self.id} is not running", retryable=True)
        items = batch.items
        if self._queue is None:
            self._send_now(batch)
            return
        self._queue.put(batch.raw, items)
        self._queued_items.inc(items)

    def _send_now(self, batch: Batch) -> None:
        """``sending_queue.enabled: false``: one synchronous attempt; failures go back to the sender."""
        try:
            result = self._timed_send(batch)
        except TransientError as exc:
            self._count_failed(exc.reason, batch.items)
            raise Refused(
                "backend_unavailable",
                self._scrub(f"{self.id}: {exc}"),
                retryable=True,
                retry_after=exc.retry_after or 1.0,
            ) from exc
        except PermanentError as exc:
            self._reject_whole(batch, exc.reason, self._scrub(str(exc)))
            return
        self._settle(batch, result)
        if result.retry is not None:
            self._count_failed("partial", result.retry.items)
            raise Refused("backend_unavailable", f"{self.id}: some items must be retried", retryable=True)

    # --- the worker side ------------------------------------------------------------------

    def _work(self) -> None:
        assert self._queue is not None
        limits = self.config.batch
        while not self._stop.is_set():
            records = self._queue.get(limits.max_items, limits.max_bytes, timeout=0.25)
            if not records:
                if self._draining.is_set():
                    return
                continue
            if limits.linger and not self._draining.is_set():
                records = self._linger(records, limits.max_items, limits.max_bytes, limits.linger)
            try:
                if not self._deliver(records) and self._draining.is_set():
                    return  # the backend is failing and we are stopping: the rest stays queued
            except Exception:  # a bug in a sender must not kill the worker; the records stay queued
                log.exception("%s: unexpected error while exporting; the batch stays queued", self.id)
                self._stop.wait(1.0)

    def _linger(self, records: list[Record], max_items: int, max_bytes: int, linger: float) -> list[Record]:
        """Top up a small batch with records that arrive within ``linger`` seconds."""
        assert self._queue is not None
        deadline = time.monotonic() + linger
        items = sum(r.items for r in records)
        size = sum(r.length for r in records)
        while items < max_items and size < max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self._queue.get(max_items - items, max_bytes - size, timeout=left, at_least_one=False)
            if not more:
                break
            records.extend(more)
            items += sum(r.items for r in more)
            size += sum(r.length for r in more)
        return records

    def _deliver(self, records: list[Record]) -> bool:
        """Send ``records`` until settled (True) or until told to stop (False: they stay queued)."""
        size = sum(r.length for r in records)
        with self._sending_lock:
            self._sending += size
        try:
            return self._deliver_held(records)
        finally:
            with self._sending_lock:
                self._sending -= size

    def _deliver_held(self, records: list[Record]) -> bool:
        assert self._queue is not None
        payload = records[0].payload if len(records) == 1 else b"".join(r.payload or b"" for r in records)
        items = sum(r.items for r in records)
        batch = Batch(self.signal, _raw=payload, _items=items, received_at=records[0].enqueued_at)
        retry = self.config.retry_on_failure
        started = time.monotonic()
        attempt = 0
        whole = True  # ``batch`` is exactly ``records``, merged
        while True:
            wait: float | None = None
            try:
                result = self._timed_send(batch)
            except TransientError as exc:
                self._count_failed(exc.reason, batch.items)
                self._set_up(0)
                wait = exc.retry_after
                reason, message = exc.reason, self._scrub(str(exc))
            except PermanentError as exc:
                self._set_up(1)
                if whole and len(records) > 1:
                    # A merged send is refused as a whole for what may be one bad request in
                    # it: split it and send the halves, down to the request at fault, so only
                    # that one is dead-lettered (log2(n) extra sends per bad request).
                    return self._split(records, exc)
                self._reject_whole(batch, exc.reason, self._scrub(str(exc)))
                self._queue.ack(records)
                return True
            else:
                self._set_up(1)
                self._settle(batch, result)
                if result.retry is None or result.retry.items == 0:
                    self._queue.ack(records)
                    return True
                self._count_failed("partial", result.retry.items)
                batch, wait = result.retry, result.retry_after
                whole = False  # only some of the records' items are left: no longer splittable
                reason, message = "partial", f"{result.retry.items} items must be sent again"
            elapsed = time.monotonic() - started
            if not retry.enabled or (retry.max_elapsed_time and elapsed >= retry.max_elapsed_time):
                self._count_dropped("expired", batch.items)
                log.error(
                    "%s: giving up on %d %s after %.0fs (%s: %s)",
                    self.id,
                    batch.items,
                    self.signal,
                    elapsed,
                    reason,
                    message,
                )
                self._queue.ack(records)
                return True
            delay = self._backoff(attempt, wait)
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log.warning("%s: send failed (%s: %s); retrying in %.1fs", self.id, reason, message, delay)
            # A disk queue keeps the records for the next start, so a stop need not wait for
            # the backoff; an in-memory queue keeps retrying until the drain budget is spent.
            interrupt = self._draining if self._queue.durable else self._stop
            if self._wait_for_retry(interrupt, delay, probe=reason == "unavailable") or self._stop.is_set():
                return False  # leave the records un-acknowledged

    def _wait_for_retry(self, interrupt: threading.Event, delay: float, *, probe: bool) -> bool:
        """Sleep ``delay`` (True if interrupted); after a connection failure, end early once the
        backend takes connections again, checked about once a second (``ProbesBackend``)."""
        if not probe or delay <= _PROBE_EVERY or not isinstance(self.sender, ProbesBackend):
            return interrupt.wait(delay)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if interrupt.wait(min(_PROBE_EVERY, left)):
                return True
            if self.sender.backend_reachable(timeout=0.5):
                log.info("%s: the backend takes connections again; retrying now", self.id)
                return False
        return False

    def _split(self, records: list[Record], error: PermanentError) -> bool:
        """Deliver the two halves of a refused merged send, each on its own (and split again if refused)."""
        log.info(
            "%s: backend refused a merged send of %d requests for good (%s); sending it in halves to find the bad one",
            self.id,
            len(records),
            error.reason,
        )
        middle = len(records) // 2
        return self._deliver_held(records[:middle]) and self._deliver_held(records[middle:])

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        retry = self.config.retry_on_failure
        interval = min(retry.max_interval, retry.initial_interval * retry.multiplier**attempt)
        jitter = retry.randomization_factor * interval
        delay = random.uniform(interval - jitter, interval + jitter)  # noqa: S311 - jitter, not crypto
        if retry_after:
            delay = max(delay, retry_after)
        return delay

    # --- outcomes ---------------------------------------------------------------------------

    def _timed_send(self, batch: Batch) -> SendResult:
        start = time.perf_counter()
        try:
            if self._send_lock is None:
                return self.sender.send(batch)
            with self._send_lock:
                return self.sender.send(batch)
        finally:
            self._send_seconds.observe(time.perf_counter() - start)

    def _settle(self, batch: Batch, result: SendResult) -> None:
        retried = result.retry.items if result.retry is not None else 0
        sent = batch.items - retried - result.rejected
        if sent > 0:
            self._sent_items.inc(sent)
        if result.rejected:
            reason = result.rejected_reason or "rejected"
            log.error("%s: backend refused %d %s for good (%s)", self.id, result.rejected, self.signal, reason)
            assert self._dead is not None
            # Written before counted: a dropped{reason="rejected"} item is always in the file already.
            self._dead.write([self._letter(reason, **letter) for letter in result.dead_letters])
            self._count_dropped("rejected", result.rejected)

    def _reject_whole(self, batch: Batch, reason: str, message: str) -> None:
        log.error(
            "%s: backend refused a batch of %d %s for good (%s: %s)", self.id, batch.items, self.signal, reason, message
        )
        assert self._dead is not None
        self._dead.write(
            [
                self._letter(
                    reason,
                    error=message,
                    items=batch.items,
                    # the whole request, replayable: base64 of the serialized protobuf
                    request_protobuf_base64=base64.b64encode(batch.raw).decode(),
                )
            ]
        )
        self._count_dropped("rejected", batch.items)

    def _letter(self, reason: str, **fields: Any) -> dict[str, Any]:
        return {
            "time": datetime.now(UTC).isoformat(),
            "exporter": str(self.id),
            "signal": str(self.signal),
            "reason": reason,
            **fields,
        }

    def _count_failed(self, reason: str, items: int) -> None:
        self._telemetry.exporter_failed.labels(*self._labels, reason).inc(items)

    def _count_dropped(self, reason: str, items: int) -> None:
        self._telemetry.dropped(*self._labels, reason, items)

    def _set_up(self, value: int) -> None:
        self._backend_up.set(value)

    # --- for tests and the CLI ---------------------------------------------------------------

    @property
    def queue(self) -> Queue | None:
        return self._queue


def queued_exporter(settings: CreateSettings, config: ExporterSettings, sender: Sender) -> QueuedExporter:
    """Wrap ``sender`` in the shared durable queue, batching, retry and dead-letter machinery."""
    return QueuedExporter(settings, config, sender)
