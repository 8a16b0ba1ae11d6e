"""What the loadbalancing tests check at the sinks behind the backends."""

from __future__ import annotations

from collections.abc import Iterable

from meshwatch.collector.otlp_sink import OtlpSink


def traces_on_several(sinks: Iterable[OtlpSink]) -> set[str]:
    """Hex trace ids whose spans reached more than one sink (each trace must reach one backend)."""
    where: dict[str, set[int]] = {}
    for index, sink in enumerate(sinks):
        with sink.lock:
            ids = {s.trace_id for s in sink.spans}
        for trace_id in ids:
            where.setdefault(trace_id, set()).add(index)
    return {trace_id for trace_id, found in where.items() if len(found) > 1}


def count_across(sinks: list[OtlpSink], trace_ids: list[bytes], spans: int) -> dict[str, int]:
    """Missing and duplicate spans of ``trace_ids`` over all ``sinks`` together (every copy counts)."""
    wanted = {t.hex() for t in trace_ids}
    received = 0
    distinct: set[tuple[str, str]] = set()
    for sink in sinks:
        with sink.lock:
            mine = [(s.trace_id, s.span_id) for s in sink.spans if s.trace_id in wanted]
        received += len(mine)
        distinct.update(mine)
    return {
        "acknowledged_spans": len(trace_ids) * spans,
        "arrived_spans": len(distinct),
        "missing_spans": len(trace_ids) * spans - len(distinct),
        "duplicate_spans": received - len(distinct),
    }
