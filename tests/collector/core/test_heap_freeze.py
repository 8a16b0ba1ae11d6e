"""A running collector keeps its start-up heap out of full garbage collections (``_heap.settle_heap``).

A full collection walks every tracked object; before the freeze the start-up heap (grpc,
protobuf, config, graph: ~50,000 objects) made one take 16–19 ms, a sequential sender's
slowest request (``bench/collector/sequential_cost.py --gc-trace``). The collector runs
with a ``sitecustomize`` that reports, at exit, how many objects are frozen and how many a
full collection still walks, and whether the gRPC receiver was already serving when the
freeze (and the full collection before it, tens of ms holding the GIL) ran.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import grpc

from meshwatch.collector.testing import start_collector

from ..components._otlp import span, traces

EXPORT_TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

_REPORT = """
import atexit, gc, json, os, threading

_serving_at_freeze = []
_freeze = gc.freeze


def _recording_freeze():
    # gRPC's threaded server starts its polling thread (named "..._serve") when the receiver opens
    _serving_at_freeze.extend(t.name for t in threading.enumerate() if "_serve" in t.name)
    _freeze()


gc.freeze = _recording_freeze


def _report():
    with open(os.environ["HEAP_REPORT"], "w") as out:
        report = {"frozen": gc.get_freeze_count(), "walked": len(gc.get_objects()), "serving": _serving_at_freeze}
        json.dump(report, out)


atexit.register(_report)
"""


def test_the_start_up_heap_is_frozen_while_serving(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_REPORT)
    report = tmp_path / "heap.json"
    config = {
        "exporters": {"debug": {}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}},
    }
    collector = start_collector(
        config, tmp_path / "collector", env={"PYTHONPATH": str(hook), "HEAP_REPORT": str(report)}
    )
    try:
        with grpc.insecure_channel(collector.grpc_endpoint) as channel:
            export = channel.unary_unary(EXPORT_TRACES)
            for _ in range(20):  # serving allocates; what it keeps is collected as usual
                request = traces({"service.name": "heap"}, [span() for _ in range(10)])
                export(request.SerializeToString(), timeout=10)
    finally:
        collector.stop(timeout=30)
    heap = json.loads(report.read_text())
    print(f"\nfrozen {heap['frozen']} start-up objects; a full collection walks {heap['walked']}")
    assert heap["frozen"] > 20_000
    assert heap["walked"] < heap["frozen"] / 2
    assert heap["serving"] == []  # frozen before the receivers opened: no request waits for it
    assert gc.get_freeze_count() == 0  # the test process itself is untouched
