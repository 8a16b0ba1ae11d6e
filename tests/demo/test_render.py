"""The demo's trace picture: spans labelled the way a reader wants them, drawn to a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshwatch.demo.render import _operation, render_waterfall

PROCESSES = {"p1": {"serviceName": "gateway"}, "p2": {"serviceName": "orders"}}


def _span(sid: str, process: str, name: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    refs = [{"refType": "CHILD_OF", "spanID": parent}] if parent else []
    return {"spanID": sid, "processID": process, "operationName": name, "startTime": 1000, "duration": 500,
            "tags": [], "references": refs, **extra}  # fmt: skip


TRACE = {
    "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
    "processes": PROCESSES,
    "spans": [
        _span("a", "p1", "POST /api/checkout"),
        _span("b", "p1", "POST", "a"),
        _span("c", "p2", "POST /orders", "b", tags=[{"key": "otel.status_code", "value": "ERROR"}]),
        _span("d", "p2", "SELECT /var/lib/demo/orders.db", "c"),
    ],
}


def test_client_spans_name_the_service_they_called_and_database_spans_their_file() -> None:
    spans = {s["spanID"]: s for s in TRACE["spans"]}
    assert _operation(TRACE, spans["b"], [spans["c"]]) == "POST → orders"
    assert _operation(TRACE, spans["d"], []) == "SELECT orders.db"
    assert _operation(TRACE, spans["a"], [spans["b"]]) == "POST /api/checkout"


def test_waterfall_is_a_png(tmp_path: Path) -> None:
    out = render_waterfall(TRACE, tmp_path / "trace.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5_000
