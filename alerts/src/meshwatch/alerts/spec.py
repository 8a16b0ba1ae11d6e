"""The SLO spec file (alerts/slos.yaml): a short, validated description of each service's SLOs.

Kept apart from the rule generator so a bad spec fails with the key that is wrong, before
any rule is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["HTTP_DURATION_BUCKETS", "SpecError", "SLOSpec", "ServiceSLO", "check_runbook_base_url", "load_spec"]

#: The HTTP server duration bucket bounds of docs/telemetry-contract.md; a latency SLI's
#: threshold must be one of them, because the SLI is read from the `le` bucket.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

_DURATION = re.compile(r"^[1-9][0-9]*[mhdw]$")
_SERVICE = re.compile(r"^[A-Za-z0-9_.\-]+$")

Percent = Annotated[float, Field(gt=0, lt=100)]

#: Characters a runbook base URL may not hold: whitespace and what would break out of YAML, HTML
#: attributes or Prometheus' annotation templates (``{{ }}`` is expanded in every annotation).
_URL_UNSAFE = re.compile(r"[\s\"'<>{}\\]")


def check_runbook_base_url(value: str) -> str:
    """``value`` if it is a usable prefix of runbook URLs, else ValueError saying why.

    Either a path (``docs/runbooks/``, relative to wherever the reader opens it) or an http(s)
    URL; it must end with ``/`` because ``<AlertName>.md`` is appended to it as is.
    """
    if not value or _URL_UNSAFE.search(value):
        raise ValueError(f"{value!r} is empty or holds spaces, quotes, <>, {{}} or backslashes")
    parts = urlsplit(value)
    if parts.scheme not in ("", "http", "https") or (parts.scheme and not parts.netloc):
        raise ValueError(f"{value!r} must be an http(s) URL or a path")
    if not value.endswith("/"):
        raise ValueError(f"{value!r} must end with '/' (the runbook file name <AlertName>.md is appended)")
    return value


class SpecError(ValueError):
    """The SLO spec is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Availability(_Strict):
    """Share of requests answered without a 5xx status."""

    objective: Percent


class Latency(_Strict):
    """Share of requests answered within ``threshold_seconds``."""

    objective: Percent
    threshold_seconds: float

    @field_validator("threshold_seconds")
    @classmethod
    def _on_a_bucket(cls, value: float) -> float:
        if value not in HTTP_DURATION_BUCKETS:
            bounds = ", ".join(f"{b:g}" for b in HTTP_DURATION_BUCKETS)
            raise ValueError(f"must be one of the HTTP duration bucket bounds ({bounds}), got {value:g}")
        return value


class ServiceSLO(_Strict):
    """One service's SLOs; at least one of availability and latency."""

    service: str
    availability: Availability | None = None
    latency: Latency | None = None

    @field_validator("service")
    @classmethod
    def _service_name(cls, value: str) -> str:
        if not _SERVICE.match(value):
            raise ValueError(f"{value!r} is not a service.name (letters, digits, '.', '_', '-')")
        return value

    def sli_names(self) -> list[str]:
        return [name for name in ("availability", "latency") if getattr(self, name) is not None]


class SLOSpec(_Strict):
    """The whole spec: the budget period and the services."""

    period: str = "30d"
    #: Prefix of every alert's runbook_url; None: the repository-relative docs/runbooks/.
    runbook_base_url: str | None = None
    slos: list[ServiceSLO]

    @field_validator("runbook_base_url")
    @classmethod
    def _runbook_base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_runbook_base_url(value)

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"{value!r} is not a Prometheus duration like 30d or 4w")
        return value

    @field_validator("slos")
    @classmethod
    def _unique(cls, value: list[ServiceSLO]) -> list[ServiceSLO]:
        seen: set[str] = set()
        for slo in value:
            if slo.service in seen:
                raise ValueError(f"service {slo.service!r} is listed twice")
            if not slo.sli_names():
                raise ValueError(f"service {slo.service!r} has neither availability nor latency")
            seen.add(slo.service)
        return value


def load_spec(path: Path) -> SLOSpec:
    """Read and validate an SLO spec file; raise SpecError naming the bad key."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    try:
        return SLOSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise SpecError(f"{path}: {problems}") from None
