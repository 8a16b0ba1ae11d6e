"""The collector's YAML config: loaded, env-substituted and validated before anything starts.

Shaped like the OpenTelemetry Collector's::

    receivers:  {otlp: {...}}
    processors: {batch: {}}
    exporters:  {otlp/jaeger: {endpoint: ...}}
    connectors: {spanmetrics: {}}
    service:
      pipelines: {traces: {receivers: [otlp], processors: [batch], exporters: [otlp/jaeger, spanmetrics]}}
      telemetry: {metrics: {address: 127.0.0.1:8888}, logs: {level: info}}

Every error names the file, the line and the key (``collector.yaml:14:
exporters.otlp/jaeger.endpont: unknown key (did you mean 'endpoint'?)``), and all of
them are reported at once, so one run of ``meshwatch-collector validate`` fixes a file.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from .component import ComponentId, Factory, Kind
from .duration import Duration, parse_duration
from .model import StrictModel
from .registry import FactoryNotFound, Registry
from .signals import Signal

__all__ = [
    "sampling_placement_warnings",
    "ConfigError",
    "Config",
    "PipelineConfig",
    "ServiceConfig",
    "Duration",
    "parse_duration",
    "load_config",
    "default_storage_dir",
]

log = logging.getLogger("meshwatch.collector.config")

SECTIONS: dict[str, Kind] = {
    "receivers": Kind.RECEIVER,
    "processors": Kind.PROCESSOR,
    "exporters": Kind.EXPORTER,
    "connectors": Kind.CONNECTOR,
}


class ConfigError(Exception):
    """One or more problems in a config file; ``str()`` lists them one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- the service section --------------------------------------------------------------------


class PipelineConfig(StrictModel):
    receivers: list[str]
    processors: list[str] = Field(default_factory=list)
    exporters: list[str]


class MetricsTelemetry(StrictModel):
    #: Where /metrics and /healthz are served; "" or "none" turns them off.
    address: str = "127.0.0.1:8888"
    level: Literal["none", "basic", "normal", "detailed"] = "normal"


class LogsTelemetry(StrictModel):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    encoding: Literal["json", "console"] = "json"


class TelemetryConfig(StrictModel):
    metrics: MetricsTelemetry = Field(default_factory=MetricsTelemetry)
    logs: LogsTelemetry = Field(default_factory=LogsTelemetry)


class StorageConfig(StrictModel):
    #: Folder for the durable queues and dead-letter files.
    directory: str | None = None


class ServiceConfig(StrictModel):
    pipelines: dict[str, PipelineConfig]
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    #: Accepted for compatibility with OTel Collector files, and ignored with a warning.
    extensions: list[str] = Field(default_factory=list)
    #: How long a graceful stop may take (receivers stop, queues drain, the rest stays on disk).
    shutdown_timeout: Duration = Field(10.0, gt=0)


def default_storage_dir() -> Path:
    """``$MESHWATCH_STORAGE_DIR``, else ``$XDG_STATE_HOME/meshwatch-collector`` (``~/.local/state/...``)."""
    if env := os.environ.get("MESHWATCH_STORAGE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshwatch-collector"


# --- the result -------------------------------------------------------------------------------


@dataclass
class ComponentConfig:
    id: ComponentId
    kind: Kind
    factory: Factory
    config: Any


@dataclass
class Pipeline:
    name: str
    signal: Signal
    receivers: list[ComponentId]
    processors: list[ComponentId]
    exporters: list[ComponentId]


@dataclass
class Config:
    path: Path
    components: dict[tuple[Kind, ComponentId], ComponentConfig]
    pipelines: list[Pipeline]
    service: ServiceConfig
    warnings: list[str] = field(default_factory=list)

    def component(self, kind: Kind, cid: ComponentId) -> ComponentConfig:
        return self.components[(kind, cid)]

    @property
    def storage_dir(self) -> Path:
        return Path(self.service.storage.directory) if self.service.storage.directory else default_storage_dir()


# --- YAML with line numbers --------------------------------------------------------------------


class _Source:
    """The parsed YAML plus, for every key path, the line it is written on."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines: dict[tuple[str, ...], int] = {}
        self.problems: list[str] = []
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            # getattr: PyYAML's MarkedYAMLError has these; a bare YAMLError does not.
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError([f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
        self.data = yaml.safe_load(text) if node is not None else {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[str, ...]) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.problems.append(
                        f"{self.path}:{key_node.start_mark.line + 1}: {_dotted((*path, key))}: "
                        "key given twice (the later one would silently win)"
                    )
                seen.add(key)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                self._walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, str(index)))

    def where(self, path: tuple[str, ...]) -> str:
        """``file:line`` of the longest known prefix of ``path``."""
        probe = tuple(path)
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return f"{self.path}:{self.lines.get(probe, 1)}"


def _dotted(path: tuple[str, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in path)


# --- environment substitution ---------------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(value: Any, path: tuple[str, ...], source: _Source, problems: list[str]) -> Any:
    """Replace ``${env:VAR}``, ``${VAR}``, ``${VAR:-default}`` (``$$`` is a literal ``$``) in every string."""
    if isinstance(value, dict):
        return {k: _substitute(v, (*path, str(k)), source, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*path, str(i)), source, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append(
            f"{source.where(path)}: {_dotted(path)}: environment variable {name} is not set "
            f"(set it, or give a default: ${{{name}:-value}})"
        )
        return ""

    return _REF.sub(repl, value)


# --- pydantic errors → messages ---------------------------------------------------------------------


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` inside ``model`` (for 'did you mean').

    getattr: ``current`` is a pydantic model class or any annotation (``int``, ``list[str]``),
    and only models have ``model_fields``, only generic aliases ``__args__``.
    """
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}) or {})


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _explain(exc: ValidationError, model: type[BaseModel], base: tuple[str, ...], source: _Source) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        path = (*base, *loc)
        if error["type"] == "extra_forbidden":
            known = _fields_at(model, tuple(error["loc"][:-1]))
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6) if loc else []
            hint = (
                f" (did you mean '{close[0]}'?)" if close else (f" (known keys: {', '.join(known)})" if known else "")
            )
            message = f"unknown key{hint}"
        elif error["type"] == "missing":
            message = "required key is missing"
        else:
            message = error["msg"]
            if "input" in error and error["type"] not in ("model_type", "dict_type") and not _secretish(loc):
                message += f" (got {error['input']!r})"
        problems.append(f"{source.where(path)}: {_dotted(path)}: {message}")
    return problems


def _secretish(loc: tuple[str, ...]) -> bool:
    return any(word in part.lower() for part in loc for word in ("token", "password", "secret", "key"))


# --- loading ------------------------------------------------------------------------------------------


def load_config(path: Path | str, registry: Registry | None = None) -> Config:  # noqa: PLR0915
    """Read, substitute and validate a config file; raise ``ConfigError`` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    source = _Source(path, text)
    problems = list(source.problems)
    warnings: list[str] = []
    registry = registry or Registry()
    data = source.data
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: the config must be a mapping with receivers, exporters and service"])
    data = _substitute(data, (), source, problems)

    allowed = {*SECTIONS, "service", "extensions"}
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(allowed))})"
            problems.append(f"{source.where((str(key),))}: {key}: unknown top-level key{hint}")
    if data.get("extensions"):
        warnings.append(f"{source.where(('extensions',))}: extensions are not supported by meshwatch and are ignored")

    components: dict[tuple[Kind, ComponentId], ComponentConfig] = {}
    invalid: set[ComponentId] = set()  # defined but wrong: reported once, not again where pipelines use them
    for section, kind in SECTIONS.items():
        body = data.get(section) or {}
        if not isinstance(body, dict):
            problems.append(f"{source.where((section,))}: {section}: must be a mapping of component ids")
            continue
        for raw_id, raw_cfg in body.items():
            cid = ComponentId.parse(str(raw_id))
            where = source.where((section, str(raw_id)))
            if not cid.type or "/" in cid.name:
                problems.append(f"{where}: {section}.{raw_id}: a component id is `type` or `type/name`")
                continue
            try:
                factory = registry.factory(kind, cid.type)
            except FactoryNotFound as exc:
                problems.append(f"{where}: {section}.{raw_id}: {exc}")
                invalid.add(cid)
                continue
            cfg = raw_cfg if raw_cfg is not None else {}
            if not isinstance(cfg, dict):
                problems.append(f"{where}: {section}.{raw_id}: settings must be a mapping (or empty)")
                continue
            try:
                validated = factory.config_model.model_validate(cfg)
            except ValidationError as exc:
                problems.extend(_explain(exc, factory.config_model, (section, str(raw_id)), source))
                invalid.add(cid)
                continue
            components[(kind, cid)] = ComponentConfig(cid, kind, factory, validated)

    service_data = data.get("service")
    if not isinstance(service_data, dict):
        problems.append(f"{source.where(('service',))}: service: required section with `pipelines` is missing")
        raise ConfigError(problems)
    try:
        service = ServiceConfig.model_validate(service_data)
    except ValidationError as exc:
        problems.extend(_explain(exc, ServiceConfig, ("service",), source))
        raise ConfigError(problems) from None
    if service.extensions:
        warnings.append(f"{source.where(('service', 'extensions'))}: service.extensions are ignored")

    pipelines = _check_pipelines(service, components, source, problems, warnings, invalid)
    if problems:
        raise ConfigError(problems)
    for warning in warnings:
        log.warning(warning)
    return Config(path, components, pipelines, service, warnings)


def _check_pipelines(  # noqa: PLR0915, PLR0917 - every pipeline rule in one pass
    service: ServiceConfig,
    components: dict[tuple[Kind, ComponentId], ComponentConfig],
    source: _Source,
    problems: list[str],
    warnings: list[str],
    invalid: set[ComponentId],
) -> list[Pipeline]:
    pipelines: list[Pipeline] = []
    used: set[tuple[Kind, ComponentId]] = set()
    connector_in: dict[ComponentId, list[Signal]] = {}
    connector_out: dict[ComponentId, list[Signal]] = {}
    defined = {(k, c) for k, c in components}
    known_ids = {kind: {c for k, c in defined if k is kind} for kind in Kind}
    if not service.pipelines:
        problems.append(f"{source.where(('service', 'pipelines'))}: service.pipelines: at least one pipeline is needed")
    for name, pipe in service.pipelines.items():
        base = ("service", "pipelines", name)
        signal_name = name.partition("/")[0]
        try:
            signal = Signal(signal_name)
        except ValueError:
            problems.append(
                f"{source.where(base)}: service.pipelines.{name}: a pipeline is named traces, metrics or logs "
                f"(optionally /name), not {signal_name!r}"
            )
            continue
        roles = (
            ("receivers", pipe.receivers, (Kind.RECEIVER, Kind.CONNECTOR)),
            ("processors", pipe.processors, (Kind.PROCESSOR,)),
            ("exporters", pipe.exporters, (Kind.EXPORTER, Kind.CONNECTOR)),
        )
        ids: dict[str, list[ComponentId]] = {}
        for role, names, kinds in roles:
            ids[role] = []
            if role != "processors" and not names:
                problems.append(f"{source.where((*base, role))}: service.pipelines.{name}.{role}: needs at least one")
            seen: set[ComponentId] = set()
            for index, raw in enumerate(names):
                cid = ComponentId.parse(raw)
                where = f"{source.where((*base, role, str(index)))}: service.pipelines.{name}.{role}"
                kind = next((k for k in kinds if cid in known_ids[k]), None)
                if kind is None and cid in invalid:
                    continue  # its own section's error says what is wrong
                if kind is None:
                    section = "/".join(f"{k.value}s" for k in kinds)
                    close = difflib.get_close_matches(raw, [str(c) for k in kinds for c in known_ids[k]], n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    problems.append(f"{where}: '{raw}' is not defined under {section}{hint}")
                    continue
                if cid in seen:
                    problems.append(f"{where}: '{raw}' is listed twice")
                    continue
                seen.add(cid)
                used.add((kind, cid))
                factory = components[(kind, cid)].factory
                if kind is Kind.CONNECTOR:
                    (connector_out if role == "receivers" else connector_in).setdefault(cid, []).append(signal)
                    accepted = factory.signals if role == "exporters" else factory.output_signals
                    if signal not in accepted:
                        side = "exporter" if role == "exporters" else "receiver"
                        problems.append(
                            f"{where}: connector '{raw}' cannot be a {side} of a {signal} pipeline "
                            f"(it takes {_names(accepted)})"
                        )
                elif signal not in factory.signals:
                    problems.append(f"{where}: '{raw}' does not support {signal} (only {_names(factory.signals)})")
                ids[role].append(cid)
        pipelines.append(Pipeline(name, signal, ids["receivers"], ids["processors"], ids["exporters"]))

    for cid in sorted({*connector_in, *connector_out}, key=str):
        where = source.where(("connectors", str(cid)))
        if cid not in connector_out:
            problems.append(f"{where}: connectors.{cid}: used as an exporter but no pipeline uses it as a receiver")
        elif cid not in connector_in:
            problems.append(f"{where}: connectors.{cid}: used as a receiver but no pipeline uses it as an exporter")
        elif cid.type in SAME_SIGNAL_CONNECTORS:
            into, out_of = {str(s) for s in connector_in[cid]}, {str(s) for s in connector_out[cid]}
            for signal in sorted(into ^ out_of):
                has, lacks = ("an exporter", "a receiver") if signal in into else ("a receiver", "an exporter")
                problems.append(
                    f"{where}: connectors.{cid}: hands on the signal it receives, but {signal} pipelines use it "
                    f"as {has} and none as {lacks}"
                )
    for key in sorted(defined - used, key=lambda kc: str(kc[1])):
        warnings.append(f"{source.where((key[0].value + 's', str(key[1])))}: {key[0].value} {key[1]} is not used")
    _check_cycles(pipelines, {*connector_in, *connector_out}, problems, source)
    if not problems:
        connectors = {cid for cid in connector_in if cid in connector_out}
        warnings.extend(sampling_placement_warnings(pipelines, connectors, source))
    return pipelines


#: Connectors that emit the signal they receive (a traces pipeline feeds only traces pipelines).
SAME_SIGNAL_CONNECTORS = frozenset({"forward"})
#: Processors that keep only some traces, and connectors whose metrics must count every span.
SAMPLERS = frozenset({"tail_sampling", "probabilistic_sampler"})
SPAN_METRICS = frozenset({"spanmetrics", "servicegraph"})


def sampling_placement_warnings(
    pipelines: list[Pipeline], connectors: set[ComponentId], source: _Source | None = None
) -> list[str]:
    """Span-derived metrics fed (directly or through connectors) by a sampling pipeline.

    Such metrics count only the kept traces: request rates drop by the sampled-out share
    and error ratios rise (a tail sampler keeps errors). A warning, not an error: counting
    only kept traces may be meant (head sampling upstream already does the same).
    """
    sampled: dict[str, str] = {}  # pipeline -> the sampler that thins its traces
    changed = True
    while changed:
        changed = False
        for pipe in pipelines:
            if pipe.name in sampled:
                continue
            own = next((str(c) for c in pipe.processors if c.type in SAMPLERS), None)
            links = connectors & set(pipe.receivers)
            fed = next((sampled[p.name] for p in pipelines if p.name in sampled and links & set(p.exporters)), None)
            if own or fed:
                sampled[pipe.name] = own or fed  # type: ignore[assignment]
                changed = True
    found = []
    for pipe in pipelines:
        for cid in pipe.exporters:
            if pipe.name in sampled and cid in connectors and cid.type in SPAN_METRICS:
                where = f"{source.where(('service', 'pipelines', pipe.name))}: " if source else ""
                found.append(
                    f"{where}service.pipelines.{pipe.name}: {cid} gets traces after {sampled[pipe.name]}, so its "
                    "metrics count only the kept ones; feed it from a pipeline before sampling (docs/sampling.md)"
                )
    return found


def _names(signals: frozenset[Signal]) -> str:
    return ", ".join(sorted(str(s) for s in signals)) or "nothing"


def _check_cycles(
    pipelines: list[Pipeline], connectors: set[ComponentId], problems: list[str], source: _Source
) -> None:
    """A connector loop (pipeline A feeds B feeds A) would never end; refuse it.

    Only a connector links two pipelines: an exporter and a receiver that share a name
    (``exporters: [otlp]`` in a pipeline fed by ``receivers: [otlp]``, an agent's usual
    config) are two components, not a loop.
    """
    feeds: dict[str, set[str]] = {}
    for a in pipelines:
        for b in pipelines:
            if set(a.exporters) & set(b.receivers) & connectors:
                feeds.setdefault(a.name, set()).add(b.name)

    def visit(name: str, trail: list[str]) -> None:
        for nxt in feeds.get(name, ()):
            if nxt in trail:
                cycle = " -> ".join([*trail[trail.index(nxt) :], nxt])
                message = f"{source.where(('service', 'pipelines', nxt))}: service.pipelines: connector loop {cycle}"
                if message not in problems:
                    problems.append(message)
                continue
            visit(nxt, [*trail, nxt])

    for pipeline in pipelines:
        visit(pipeline.name, [pipeline.name])
