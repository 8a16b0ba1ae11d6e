"""The receiver's fast id check gives exactly the answers of the span-by-span check (pure unit tests).

``spans_all_valid`` vouches for a request from its bytes with one regular expression; when it
does not, ``remove_invalid`` walks the spans. Both must agree on every kind of span.
"""

from __future__ import annotations

import itertools

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshwatch.collector.receivers._validate import remove_invalid, spans_all_valid
from meshwatch.collector.signals import Signal

TRACE, SPAN = b"\x01" * 16, b"\x02" * 8
SPANS = {
    "valid": {},
    "valid with parent": {"parent_span_id": b"\x03" * 8},
    "valid, all-zero parent": {"parent_span_id": bytes(8)},
    "valid, ids that look like tags": {"trace_id": b"\x12\x1c" * 8, "span_id": b"\x0a\x10" * 4},
    "zero trace id": {"trace_id": bytes(16)},
    "zero span id": {"span_id": bytes(8)},
    "no trace id": {"trace_id": b""},
    "short trace id": {"trace_id": b"\x01" * 15},
    "long span id": {"span_id": b"\x02" * 9},
    "short parent": {"parent_span_id": b"\x03" * 7},
    "valid link": {"link": (TRACE, SPAN)},
    "bad link": {"link": (b"\x01" * 3, SPAN)},
}


def _request(kinds: list[str], scopes: int = 1) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "checkout"
    for _ in range(scopes):
        scope = resource.scope_spans.add()
        scope.scope.name = "test"
        for kind in kinds:
            fields = dict(SPANS[kind])
            span = scope.spans.add(
                name=kind, trace_id=fields.pop("trace_id", TRACE), span_id=fields.pop("span_id", SPAN)
            )
            span.attributes.add(key="k").value.int_value = 7
            if "link" in fields:
                trace_id, span_id = fields.pop("link")
                span.links.add(trace_id=trace_id, span_id=span_id)
            if fields:
                span.parent_span_id = fields.pop("parent_span_id")
    return request


CASES = [[kind] for kind in SPANS] + [list(pair) for pair in itertools.combinations(SPANS, 2)]


@pytest.mark.parametrize("kinds", CASES, ids=[" + ".join(kinds) for kinds in CASES])
def test_the_fast_path_answers_as_the_span_by_span_check(kinds: list[str]) -> None:
    raw = _request(kinds, scopes=2).SerializeToString()
    slow, fast = ExportTraceServiceRequest.FromString(raw), ExportTraceServiceRequest.FromString(raw)
    assert remove_invalid(Signal.TRACES, fast, raw) == remove_invalid(Signal.TRACES, slow)
    assert fast == slow  # the same spans removed


def test_the_fast_path_vouches_for_valid_spans_only() -> None:
    """Positive control: a request of valid spans is vouched for; one bad id or a link is not."""
    assert spans_all_valid(_request(["valid", "valid with parent", "valid, all-zero parent"] * 50).SerializeToString())
    assert spans_all_valid(ExportTraceServiceRequest().SerializeToString())
    for kind in ("zero trace id", "zero span id", "short trace id", "long span id", "short parent", "valid link"):
        assert not spans_all_valid(_request(["valid"] * 20 + [kind]).SerializeToString()), kind
