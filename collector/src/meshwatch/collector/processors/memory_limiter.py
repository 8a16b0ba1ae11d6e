"""The ``memory_limiter`` processor: refuse data (retryably) while the process uses too much memory.

Every ``check_interval`` the resident set size is read from ``/proc/self/statm``.
Above the soft limit (``limit_mib - spike_limit_mib``) batches are refused with
``Refused("memory_limit", retryable=True)``: gRPC RESOURCE_EXHAUSTED with RetryInfo,
HTTP 429 with Retry-After, so senders keep the data and come back; the refusal is
counted under ``meshwatch_receiver_refused_items_total{reason="memory_limit"}``. Above
the hard limit a garbage collection is forced too. Put it first in every pipeline.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..batch import Batch
from ..component import ComponentId, Consumer, CreateSettings, Host, Kind, Refused
from ..config import Duration
from ..signals import Signal

__all__ = ["factory", "MemoryLimiterConfig", "rss_bytes"]

log = logging.getLogger("meshwatch.collector.memory_limiter")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _total_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * _PAGE


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
    mutates_data = False

    def __init__(self, settings: CreateSettings, config: MemoryLimiterConfig, next_consumer: Consumer) -> None:
        self.id: ComponentId = settings.id
        self.config = config
        self.next = next_consumer
        self.hard, self.soft = config.limits()
        self.over = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, host: Host) -> None:
        host.telemetry().memory_limit.set(self.hard)
        self.check()
        self._thread = threading.Thread(target=self._loop, name=f"memory-limiter {self.id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.check_interval):
            self.check()

    def check(self) -> None:
        used = rss_bytes()
        if used >= self.hard:
            gc.collect()
            used = rss_bytes()
        over = used >= self.soft
        if over != self.over:
            log.warning(
                "%s: memory use %.0f MiB is %s the soft limit of %.0f MiB; %s",
                self.id,
                used / 2**20,
                "above" if over else "back under",
                self.soft / 2**20,
                "refusing data (senders will retry)" if over else "accepting data again",
            )
        self.over = over

    def shutdown(self, timeout: float) -> None:
        self._stop.set()

    def consume(self, batch: Batch) -> None:
        if self.over:
            raise Refused(
                "memory_limit",
                f"the collector is above its memory limit ({self.soft // 2**20} MiB); retry later",
                retryable=True,
                retry_after=max(1.0, self.config.check_interval),
            )
        self.next.consume(batch)


class _Factory:
    type = "memory_limiter"
    kind = Kind.PROCESSOR
    signals = frozenset(Signal)
    config_model = MemoryLimiterConfig

    def create(self, settings: CreateSettings, config: MemoryLimiterConfig, next_consumer: Any) -> MemoryLimiter:
        return MemoryLimiter(settings, config, next_consumer)


factory = _Factory()
