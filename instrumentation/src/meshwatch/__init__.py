"""meshwatch: OpenTelemetry traces, RED metrics and correlated JSON logs for Python services.

One line::

    import meshwatch
    meshwatch.init(service_name="checkout")

or none: ``meshwatch-run uvicorn app:app``. Importing this package is cheap: the
OpenTelemetry SDK, exporters and instrumentors load when ``init()`` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The collector, demo and stack distributions install sub-packages of ``meshwatch``
# (``meshwatch.collector``, ...); extend_path lets them live in other folders, as
# with editable installs of this repository.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ._setup import Status

__all__ = ["__version__", "force_flush", "init", "instrument_app", "shutdown"]


def init(*, app: Any = None, **options: Any) -> Status:
    """Set up traces, metrics and logs for this process, and instrument every installed library.

    Every option is also read from its environment variable (``OTEL_*`` where
    OpenTelemetry defines one, else ``MESHWATCH_*``); arguments win. The full list
    is in docs/instrumentation.md ("Settings") and ``meshwatch._config.PARAMS``.
    Common ones: ``service_name``, ``service_version``, ``environment``,
    ``endpoint`` (collector URL), ``protocol`` (``grpc`` or ``http/protobuf``),
    ``sample_rate``, ``propagators``, ``disabled_instrumentations``.

    ``app``: an application object created *before* ``init()`` (FastAPI,
    Starlette, Flask) to instrument as well; apps created afterwards are
    instrumented automatically.

    Calling ``init()`` again re-applies the settings without duplicating handlers
    or exporters. Returns a ``Status`` naming what was instrumented and skipped.
    """
    from ._setup import init as _init

    return _init(app=app, **options)


def shutdown(timeout: float | None = None) -> None:
    """Flush spans, metrics and logs and stop exporting, within ``timeout`` seconds.

    Also runs at interpreter exit. Default timeout: ``shutdown_timeout`` (5 s).
    """
    from ._setup import shutdown as _shutdown

    _shutdown(timeout)


def force_flush(timeout: float = 5.0) -> bool:
    """Export everything pending now; True if all of it was handed to the exporters in time."""
    from ._setup import force_flush as _force_flush

    return _force_flush(timeout)


def instrument_app(app: Any) -> str:
    """Instrument an application object created before ``init()``; returns the framework name."""
    from ._setup import instrument

    return instrument(app)
