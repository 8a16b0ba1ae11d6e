"""Django's instrumentor needs the project's settings, which only exist once Django is set up.

``meshwatch-run gunicorn mysite.wsgi`` initialises meshwatch before gunicorn has
put the project on ``sys.path`` and before ``wsgi.py`` has set
``DJANGO_SETTINGS_MODULE``. The contrib instrumentor, applied then, cannot read the
settings and falls back to ``settings.configure()`` with Django's global defaults:
the site then answered 500 to every request (``global_settings`` has no
``ROOT_URLCONF``). An instrumentor must never change what the application does, so
until the settings are configured the instrumentor is applied at the start of the
first ``django.setup()`` instead: every way of starting Django (``get_wsgi_application``,
``get_asgi_application``, ``manage.py``) calls it before it loads the middleware
the instrumentor adds to.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["apply_at_setup", "settings_configured"]

_logger = logging.getLogger("meshwatch")


def settings_configured() -> bool:
    """True when Django's settings are already in place (reading them changes nothing)."""
    from django.conf import settings

    return bool(settings.configured)


def _settings_loadable() -> bool:
    """Load the project's settings the way ``django.setup()`` is about to; False if that fails.

    Django then raises the same error itself, to the application, as it would without meshwatch.
    """
    from django.conf import settings

    try:
        settings.MIDDLEWARE  # noqa: B018 - the access is what loads the settings module
    except Exception:
        return False
    return True


def apply_at_setup(apply: Callable[[], None]) -> None:
    """Run ``apply`` once, at the start of the next ``django.setup()`` (before apps and middleware load).

    A second call (``init()`` again) replaces the pending ``apply``; ``django.setup`` is
    restored to the original as soon as it runs.
    """
    import django

    current = django.setup
    pending: list[Callable[[], None]] | None = getattr(current, "_meshwatch_pending", None)
    if pending is not None:
        pending[:] = [apply]
        return
    original = current
    pending = [apply]

    @functools.wraps(original)
    def setup(*args: Any, **kwargs: Any) -> Any:
        django.setup = original
        todo = list(pending)
        pending.clear()
        if todo and _settings_loadable():
            for fn in todo:
                try:
                    fn()
                except Exception as exc:  # never stop Django from starting
                    _logger.warning("meshwatch could not instrument django: %s: %s", type(exc).__name__, exc)
        elif todo:
            _logger.warning("meshwatch did not instrument django: its settings could not be loaded")
        return original(*args, **kwargs)

    setup._meshwatch_pending = pending  # type: ignore[attr-defined]
    django.setup = setup
