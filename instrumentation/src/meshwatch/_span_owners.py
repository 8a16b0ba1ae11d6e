"""Who makes the server span of an application's requests: the one rule the server-level spans obey.

Why: meshwatch makes server spans inside the frameworks it knows (its own FastAPI middleware
and Flask/Django WSGI span, the contrib instrumentors) and, for every other application, at
the server that loads it (``_server_hooks``). A request must be one server span, never two,
so before the server-level wrapper goes around an application it asks :func:`owner`; an
application some framework instrumentation already traces is left as it is.

The owners are declared here and nowhere else, as :class:`SpanOwner` values:

* meshwatch's own class-level instrumentations :func:`claim` the class whose instances they
  trace when they are applied (FastAPI with meshwatch's middleware or FastAPI's native
  telemetry, Flask with meshwatch's WSGI span);
* the contrib instrumentors mark each application they instrument with
  ``_is_instrumented_by_opentelemetry = True`` (FastAPI, Starlette, Flask ``instrument_app``) —
  their declared marker, read here only;
* an instance of a class from a contrib instrumentation package: the ``_Instrumented*``
  framework subclasses ``instrument()`` installs (Falcon's carries no marker) and the
  ``OpenTelemetryMiddleware`` (ASGI or WSGI) an author wrapped the app in;
* Django's ``WSGIHandler``/``ASGIHandler`` while meshwatch's or contrib's Django middleware is
  in ``settings.MIDDLEWARE``;
* a Pyramid ``Router`` whose tweens include contrib's trace tween (contrib's Pyramid
  instrumentor adds it to every ``Configurator``; its span was an INTERNAL child of the
  server-level one before this rule).

None of the rules imports a framework: a framework that is not imported owns nothing.

What this cannot see: a framework application wrapped in middleware unknown here (Sentry's,
``CORSMiddleware(app)``...). For meshwatch's own spans a request-level marker still keeps it
to one span (the server-level span sets ``scope["meshwatch.span"]`` / the WSGI environ key
the inner span skips on); a contrib-instrumented app hidden that way would get a second,
INTERNAL span under the server-level one.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SpanOwner", "claim", "owner", "owners"]


@dataclass(frozen=True)
class SpanOwner:
    """An instrumentation that makes the server span for the applications ``owns`` accepts."""

    name: str  # as the start line reports it: "fastapi (meshwatch)", "contrib instrumentor", ...
    owns: Callable[[object], bool]


_LOCK = threading.Lock()
_CONTRIB = "opentelemetry.instrumentation."
#: meshwatch's own class-level instrumentations, by the class they trace (``claim``).
_CLAIMED: dict[type, SpanOwner] = {}


def claim(cls: type, by: str) -> None:
    """Declare that ``by`` makes the server span of every instance of ``cls`` (and of its subclasses)."""
    with _LOCK:
        _CLAIMED[cls] = SpanOwner(by, lambda app: isinstance(app, cls))


def _contrib_marked(app: object) -> bool:
    # Read from the instance only: the contrib instrumentors set it per application.
    try:
        return vars(app).get("_is_instrumented_by_opentelemetry") is True
    except TypeError:  # no __dict__ (a function's has none of this; a __slots__ object)
        return False


def _contrib_class(app: object) -> bool:
    # contrib's framework subclasses that instrument() installs (_InstrumentedFastAPI, _InstrumentedStarlette,
    # _InstrumentedFlask, _InstrumentedFalconAPI, ...) and its OpenTelemetryMiddleware (ASGI and WSGI)
    return any(str(cls.__module__).startswith(_CONTRIB) for cls in type(app).__mro__)


def _django_traced(app: object) -> bool:
    handlers = []
    for name, cls in (("django.core.handlers.wsgi", "WSGIHandler"), ("django.core.handlers.asgi", "ASGIHandler")):
        module = sys.modules.get(name)
        if module is not None:
            handlers.append(getattr(module, cls))
    if not handlers or not isinstance(app, tuple(handlers)):
        return False
    from django.conf import settings

    from ._wsgi import CONTRIB_DJANGO_MIDDLEWARE, DJANGO_MIDDLEWARE  # either one makes the span

    return any(m in (DJANGO_MIDDLEWARE, CONTRIB_DJANGO_MIDDLEWARE) for m in settings.MIDDLEWARE)


#: The tween contrib's Pyramid instrumentor adds to every ``Configurator`` (or the app's author does).
_PYRAMID_TWEEN = "opentelemetry.instrumentation.pyramid.trace_tween_factory"


def _pyramid_traced(app: object) -> bool:
    router = sys.modules.get("pyramid.router")
    if router is None or not isinstance(app, router.Router):
        return False
    from pyramid.interfaces import ITweens

    tweens = app.registry.queryUtility(ITweens)
    if tweens is None:
        return False
    names = [name for name, _factory in (tweens.explicit or tweens.implicit())]
    return _PYRAMID_TWEEN in names


#: The owners that need no claim, in the order they are asked (after the claimed classes).
_BUILT_IN = (
    SpanOwner("contrib instrumentor", _contrib_marked),
    SpanOwner("contrib instrumentation class", _contrib_class),
    SpanOwner("django middleware", _django_traced),
    SpanOwner("contrib pyramid tween", _pyramid_traced),
)


def owners() -> tuple[SpanOwner, ...]:
    """Every owner, in the order :func:`owner` asks them."""
    with _LOCK:
        return (*_CLAIMED.values(), *_BUILT_IN)


def owner(app: object) -> str | None:
    """The name of what already makes server spans for ``app``, or None if nothing does.

    Raises whatever a rule raises on an unusual application: the caller then leaves it unwrapped.
    """
    for candidate in owners():
        if candidate.owns(app):
            return candidate.name
    return None
