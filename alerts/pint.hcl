# pint v0.87.0 configuration for meshwatch's rule files (alerts/rules/*.yml).
# `make test` runs `pint lint` with it offline (tests/alerts/test_pint.py) and online against
# the suite's Prometheus while the demo's data is in it (tests/demo/test_pint_live.py),
# failing on any warning. Each exception below names the finding and why it stays.

# The dead man's switch is meant to fire all the time: Alertmanager's silence of it going
# away is what pages (docs/alerts.md, "Watchdog").
rule {
  match {
    name = "Watchdog"
  }
  disable = ["alerts/comparison"]
}

# The 30-day SLI and budget recording rules read each service's 5-minute SLI rule, which
# lives in that service's own group. pint flags it because the four per-service groups all
# record the same metric name (with disjoint `service` labels) and a rule in another group
# may be read one evaluation late; over a 30-day window that lag does not change the value.
rule {
  match {
    name = "meshwatch_slo:(sli_error:ratio_period|error_budget_remaining:ratio)"
  }
  disable = ["rule/dependency"]
}

# MeshwatchExporterFailing reads meshwatch_exporter_failed_items_total, which has no series
# until a send fails: its `reason` is the backend's own error class (unavailable, timeout, a
# gRPC status...), so the collector cannot create zero series up front as it does for the
# refused and dropped counters (telemetry.py, known_receiver / known_exporter).
rule {
  match {
    name = "MeshwatchExporterFailing"
  }
  disable = ["promql/series"]
}

# The error series appear only once a service fails: on a healthy demo no request has had
# a 5xx status or an error span yet. The rules handle that (`or ... * 0`); pint is told
# these label values may be absent rather than misspelt.
check "promql/series" {
  ignoreLabelsValue = {
    "http_server_request_duration_seconds_count" = ["http_response_status_code"]
    "traces_span_metrics_calls_total"            = ["status_code"]
  }
}
