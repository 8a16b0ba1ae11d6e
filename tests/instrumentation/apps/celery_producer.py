"""Test producer for "tasks": sends two tasks inside a span and prints that span's trace id."""

import json

from opentelemetry import trace
from tasks import add, fail

tracer = trace.get_tracer("producer")
with tracer.start_as_current_span("enqueue") as span:
    add.delay(2, 3)
    fail.delay(7)
    print(json.dumps({"trace_id": format(span.get_span_context().trace_id, "032x")}), flush=True)
