"""Find a component's factory by kind and type, loading only what a config names.

A built-in component of type ``T`` and kind ``K`` lives in the module
``meshwatch.collector.<K>s.<T>`` (dashes become underscores) and exposes a
module-level ``factory``. Third-party components are entry points in the group
``meshwatch.collector.components`` whose name is the type and whose object is the
factory (its ``kind`` says which section it belongs to). Modules are imported
lazily, so an unused component never costs an import or its dependencies.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from importlib.metadata import entry_points
from typing import Any

from .component import Factory, Kind, is_factory

__all__ = ["Registry", "FactoryNotFound", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "meshwatch.collector.components"
_PACKAGE = "meshwatch.collector"


class FactoryNotFound(LookupError):
    """No component of that kind and type; the message lists the known ones."""


class Registry:
    def __init__(self, extra: list[Factory] | None = None) -> None:
        self._cache: dict[tuple[Kind, str], Factory] = {}
        self._lock = threading.Lock()
        for factory in extra or []:
            self._cache[(factory.kind, factory.type)] = factory

    def factory(self, kind: Kind, type_: str) -> Factory:
        key = (kind, type_)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            found = self._builtin(kind, type_) or self._entry_point(kind, type_)
            if found is None:
                known = ", ".join(self.known_types(kind)) or "none"
                raise FactoryNotFound(f"unknown {kind.value} type '{type_}' (known: {known})")
            self._cache[key] = found
            return found

    def _builtin(self, kind: Kind, type_: str) -> Factory | None:
        if not type_.replace("-", "_").isidentifier():
            return None
        module_name = f"{_PACKAGE}.{kind.value}s.{type_.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise FactoryNotFound(f"{kind.value} '{type_}' needs a module that is not installed: {exc.name}") from exc
        # getattr: the convention of the module docstring (a module-level ``factory``), checked below.
        factory: Any = getattr(module, "factory", None)
        if factory is None:
            raise FactoryNotFound(f"{module_name} has no module-level `factory`")
        if not is_factory(factory):
            raise FactoryNotFound(f"{module_name}.factory is not built with make_factory(...)")
        return factory

    def _entry_point(self, kind: Kind, type_: str) -> Factory | None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name != type_:
                continue
            factory = ep.load()
            if not is_factory(factory):
                raise FactoryNotFound(
                    f"entry point '{ep.name}' ({ep.value}) is not a meshwatch component factory: "
                    "build it with meshwatch.collector.component.make_factory(...)"
                )
            if factory.kind == kind:
                return factory
        return None

    def known_types(self, kind: Kind) -> list[str]:
        """Built-in modules of that kind plus entry points (public names only)."""
        names: set[str] = set()
        package = importlib.import_module(f"{_PACKAGE}.{kind.value}s")
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                names.add(info.name)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            names.add(ep.name)
        names.update(t for k, t in self._cache if k is kind)
        return sorted(names)
