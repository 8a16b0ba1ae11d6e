"""OTLP → Prometheus names, as the OpenTelemetry Collector's ``prometheus`` exporter makes them.

A port of ``github.com/prometheus/otlptranslator`` (v1.0, the library the Collector's
exporter uses) for the default ``UnderscoreEscapingWithSuffixes`` strategy:

* metric names: split on every character outside ``[a-zA-Z0-9:]``, append the unit in
  its Prometheus spelling (``s`` → ``seconds``, ``By`` → ``bytes``, ``1`` → nothing,
  ``{request}`` → nothing, ``By/s`` → ``bytes_per_second``) unless already a token,
  ``_total`` for monotonic sums, ``_ratio`` for gauges of unit ``1``, join with ``_``;
* label names: invalid characters become ``_`` (runs of ``_`` are kept, as the
  exporter configures it), a leading digit gets ``key_``;
* ``job`` = ``service.namespace/service.name`` (or ``service.name``), ``instance`` =
  ``service.instance.id``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..otlp_values import any_to_string

__all__ = [
    "metric_name",
    "label_name",
    "ResourceIdentity",
    "resource_identity",
    "unit_suffixes",
    "MONOTONIC",
    "NON_MONOTONIC",
    "GAUGE",
    "OTHER",
]

UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}

#: Metric kinds that change the name.
MONOTONIC, NON_MONOTONIC, GAUGE, OTHER = "monotonic", "non_monotonic", "gauge", "other"

_NAME_SPLIT = re.compile(r"[^a-zA-Z0-9:]+")
_INVALID_METRIC_CHAR = re.compile(r"[^a-zA-Z0-9:]")
_INVALID_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")
_UNDERSCORES = re.compile(r"__+")


def _clean_unit(unit: str) -> str:
    return _UNDERSCORES.sub("_", _INVALID_METRIC_CHAR.sub("_", unit)).lstrip("_")


def unit_suffixes(unit: str) -> tuple[str, str]:
    """(main, per) suffixes of an OTel unit: ``By/s`` → (``bytes``, ``per_second``)."""
    main_unit, _, per_unit = unit.partition("/")
    main = ""
    main_unit = main_unit.strip()
    if main_unit and "{" not in main_unit and "}" not in main_unit:
        main = UNITS.get(main_unit, main_unit)
    per = ""
    per_unit = per_unit.strip()
    if per_unit and "{" not in per_unit and "}" not in per_unit:
        per = "per_" + PER_UNITS.get(per_unit, per_unit)
    return main, per


@lru_cache(maxsize=8192)
def metric_name(name: str, unit: str, kind: str, namespace: str = "") -> str:
    """The Prometheus metric family name (counters include ``_total``)."""
    tokens = [t for t in _NAME_SPLIT.split(name) if t]
    main, per = unit_suffixes(unit)
    main, per = _clean_unit(main), _clean_unit(per)
    if main in tokens:
        main = ""
    if per == "per_":
        per = ""
    else:
        per = per.removesuffix("_")
        if per in tokens:
            per = ""
    if per:
        main = main.removesuffix("_")
    if main:
        tokens.append(main)
    if per:
        tokens.append(per)
    if kind == MONOTONIC:
        tokens = [t for t in tokens if t != "total"]
        tokens.append("total")
    if unit == "1" and kind == GAUGE:
        tokens = [t for t in tokens if t != "ratio"]
        tokens.append("ratio")
    if namespace:
        tokens.insert(0, namespace)
    result = "_".join(tokens)
    if result and result[0].isdigit():
        result = "_" + result
    return result


@lru_cache(maxsize=16384)
def label_name(key: str) -> str:
    """A Prometheus label name for an attribute key ("" if it cannot be one)."""
    if not key:
        return ""
    result = _INVALID_LABEL_CHAR.sub("_", key)
    if result[0].isdigit():
        result = "key_" + result
    if not result.strip("_"):
        return ""
    return result


#: Resource attributes that make ``job`` and ``instance`` rather than ``target_info`` labels.
IDENTITY_ATTRIBUTES = ("service.name", "service.namespace", "service.instance.id")


@dataclass(frozen=True)
class ResourceIdentity:
    """What a resource contributes to its series: the base labels and the ``target_info`` labels."""

    #: ``job`` and ``instance`` (when known), over every attribute if they are promoted.
    labels: dict[str, str]
    #: The ``target_info`` series' labels; ``None`` without both ``job`` and ``instance``.
    target_info: dict[str, str] | None


def resource_identity(
    resource: Any, *, promote_all: bool = False, const_labels: dict[str, str] | None = None
) -> ResourceIdentity:
    """``job`` = ``service.namespace/service.name`` (or ``service.name``), ``instance`` =
    ``service.instance.id``, and the other attributes as ``target_info``, as the Collector's
    exporters derive them. The ``prometheus`` and ``prometheusremotewrite`` exporters both
    call this, so a series has the same identity whichever way it reaches Prometheus.
    """
    values = {kv.key: kv.value for kv in resource.attributes}
    labels: dict[str, str] = {}
    if promote_all:
        for key, value in values.items():
            name = label_name(key)
            if name:
                labels[name] = any_to_string(value)
    labels.update(const_labels or {})
    job = any_to_string(values["service.name"]) if "service.name" in values else None
    if job is not None and "service.namespace" in values:
        job = f"{any_to_string(values['service.namespace'])}/{job}"
    instance = any_to_string(values["service.instance.id"]) if "service.instance.id" in values else None
    if job is not None:
        labels["job"] = job
    if instance is not None:
        labels["instance"] = instance
    if job is None or instance is None:
        return ResourceIdentity(labels, None)
    info: dict[str, str] = {}
    for key in sorted(values):
        name = label_name(key) if key not in IDENTITY_ATTRIBUTES else ""
        if name:
            text = any_to_string(values[key])
            info[name] = f"{info[name]};{text}" if name in info else text
    info.update(job=job, instance=instance)
    return ResourceIdentity(labels, info)
