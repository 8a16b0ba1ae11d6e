"""The six meshwatch dashboards, one module each; ``ALL`` lists their builders in menu order."""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.builders.dashboard import Dashboard

from . import dependencies, endpoints, logs, overview, pipeline, slo

__all__ = ["ALL"]

#: file stem → builder
ALL: dict[str, Callable[[], Dashboard]] = {
    "service-overview": overview.build,
    "endpoint-detail": endpoints.build,
    "service-dependencies": dependencies.build,
    "logs": logs.build,
    "pipeline-health": pipeline.build,
    "slo": slo.build,
}
