"""The Alertmanager configuration: who hears about which alert, and what is held back.

Rendered from code so the receiver URLs can be set per deployment (the demo points them at
its on-call webhook service) while the routing stays the one that is tested. The committed
``alerts/alertmanager.yml`` is this function's output with the default URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_URLS", "Receivers", "Timing", "alertmanager_config", "INHIBIT_EQUAL"]

#: Default webhook URLs: the meshwatch on-call service (meshwatch-oncall) on its usual port.
DEFAULT_URLS = {
    "oncall": "http://127.0.0.1:9095/webhook/oncall",
    "ticket": "http://127.0.0.1:9095/webhook/ticket",
    "heartbeat": "http://127.0.0.1:9095/webhook/heartbeat",
}

#: A warning is held back while a critical of the same alert family fires for the same thing.
INHIBIT_EQUAL = ["alertname", "service", "slo", "exporter", "signal"]


@dataclass(frozen=True)
class Receivers:
    oncall: str = DEFAULT_URLS["oncall"]
    ticket: str = DEFAULT_URLS["ticket"]
    heartbeat: str = DEFAULT_URLS["heartbeat"]


@dataclass(frozen=True)
class Timing:
    """Notification timing; production defaults. Tests shorten them."""

    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    heartbeat_repeat_interval: str = "1m"
    resolve_timeout: str = "5m"


def _webhook(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "webhook_configs": [{"url": url, "send_resolved": True, "max_alerts": 0}]}


def alertmanager_config(receivers: Receivers | None = None, timing: Timing | None = None) -> dict[str, Any]:
    """The whole Alertmanager config as a dict (dump it as YAML or JSON)."""
    r = receivers or Receivers()
    t = timing or Timing()
    return {
        "global": {"resolve_timeout": t.resolve_timeout},
        "route": {
            # Anything unmatched (a new severity, a typo) still reaches a human, as a ticket.
            "receiver": "ticket",
            "group_by": ["alertname", "service"],
            "group_wait": t.group_wait,
            "group_interval": t.group_interval,
            "repeat_interval": t.repeat_interval,
            "routes": [
                {
                    "receiver": "heartbeat",
                    "matchers": ['alertname="Watchdog"'],
                    "group_wait": "0s",
                    "group_interval": t.heartbeat_repeat_interval,
                    "repeat_interval": t.heartbeat_repeat_interval,
                },
                {"receiver": "oncall", "matchers": ['severity="critical"']},
                {"receiver": "ticket", "matchers": ['severity="warning"']},
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": list(INHIBIT_EQUAL),
            }
        ],
        "receivers": [
            _webhook("oncall", r.oncall),
            _webhook("ticket", r.ticket),
            _webhook("heartbeat", r.heartbeat),
        ],
    }
