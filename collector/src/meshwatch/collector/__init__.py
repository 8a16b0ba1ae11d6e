"""meshwatch-collector: OTLP in; traces to Jaeger, metrics to Prometheus, logs to Elasticsearch."""

__version__ = "0.1.0"
