"""The counting OTLP sink (it lives in the collector distribution, shared by the collector's tests)."""

from meshwatch.collector.otlp_sink import LogSeen, OtlpSink, PointSeen, SpanSeen, otlp_sink, sink_env

__all__ = ["LogSeen", "OtlpSink", "PointSeen", "SpanSeen", "otlp_sink", "sink_env"]
