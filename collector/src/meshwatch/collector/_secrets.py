"""Every secret a component's config holds, found by walking the config, and text scrubbed of them.

Secrets reach error messages in ways no one field's redaction catches: a backend that
echoes the request's headers in its error body, a client library that prints the URL
with its ``user:password@`` and query, an exception that quotes a header. So rather
than redacting at each place a message is made, the exporter collects, once, every value
in its config that is secret by type or by place and removes each of them from any text
it logs, dead-letters or counts:

* every ``SecretStr`` (passwords, API keys, bearer tokens);
* every value of a mapping field whose name contains ``header`` (and the credential after
  an ``Authorization`` scheme such as ``Bearer``);
* in every string that is a URL: the password of its ``user:password@`` and every query value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, SecretStr

__all__ = ["REDACTED", "Scrubber", "secret_values"]

REDACTED = "[REDACTED]"
#: Shorter values are not scrubbed: replacing "a" or "on" everywhere would garble messages.
_MIN_LENGTH = 4


def _from_url(text: str) -> Iterable[str]:
    if "://" not in text:
        return
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return
    if password:
        yield password
    for _, value in parse_qsl(parts.query, keep_blank_values=False):
        yield value


def _walk(value: Any, name: str = "") -> Iterable[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from _walk(getattr(value, field), field)  # getattr: a pydantic model's declared fields
    elif isinstance(value, dict):
        for key, item in value.items():
            if "header" in name.lower() and isinstance(item, str):
                yield item
                scheme, _, credential = item.partition(" ")
                if credential and scheme.isalpha():
                    yield credential
            yield from _walk(item, str(key))
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _walk(item, name)
    elif isinstance(value, str):
        yield from _from_url(value)


def secret_values(config: Any) -> frozenset[str]:
    """The secret strings in ``config`` (a pydantic model, mapping or list), as described above."""
    return frozenset(s for s in _walk(config) if len(s) >= _MIN_LENGTH)


class Scrubber:
    """Replaces each of a fixed set of secrets in text with ``[REDACTED]`` (longest first)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= _MIN_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text
