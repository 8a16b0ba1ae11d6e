"""memory_limiter: refuses retryably while the collector holds too much, passes data otherwise (real RSS)."""

from __future__ import annotations

import pytest

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import ComponentId, CreateSettings, Refused
from meshwatch.collector.processors.memory_limiter import MemoryLimiter, MemoryLimiterConfig, rss_bytes
from meshwatch.collector.signals import Signal
from meshwatch.collector.telemetry import Telemetry


class _Host:
    """What the limiter is started with (it reads nothing of it), and the self-telemetry it was created with."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry


class _Sink:
    def __init__(self) -> None:
        self.batches = 0

    def consume(self, batch: Batch) -> None:
        self.batches += 1


def _limiter(limit_mib: int, spike_mib: int, sink: _Sink) -> tuple[MemoryLimiter, _Host]:
    config = MemoryLimiterConfig(limit_mib=limit_mib, spike_limit_mib=spike_mib, check_interval="50ms")
    telemetry = Telemetry()
    limiter = MemoryLimiter(CreateSettings(ComponentId("memory_limiter"), Signal.TRACES, telemetry), config, sink)
    host = _Host(telemetry)
    limiter.start(host)
    return limiter, host


def test_refuses_above_the_soft_limit_while_data_is_held_and_reports_its_limit() -> None:
    # A limit at half this process's RSS: still over it after a gc + malloc_trim (which move a long
    # pytest process's RSS by tens of MiB; "RSS + 10 MiB" made this test depend on them).
    limit_mib = max(rss_bytes() // 2**20 // 2, 40)
    sink = _Sink()
    limiter, host = _limiter(limit_mib, 20, sink)
    try:
        held = {"bytes": limiter.soft // 2}  # under the soft limit by itself: refused for the RSS
        host.telemetry.register_held("exporter test", lambda: held["bytes"])
        limiter.check()
        assert limiter.rss_over
        with pytest.raises(Refused) as refused:
            limiter.consume(Batch.from_bytes(Signal.TRACES, b""))
        assert refused.value.reason == "memory_limit" and refused.value.retryable
        assert sink.batches == 0
        gauge = host.telemetry.registry.get_sample_value("meshwatch_collector_memory_limit_bytes")
        assert gauge == limit_mib * 2**20
        held_gauge = host.telemetry.registry.get_sample_value(
            "meshwatch_collector_held_bytes", {"component": "exporter test"}
        )
        assert held_gauge == limiter.soft // 2

        # The exporter lets go of its data: the RSS is still over (nothing gives it back to
        # the kernel here), but refusing could not lower it, so data is accepted again.
        held["bytes"] = 0
        limiter.check()
        assert limiter.rss_over
        limiter.consume(Batch.from_bytes(Signal.TRACES, b""))
        assert sink.batches == 1
    finally:
        limiter.shutdown(1)


def test_refuses_when_what_is_held_passes_the_soft_limit_whatever_the_rss() -> None:
    sink = _Sink()
    limiter, host = _limiter(rss_bytes() // 2**20 + 1000, 100, sink)  # RSS far under the soft limit
    try:
        host.telemetry.register_held("exporter test", lambda: limiter.soft - 20 * 2**20)
        limiter.check()
        assert not limiter.rss_over
        limiter.consume(Batch.from_bytes(Signal.TRACES, b"\n\x00"))  # 20 MiB under the soft limit: a tiny batch fits
        big = Batch.from_bytes(Signal.TRACES, b"")
        big._raw = b"\x00" * (8 * 2**20)  # counted 3 times (bytes and decoded message): 24 MiB > 20 MiB
        with pytest.raises(Refused):
            limiter.consume(big)
        assert sink.batches == 1
    finally:
        limiter.shutdown(1)


def test_batches_in_flight_count_as_held() -> None:
    import threading

    entered, release = threading.Event(), threading.Event()

    class _Slow(_Sink):
        def consume(self, batch: Batch) -> None:
            entered.set()
            release.wait(5)
            super().consume(batch)

    sink = _Slow()
    # Soft limit 10 MiB: the 12 MiB counted for the batch in flight is over it whatever the RSS
    # (the RSS of a long pytest process moves with every gc and malloc_trim: a test on it was flaky).
    limiter, _host = _limiter(30, 20, sink)
    try:
        big = Batch.from_bytes(Signal.TRACES, b"")
        big._raw = b"\x00" * (4 * 2**20)
        worker = threading.Thread(target=limiter.consume, args=(big,))
        worker.start()
        assert entered.wait(5)
        assert limiter.held() == 3 * 4 * 2**20  # counted at 3 times its bytes, over the soft limit
        with pytest.raises(Refused):
            limiter.consume(Batch.from_bytes(Signal.TRACES, b""))
        release.set()
        worker.join(5)
        assert limiter.held() == 0
        limiter.consume(Batch.from_bytes(Signal.TRACES, b""))
        assert sink.batches == 2
    finally:
        release.set()
        limiter.shutdown(1)


def test_reclaim_gives_memory_back_on_glibc() -> None:
    import platform

    from meshwatch.collector.processors import memory_limiter

    if platform.libc_ver()[0] == "glibc":
        assert memory_limiter._TRIM is not None
    junk = [bytes(100_000) for _ in range(1000)]  # ~100 MB in large blocks, then freed
    before = rss_bytes()
    del junk
    memory_limiter.reclaim()
    assert rss_bytes() < before - 50 * 2**20


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


def test_requests_being_decoded_are_admitted_by_their_size_on_the_wire() -> None:
    """The receivers reserve a request's bytes before decoding it (``Telemetry.reserve_decoding``):
    concurrent large requests see each other before any of them is decoded."""
    limiter, host = _limiter(4096, 1024, _Sink())  # soft limit 3 GiB: the RSS plays no part
    telemetry = host.telemetry
    request = limiter.soft // 8  # counted at 3 times its size while decoded: two fit, a third does not
    try:
        assert telemetry.reserve_decoding(request)
        assert telemetry.reserve_decoding(request)
        assert not telemetry.reserve_decoding(request)
        assert telemetry.memory_refuses(request) and not telemetry.memory_refuses(0)
        telemetry.release_decoding(request)
        assert telemetry.reserve_decoding(request)  # room again once one is decoded
        telemetry.release_decoding(request)
        telemetry.release_decoding(request)
        assert telemetry.decoding_bytes == 0
    finally:
        limiter.shutdown(1)
    assert telemetry.reserve_decoding(10 * limiter.soft)  # no limiter, no gate
