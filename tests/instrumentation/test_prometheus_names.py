"""The SDK's pull endpoint names metrics exactly as the collector's ``prometheus`` exporter does.

The two distributions keep their own copy of the OTel→Prometheus unit table (neither depends
on the other); before this test they disagreed: a unit ``h`` became ``_hours`` through the
collector and ``_h`` from ``meshwatch[prometheus]``, so a dashboard worked on one path only.
"""

from __future__ import annotations

import pytest

from meshwatch._prometheus import PER_UNITS, UNITS, label_name, prometheus_name
from meshwatch.collector.exporters import _prom_names as collector

NAMES = ["http.server.request.duration", "queue.size", "jobs_total", "cpu.ratio", "2xx.count", "db.client.time.hours"]
UNITS_TRIED = sorted(
    {*collector.UNITS, *UNITS, "", "{request}", "By/s", "1/s", "{packet}/min", "By/h", "foo", "m/s", "s/s", "Mb_"}
)
KINDS = [collector.MONOTONIC, collector.NON_MONOTONIC, collector.GAUGE, collector.OTHER]


def test_both_tables_hold_the_same_units() -> None:
    assert UNITS == collector.UNITS
    assert PER_UNITS == collector.PER_UNITS


@pytest.mark.parametrize("unit", UNITS_TRIED)
def test_every_unit_and_kind_gets_the_collectors_name(unit: str) -> None:
    for name in NAMES:
        for kind in KINDS:
            expected = collector.metric_name(name, unit, kind)
            ours = prometheus_name(name, unit, monotonic_sum=kind == collector.MONOTONIC, gauge=kind == collector.GAUGE)
            if kind == collector.MONOTONIC:
                ours += "_total"  # prometheus-client's counter family appends it
            assert ours == expected, (name, unit, kind)


def test_a_misspelt_unit_is_caught() -> None:
    """Positive control: the comparison notices a unit the endpoint would name differently."""
    assert prometheus_name("uptime", "h", monotonic_sum=False) == "uptime_hours"
    assert prometheus_name("uptime", "hr", monotonic_sum=False) != collector.metric_name("uptime", "h", collector.OTHER)


@pytest.mark.parametrize("key", ["http.route", "1st", "a:b", "ünïcode", "already_ok", "__x"])
def test_label_names_agree(key: str) -> None:
    assert label_name(key) == collector.label_name(key)
