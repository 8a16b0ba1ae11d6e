"""``meshwatch._extract``: the shortcut for requests without trace headers gives what the propagators give."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshwatch._extract import Extractor

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def textmap() -> Iterator[None]:
    original = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    yield
    propagate.set_global_textmap(original)


@pytest.mark.usefixtures("textmap")
@pytest.mark.parametrize(
    "headers",
    [
        {"host": "a", "user-agent": "b"},
        {"traceparent": TRACEPARENT},
        {"baggage": "user=alice"},
        {"traceparent": TRACEPARENT, "baggage": "user=alice", "tracestate": "k=v"},
        {"traceparent": "garbage"},
    ],
)
def test_same_parent_and_baggage_as_propagate_extract(headers: dict[str, str]) -> None:
    ours = Extractor(("traceparent", "tracestate", "baggage")).extract(headers)
    theirs = propagate.extract(headers)
    assert trace.get_current_span(ours).get_span_context() == trace.get_current_span(theirs).get_span_context()
    assert baggage.get_all(ours) == baggage.get_all(theirs)


class _Custom(TextMapPropagator):
    """A propagator reading a header the shortcut does not know: it must still be run."""

    def extract(self, carrier, context=None, getter=None):  # type: ignore[no-untyped-def,override]
        return baggage.set_baggage("seen", carrier.get("x-custom", ""), context or Context())

    def inject(self, carrier, context=None, setter=None):  # type: ignore[no-untyped-def,override]
        pass

    @property
    def fields(self) -> set[str]:
        return {"x-custom"}


def test_other_propagators_are_always_run() -> None:
    original = propagate.get_global_textmap()
    extractor = Extractor(("traceparent", "tracestate", "baggage"))
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), _Custom()]))
    try:
        assert baggage.get_baggage("seen", extractor.extract({"x-custom": "yes"})) == "yes"
    finally:
        propagate.set_global_textmap(original)
