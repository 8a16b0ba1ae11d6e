"""A plain ASGI app its author wrapped in contrib's OpenTelemetryMiddleware (one span per request)."""

from bare_asgi import app as bare
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

app = OpenTelemetryMiddleware(bare, exclude_spans=["receive", "send"])
