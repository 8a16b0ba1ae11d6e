"""The placement docs/sampling.md prescribes: spanmetrics from every span, Jaeger only the kept traces.

One receiver feeds two traces pipelines; the one with ``tail_sampling`` keeps errors
only, the other derives RED metrics. The request rate the metrics show must be that of
all spans, the traces handed on only the failing ones.
"""

from __future__ import annotations

import os
import time
import urllib.request

from meshwatch.collector.otlp_sink import otlp_sink
from meshwatch.collector.testing import free_port, scrape
from meshwatch.stack.testing import eventually

from ._otlp import span, traces

PLACEMENT = {
    "processors": {
        "tail_sampling": {
            "decision_wait": "1s",
            "policies": [{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}],
        }
    },
    "connectors": {"spanmetrics": {"metrics_flush_interval": "1s"}},
}


def test_red_metrics_count_every_span_while_only_kept_traces_are_exported(collector_factory) -> None:
    port = free_port()
    with otlp_sink() as jaeger:
        collector = collector_factory(
            {
                **PLACEMENT,
                "exporters": {
                    "otlphttp/jaeger": {"endpoint": jaeger.url},
                    "prometheus": {"endpoint": f"127.0.0.1:{port}"},
                },
                "service": {
                    "pipelines": {
                        "traces/metrics": {"receivers": ["otlp"], "exporters": ["spanmetrics"]},
                        "traces": {
                            "receivers": ["otlp"],
                            "processors": ["tail_sampling"],
                            "exporters": ["otlphttp/jaeger"],
                        },
                        "metrics": {"receivers": ["spanmetrics"], "exporters": ["prometheus"]},
                    }
                },
            }
        )
        service = f"payments-{os.urandom(3).hex()}"
        spans = [span("POST /pay", error=i % 10 == 0) for i in range(100)]  # 100 traces, 10 failing
        request = urllib.request.Request(
            f"{collector.http_url}/v1/traces",
            data=traces({"service.name": service}, spans).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

        def calls() -> dict[str, float]:
            found: dict[str, float] = {}
            for (name, labels), value in scrape(f"http://127.0.0.1:{port}/metrics").items():
                if name == "traces_span_metrics_calls_total" and dict(labels).get("job") == service:
                    code = dict(labels)["status_code"]
                    found[code] = found.get(code, 0) + value
            return found

        by_status = eventually(lambda: sum(calls().values()) == 100 and calls(), timeout=30, what="spanmetrics")
        assert by_status == {"STATUS_CODE_ERROR": 10, "STATUS_CODE_UNSET": 90}
        eventually(lambda: len(jaeger.spans) == 10, timeout=30, what="the failing traces exported")
        time.sleep(1.5)  # a decision_wait more: nothing else arrives
        assert len(jaeger.spans) == 10 and all(s.error for s in jaeger.spans)
