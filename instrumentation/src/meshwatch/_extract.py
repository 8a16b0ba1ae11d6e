"""The parent context of a server request, without running the propagators when nothing can be found.

Why: most requests reaching a service carry no trace headers (health checks, load
balancers, browsers, load tests), and for each of them the default propagators
(W3C trace context, then baggage) were run in turn, through the composite's loop
and the getter, to return an empty context. When the propagators are exactly those
two and none of their headers is in the request, the answer is known: an empty
``Context``. Anything else (other propagators, or a header present) goes through
``propagate.extract`` as before.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["Extractor"]

_DEFAULT = (TraceContextTextMapPropagator, W3CBaggagePropagator)


def _is_default(textmap: Any) -> bool:
    """The stock ``tracecontext,baggage`` composite (or trace context alone)."""
    if isinstance(textmap, TraceContextTextMapPropagator):
        return True
    propagators = getattr(textmap, "_propagators", None) if type(textmap) is CompositePropagator else None
    if not propagators:
        return False
    kinds = tuple(type(p) for p in propagators)
    return kinds in (_DEFAULT, _DEFAULT[:1])


class Extractor:
    """``extract(carrier)`` as ``propagate.extract``; ``keys`` are the carrier's names of the default headers."""

    def __init__(self, keys: tuple[str, ...], getter: Any = None) -> None:
        self._keys = keys
        self._getter = getter
        self._textmap: Any = None
        self._default = False

    def extract(self, carrier: Any) -> Context:
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:  # set once by init(); again after a re-init
            self._default = _is_default(textmap)
            self._textmap = textmap
        if self._default:
            for key in self._keys:
                if key in carrier:
                    break
            else:
                return Context()
        if self._getter is None:
            return textmap.extract(carrier)
        return textmap.extract(carrier, getter=self._getter)
