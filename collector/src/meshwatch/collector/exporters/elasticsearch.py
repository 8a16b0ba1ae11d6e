"""``elasticsearch`` exporter: log records to daily indices through the bulk API.

    exporters:
      elasticsearch:
        endpoints: [http://127.0.0.1:9200]
        index_prefix: meshwatch-logs        # indices meshwatch-logs-YYYY.MM.DD (UTC, record time)
        number_of_shards: 1
        number_of_replicas: 0
        retention_days: 14                  # delete whole indices older than this (unset: keep)
        user: elastic                       # or api_key; secrets are never logged
        password: ${env:ES_PASSWORD}
        timeout: 30
        sending_queue: {...}                # the shared durable queue (see queued_exporter)
        retry_on_failure: {...}

At start (and before the first send if Elasticsearch was not reachable then) the
exporter installs the composable index template ``<index_prefix>`` for
``<index_prefix>-*`` with the mapping of docs/telemetry-contract.md; an installed
template of the same or a newer ``version`` is left alone. Daily indices rather than
a data stream: the Elasticsearch build the tests run (Maven's integ-test-zip 8.19)
has no data streams, and daily indices behave the same on a full distribution.

Each record is sent with ``create`` and a deterministic ``_id`` (hash of the
document), so a resend never duplicates: 409 on ``create`` means "already there"
and counts as delivered. Per-document outcomes of a bulk request: 429 and 5xx items
come back as ``SendResult.retry`` (a batch with only those records, retried with
backoff); other 4xx (mapping conflicts, …) are ``rejected`` with one dead letter per
record (the document, the index and Elasticsearch's error), where the OpenTelemetry
Collector's exporter drops them silently (contrib #30792, #39670, #35546). A whole
request that fails: connection refused, timeout, 429, 5xx → ``TransientError``
(honouring ``Retry-After``); other 4xx → ``PermanentError``.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from pydantic import Field, SecretStr, field_validator

from ..batch import Batch
from ..component import Capabilities, Component, CreateSettings, Host, Kind, make_factory
from ..duration import parse_duration
from ..sender import ExporterSettings, PermanentError, SendResult, TransientError
from ..signals import Signal
from ._es_docs import TEMPLATE_VERSION, encode_logs, index_template

__all__ = ["ElasticsearchConfig", "ElasticsearchSender", "factory"]

log = logging.getLogger("meshwatch.collector.exporter.elasticsearch")


class ElasticsearchConfig(ExporterSettings):
    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:9200"], min_length=1)
    index_prefix: str = Field("meshwatch-logs", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    number_of_shards: int = Field(1, ge=1)
    number_of_replicas: int = Field(0, ge=0)
    retention_days: int | None = Field(None, ge=1)
    retention_check_interval: float = Field(3600.0, gt=0)
    user: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    #: gzip the bulk body (less network, more collector CPU).
    compression: bool = False
    #: Install (or upgrade) the index template at start.
    install_template: bool = True

    _durations = field_validator("retention_check_interval", "timeout", mode="before")(parse_duration)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            from email.utils import parsedate_to_datetime

            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def _subset(request: Any, positions: list[tuple[int, int, int]]) -> ExportLogsServiceRequest:
    """A request holding only the records at ``positions`` (with their resource and scope)."""
    out = ExportLogsServiceRequest()
    groups: dict[tuple[int, int], Any] = {}
    resources: dict[int, Any] = {}
    for r_index, s_index, l_index in positions:
        scope_logs = groups.get((r_index, s_index))
        if scope_logs is None:
            rl = resources.get(r_index)
            source = request.resource_logs[r_index]
            if rl is None:
                rl = resources[r_index] = out.resource_logs.add()
                rl.resource.CopyFrom(source.resource)
                rl.schema_url = source.schema_url
            scope_logs = groups[(r_index, s_index)] = rl.scope_logs.add()
            scope_logs.scope.CopyFrom(source.scope_logs[s_index].scope)
            scope_logs.schema_url = source.scope_logs[s_index].schema_url
        scope_logs.log_records.add().CopyFrom(request.resource_logs[r_index].scope_logs[s_index].log_records[l_index])
    return out


class ElasticsearchSender:
    """A ``Sender`` for ``queued_exporter``; the official client is thread-safe, so sends may overlap."""

    thread_safe = True

    def __init__(self, config: ElasticsearchConfig, client: Any = None) -> None:
        self.config = config
        self._client = client
        self._template_ok = False
        self._template_lock = threading.Lock()
        self._stop = threading.Event()
        self._retention: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            from elasticsearch import Elasticsearch
            from elasticsearch.serializer import OrjsonSerializer

            auth: dict[str, Any] = {}
            if self.config.api_key is not None:
                auth["api_key"] = self.config.api_key.get_secret_value()
            elif self.config.user is not None:
                password = self.config.password.get_secret_value() if self.config.password else ""
                auth["basic_auth"] = (self.config.user, password)
            self._client = Elasticsearch(
                self.config.endpoints,
                request_timeout=self.config.timeout,
                max_retries=0,  # retries are the queue's, with backoff and jitter
                retry_on_timeout=False,
                http_compress=self.config.compression,
                serializer=OrjsonSerializer(),
                **auth,
            )
        return self._client

    def start(self, host: Host | None = None) -> None:
        if self.config.install_template:
            try:
                self.ensure_template()
            except TransientError as exc:  # not fatal: the queue keeps the data, send() retries
                log.warning("elasticsearch not reachable at start (%s); the template is installed on first send", exc)
        else:
            self._template_ok = True
        if self.config.retention_days:
            self._retention = threading.Thread(target=self._retention_loop, name="es retention", daemon=True)
            self._retention.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._retention is not None:
            self._retention.join(5)
        if self._client is not None:
            self._client.close()

    # --- template and retention ------------------------------------------------------------

    def ensure_template(self) -> bool:
        """Install the index template unless the same or a newer version is there; True if it wrote it."""
        if self._template_ok:
            return False
        with self._template_lock:
            if self._template_ok:
                return False
            name = self.config.index_prefix
            wrote = False
            try:
                installed = self.client.options(ignore_status=404).indices.get_index_template(name=name)
                versions = [t["index_template"].get("version") or 0 for t in installed.body.get("index_templates", [])]
                if not versions or max(versions) < TEMPLATE_VERSION:
                    template = index_template(name, self.config.number_of_shards, self.config.number_of_replicas)
                    meta = template.pop("_meta")
                    self.client.indices.put_index_template(name=name, meta=meta, **template)
                    wrote = True
                    log.info("installed index template %s (version %d)", name, TEMPLATE_VERSION)
                    if versions:
                        self._upgrade_existing_indices(name, template)
            except Exception as exc:
                raise self._classify(exc) from exc
            self._template_ok = True
            return wrote

    def _upgrade_existing_indices(self, name: str, template: dict[str, Any]) -> None:
        """Add the new template's fields to the indices an older one created (today's among them).

        Their mapping is ``dynamic: strict``, so without this every record after an upgrade
        that carries a new field (``ecs.version`` with template 2) would be refused until the
        next day's index. Adding fields is always allowed; fields the new template no longer
        uses stay in the old indices, unused.
        """
        mappings = template["template"]["mappings"]
        self.client.options(ignore_status=404).indices.put_mapping(
            index=f"{name}-*", properties=mappings["properties"], dynamic=mappings["dynamic"]
        )
        log.info("added template version %d's fields to the existing %s-* indices", TEMPLATE_VERSION, name)

    def delete_expired_indices(self, today: datetime | None = None) -> list[str]:
        """Delete ``<prefix>-YYYY.MM.DD`` indices older than ``retention_days``; returns their names."""
        days = self.config.retention_days
        if not days:
            return []
        today = today or datetime.now(UTC)
        oldest_kept = (today - timedelta(days=days)).strftime("%Y.%m.%d")
        prefix = self.config.index_prefix + "-"
        names = self.client.indices.get_alias(index=prefix + "*", expand_wildcards="open,closed").body
        doomed = sorted(
            name
            for name in names
            if name.startswith(prefix)
            and len(name) == len(prefix) + 10
            and name[len(prefix) :].replace(".", "").isdigit()
            and name[len(prefix) :] < oldest_kept
        )
        for start in range(0, len(doomed), 50):
            self.client.indices.delete(index=",".join(doomed[start : start + 50]))
        if doomed:
            log.info("retention: deleted %d indices older than %d days (%s …)", len(doomed), days, doomed[0])
        return doomed

    def _retention_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.delete_expired_indices()
            except Exception as exc:  # unreachable now: try again at the next check
                log.warning("retention check failed: %s", exc)
            self._stop.wait(self.config.retention_check_interval)

    # --- sending -----------------------------------------------------------------------------

    def send(self, batch: Batch) -> SendResult:
        self.ensure_template()
        encoded = encode_logs(batch.raw, self.config.index_prefix, received_ns=int(batch.received_at * 1e9))
        if not encoded.documents:
            return SendResult()
        try:
            response = self.client.bulk(
                operations=bytes(encoded.body), filter_path="errors,items.*.status,items.*.error"
            )
        except Exception as exc:
            raise self._classify(exc) from exc
        body = response.body
        if not body.get("errors"):
            return SendResult()
        retry_positions: list[tuple[int, int, int]] = []
        letters: list[dict[str, Any]] = []
        reasons: dict[str, int] = {}
        for position, item in enumerate(body.get("items", ())):
            outcome = next(iter(item.values()))
            status = outcome.get("status", 0)
            if status < 300 or status == 409:  # 409 on create: this very document is already there
                continue
            if status == 429 or status >= 500:
                retry_positions.append(encoded.positions[position])
                continue
            index, doc_id, source = encoded.documents[position]
            error = outcome.get("error") or {}
            kind = error.get("type", f"http_{status}") if isinstance(error, dict) else f"http_{status}"
            reasons[kind] = reasons.get(kind, 0) + 1
            letters.append(
                {"status": status, "index": index, "id": doc_id, "error": error, "document": orjson.loads(source)}
            )
        retry = None
        if retry_positions:
            retry = Batch.from_message(Signal.LOGS, _subset(batch.message, retry_positions))
        return SendResult(
            retry=retry,
            rejected=len(letters),
            rejected_reason=max(reasons, key=reasons.__getitem__) if reasons else "",
            dead_letters=letters,
        )

    @staticmethod
    def _classify(exc: Exception) -> Exception:
        from elastic_transport import ConnectionError as TransportConnectionError
        from elastic_transport import ConnectionTimeout
        from elasticsearch import ApiError

        if isinstance(exc, ConnectionTimeout):
            return TransientError("timeout", f"elasticsearch timed out: {exc}")
        if isinstance(exc, TransportConnectionError):
            return TransientError("unreachable", f"elasticsearch unreachable: {exc}")
        if isinstance(exc, ApiError):
            status = exc.meta.status
            message = f"elasticsearch answered HTTP {status}: {str(exc)[:500]}"
            if status == 429 or status >= 500:
                return TransientError(f"http_{status}", message, retry_after=_retry_after(exc.meta.headers))
            return PermanentError(f"http_{status}", message)
        if isinstance(exc, (TransientError, PermanentError)):
            return exc
        return TransientError("error", f"elasticsearch request failed: {type(exc).__name__}: {exc}")


def _create(settings: CreateSettings, config: ElasticsearchConfig) -> Component:
    from ..queued_exporter import queued_exporter

    return queued_exporter(settings, config, ElasticsearchSender(config))


factory = make_factory(
    Kind.EXPORTER,
    "elasticsearch",
    signals=frozenset({Signal.LOGS}),
    config_model=ElasticsearchConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=False),
)
