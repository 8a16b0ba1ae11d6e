"""meshwatch's Prometheus recording and alerting rules and Alertmanager configuration.

Rules are generated in code (``meshwatch-alerts build``) from data in ``rules`` and the
SLO spec (``alerts/slos.yaml``); the generated YAML is committed and tested with promtool.
"""

from .alertmanager import Receivers, Timing, alertmanager_config
from .build import all_alerts, render_all, rule_files
from .rules import Alert, Params
from .spec import SLOSpec, SpecError, load_spec

__all__ = [
    "Alert",
    "Params",
    "Receivers",
    "SLOSpec",
    "SpecError",
    "Timing",
    "alertmanager_config",
    "all_alerts",
    "load_spec",
    "render_all",
    "rule_files",
]
