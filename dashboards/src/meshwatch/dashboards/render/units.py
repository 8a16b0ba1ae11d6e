"""Numbers written the way Grafana writes them for the units the dashboards use.

``format_value(0.0421, "s")`` is ``"42.1 ms"``, ``format_value(0.3, "percentunit")`` is
``"30%"``; axes, stats, tables and node graphs all go through it, so a picture reads like the
dashboard would.
"""

from __future__ import annotations

import math

__all__ = ["format_value"]

_SHORT = ((1e12, " Tri"), (1e9, " Bil"), (1e6, " Mil"), (1e3, " K"))
_BYTES = ((2**40, " TiB"), (2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB"))


def _digits(value: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{value:.{decimals}f}"
    magnitude = abs(value)
    if magnitude == 0 or magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if "." in text and "e" not in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _scaled(value: float, steps: tuple[tuple[float, str], ...], decimals: int | None, unit: str = "") -> str:
    for size, suffix in steps:
        if abs(value) >= size:
            return f"{_digits(value / size, decimals)}{suffix}{unit}"
    return f"{_digits(value, decimals)}{' ' + unit.strip() if unit else ''}"


def _seconds(value: float, decimals: int | None) -> str:
    magnitude = abs(value)
    if magnitude == 0:
        return "0 s"
    for size, suffix in ((86400, "day"), (3600, "hour"), (60, "min"), (1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if magnitude >= size:
            return f"{_digits(value / size, decimals)} {suffix}"
    return f"{_digits(value * 1e9, decimals)} ns"


def format_value(value: float | None, unit: str | None = None, decimals: int | None = None) -> str:
    """``value`` in ``unit`` (a Grafana unit id: s, percentunit, percent, reqps, bytes, short, …)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    unit = unit or ""
    if unit == "percentunit":
        return f"{_digits(value * 100, decimals)}%"
    if unit == "percent":
        return f"{_digits(value, decimals)}%"
    if unit == "s":
        return _seconds(value, decimals)
    if unit == "ms":
        return _seconds(value / 1000, decimals)
    if unit == "bytes":
        return _scaled(value, _BYTES, decimals, " B") if abs(value) < 1024 else _scaled(value, _BYTES, decimals)
    if unit == "reqps":
        return _scaled(value, _SHORT, decimals, " req/s")
    if unit in ("short", "", "none"):
        return _scaled(value, _SHORT, decimals)
    return f"{_scaled(value, _SHORT, decimals)} {unit}"
