"""The resource: who is emitting (service.*, deployment.environment, host, process, container).

Precedence, lowest to highest: detection, ``OTEL_RESOURCE_ATTRIBUTES`` /
``resource_attributes``, then the explicit service settings. ``service.instance.id``
is a fresh UUID per process (the SDK renews it in a forked child), so workers of one
service are distinct Prometheus ``instance``s.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
import uuid
from pathlib import Path

from opentelemetry.sdk.resources import Resource

from ._config import Settings

__all__ = ["build_resource", "detect_service_name"]

#: Launchers whose first positional argument names the application (``uvicorn app:app``).
_LAUNCHERS = frozenset(
    {"uvicorn", "gunicorn", "hypercorn", "granian", "daphne", "celery", "flask", "fastapi", "python", "python3"}
)
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
#: ``module:attribute`` (or ``module:factory()``), not an option's ``host:port`` value.
_APP_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\(.*\))?$")
#: A word that can name an application (a module, a script, a folder): not ``127.0.0.1`` nor ``8000``.
_NAME_LIKE = re.compile(r"^[A-Za-z_][\w./-]*$")


def detect_service_name(argv: list[str] | None = None) -> str:
    """A sensible name when none is configured: the application module, else the program.

    ``uvicorn shop.api:app`` → ``shop``; ``python worker.py`` → ``worker``;
    ``python -m celery worker`` → ``celery``; ``/usr/bin/billing`` → ``billing``;
    ``gunicorn -b 127.0.0.1:8000 mysite.wsgi`` → ``mysite``; ``python mysite/manage.py
    runserver`` → ``mysite`` (a Django project is named by the folder of its ``manage.py``).
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0] or argv[0] == "-c":
        return "unknown_service:python"
    program = Path(argv[0]).name.removesuffix(".py")
    if program not in _LAUNCHERS and program not in {"__main__", "-m"}:
        return program or "unknown_service:python"
    rest = argv[1:]
    if "-m" in rest and rest.index("-m") + 1 < len(rest):
        return rest[rest.index("-m") + 1].split(".")[0]
    positional = [a for a in rest if not a.startswith("-") and "=" not in a]
    # The application reference: ``module:attribute`` or a script, not an option's value.
    for arg in positional:
        if Path(arg).name == "manage.py":
            return Path(arg).resolve().parent.name or program
        if _APP_REFERENCE.match(arg) or arg.endswith(".py"):
            return Path(arg.split(":", 1)[0]).name.removesuffix(".py").split(".")[0] or program
    for arg in positional:
        if _NAME_LIKE.match(arg) and arg not in {"run", "serve", "dev", "worker"}:
            return Path(arg).name.removesuffix(".py").split(".")[0] or program
    return program


def _container_id() -> str | None:
    """The container id from cgroup v1 or the mount info of cgroup v2, where present."""
    for path in ("/proc/self/cgroup", "/proc/self/mountinfo"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if path.endswith("mountinfo") and "/containers/" not in line and "/docker/" not in line:
                continue
            match = _CONTAINER_ID.search(line)
            if match:
                return match.group(1)
    return None


def _service_version(name: str) -> str | None:
    """The installed distribution version of a package named like the service, if any."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def build_resource(settings: Settings) -> Resource:
    """The resource shared by traces, metrics and logs."""
    detected: dict[str, str | int | list[str]] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.distro.name": "meshwatch",
        "telemetry.distro.version": _own_version(),
        "host.name": socket.gethostname(),
        "host.arch": platform.machine(),
        "os.type": platform.system().lower(),
        "process.pid": os.getpid(),
        "process.executable.name": Path(sys.executable).name,
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.command": sys.argv[0] if sys.argv else "",
        "service.instance.id": str(uuid.uuid4()),
    }
    try:
        from opentelemetry.sdk.version import __version__ as sdk_version

        detected["telemetry.sdk.version"] = sdk_version
    except ImportError:  # pragma: no cover
        pass
    container = _container_id()
    if container:
        detected["container.id"] = container
    attributes: dict[str, object] = {**detected, **settings.resource_attributes}
    service_name = settings.service_name or attributes.get("service.name") or detect_service_name()
    attributes["service.name"] = service_name
    version = settings.service_version or attributes.get("service.version") or _service_version(str(service_name))
    if version:
        attributes["service.version"] = version
    if settings.service_namespace:
        attributes["service.namespace"] = settings.service_namespace
    environment = (
        settings.environment
        or attributes.get("deployment.environment.name")
        or attributes.get("deployment.environment")
    )
    if environment:
        # The stable name and the older one that dashboards and Elasticsearch still read.
        attributes["deployment.environment.name"] = environment
        attributes["deployment.environment"] = environment
    return Resource(attributes)  # type: ignore[arg-type]


def _own_version() -> str:
    from . import __version__

    return __version__
