"""What several dashboards share: variables, the dashboard frame and navigation links."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DashboardLinkType, Threshold, ThresholdsMode

from .._sdk import prom_variable

__all__ = ["environment_variable", "frame", "service_variable", "thresholds"]

TAG = "meshwatch"


def thresholds(base: str, *steps: tuple[float, str]) -> db.ThresholdsConfig:
    """Absolute colour steps: ``base`` below the first step, then each ``(from value, colour)``.

    Every stat and gauge sets its own: Grafana's default (green, red from 80) fits neither a
    ratio (a 50 % "backends reachable" would show green) nor a count (79 drops, green).
    """
    return (
        db.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color=base), *(Threshold(value=v, color=c) for v, c in steps)])
    )


def environment_variable() -> db.QueryVariable:
    # deployment.environment.name is a resource attribute: on target_info (docs/telemetry-contract.md).
    return prom_variable("environment", "Environment", "label_values(target_info, deployment_environment_name)")


def service_variable(*, multi: bool = True) -> db.QueryVariable:
    """Services (service.name) of the chosen environments: `job` without its namespace prefix."""
    return prom_variable(
        "service",
        "Service",
        'label_values(target_info{deployment_environment_name=~"$environment"}, job)',
        regex="/^(?:.*\\/)?([^\\/]+)$/",
        multi=multi,
        include_all=multi,
    )


def frame(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(f"meshwatch / {title}")
        .uid(f"meshwatch-{uid}")
        .description(description)
        .tags([TAG])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .link(
            db.DashboardLink("meshwatch dashboards")
            .type(DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
