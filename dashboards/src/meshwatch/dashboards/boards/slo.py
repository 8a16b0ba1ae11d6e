"""SLOs and error budgets: SLI, burn rates and budget remaining, from the recording rules of alerts/."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as db

from .._sdk import PROM, prom, prom_variable
from .common import frame, thresholds

#: The SLI and the objective in the theme's text colour: each SLO has its own objective, so
#: no fixed threshold can say "good" or "bad" for an SLI; Grafana's default (green, red from
#: 80) would paint a breached 93 % SLI green. The budget panel carries the colour instead.
NEUTRAL = thresholds("text")
#: Budget remaining: overspent is red, the last quarter orange, the rest green.
BUDGET = thresholds("red", (0, "orange"), (0.25, "green"))

S = 'service=~"$service", slo=~"$slo"'
WINDOWS = ("5m", "1h", "6h", "1d", "3d")


def _ts(title: str, description: str, unit: str, *targets: object, w: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(PROM).unit(unit).span(w).height(8)
    for target in targets:
        panel = panel.with_target(target)  # type: ignore[arg-type]
    return panel


def build() -> db.Dashboard:
    burn = [
        prom(
            f"meshwatch_slo:sli_error:ratio_rate{w}{{{S}}} / meshwatch_slo:error_budget:ratio{{{S}}}",
            f"{{{{service}}}} {{{{slo}}}} {w}",
            ref=chr(ord("A") + i),
        )
        for i, w in enumerate(WINDOWS)
    ]
    return (
        frame(
            "slo",
            "SLOs and error budgets",
            "Per service SLO (alerts/slos.yaml): the SLI, how fast the error budget burns, and how much is left.",
        )
        .with_variable(prom_variable("service", "Service", "label_values(meshwatch_slo:objective:ratio, service)"))
        .with_variable(
            prom_variable("slo", "SLO", 'label_values(meshwatch_slo:objective:ratio{service=~"$service"}, slo)')
        )
        .with_panel(
            stat.Panel()
            .title("SLI over the SLO period")
            .description("Share of good requests over the SLO period (e.g. 30 days), against the objective.")
            .datasource(PROM)
            .unit("percentunit")
            .decimals(3)
            .thresholds(NEUTRAL)
            .span(8)
            .height(6)
            .with_target(prom(f"1 - meshwatch_slo:sli_error:ratio_period{{{S}}}", "{{service}} {{slo}}", instant=True))
        )
        .with_panel(
            stat.Panel()
            .title("Objective")
            .datasource(PROM)
            .unit("percentunit")
            .decimals(3)
            .thresholds(NEUTRAL)
            .span(8)
            .height(6)
            .with_target(prom(f"meshwatch_slo:objective:ratio{{{S}}}", "{{service}} {{slo}}", instant=True))
        )
        .with_panel(
            bargauge.Panel()
            .title("Error budget remaining")
            .description("1 = untouched, 0 = spent, below 0 = overspent, over the SLO period.")
            .datasource(PROM)
            .unit("percentunit")
            .min(-1)
            .max(1)
            .thresholds(BUDGET)
            .span(8)
            .height(6)
            .with_target(
                prom(f"meshwatch_slo:error_budget_remaining:ratio{{{S}}}", "{{service}} {{slo}}", instant=True)
            )
        )
        .with_panel(
            _ts(
                "SLI (5m)",
                "Share of good requests over 5-minute windows.",
                "percentunit",
                prom(f"1 - meshwatch_slo:sli_error:ratio_rate5m{{{S}}}", "{{service}} {{slo}}"),
            )
        )
        .with_panel(
            _ts(
                "Error budget remaining over time",
                "How the remaining budget of the SLO period evolves.",
                "percentunit",
                prom(f"meshwatch_slo:error_budget_remaining:ratio{{{S}}}", "{{service}} {{slo}}"),
            )
        )
        .with_panel(
            _ts(
                "Burn rate by window",
                "Error ratio over each window divided by the error budget: 1 spends the budget exactly over the "
                "period; the alerts page at 14.4 (1h and 5m) and 6 (6h and 30m), open a ticket at 3 and 1.",
                "short",
                *burn,
                w=24,
            )
        )
    )
