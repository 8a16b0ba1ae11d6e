"""memory_limiter: refuses retryably above its soft limit, passes data below it (real RSS of this process)."""

from __future__ import annotations

import pytest

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings, Refused
from meshwatch.collector.processors.memory_limiter import MemoryLimiter, MemoryLimiterConfig, rss_bytes
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry


class _Host:
    def __init__(self) -> None:
        self._telemetry = Telemetry()

    def telemetry(self) -> Telemetry:
        return self._telemetry


class _Sink:
    def __init__(self) -> None:
        self.batches = 0

    def consume(self, batch: Batch) -> None:
        self.batches += 1


def _limiter(limit_mib: int, spike_mib: int, sink: _Sink) -> tuple[MemoryLimiter, _Host]:
    config = MemoryLimiterConfig(limit_mib=limit_mib, spike_limit_mib=spike_mib, check_interval="50ms")
    limiter = MemoryLimiter(CreateSettings(ComponentId("memory_limiter"), Signal.TRACES), config, sink)
    host = _Host()
    limiter.start(host)
    return limiter, host


def test_refuses_above_the_soft_limit_and_reports_its_limit() -> None:
    used_mib = rss_bytes() // 2**20
    sink = _Sink()
    limiter, host = _limiter(used_mib + 10, 20, sink)  # soft limit 10 MiB below what this process uses
    try:
        with pytest.raises(Refused) as refused:
            limiter.consume(Batch.from_bytes(Signal.TRACES, b""))
        assert refused.value.reason == "memory_limit" and refused.value.retryable
        assert sink.batches == 0
        gauge = host.telemetry().registry.get_sample_value("meshwatch_collector_memory_limit_bytes")
        assert gauge == (used_mib + 10) * 2**20
    finally:
        limiter.shutdown(1)


def test_passes_data_below_the_soft_limit() -> None:
    sink = _Sink()
    limiter, _ = _limiter(rss_bytes() // 2**20 + 500, 100, sink)
    try:
        limiter.consume(Batch.from_bytes(Signal.TRACES, b""))
        assert sink.batches == 1
    finally:
        limiter.shutdown(1)


def test_config_needs_a_limit_and_a_smaller_spike() -> None:
    with pytest.raises(ValueError, match="set limit_mib"):
        MemoryLimiterConfig()
    with pytest.raises(ValueError, match="spike_limit_mib must be smaller"):
        MemoryLimiterConfig(limit_mib=100, spike_limit_mib=100)
    assert MemoryLimiterConfig(limit_mib=100).limits() == (100 * 2**20, 80 * 2**20)
