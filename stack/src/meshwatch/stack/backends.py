"""How each backend is started: its ports, config files, command line and readiness URL.

A ``Launch`` is plain data (argv, env, user, readiness URL, URLs to show), so the
runner has one code path for every server and the specs are easy to read.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import installer as install
from ._paths import is_root

__all__ = ["CONSOLE_URL", "JAEGER_INDEX_PREFIX", "JAEGER_STORAGES", "Launch", "BackendSpec", "SPECS", "jaeger_config"]


@dataclass
class Launch:
    argv: list[str]
    #: Readiness: an HTTP URL that answers 2xx, ``tcp://host:port`` that accepts a connection, or
    #: ``kafka://host:port`` whose Metadata response lists a broker.
    ready_url: str
    urls: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    run_as: str | None = None  # an unprivileged user, when started by root
    ready_timeout: float = 60.0
    hint: str = ""  # how to fix it when it does not start


@dataclass(frozen=True)
class BackendSpec:
    name: str
    component: str
    ports: tuple[str, ...]
    default_ports: dict[str, int]
    prepare: Callable[[Path, dict[str, int], dict[str, Any]], Launch]


def _yaml_dump(data: Any) -> str:
    # JSON is valid YAML; no YAML dependency needed to write configs.
    return json.dumps(data, indent=2)


# --- Jaeger ------------------------------------------------------------------------------

#: Jaeger's trace storages: ``elasticsearch`` (the default: traces outlive a Jaeger restart) or
#: ``memory`` (fast to start, gone with the process; for tests that want a Jaeger of their own).
JAEGER_STORAGES = ("elasticsearch", "memory")
#: What Jaeger's indices start with on the shared Elasticsearch (``meshwatch-traces-jaeger-span-YYYY-MM-DD``),
#: apart from the collector's ``meshwatch-logs-*``, which its own index template covers.
JAEGER_INDEX_PREFIX = "meshwatch-traces"


def jaeger_storage(options: dict[str, Any]) -> str:
    """The storage a Jaeger start asks for: its ``storage`` option, else ``MESHWATCH_JAEGER_STORAGE``,
    else Elasticsearch."""
    storage = str(options.get("storage") or os.environ.get("MESHWATCH_JAEGER_STORAGE") or "elasticsearch")
    if storage not in JAEGER_STORAGES:
        raise ValueError(f"Jaeger storage {storage!r}: choose from {', '.join(JAEGER_STORAGES)}")
    return storage


def jaeger_storage_backend(options: dict[str, Any]) -> dict[str, Any]:
    """The ``jaeger_storage`` backend of that storage, as Jaeger v2 (Go module v1.75.0) reads it."""
    if jaeger_storage(options) == "memory":
        return {"memory": {"max_traces": int(options.get("max_traces", 50_000))}}
    url = options.get("elasticsearch_url")
    if not url:
        raise ValueError("Jaeger on Elasticsearch needs elasticsearch_url (start elasticsearch first)")
    # One node on loopback: one shard and no replica per index, or the cluster stays yellow.
    index = {"shards": 1, "replicas": 0}
    return {
        "elasticsearch": {
            "server_urls": [str(url).rstrip("/")],
            "indices": {
                "index_prefix": str(options.get("index_prefix", JAEGER_INDEX_PREFIX)),
                **{kind: dict(index) for kind in ("spans", "services", "dependencies", "sampling")},
            },
            # Spans reach Elasticsearch in bulk requests flushed this often (Jaeger's default, stated).
            "bulk_processing": {"flush_interval": "200ms"},
            # Jaeger's client pings `GET /` to check health and detect the version; the stack's
            # Elasticsearch (the integ-test-zip distribution) has no `rest-root` module to answer
            # it. The stack's readiness check waits for the cluster's health instead.
            "version": 8,
            "disable_health_check": True,
        }
    }


def jaeger_config(ports: dict[str, int], options: dict[str, Any]) -> dict[str, Any]:
    """The whole Jaeger v2 config: OTLP in, the chosen storage, the query API, health and metrics."""
    host = "127.0.0.1"
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {
                "resource": {"service.name": "jaeger"},
                "metrics": {
                    "level": "basic",
                    "readers": [{"pull": {"exporter": {"prometheus": {"host": host, "port": ports["metrics"]}}}}],
                },
                "logs": {"level": "info", "encoding": "json"},
            },
        },
        "extensions": {
            "healthcheckv2": {"use_v2": True, "http": {"endpoint": f"{host}:{ports['health']}"}},
            "jaeger_query": {
                # Jaeger v2 traces its own query API by default, to whatever listens on
                # localhost:4317 (in the demo, meshwatch's collector: a "jaeger" service
                # would then show in every dashboard). Its traces are not ours to show.
                "enable_tracing": False,
                "storage": {"traces": "traces"},
                "http": {"endpoint": f"{host}:{ports['query']}"},
                "grpc": {"endpoint": f"{host}:{ports['query_grpc']}"},
            },
            "jaeger_storage": {"backends": {"traces": jaeger_storage_backend(options)}},
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"{host}:{ports['otlp_grpc']}"},
                    "http": {"endpoint": f"{host}:{ports['otlp_http']}"},
                }
            }
        },
        "processors": {"batch": {"timeout": "100ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "traces"}},
    }


def _jaeger(workdir: Path, ports: dict[str, int], options: dict[str, Any]) -> Launch:
    host = "127.0.0.1"
    config_path = workdir / "jaeger.yaml"
    config_path.write_text(_yaml_dump(jaeger_config(ports, options)))
    storage = jaeger_storage(options)
    return Launch(
        argv=[str(install.binary("jaeger")), "--config", f"file:{config_path}"],
        # On Elasticsearch this answers only once Jaeger reached it and put its index templates there.
        ready_url=f"http://{host}:{ports['query']}/api/services",
        urls={
            "query": f"http://{host}:{ports['query']}",
            "otlp_grpc": f"http://{host}:{ports['otlp_grpc']}",
            "otlp_http": f"http://{host}:{ports['otlp_http']}",
            "metrics": f"http://{host}:{ports['metrics']}/metrics",
            # where its traces are kept (shown by `meshwatch-stack status`)
            **({"storage": str(options["elasticsearch_url"])} if storage == "elasticsearch" else {}),
        },
        hint=(
            "Jaeger is built by `meshwatch-stack install jaeger`; its log says which port or config key failed"
            + (
                f"; on Elasticsearch ({options.get('elasticsearch_url')}) it exits when that does not answer"
                if storage == "elasticsearch"
                else ""
            )
        ),
    )


# --- Prometheus --------------------------------------------------------------------------

#: Where ``meshwatch-dashboards console`` listens by default (``make demo`` starts it there when free):
#: the origin ``meshwatch-stack up`` gives Prometheus for its links.
CONSOLE_URL = "http://127.0.0.1:3001"


def prometheus_config(options: dict[str, Any], alertmanager: str | None) -> dict[str, Any]:
    interval = options.get("scrape_interval", "15s")
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": options.get("evaluation_interval", interval),
            "scrape_timeout": options.get("scrape_timeout", "1s" if interval in ("1s", "2s") else "10s"),
        },
        "rule_files": ["rules/*.yml", "rules/*.yaml"],
        "scrape_configs": [
            {
                # Targets are files in targets/: the runner (or a test) drops one in and
                # Prometheus picks it up through inotify, no reload needed.
                "job_name": "meshwatch",
                "file_sd_configs": [{"files": ["targets/*.json"], "refresh_interval": "5s"}],
            },
            {
                # Exporters that carry other jobs' series (the collector's Prometheus
                # exporter): their own job/instance labels win. Targets go in
                # targets/honor_labels/ the same way.
                "job_name": "meshwatch-honor-labels",
                "honor_labels": True,
                "file_sd_configs": [{"files": ["targets/honor_labels/*.json"], "refresh_interval": "5s"}],
            },
        ],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def _prometheus(workdir: Path, ports: dict[str, int], options: dict[str, Any]) -> Launch:
    host = "127.0.0.1"
    for sub in ("targets", "targets/honor_labels", "rules", "data"):
        (workdir / sub).mkdir(exist_ok=True)
    for rule_file in options.get("rule_files", []):
        shutil.copy(rule_file, workdir / "rules" / Path(rule_file).name)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(_yaml_dump(prometheus_config(options, options.get("alertmanager"))))
    # Where the links Prometheus writes point (each alert's generatorURL): the meshwatch console,
    # which answers /graph?g0.expr=… with its Explore view (Prometheus' own UI is not built here).
    # A bare origin keeps Prometheus' routes at / (a path would become its route prefix).
    external = [f"--web.external-url={options['external_url']}"] if options.get("external_url") else []
    return Launch(
        argv=[
            str(install.binary("prometheus")),
            *external,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={host}:{ports['http']}",
            "--web.enable-lifecycle",
            "--web.enable-otlp-receiver",
            "--web.enable-remote-write-receiver",
            # Exemplars link histogram samples to traces (dashboards' exemplar → Jaeger link).
            "--enable-feature=exemplar-storage",
            # The SLO rules read 30 days (alerts/rules/slo.rules.yml); pint's online check
            # (tests/demo/test_pint_live.py) refuses a retention shorter than what rules query.
            "--storage.tsdb.retention.time=31d",
            "--log.format=json",
        ],
        ready_url=f"http://{host}:{ports['http']}/-/ready",
        urls={"http": f"http://{host}:{ports['http']}"},
        hint="Prometheus is built by `meshwatch-stack install prometheus`; check its log for a config error.",
    )


# --- Alertmanager ------------------------------------------------------------------------

DEFAULT_ALERTMANAGER_CONFIG = {
    "route": {"receiver": "null", "group_by": ["alertname"], "group_wait": "1s", "group_interval": "5s"},
    "receivers": [{"name": "null"}],
}


def _alertmanager(workdir: Path, ports: dict[str, int], options: dict[str, Any]) -> Launch:
    host = "127.0.0.1"
    (workdir / "data").mkdir(exist_ok=True)
    config_path = workdir / "alertmanager.yml"
    config = options.get("config")
    if config is None:
        config_path.write_text(_yaml_dump(DEFAULT_ALERTMANAGER_CONFIG))
    elif isinstance(config, (str, Path)) and Path(config).exists():
        shutil.copy(config, config_path)
    else:
        config_path.write_text(config if isinstance(config, str) else _yaml_dump(config))
    return Launch(
        argv=[
            str(install.binary("alertmanager")),
            f"--config.file={config_path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={host}:{ports['http']}",
            "--cluster.listen-address=",  # no gossip port: a single local instance
            "--log.format=json",
        ],
        ready_url=f"http://{host}:{ports['http']}/-/ready",
        urls={"http": f"http://{host}:{ports['http']}"},
        hint="Alertmanager comes from Debian's prometheus-alertmanager package; check its log for a config error.",
    )


# --- Elasticsearch -----------------------------------------------------------------------


def _elasticsearch(workdir: Path, ports: dict[str, int], options: dict[str, Any]) -> Launch:
    host = "127.0.0.1"
    home = install.es_home()
    config_dir = workdir / "config"
    if not config_dir.exists():
        shutil.copytree(home / "config", config_dir)
    for sub in ("data", "logs", "tmp"):
        (workdir / sub).mkdir(exist_ok=True)
    heap = options.get("heap", "512m")
    run_as = install.ES_USER if is_root() else None
    if run_as:
        install._ensure_es_user()
        uid, gid = _ids(run_as)
        for path in [workdir, *workdir.rglob("*")]:
            os.chown(path, uid, gid)
    settings = {
        "cluster.name": "meshwatch",
        "node.name": "meshwatch-1",
        "discovery.type": "single-node",
        "xpack.security.enabled": "false",
        "network.host": host,
        "http.port": ports["http"],
        "transport.port": ports["transport"],
        "path.data": workdir / "data",
        "path.logs": workdir / "logs",
        # A test machine's disk may be fuller than production watermarks allow.
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "action.destructive_requires_name": "false",
    }
    return Launch(
        argv=[str(home / "bin" / "elasticsearch"), *(f"-E{k}={v}" for k, v in settings.items())],
        env={
            "ES_JAVA_HOME": str(install.java_home()),
            "ES_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}",
            "ES_PATH_CONF": str(config_dir),
            "ES_TMPDIR": str(workdir / "tmp"),
        },
        run_as=run_as,
        ready_url=f"http://{host}:{ports['http']}/_cluster/health?wait_for_status=yellow&timeout=1s",
        urls={"http": f"http://{host}:{ports['http']}"},
        ready_timeout=150.0,
        hint=(
            "Elasticsearch needs a JDK 17+ (set ES_JAVA_HOME) and about 1 GB of free memory; "
            "its own log is in the logs/ folder beside this one."
        ),
    )


# --- Redis and NATS (the demo's cache and message broker) -------------------------------------


def _redis(workdir: Path, ports: dict[str, int], options: dict[str, Any]) -> Launch:
    host = "127.0.0.1"
    return Launch(
        argv=[
            str(install.binary("redis", "redis-server")),
            "--bind",
            host,
            "--port",
            str(ports["redis"]),
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            str(options.get("maxmemory", "64mb")),
            "--maxmemory-policy",
            "allkeys-lru",
        ],
        ready_url=f"tcp://{host}:{ports['redis']}",
        urls={"redis": f"redis://{host}:{ports['redis']}/0"},
        hint="Redis comes from Debian's redis-server package (`meshwatch-stack install redis`).",
    )


def _nats(workdir: Path, ports: dict[str, int], options: dict[str, Any]) -> Launch:
    host = "127.0.0.1"
    return Launch(
        argv=[
            str(install.binary("nats", "nats-server")),
            "--addr",
            host,
            "--port",
            str(ports["nats"]),
            "--http_port",
            str(ports["monitor"]),
            "--jetstream",
            "--store_dir",
            str(workdir / "jetstream"),
        ],
        ready_url=f"http://{host}:{ports['monitor']}/healthz",
        urls={"nats": f"nats://{host}:{ports['nats']}", "monitor": f"http://{host}:{ports['monitor']}"},
        hint="NATS comes from Debian's nats-server package (`meshwatch-stack install nats`).",
    )


# --- Kafka (the buffer between collector tiers) -----------------------------------------------


def kafka_cluster_id() -> str:
    """A fresh KRaft cluster id, spelled as Kafka's ``Uuid.toString`` (``StorageTool random-uuid``):
    16 random bytes, URL-safe base64 without padding. Made here to save one JVM start."""
    return base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def kafka_properties(workdir: Path, ports: dict[str, int], options: dict[str, Any]) -> dict[str, Any]:
    """``server.properties`` of a single combined broker+controller KRaft node on loopback."""
    host = "127.0.0.1"
    return {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@{host}:{ports['controller']}",
        "listeners": f"PLAINTEXT://{host}:{ports['broker']},CONTROLLER://{host}:{ports['controller']}",
        "advertised.listeners": f"PLAINTEXT://{host}:{ports['broker']}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": workdir / "data",
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": int(options.get("offsets_partitions", 4)),
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # A consumer group forms at once instead of after 3 s (tests start and kill consumers).
        "group.initial.rebalance.delay.ms": 0,
        # Topics made on first use get this many partitions, so a consumer group can share them.
        "num.partitions": int(options.get("partitions", 4)),
        "auto.create.topics.enable": str(options.get("auto_create_topics", True)).lower(),
        "message.max.bytes": int(options.get("message_max_bytes", 1048588)),
        "log.retention.hours": 24,
    }


def _kafka(workdir: Path, ports: dict[str, int], options: dict[str, Any]) -> Launch:
    host = "127.0.0.1"
    (workdir / "data").mkdir(exist_ok=True)
    config_path = workdir / "server.properties"
    config_path.write_text("".join(f"{k}={v}\n" for k, v in kafka_properties(workdir, ports, options).items()))
    java = str(install.java_home() / "bin" / "java")
    classpath = install.kafka_classpath()
    heap = options.get("heap", "256m")
    # Formatting the storage is a JVM of its own; chained in one shell so the start is not
    # blocked on it and a failure shows in the same log (the shell then exits: "exited while starting").
    fmt = [java, "-Xmx128m", "-cp", classpath, "kafka.tools.StorageTool", "format", "--ignore-formatted"]
    fmt += ["-t", kafka_cluster_id(), "-c", str(config_path)]
    server = [java, f"-Xms{min(128, _megabytes(heap))}m", f"-Xmx{heap}", "-XX:+UseSerialGC"]
    server += ["-Djava.awt.headless=true", "-cp", classpath, "kafka.Kafka", str(config_path)]
    return Launch(
        argv=["/bin/sh", "-c", f"{shlex.join(fmt)} && exec {shlex.join(server)}"],
        ready_url=f"kafka://{host}:{ports['broker']}",
        urls={"bootstrap": f"{host}:{ports['broker']}"},
        ready_timeout=90.0,
        hint="Kafka needs a JDK 17+ (`meshwatch-stack install kafka` puts its jars in the cache); its log says more.",
    )


def _megabytes(size: str) -> int:
    number, unit = int(size[:-1]), size[-1].lower()
    return number * 1024 if unit == "g" else number


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


SPECS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in [
        BackendSpec(
            "jaeger",
            "jaeger",
            ("query", "query_grpc", "otlp_grpc", "otlp_http", "health", "metrics"),
            {
                "query": 16686,
                "query_grpc": 16685,
                "otlp_grpc": 14317,
                "otlp_http": 14318,
                "health": 13133,
                "metrics": 14269,
            },
            _jaeger,
        ),
        BackendSpec("prometheus", "prometheus", ("http",), {"http": 9090}, _prometheus),
        BackendSpec("alertmanager", "alertmanager", ("http",), {"http": 9093}, _alertmanager),
        BackendSpec(
            "elasticsearch", "elasticsearch", ("http", "transport"), {"http": 9200, "transport": 9300}, _elasticsearch
        ),
        BackendSpec("redis", "redis", ("redis",), {"redis": 6379}, _redis),
        BackendSpec("nats", "nats", ("nats", "monitor"), {"nats": 4222, "monitor": 8222}, _nats),
        BackendSpec("kafka", "kafka", ("broker", "controller"), {"broker": 9092, "controller": 9094}, _kafka),
    ]
}
