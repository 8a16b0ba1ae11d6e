"""The runbooks (docs/runbooks/*.md) as web pages, so an alert's ``runbook_url`` is one click away.

Alert rules carry ``runbook_url: <base><AlertName>.md``; with the base pointing at the on-call
service (``meshwatch-alerts build --runbook-base-url http://host:9095/runbooks/``, as the demo
builds its rules) the link lands here. ``/runbooks/<AlertName>`` and ``/runbooks/<AlertName>.md``
both answer with the page rendered to HTML (markdown-it-py, CommonMark and tables, raw HTML in
the Markdown escaped, not passed through); ``/runbooks/`` renders the index (README.md).
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Runbook", "Runbooks", "default_runbooks_dir"]

#: An alert name as the rules use it: no path separators, no dots but the ``.md`` suffix.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def default_runbooks_dir() -> Path | None:
    """``$MESHWATCH_RUNBOOKS``, else docs/runbooks of the checkout this runs from (cwd or this file's)."""
    explicit = os.environ.get("MESHWATCH_RUNBOOKS")
    if explicit:
        return Path(explicit)
    for root in (Path.cwd(), Path(__file__).resolve().parents[4]):
        candidate = root / "docs" / "runbooks"
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class Runbook:
    name: str
    title: str
    html: str  # a whole page


class Runbooks:
    """Reads runbooks from a folder on every request, so an edited runbook shows without a restart."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def page(self, name: str) -> Runbook | None:
        """The page for ``name`` (``AlertName``, ``AlertName.md``, or ``""`` for the index), or None."""
        stem = name.removesuffix(".md") or "README"
        if self.directory is None or not _NAME.match(stem):
            return None
        path = self.directory / f"{stem}.md"
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), stem)
        return Runbook(stem, title, _page(title, _render(text)))

    def names(self) -> list[str]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.md") if p.stem != "README")


def _render(markdown: str) -> str:
    from markdown_it import MarkdownIt  # imported on first use: the webhook itself needs nothing of it

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)} · meshwatch runbook</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto;line-height:1.45}"
        "code{background:#f3f3f3}td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse}"
        "</style></head><body>"
        "<p><a href='/'>on-call</a> · <a href='/runbooks/'>all runbooks</a></p>"
        f"{body}</body></html>"
    )
