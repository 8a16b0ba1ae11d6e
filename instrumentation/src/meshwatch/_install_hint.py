"""The pip command that adds one of meshwatch's extras to the running environment.

meshwatch is not on PyPI, so ``pip install 'meshwatch[fastapi]'`` finds nothing there (or, one
day, someone else's package). What works is installing again from where this meshwatch came from:
its checkout (editable if it was) or the wheel ``make wheels`` built. pip records that source in
the distribution's ``direct_url.json`` (PEP 610); without it the hint is the README's form.
"""

from __future__ import annotations

import json
from importlib import metadata
from urllib.parse import unquote, urlsplit

__all__ = ["install_command"]

#: Where the README says meshwatch installs from, when this install does not say where it came from.
_FALLBACK = "/path/to/meshwatch/instrumentation"


def _direct_url() -> str | None:
    try:
        return metadata.distribution("meshwatch").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None


def install_command(extra: str, direct_url: str | None = None) -> str:
    """``pip install …`` for meshwatch with ``extra``, from this install's own source.

    ``direct_url`` is the text of ``direct_url.json`` (read from the installed distribution when
    not given). A local folder or wheel is named by its path; an editable install stays editable.
    """
    text = direct_url if direct_url is not None else _direct_url()
    try:
        record = json.loads(text) if text else {}
    except ValueError:
        record = {}
    url = record.get("url", "") if isinstance(record, dict) else ""
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.path:
        editable = bool((record.get("dir_info") or {}).get("editable"))
        return f"pip install {'-e ' if editable else ''}'{unquote(parts.path)}[{extra}]'"
    return f"pip install '{_FALLBACK}[{extra}]' (from your meshwatch checkout, or its wheel from `make wheels`)"
