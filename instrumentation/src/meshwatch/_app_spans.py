"""A server span around any ASGI or WSGI application, for the apps no framework instrumentation covers.

Why: a plain ASGI app (datasette, a Starlette app without its instrumentor, a hand-written
callable) or a plain WSGI app served under ``meshwatch-run`` answered every request, but no
server span and no ``http.server.request.duration`` reached the collector: meshwatch made
server spans only inside FastAPI, Flask and Django. The servers' hooks (``_server_hooks``)
put one of these wrappers around the application they load.

The spans are the framework ones, not a second builder: :func:`wrap_asgi` runs each request
through ``_asgi.ServerSpans`` (the span FastAPI gets) and :func:`wrap_wsgi` through
``_wsgi.WsgiServerSpans`` (Flask's and Django's), so name (``GET``, or ``GET {route}`` when the
scope carries a Starlette route), stable HTTP attributes, status, recorded exceptions, the
extracted ``traceparent`` and the RED metrics (``_red.py``, from the span) are the same.

Neither wrapper is applied to an application a framework instrumentation already traces
(``_span_owners.owner``), and a wrapping that fails leaves the application as it was, with
one warning line: the server-level span is never a reason for an app not to serve.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace

from ._asgi import ServerSpans, _exception_type
from ._logs import tag_exception
from ._span_owners import owner

__all__ = ["AsgiAppSpans", "WsgiAppSpans", "wrap_asgi", "wrap_wsgi"]

_logger = logging.getLogger("meshwatch")
_attach = context_api.attach
_detach = context_api.detach


def _call(app: Any, scope: Any, receive: Any, send: Any) -> Any:
    return app(scope, receive, send)


class AsgiAppSpans:
    """An ASGI 3 application whose HTTP requests and WebSocket connections are each one server span."""

    def __init__(self, app: Any, excluded: Sequence[re.Pattern[str]] = (), tracer_provider: Any = None) -> None:
        self.app = app
        self._spans = ServerSpans(excluded, tracer_provider)  # None: the global provider

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._spans(_call, self.app, scope, receive, send)


def _wsgi_url(environ: dict[str, Any]) -> str:
    """The request URL as the exclusion patterns are matched against it (as for ASGI requests)."""
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{environ.get('PATH_INFO', '')}"


def _add_url(environ: dict[str, Any], attributes: dict[str, Any]) -> None:
    path = environ.get("PATH_INFO")
    if path:
        attributes["url.path"] = path
    query = environ.get("QUERY_STRING")
    if query:
        attributes["url.query"] = query


class WsgiAppSpans:
    """A WSGI application whose requests are each one server span, ended when the response is.

    The span ends when the server closes the response iterable (or it is exhausted, or raises),
    so a generator that calls ``start_response`` late, or streams, is timed and given its
    status; the span is the current one while the body is produced. A list or tuple body, or
    the server's ``wsgi.file_wrapper`` (kept so the server can still ``sendfile``), is complete
    when the application returns, and the span ends then.
    """

    def __init__(
        self, app: Callable[..., Iterable[bytes]], excluded: Sequence[re.Pattern[str]] = (), tracer_provider: Any = None
    ) -> None:
        from ._wsgi import _SPAN_KEY, WsgiServerSpans

        self.app = app
        self._spans = WsgiServerSpans("meshwatch.wsgi", tracer_provider)  # None: the global provider
        self._excluded = tuple(excluded)
        self._key = _SPAN_KEY  # also the key meshwatch's Flask and Django spans skip a request on

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._key in environ or (self._excluded and any(p.search(_wsgi_url(environ)) for p in self._excluded)):
            return self.app(environ, start_response)
        spans = self._spans
        method, attributes = spans.attributes(environ)
        if "url.path" not in attributes:
            # Flask's and Django's spans leave the URL out, as contrib's do, when the server gives no
            # RAW_URI/REQUEST_URI (uvicorn's and hypercorn's WSGI adapters): here it is all there is to go by.
            _add_url(environ, attributes)
        span, token = spans.start(environ, attributes, method)
        environ[self._key] = span
        status: list[str] = []

        def traced_start_response(status_line: str, headers: Any, *exc_info: Any) -> Any:
            status.append(status_line)  # the last call wins (an error page after exc_info)
            return start_response(status_line, headers, *exc_info)

        def finish(error: BaseException | None) -> None:
            if error is not None:  # as the ASGI span has it: RED metrics count the failure by its type
                span.set_attribute("error.type", _exception_type(error))
            spans.finish(
                span, attributes, name=None, route=None, status_line=status[-1] if status else None, error=error
            )

        try:
            result = self.app(environ, traced_start_response)
        except BaseException as exc:
            tag_exception(exc, span.get_span_context())  # gunicorn's "Error handling request" then has the trace id
            finish(exc)
            raise
        finally:
            _detach(token)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if (type(result) is list or type(result) is tuple) or (
            isinstance(file_wrapper, type) and isinstance(result, file_wrapper)
        ):
            finish(None)
            return result
        return _Body(result, span, finish)


class _Body:
    """The application's response iterable, with the span current while it runs and ended at its end."""

    __slots__ = ("_context", "_finish", "_iterator", "_result", "_span")

    def __init__(self, result: Iterable[bytes], span: Any, finish: Callable[[BaseException | None], None]) -> None:
        self._result = result
        self._iterator: Iterator[bytes] | None = None
        self._span = span
        self._context = trace.set_span_in_context(span)
        self._finish: Callable[[BaseException | None], None] | None = finish

    def __iter__(self) -> _Body:
        return self

    def _end(self, error: BaseException | None) -> None:
        finish, self._finish = self._finish, None
        if finish is not None:
            finish(error)

    def __next__(self) -> bytes:
        token = _attach(self._context)
        try:
            if self._iterator is None:
                self._iterator = iter(self._result)
            return next(self._iterator)
        except StopIteration:
            self._end(None)
            raise
        except BaseException as exc:
            tag_exception(exc, self._span.get_span_context())
            self._end(exc)
            raise
        finally:
            _detach(token)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            self._end(exc)
            raise
        else:
            self._end(None)


def _wrap(kind: str, app: Any, subject: Any, make: Callable[[], Any], server: str) -> Any:
    try:
        by = owner(subject)
        if by is not None:
            _logger.debug("meshwatch left %s's server spans to %s (%s)", server, by, type(subject).__qualname__)
            return app
        return make()
    except Exception as exc:  # never a reason for the app not to serve
        _logger.warning(
            "meshwatch: no server-level spans for the %s app under %s (it runs untraced by the server): %s: %s",
            kind,
            server,
            type(exc).__name__,
            exc,
        )
        return app


def wrap_asgi(app: Any, server: str, excluded: Sequence[re.Pattern[str]] = (), *, user_app: Any = None) -> Any:
    """``app`` with a server span per request, unless something already traces it (then ``app`` itself).

    ``user_app`` is what the owner rule is asked about when the server put its own adapter
    around the application (uvicorn's WSGI and ASGI 2 middleware): the user's application.
    """
    subject = app if user_app is None else user_app
    return _wrap("ASGI", app, subject, lambda: AsgiAppSpans(app, excluded), server)


def wrap_wsgi(app: Any, server: str, excluded: Sequence[re.Pattern[str]] = ()) -> Any:
    """``app`` with a server span per request, unless something already traces it (then ``app`` itself)."""
    return _wrap("WSGI", app, app, lambda: WsgiAppSpans(app, excluded), server)
