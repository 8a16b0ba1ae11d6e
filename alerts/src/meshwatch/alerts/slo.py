"""SLO rules from the spec: SLI error ratios per window, error budget, and multi-window burn-rate alerts.

The method is the Google SRE workbook's ("Alerting on SLOs", multiwindow, multi-burn-rate),
as Sloth and Pyrra generate it: an alert fires when the error ratio over a long window
*and* over a short one both exceed ``burn rate × error budget``. The long window makes it
significant, the short one makes it reset quickly once the problem is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rules import HTTP_BUCKET, HTTP_COUNT, Alert, Params, Record, RuleGroup
from .spec import ServiceSLO, SLOSpec

__all__ = ["BURN_WINDOWS", "BurnWindow", "SLI_WINDOWS", "slo_groups", "sli_error_ratio"]


@dataclass(frozen=True)
class BurnWindow:
    severity: str  # critical pages, warning opens a ticket
    long: str
    short: str
    factor: float
    for_: str


#: (long, short, burn rate) pairs: page at 14.4× (2% of a 30-day budget in 1h) and 6× (5% in 6h),
#: ticket at 3× (10% in 1d) and 1× (10% in 3d). ``for`` as Pyrra sets it.
BURN_WINDOWS = (
    BurnWindow("critical", "1h", "5m", 14.4, "2m"),
    BurnWindow("critical", "6h", "30m", 6, "15m"),
    BurnWindow("warning", "1d", "2h", 3, "1h"),
    BurnWindow("warning", "3d", "6h", 1, "3h"),
)

#: Every window an SLI error ratio is recorded over.
SLI_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

_HOURS = {"m": 1 / 60, "h": 1, "d": 24, "w": 24 * 7}


def _hours(duration: str) -> float:
    return int(duration[:-1]) * _HOURS[duration[-1]]


def _human_hours(hours: float) -> str:
    days, rest = divmod(round(hours), 24)
    return f"{days}d {rest}h" if days and rest else f"{days}d" if days else f"{rest}h"


def _le_matcher(threshold: float) -> str:
    """Match a bucket bound however it was written: Prometheus 3 stores ``le="1"`` as ``le="1.0"``."""
    text = f"{threshold:g}"
    if "." in text or "e" in text:
        return f'le="{text}"'
    return f'le=~"{text}|{text}\\\\.0"'


def sli_error_ratio(slo: ServiceSLO, sli: str, window: str) -> str:
    """PromQL of the share of bad requests of ``slo.service`` over ``window``."""
    job = f'job=~"(.*/)?{slo.service}"'
    # `> 0`: no requests in the window is no SLI sample, not 0/0 = NaN; one NaN would turn the
    # period's avg_over_time (the SLI and budget of the whole 30 days) into NaN until it ages out.
    total = f"(sum(rate({HTTP_COUNT}{{{job}}}[{window}])) > 0)"
    if sli == "availability":
        bad = f'sum(rate({HTTP_COUNT}{{{job}, http_response_status_code=~"5.."}}[{window}]))'
        return f"({bad} or vector(0))\n/\n{total}"
    assert slo.latency is not None
    good = f"sum(rate({HTTP_BUCKET}{{{job}, {_le_matcher(slo.latency.threshold_seconds)}}}[{window}]))"
    return f"1 - (\n  {good}\n  /\n  {total}\n)"


def _objective(slo: ServiceSLO, sli: str) -> float:
    target = slo.availability if sli == "availability" else slo.latency
    assert target is not None
    return target.objective / 100


def _group(slo: ServiceSLO, period: str, params: Params) -> RuleGroup:
    rules: list[Record | Alert] = []
    for sli in slo.sli_names():
        labels = {"service": slo.service, "slo": sli}
        selector = f'{{service="{slo.service}", slo="{sli}"}}'
        objective = _objective(slo, sli)
        budget = round(1 - objective, 10)
        for window in SLI_WINDOWS:
            rules.append(
                Record(f"meshwatch_slo:sli_error:ratio_rate{window}", sli_error_ratio(slo, sli, window), labels)
            )
        rules += [
            Record(
                "meshwatch_slo:sli_error:ratio_period",
                f"avg_over_time(meshwatch_slo:sli_error:ratio_rate5m{selector}[{period}])",
                {**labels, "period": period},
            ),
            Record("meshwatch_slo:objective:ratio", f"vector({objective:g})", labels),
            Record("meshwatch_slo:error_budget:ratio", f"vector({budget:g})", labels),
            Record(
                "meshwatch_slo:error_budget_remaining:ratio",
                f"1 - meshwatch_slo:sli_error:ratio_period{selector} / {budget:g}",
                {**labels, "period": period},
            ),
        ]
        what = "5xx responses" if sli == "availability" else "requests slower than the threshold"
        if slo.latency is not None and sli == "latency":
            what = f"requests slower than {slo.latency.threshold_seconds:g}s"
        for bw in BURN_WINDOWS:
            threshold = round(bw.factor * budget, 10)
            exhausted = _human_hours(_hours(period) / bw.factor)
            rules.append(
                Alert(
                    "MeshwatchErrorBudgetBurn",
                    f"meshwatch_slo:sli_error:ratio_rate{bw.long}{selector} > {threshold:g}\n"
                    f"and\n"
                    f"meshwatch_slo:sli_error:ratio_rate{bw.short}{selector} > {threshold:g}",
                    bw.for_,
                    bw.severity,
                    summary=f"{slo.service} is burning its {sli} error budget {bw.factor:g}× too fast",
                    description=(
                        f"{slo.service}: {{{{ $value | humanizePercentage }}}} {what} over the last {bw.long} "
                        f"(and over {bw.short}) against an objective of {objective:.10g}; at {bw.factor:g}× the "
                        f"{period} error budget of {budget:.10g} is spent in {exhausted}."
                    ),
                    labels={**labels, "long_window": bw.long, "short_window": bw.short},
                )
            )
    return RuleGroup(f"meshwatch-slo-{slo.service}", rules)


def slo_groups(spec: SLOSpec, params: Params) -> list[RuleGroup]:
    """One group per service, as Sloth does, so one service's rules evaluate together."""
    return [_group(slo, spec.period, params) for slo in spec.slos]
