"""The three datasources every dashboard uses, with fixed uids, and their provisioning files.

Fixed uids are what lets a panel say ``{"uid": "meshwatch-prometheus"}`` and mean the same
server in every Grafana that loads the provisioning or receives ``meshwatch-dashboards push``.
The links between signals live here too: Prometheus exemplars open the trace in Jaeger,
Jaeger spans open their logs in Elasticsearch, and a log's ``trace.id`` opens its trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_URLS",
    "ELASTICSEARCH_UID",
    "JAEGER_UID",
    "LOG_INDEX",
    "PROMETHEUS_UID",
    "Urls",
    "datasources",
    "datasource_provisioning",
    "dashboard_provider",
]

PROMETHEUS_UID = "meshwatch-prometheus"
JAEGER_UID = "meshwatch-jaeger"
ELASTICSEARCH_UID = "meshwatch-elasticsearch"
#: docs/telemetry-contract.md: daily indices from the `meshwatch-logs` template.
LOG_INDEX = "meshwatch-logs-*"
FOLDER = "meshwatch"
FOLDER_UID = "meshwatch"

#: Addresses inside the docker-compose network (the provisioning files are for that Grafana).
DEFAULT_URLS = {
    "prometheus": "http://prometheus:9090",
    "jaeger": "http://jaeger:16686",
    "elasticsearch": "http://elasticsearch:9200",
}


@dataclass(frozen=True)
class Urls:
    prometheus: str = DEFAULT_URLS["prometheus"]
    jaeger: str = DEFAULT_URLS["jaeger"]
    elasticsearch: str = DEFAULT_URLS["elasticsearch"]


def datasources(urls: Urls | None = None) -> list[dict[str, Any]]:
    """Datasource definitions as Grafana's provisioning and its HTTP API both take them."""
    u = urls or Urls()
    return [
        {
            "name": "Prometheus",
            "type": "prometheus",
            "uid": PROMETHEUS_UID,
            "access": "proxy",
            "url": u.prometheus,
            "isDefault": True,
            "editable": False,
            "jsonData": {
                "httpMethod": "POST",
                "prometheusType": "Prometheus",
                "timeInterval": "15s",
                # Exemplars carry the trace id (OpenMetrics `trace_id`): link them to Jaeger.
                "exemplarTraceIdDestinations": [{"name": "trace_id", "datasourceUid": JAEGER_UID}],
            },
        },
        {
            "name": "Jaeger",
            "type": "jaeger",
            "uid": JAEGER_UID,
            "access": "proxy",
            "url": u.jaeger,
            "editable": False,
            "jsonData": {
                # From a span to the logs written while it ran: same trace id in Elasticsearch.
                "tracesToLogsV2": {
                    "datasourceUid": ELASTICSEARCH_UID,
                    "spanStartTimeShift": "-5m",
                    "spanEndTimeShift": "5m",
                    "filterByTraceID": False,
                    "filterBySpanID": False,
                    "customQuery": True,
                    "query": 'trace.id:"${__span.traceId}"',
                },
                "nodeGraph": {"enabled": True},
            },
        },
        {
            "name": "Elasticsearch",
            "type": "elasticsearch",
            "uid": ELASTICSEARCH_UID,
            "access": "proxy",
            "url": u.elasticsearch,
            "editable": False,
            "jsonData": {
                "index": LOG_INDEX,
                "timeField": "@timestamp",
                "logMessageField": "message",
                "logLevelField": "log.level",
                "maxConcurrentShardRequests": 5,
                # A log's trace.id opens the trace in Jaeger.
                "dataLinks": [{"field": "trace.id", "url": "${__value.raw}", "datasourceUid": JAEGER_UID}],
            },
        },
    ]


def _escape_env(value: Any) -> Any:
    """Grafana expands ``$VAR`` / ``${VAR}`` in provisioning files; ``$$`` keeps a literal ``$``."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape_env(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape_env(v) for k, v in value.items()}
    return value


def datasource_provisioning(urls: Urls | None = None) -> dict[str, Any]:
    """Grafana's datasource provisioning file (apiVersion 1); ``$`` in links escaped as ``$$``."""
    return {
        "apiVersion": 1,
        "datasources": [_escape_env({**ds, "orgId": 1, "version": 1}) for ds in datasources(urls)],
    }


def dashboard_provider(path: str = "/var/lib/grafana/dashboards/meshwatch") -> dict[str, Any]:
    """Grafana's dashboard provisioning file: load dashboards/json/ into the `meshwatch` folder."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "meshwatch",
                "orgId": 1,
                "folder": FOLDER,
                "folderUid": FOLDER_UID,
                "type": "file",
                "disableDeletion": False,
                "updateIntervalSeconds": 30,
                "allowUiUpdates": False,
                "options": {"path": path, "foldersFromFilesStructure": False},
            }
        ],
    }
