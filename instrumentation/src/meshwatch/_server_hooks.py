"""Server-level server spans: uvicorn, hypercorn and gunicorn wrap the application they load.

Why: ``meshwatch-run datasette serve db`` (a plain ASGI app; datasette calls ``uvicorn.run(app)``
itself) answered every request and its logs arrived, but no server span and no
``http.server.request.duration`` did: server spans were made only inside FastAPI, Flask and
Django. Every Python web app is loaded by a server, so the server is where one span per
request can be had for any of them.

Each hook runs right after the server has loaded the application and puts
``_app_spans.wrap_asgi``/``wrap_wsgi`` around it, unless a framework instrumentation already
traces it (``_span_owners``: one rule for every server):

* uvicorn — after ``Config.load()`` (a string app or an app object, ``uvicorn.run(app)`` from
  code, ``--factory``, ``--interface asgi2``/``wsgi``, ``--workers``, gunicorn's uvicorn
  workers): the wrapper goes inside uvicorn's proxy-headers and message-logger middleware, so
  the span sees the client and scheme those set, and around its ASGI 2 adapter (an
  ``--interface wsgi`` app gets the WSGI span inside uvicorn's WSGI adapter, in the thread it
  runs in, so the span is current in the application);
* hypercorn — ``hypercorn.utils.wrap_app`` (the CLI's ``load_application`` and ``serve()``):
  the application inside its ``ASGIWrapper``/``WSGIWrapper``;
* gunicorn — after ``Worker.load_wsgi()`` in the WSGI workers (sync, gthread, gevent,
  eventlet) and in gunicorn's own ASGI worker; other worker classes (uvicorn's, aiohttp's,
  tornado's) load something else and are left alone (uvicorn's goes through ``Config.load``).

Each hook is installed when its server module is first imported (nothing is imported by
``init()``), and a server release that no longer has the method hooked is left alone.
``MESHWATCH_SERVER_SPANS=false`` turns all of it off.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

from ._app_spans import wrap_asgi, wrap_wsgi

__all__ = ["SERVERS", "hook_servers"]

_logger = logging.getLogger("meshwatch")
_LOCK = threading.Lock()
#: (owner, attribute) pairs already patched: a second init() changes the settings, never wraps twice.
_PATCHED: set[tuple[int, str]] = set()
#: The exclusion patterns of the latest init(), read when a server loads its application.
_EXCLUDED: list[tuple[re.Pattern[str], ...]] = [()]
_ENABLED = [False]


def _safely(server: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:  # never a reason for the server not to start
        _logger.warning(
            "meshwatch: no server-level spans under %s (the app runs untraced by the server): %s: %s",
            server,
            type(exc).__name__,
            exc,
        )


def _after(cls: type, method: str, server: str, then: Callable[[Any], None]) -> None:
    """Make ``cls.method`` call ``then(self)`` after it returns (once per class, whatever the init() count)."""
    with _LOCK:
        if (id(cls), method) in _PATCHED:
            return
        original = cls.__dict__.get(method)
        if original is None or not callable(original):
            _logger.debug("meshwatch left %s alone: %s.%s is not there", server, cls.__qualname__, method)
            return
        _PATCHED.add((id(cls), method))

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if _ENABLED[0]:
            _safely(server, lambda: then(self))
        return result

    setattr(cls, method, wrapper)


# --- uvicorn -------------------------------------------------------------------------------------


def _uvicorn_loaded(config: Any) -> None:
    from uvicorn.middleware.asgi2 import ASGI2Middleware
    from uvicorn.middleware.message_logger import MessageLoggerMiddleware
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
    from uvicorn.middleware.wsgi import WSGIMiddleware

    outer, app = None, config.loaded_app
    while isinstance(app, ProxyHeadersMiddleware | MessageLoggerMiddleware):
        outer, app = app, app.app
    if isinstance(app, WSGIMiddleware):
        # --interface wsgi: the span is made in the thread that runs the WSGI app, so it is current there
        app.app = wrap_wsgi(app.app, "uvicorn", _EXCLUDED[0])
        return
    user_app = app.app if isinstance(app, ASGI2Middleware) else app
    wrapped = wrap_asgi(app, "uvicorn", _EXCLUDED[0], user_app=user_app)
    if outer is None:
        config.loaded_app = wrapped
    else:
        outer.app = wrapped


def _hook_uvicorn() -> None:
    from uvicorn.config import Config

    _after(Config, "load", "uvicorn", _uvicorn_loaded)


# --- hypercorn -----------------------------------------------------------------------------------


def _hypercorn_wrapped(wrapper: Any) -> None:
    from hypercorn.app_wrappers import ASGIWrapper, WSGIWrapper

    if isinstance(wrapper, ASGIWrapper):
        wrapper.app = wrap_asgi(wrapper.app, "hypercorn", _EXCLUDED[0])
    elif isinstance(wrapper, WSGIWrapper):
        wrapper.app = wrap_wsgi(wrapper.app, "hypercorn", _EXCLUDED[0])


def _hook_hypercorn() -> None:
    # from sys.modules: run at the end of its import, the module is not yet an attribute of hypercorn
    utils = importlib.import_module("hypercorn.utils")
    with _LOCK:
        if (id(utils), "wrap_app") in _PATCHED:
            return
        original = getattr(utils, "wrap_app", None)
        if original is None:
            _logger.debug("meshwatch left hypercorn alone: hypercorn.utils.wrap_app is not there")
            return
        _PATCHED.add((id(utils), "wrap_app"))

    @functools.wraps(original)
    def wrap_app(*args: Any, **kwargs: Any) -> Any:
        wrapper = original(*args, **kwargs)
        if _ENABLED[0]:
            _safely("hypercorn", lambda: _hypercorn_wrapped(wrapper))
        return wrapper

    utils.wrap_app = wrap_app
    # serve() in these took the function by name at their import (init() after hypercorn's import)
    for name in ("hypercorn.asyncio", "hypercorn.trio"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "wrap_app", None) is original:
            module.wrap_app = wrap_app  # type: ignore[attr-defined]


# --- gunicorn ------------------------------------------------------------------------------------

#: gunicorn's worker classes that serve ``self.wsgi`` as a WSGI application, by module.
_GUNICORN_WSGI_WORKERS = (
    ("gunicorn.workers.sync", "SyncWorker"),
    ("gunicorn.workers.gthread", "ThreadWorker"),
    ("gunicorn.workers.base_async", "AsyncWorker"),  # gevent and eventlet
)


def _gunicorn_wsgi_worker(worker: Any) -> bool:
    for module_name, cls_name in _GUNICORN_WSGI_WORKERS:
        module = sys.modules.get(module_name)
        cls = getattr(module, cls_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(worker, cls):
            return True
    return False


def _gunicorn_loaded(worker: Any) -> None:
    if _gunicorn_wsgi_worker(worker):
        worker.wsgi = wrap_wsgi(worker.wsgi, "gunicorn", _EXCLUDED[0])


def _gunicorn_asgi_loaded(worker: Any) -> None:
    worker.asgi = wrap_asgi(worker.asgi, "gunicorn", _EXCLUDED[0])


def _hook_gunicorn() -> None:
    from gunicorn.workers.base import Worker

    _after(Worker, "load_wsgi", "gunicorn", _gunicorn_loaded)


def _hook_gunicorn_asgi() -> None:
    from gunicorn.workers.gasgi import ASGIWorker

    _after(ASGIWorker, "load_wsgi", "gunicorn", _gunicorn_asgi_loaded)


#: Server (distribution probed with find_spec) -> (module whose import installs the hook, the hook).
SERVERS: dict[str, tuple[tuple[str, Callable[[], None]], ...]] = {
    "uvicorn": (("uvicorn.config", _hook_uvicorn),),
    "hypercorn": (("hypercorn.utils", _hook_hypercorn),),
    "gunicorn": (("gunicorn.workers.base", _hook_gunicorn), ("gunicorn.workers.gasgi", _hook_gunicorn_asgi)),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def hook_servers(enabled: bool, excluded_urls: tuple[str, ...], at_import: Callable[..., None]) -> list[str]:
    """Hook every installed server's application loading (when it is imported); the servers hooked.

    ``enabled`` False (``MESHWATCH_SERVER_SPANS=false``) keeps hooks a previous ``init()`` set
    from wrapping anything more.
    """
    _EXCLUDED[0] = tuple(re.compile(p) for p in excluded_urls)
    _ENABLED[0] = enabled
    if not enabled:
        return []
    hooked = []
    for server, hooks in SERVERS.items():
        if not _installed(server):
            continue
        for module, hook in hooks:
            at_import(module, lambda server=server, hook=hook: _safely(server, hook))
        hooked.append(server)
    return hooked
