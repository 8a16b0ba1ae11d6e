"""Loaded into a benchmarked collector (``PYTHONPATH``): times garbage collections and request stages.

Set ``MESHWATCH_GC_TRACE=/path.json``; at exit the file holds, each as ``[start, seconds]``
lists on ``time.perf_counter`` (CLOCK_MONOTONIC on Linux, the clock the benchmark's client
times its requests with, so a slow request can be matched to what happened inside):

* ``pauses``: every garbage collection, ``[generation, start, seconds]``;
* ``handler``: every ``Ingest.protobuf`` call (decode, pipeline, queue put, its fsync);
* ``fdatasync``: every ``os.fdatasync`` (the fsync the acknowledgement waits for).

``MESHWATCH_BENCH_SWITCH_INTERVAL`` (seconds) sets ``sys.setswitchinterval`` (an experiment).
Also whether the collector froze its start-up objects (``gc.get_freeze_count``).
"""

import atexit
import gc
import json
import os
import time

if os.environ.get("MESHWATCH_BENCH_SWITCH_INTERVAL"):  # an experiment: how often the GIL is handed over
    import sys

    sys.setswitchinterval(float(os.environ["MESHWATCH_BENCH_SWITCH_INTERVAL"]))

_path = os.environ.get("MESHWATCH_GC_TRACE")
if _path:
    _clock = time.perf_counter
    _pauses: list[list[float]] = []
    _handler: list[list[float]] = []
    _fsyncs: list[list[float]] = []
    _started = [0.0]

    def _callback(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = _clock()
        else:
            _pauses.append([info["generation"], _started[0], _clock() - _started[0]])

    gc.callbacks.append(_callback)

    def _timed(function, into):
        def timed(*args, **kwargs):
            start = _clock()
            try:
                return function(*args, **kwargs)
            finally:
                into.append([start, _clock() - start])

        return timed

    os.fdatasync = _timed(os.fdatasync, _fsyncs)
    from meshwatch.collector.receivers._ingest import Ingest

    Ingest.protobuf = _timed(Ingest.protobuf, _handler)

    def _dump() -> None:
        with open(_path, "w") as out:
            json.dump(
                {
                    "pauses": _pauses,
                    "handler": _handler,
                    "fdatasync": _fsyncs,
                    "freeze_count": gc.get_freeze_count(),
                    "threshold": gc.get_threshold(),
                },
                out,
            )

    atexit.register(_dump)
