"""A bounded, never-blocking batch processor for spans and log records.

Why not the SDK's ``BatchSpanProcessor``: it logs a warning per dropped item,
does not tell *why* items were lost, and keeps using an exporter (and its gRPC
channel) created in a parent process after ``fork``. This one:

* ``on_end`` / ``on_emit`` is a length check and a ``deque.append`` (atomic under the GIL):
  no lock, no allocation beyond the deque slot, never waits for the network;
* when the queue is full the item is dropped and counted (``queue_full``); a failed
  export counts its batch (``export_failed``); both feed ``meshwatch.sdk.dropped``;
* the exporter is built lazily by a factory, in the process that uses it, so a
  forked worker gets its own connection and its own worker thread;
* ``shutdown(timeout)`` drains what it can within the deadline and returns.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value

from ._dropped import TALLY

__all__ = ["BoundedBatcher", "ItemExporter"]

_logger = logging.getLogger("meshwatch")

T = TypeVar("T")


class ItemExporter(Protocol[T]):
    """What the batcher needs from an exporter: export a list, report success."""

    def export(self, batch: Sequence[T]) -> Any: ...

    def shutdown(self) -> Any: ...


class BoundedBatcher(Generic[T]):
    """Queue items, export them in batches from one background thread, drop and count when full."""

    def __init__(
        self,
        signal: str,
        exporter_factory: Callable[[], ItemExporter[T]],
        *,
        max_queue_size: int = 4096,
        max_export_batch_size: int = 512,
        schedule_delay: float = 1.0,
        prepare: Callable[[list[T]], list[Any]] | None = None,
    ) -> None:
        self.signal = signal
        self._factory = exporter_factory
        self._max_queue_size = max_queue_size
        self._batch_size = min(max_export_batch_size, max_queue_size)
        self._delay = schedule_delay
        #: Runs on the worker thread before export (redaction): off the request path.
        self._prepare = prepare
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _reset(self) -> None:
        self._queue: collections.deque[T] = collections.deque()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._export_lock = threading.Lock()
        self._exporter: ItemExporter[T] | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._shutdown = False
        self._start_lock = threading.Lock()
        #: Outcome of the last export (None before the first): a failing collector is not waited for at exit.
        self.last_ok: bool | None = None
        #: Items taken off the queue by an export that has not finished yet.
        self._in_flight = 0
        self._abandoned = False

    def _after_fork(self) -> None:
        # The parent's thread does not exist here and its exporter's connection belongs
        # to the parent: forget both (never close them from the child) and start afresh.
        if self._shutdown:
            return
        self._reset()

    # --- hot path ------------------------------------------------------------------

    def add(self, item: T) -> None:
        """Queue one item; never blocks. Called on the application's thread."""
        queue = self._queue
        if len(queue) >= self._max_queue_size:
            TALLY.add(self.signal, "queue_full")
            return
        if self._shutdown:
            TALLY.add(self.signal, "shutdown")
            return
        queue.append(item)
        if self._thread is None:
            self._start()
        elif len(queue) >= self._batch_size:
            self._wake.set()

    # --- worker --------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._shutdown:
                return
            thread = threading.Thread(target=self._run, name=f"meshwatch-{self.signal}-export", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        while not self._shutdown:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._export_available()
            TALLY.maybe_report()
        self._export_available()

    def _get_exporter(self) -> ItemExporter[T] | None:
        if self._exporter is None:
            try:
                self._exporter = self._factory()
            except Exception:
                _logger.exception("meshwatch could not create the %s exporter", self.signal)
                return None
        return self._exporter

    def _export_available(self, deadline: float | None = None) -> None:
        """Export whole batches until the queue is empty (or the deadline passes)."""
        with self._export_lock:
            while self._queue:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                batch: list[T] = []
                popleft = self._queue.popleft
                try:
                    for _ in range(self._batch_size):
                        batch.append(popleft())
                except IndexError:
                    pass
                self._export(batch)
            with self._flushed:
                self._flushed.notify_all()

    def _export(self, batch: list[T]) -> None:
        self._in_flight = len(batch)
        try:
            self._export_batch(batch)
        finally:
            self._in_flight = 0

    def _drop(self, reason: str, count: int) -> None:
        if not self._abandoned:  # abandon() already counted these
            TALLY.add(self.signal, reason, count)

    def _export_batch(self, batch: list[T]) -> None:
        exporter = self._get_exporter()
        if exporter is None:
            self.last_ok = False
            self._drop("export_failed", len(batch))
            return
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            items = self._prepare(batch) if self._prepare else batch
            result = exporter.export(items)
        except Exception:
            _logger.exception("meshwatch %s exporter raised; %d items dropped", self.signal, len(batch))
            self.last_ok = False
            self._drop("export_failed", len(batch))
            return
        finally:
            detach(token)
        self.last_ok = _succeeded(result)
        if not self.last_ok:
            self._drop("export_failed", len(batch))

    # --- lifecycle -----------------------------------------------------------------

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Export everything queued now, waiting at most ``timeout`` seconds."""
        if self._shutdown or self._pid != os.getpid():
            return False
        deadline = time.monotonic() + timeout
        if self._thread is None:
            if not self._queue:
                return True
            self._start()
        done = threading.Event()

        def flush() -> None:
            self._export_available(deadline)
            done.set()

        # Flush on a helper thread so a caller's timeout holds even if an export hangs.
        threading.Thread(target=flush, name=f"meshwatch-{self.signal}-flush", daemon=True).start()
        return done.wait(max(0.0, deadline - time.monotonic())) and not self._queue

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush within ``timeout`` seconds, then stop; what is still queued is counted as dropped."""
        if self._shutdown:
            return
        flushed = self.force_flush(timeout) if self._pid == os.getpid() else True
        self._shutdown = True
        self._wake.set()
        if not flushed:
            # An export may still be running (retrying an unreachable collector): its
            # items will not arrive before the process exits, so count them now.
            self.abandon()
        left = len(self._queue)
        if left:
            self._queue.clear()
            TALLY.add(self.signal, "shutdown", left)
        exporter = self._exporter
        if exporter is not None and self._pid == os.getpid():
            # The exporter's own shutdown interrupts its retry back-off.
            threading.Thread(target=_quiet_shutdown, args=(exporter,), daemon=True).start()

    def abandon(self) -> None:
        """Count as dropped what is still queued or in flight, when the exit deadline has passed.

        Called by ``meshwatch.shutdown`` for a batcher whose flush is still running at
        its deadline (e.g. an export retrying against an unreachable collector): the
        process is about to exit, so those items will never arrive, and the final drop
        report must say so rather than race the export thread.
        """
        if self._abandoned:
            return
        self._abandoned = True
        left = len(self._queue) + self._in_flight
        self._queue.clear()
        if left:
            TALLY.add(self.signal, "shutdown", left)

    @property
    def queued(self) -> int:
        return len(self._queue)


def _quiet_shutdown(exporter: Any) -> None:
    with contextlib.suppress(Exception):  # shutting down; nothing useful to do with an error
        exporter.shutdown()


def _succeeded(result: Any) -> bool:
    """SpanExportResult / LogRecordExportResult SUCCESS (value 0), or a plain truthy bool."""
    if result is None:
        return True
    if isinstance(result, bool):
        return result
    value = getattr(result, "value", result)
    name = getattr(result, "name", "")
    return name == "SUCCESS" or value == 0
