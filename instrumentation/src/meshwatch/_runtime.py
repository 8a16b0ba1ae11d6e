"""Runtime metrics of the process: CPU, memory, threads, garbage collections.

Observable instruments read the numbers only when metrics are collected (every
export interval or scrape), so they cost nothing per request. Names follow the
semantic conventions, as the telemetry contract lists them: ``process.cpu.time``
(``cpu.mode`` user/system), ``process.memory.usage``, ``process.memory.virtual``,
``process.thread.count``, ``cpython.gc.collections`` (``cpython.gc.generation``).
The standard library gives all of them; no psutil needed.
"""

from __future__ import annotations

import gc
import os
import resource
import threading
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

__all__ = ["register_runtime_metrics"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _cpu(_: CallbackOptions) -> Iterable[Observation]:
    times = os.times()
    yield Observation(times.user, {"cpu.mode": "user"})
    yield Observation(times.system, {"cpu.mode": "system"})


def _statm() -> tuple[int, int] | None:
    try:
        with open("/proc/self/statm", "rb") as file:
            size, rss = file.read().split()[:2]
        return int(rss) * _PAGE, int(size) * _PAGE
    except (OSError, ValueError):
        return None


def _memory(_: CallbackOptions) -> Iterable[Observation]:
    statm = _statm()
    if statm is not None:
        yield Observation(statm[0])
    else:  # no /proc (macOS): peak RSS is the best the standard library offers
        yield Observation(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _virtual(_: CallbackOptions) -> Iterable[Observation]:
    statm = _statm()
    if statm is not None:
        yield Observation(statm[1])


def _threads(_: CallbackOptions) -> Iterable[Observation]:
    yield Observation(threading.active_count())


def _gc(_: CallbackOptions) -> Iterable[Observation]:
    for generation, stats in enumerate(gc.get_stats()):
        yield Observation(stats["collections"], {"cpython.gc.generation": generation})


def register_runtime_metrics(meter: Meter) -> None:
    meter.create_observable_counter(
        "process.cpu.time", [_cpu], unit="s", description="CPU seconds used by the process, by mode"
    )
    meter.create_observable_up_down_counter(
        "process.memory.usage", [_memory], unit="By", description="Resident memory of the process"
    )
    meter.create_observable_up_down_counter(
        "process.memory.virtual", [_virtual], unit="By", description="Virtual memory of the process"
    )
    meter.create_observable_up_down_counter(
        "process.thread.count", [_threads], unit="{thread}", description="Threads in the process"
    )
    meter.create_observable_counter(
        "cpython.gc.collections", [_gc], unit="{collection}", description="Garbage collections, by generation"
    )
