"""The ``memory_limiter`` processor: refuse data (retryably) while the collector holds too much.

It looks at two things, every ``check_interval``:

* what the collector **holds**: the bytes each component reports through
  ``Telemetry.register_held`` (in-memory queues, batches being sent, the ``prometheus``
  exporter's pending batches and series), plus the batches passing through the memory
  limiters at this moment (counted at ``INFLIGHT_FACTOR`` times their size: the bytes
  and the decoded message, ~2.5 times the bytes, are both in memory);
* the process **RSS** (``/proc/self/statm``). Above the soft limit it first asks for
  memory back: ``gc.collect()`` and, with glibc, ``malloc_trim(0)`` (at most once a
  second), since CPython and glibc keep freed memory otherwise, so an RSS reading alone
  may never fall after a burst of large requests. At start it also fixes glibc's mmap
  threshold at 1 MiB (``fix_mmap_threshold``), so large request buffers are given back
  to the kernel as soon as they are freed (process-wide).

A batch is refused with ``Refused("memory_limit", retryable=True)`` (gRPC
RESOURCE_EXHAUSTED with RetryInfo, HTTP 429 with Retry-After: senders keep the data
and come back; counted under ``meshwatch_receiver_refused_items_total{reason=
"memory_limit"}``) when something is held and

* what is held plus the batch would pass the soft limit (``limit_mib - spike_limit_mib``), or
* the RSS is still above the soft limit after the reclaim and the collector holds at
  least ``FLOOR`` of the limit (5 %): refusing can then still make it let go of data.

Once the held data is gone (queues drained, sends done), the second rule no longer
applies: the limiter accepts again by itself even if the allocator has kept the RSS
high, since refusing could not lower it. A batch arriving when nothing is held is
never refused (the receivers' ``max_request_body_size`` bounds it). Put the limiter
first in every pipeline.

The receivers ask the limiter too (``MemoryGate``, through ``Telemetry``): with a
request's size on the wire before decoding it (what the requests being decoded hold
counts, at ``INFLIGHT_FACTOR`` times their size), and gRPC before reading a call at all.
Decoding is where a burst of large requests used to take the RSS to 600 MiB and more
before any limiter saw a batch.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..batch import Batch
from ..component import Capabilities, ComponentId, Consumer, CreateSettings, Host, Kind, Refused, make_factory
from ..config import Duration
from ..signals import Signal

__all__ = ["factory", "MemoryLimiterConfig", "rss_bytes", "reclaim"]

log = logging.getLogger("meshwatch.collector.memory_limiter")
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: A batch in flight is in memory as its bytes and as the decoded message.
INFLIGHT_FACTOR = 3
#: Share of the hard limit below which held data no longer justifies refusing for RSS.
FLOOR = 0.05
#: The name the limiters' shared in-flight bytes are reported under.
INFLIGHT_NAME = "memory_limiter (in flight)"


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _total_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * _PAGE


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, which hands freed heap pages back to the kernel; None elsewhere."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()
_M_MMAP_THRESHOLD = -3
#: Allocations from this size up get their own mapping, handed back to the kernel when freed.
MMAP_THRESHOLD = 1024 * 1024


def fix_mmap_threshold() -> bool:
    """Stop glibc from raising its mmap threshold (it does after each large free, up to 32 MiB).

    By default, once a large request's buffer is freed, glibc serves the next ones of that
    size from its heap, where freed memory stays resident; a fixed threshold keeps large
    buffers (request bytes, decoded messages' blocks) in their own mappings, which go back
    to the kernel as soon as they are freed. Process-wide; True if it was set.
    """
    if _TRIM is None:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def reclaim() -> None:
    """Collect garbage and give freed memory back to the operating system where the allocator can."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


class MemoryLimiterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    check_interval: Duration = Field(1.0, gt=0)
    limit_mib: int = Field(0, ge=0)
    spike_limit_mib: int | None = Field(None, ge=0)
    limit_percentage: int = Field(0, ge=0, le=100)
    spike_limit_percentage: int = Field(0, ge=0, le=100)

    @model_validator(mode="after")
    def _a_limit(self) -> MemoryLimiterConfig:
        if not self.limit_mib and not self.limit_percentage:
            raise ValueError("set limit_mib (or limit_percentage)")
        if self.limit_mib and self.spike_limit_mib is not None and self.spike_limit_mib >= self.limit_mib:
            raise ValueError("spike_limit_mib must be smaller than limit_mib")
        return self

    def limits(self) -> tuple[int, int]:
        """(hard, soft) limits in bytes; the spike defaults to 20% of the limit, as in the OTel Collector."""
        if self.limit_mib:
            hard = self.limit_mib * 1024 * 1024
            spike = (self.spike_limit_mib * 1024 * 1024) if self.spike_limit_mib is not None else hard // 5
        else:
            hard = _total_memory() * self.limit_percentage // 100
            spike = _total_memory() * (self.spike_limit_percentage or self.limit_percentage // 5) // 100
        return hard, hard - spike


class MemoryLimiter:
    def __init__(self, settings: CreateSettings, config: MemoryLimiterConfig, next_consumer: Consumer) -> None:
        self.id: ComponentId = settings.id
        self.config = config
        self.next = next_consumer
        self.hard, self.soft = config.limits()
        self.floor = int(self.hard * FLOOR)
        #: RSS at or above the soft limit after the last reclaim.
        self.rss_over = False
        #: Bytes held by the components other than the limiters (as of the last check).
        self.others = 0
        self.over = False
        self.rss = 0
        #: The collector's self-telemetry; it also holds what every limiter of this collector has in flight.
        self._telemetry = settings.telemetry
        self._reclaimed = 0.0
        self._logged = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, host: Host) -> None:
        self._telemetry.memory_limit.set(self.hard)
        # One reader for every limiter of this collector (registered again by each: the same name).
        self._telemetry.register_held(INFLIGHT_NAME, self._inflight_bytes)
        self._telemetry.register_memory_gate(self)
        fix_mmap_threshold()
        self.check()
        self._thread = threading.Thread(target=self._loop, name=f"memory-limiter {self.id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.check_interval):
            try:
                self.check()
            except Exception:  # never let a bug stop the checks (the limiter would stay as it is)
                log.exception("%s: memory check failed", self.id)

    def held(self) -> int:
        """Bytes the collector holds now: the other components' (last check), what is in flight
        through the limiters and what the receivers are decoding (both live)."""
        return self.others + self._inflight_bytes() + INFLIGHT_FACTOR * self._telemetry.decoding_bytes

    def _inflight_bytes(self) -> int:
        return INFLIGHT_FACTOR * self._telemetry.limiter_inflight_bytes

    def refuses(self, nbytes: int) -> bool:
        """``MemoryGate``: the receivers ask before decoding a request of ``nbytes``."""
        return self._refusing(nbytes)

    def check(self) -> None:
        used = rss_bytes()
        now = time.monotonic()
        if used >= self.soft and now - self._reclaimed >= 1.0:
            reclaim()
            self._reclaimed = now
            before, used = used, rss_bytes()
            log.debug("%s: reclaimed memory: RSS %.0f -> %.0f MiB", self.id, before / 2**20, used / 2**20)
        held = self._telemetry.held_bytes()
        self.others = sum(value for name, value in held.items() if name != INFLIGHT_NAME)
        self.rss = used
        self.rss_over = used >= self.soft
        over = self._refusing(0)
        if over != self.over and now - self._logged >= 5.0:
            self._logged = now
            log.warning(
                "%s: RSS %.0f MiB, data held %.0f MiB (soft limit %.0f MiB): %s",
                self.id,
                used / 2**20,
                self.held() / 2**20,
                self.soft / 2**20,
                "refusing data (senders will retry)" if over else "accepting data",
            )
        self.over = over

    def _refusing(self, size: int) -> bool:
        held = self.held()
        if not held:
            return False
        return held + INFLIGHT_FACTOR * size > self.soft or (self.rss_over and held >= self.floor)

    def shutdown(self, timeout: float) -> None:
        self._stop.set()
        self._telemetry.unregister_memory_gate(self)

    def consume(self, batch: Batch) -> None:
        size = batch.nbytes
        if self._refusing(size):
            raise Refused(
                "memory_limit",
                f"the collector is above its memory limit ({self.soft // 2**20} MiB); retry later",
                retryable=True,
                retry_after=max(1.0, self.config.check_interval),
            )
        self._telemetry.pass_through(size)
        try:
            self.next.consume(batch)
        finally:
            self._telemetry.pass_through(-size)


factory = make_factory(
    Kind.PROCESSOR,
    "memory_limiter",
    signals=frozenset(Signal),
    config_model=MemoryLimiterConfig,
    create=MemoryLimiter,
    capabilities=Capabilities(mutates_data=False),
)
