"""Install the real backends on a machine without Docker, once, into a versioned cache.

Each component knows how to check whether it is already installed (a cheap file
test, so a warm run costs milliseconds) and how to install itself:

* Go programs (Jaeger v2, Prometheus 3 and promtool, the reference OpenTelemetry
  Collector, telemetrygen) are built from their Go modules inside a small wrapper
  module of ours (``go get -tool`` then ``go build``), because their own
  ``go.mod`` files carry ``replace`` directives that ``go install`` refuses.
* Go programs of our own (``go/dashboard-schema``: Grafana's schema check over
  grafana-foundation-sdk) are built the same way from the source shipped in this
  package; their cache folder carries a hash of the source, so an edit rebuilds.
* Debian packages (Alertmanager and amtool, wrk, Redis, NATS) come from apt.
* Elasticsearch comes from Maven Central's ``integ-test-zip`` distribution and
  runs on the machine's JDK 17+ as an unprivileged user.
* Apache Kafka is its Maven Central artifact and runtime dependencies (a folder of
  jars, resolved by Maven), run on the same JDK.
* Node.js programs of our own (``js/otel-js-client``: the OpenTelemetry JS SDK as a client)
  get their pinned packages from the npm registry with ``npm ci`` and their lock file; the
  cache folder carries a hash of the folder, so an edit or a new pin reinstalls.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import _maven
from ._paths import cache_dir, is_root
from ._progress import InstallError, format_duration, run_with_heartbeat, say

__all__ = [
    "COMPONENTS",
    "Component",
    "BackendMissing",
    "ES_USER",
    "install",
    "binary",
    "es_home",
    "java_home",
    "kafka_classpath",
]

ES_VERSION = "8.19.21"
ES_USER = "meshwatch-es"
MAVEN_REPO = os.environ.get("MESHWATCH_MAVEN_REPO", _maven.DEFAULT_REPO)
KAFKA_VERSION = "4.4.0"
#: The broker and a logging backend for the slf4j 1.7 API it resolves to (logs go to stderr).
KAFKA_ARTIFACTS = (f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}", "org.slf4j:slf4j-simple:1.7.36")


class BackendMissing(RuntimeError):
    """A backend a test or the stack needs is not installed."""


@dataclass(frozen=True)
class Component:
    """One installable thing; ``binaries`` maps a short name to the file it provides."""

    name: str
    version: str
    description: str
    #: "go", "gosrc" (our own Go source), "ocb" (Collector Builder), "apt", "maven" (a zip),
    #: "maven-jars" (a classpath) or "npm" (our own Node.js source and its lock file)
    kind: str
    binaries: dict[str, str] = field(default_factory=dict)
    go_packages: tuple[str, ...] = ()
    apt_packages: tuple[str, ...] = ()
    expected_time: str = ""

    @property
    def folder(self) -> Path:
        return cache_dir() / f"{self.name}-{self.version}"

    def path_of(self, short: str) -> Path:
        target = self.binaries[short]
        if self.kind == "apt":
            found = shutil.which(target) or (f"/usr/bin/{target}" if Path(f"/usr/bin/{target}").exists() else None)
            return Path(found) if found else Path("/usr/bin") / target
        return self.folder / target

    def installed(self) -> bool:
        return all(self.path_of(short).exists() for short in self.binaries)


def _go(name: str, version: str, description: str, packages: dict[str, str], expected: str) -> Component:
    return Component(
        name=name,
        version=version,
        description=description,
        kind="go",
        binaries={short: short for short in packages},
        go_packages=tuple(f"{pkg}@{version}" for pkg in packages.values()),
        expected_time=expected,
    )


GO_SOURCES = Path(__file__).parent / "go"


def _source_hash(name: str) -> str:
    digest = hashlib.sha256()
    for path in sorted((GO_SOURCES / name).rglob("*.go")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


JS_SOURCES = Path(__file__).parent / "js"


def _js_source_hash(name: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in (JS_SOURCES / name).iterdir() if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


#: The Collector Builder release, and the core modules' release.
OTELCOL_CORE_VERSION = "v0.165.0"
#: Contrib's Kafka exporter and receiver: v0.165.1 is the newest patch of the release served here
#: (built together with core v0.165.0, which it accepts).
_KAFKA_CONTRIB_VERSION = "v0.165.1"
_CORE = "go.opentelemetry.io/collector"
_CONTRIB = "github.com/open-telemetry/opentelemetry-collector-contrib"

#: The reference collector for side-by-side benchmarks and interoperability tests: the same
#: pipeline shape as meshwatch's (OTLP in, batch, OTLP out / spanmetrics / Prometheus, Kafka
#: out and in), as ``(module, version)`` per builder section.
OTELCOL_MODULES: dict[str, list[tuple[str, str]]] = {
    "receivers": [
        (f"{_CORE}/receiver/otlpreceiver", OTELCOL_CORE_VERSION),
        (f"{_CONTRIB}/receiver/kafkareceiver", _KAFKA_CONTRIB_VERSION),
    ],
    "processors": [(f"{_CORE}/processor/batchprocessor", OTELCOL_CORE_VERSION)],
    "exporters": [
        (f"{_CORE}/exporter/otlpexporter", OTELCOL_CORE_VERSION),
        (f"{_CORE}/exporter/otlphttpexporter", OTELCOL_CORE_VERSION),
        (f"{_CORE}/exporter/nopexporter", OTELCOL_CORE_VERSION),
        (f"{_CORE}/exporter/debugexporter", OTELCOL_CORE_VERSION),
        (f"{_CONTRIB}/exporter/prometheusexporter", OTELCOL_CORE_VERSION),
        (f"{_CONTRIB}/exporter/kafkaexporter", _KAFKA_CONTRIB_VERSION),
    ],
    "connectors": [(f"{_CONTRIB}/connector/spanmetricsconnector", OTELCOL_CORE_VERSION)],
    "extensions": [(f"{_CONTRIB}/extension/storage/filestorage", OTELCOL_CORE_VERSION)],
}
#: Not in this build: contrib's ``exporter/loadbalancingexporter`` and
#: ``exporter/elasticsearchexporter``, because the Go module proxy refuses them at this release
#: (checked 2026-12-04, at v0.165.1 and v0.165.0: "403 Forbidden, This module version is not
#: available"); mixing releases within one build is not done. The loadbalancing exporter is in
#: the v0.161.0 build below (``OTELCOL_V0161_MODULES``); the Elasticsearch exporter is in none.


def _build_key(
    release: str, modules_by_section: dict[str, list[tuple[str, str]]], replaces: tuple[str, ...] = ()
) -> str:
    """A build's cache key: its release and a hash of its module list (and ``replaces``).

    Adding a module changes the binary, so it gets a folder of its own: a checkout that
    still names the old list keeps using the old build.
    """
    lines = [f"{s} {m} {v}" for s, mods in modules_by_section.items() for m, v in mods]
    listing = "\n".join(lines + [f"replaces {r}" for r in replaces])
    return f"{release}-{hashlib.sha256(listing.encode()).hexdigest()[:8]}"


def otelcol_version() -> str:
    """The cache key of the reference collector (core release and module-list hash)."""
    return _build_key(OTELCOL_CORE_VERSION, OTELCOL_MODULES)


#: A second reference build at v0.161.0, in its own cache folder, for the contrib modules that
#: cannot join the v0.165 build: ``tailsamplingprocessor`` is approved at v0.161.0 only, and
#: ``loadbalancingexporter`` is refused by the Go module proxy at v0.165.x but served at v0.161.0.
#: Every contrib and core module of it is at v0.161.0. The component keeps its first name,
#: ``otelcol-tailsampling``, for its users. Contrib's ``elasticsearchexporter`` is not in it
#: either: at v0.161.0 the proxy serves its version info (``go list -m``) but refuses its zip
#: (``go mod download``: 403, checked 2026-12-04); v0.164.0 and v0.160.0 are not served at all.
_V0161_VERSION = "v0.161.0"
OTELCOL_V0161_MODULES: dict[str, list[tuple[str, str]]] = {
    "receivers": [(f"{_CORE}/receiver/otlpreceiver", _V0161_VERSION)],
    "processors": [
        (f"{_CORE}/processor/batchprocessor", _V0161_VERSION),
        (f"{_CONTRIB}/processor/tailsamplingprocessor", _V0161_VERSION),
    ],
    "exporters": [
        (f"{_CORE}/exporter/otlpexporter", _V0161_VERSION),
        (f"{_CORE}/exporter/otlphttpexporter", _V0161_VERSION),
        (f"{_CORE}/exporter/nopexporter", _V0161_VERSION),
        (f"{_CORE}/exporter/debugexporter", _V0161_VERSION),
        (f"{_CONTRIB}/exporter/loadbalancingexporter", _V0161_VERSION),
    ],
    "extensions": [(f"{_CONTRIB}/extension/storage/filestorage", _V0161_VERSION)],
}
#: The loadbalancing exporter v0.161.0 requires ``aws-sdk-go-v2/service/servicediscovery`` v1.48.0
#: (its AWS Cloud Map resolver), whose zip the Go module proxy refuses (403, checked 2026-12-04);
#: the only version it lists is v1.40.2, which is served, so the build uses that. The Cloud Map
#: resolver is not used here (the tests use the static resolver).
OTELCOL_V0161_REPLACES = (
    "github.com/aws/aws-sdk-go-v2/service/servicediscovery"
    " => github.com/aws/aws-sdk-go-v2/service/servicediscovery v1.40.2",
)


#: Collector Builder components: (the builder's release, their modules with versions, go.mod replaces).
_OCB_BUILDS: dict[str, tuple[str, dict[str, list[tuple[str, str]]], tuple[str, ...]]] = {
    "otelcol": (OTELCOL_CORE_VERSION, OTELCOL_MODULES, ()),
    "otelcol-tailsampling": (_V0161_VERSION, OTELCOL_V0161_MODULES, OTELCOL_V0161_REPLACES),
}


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in [
        _go(
            "jaeger",
            "v1.75.0",
            "Jaeger v2 all-in-one (OTLP in, query API)",
            {"jaeger": "github.com/jaegertracing/jaeger/cmd/jaeger"},
            "≈1 min download + ≈4 min build on 2 cores",
        ),
        _go(
            "prometheus",
            "v0.316.0",
            "Prometheus 3 and promtool",
            {
                "prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
                "promtool": "github.com/prometheus/prometheus/cmd/promtool",
            },
            "≈1 min download + ≈6 min build on 2 cores",
        ),
        _go(
            "telemetrygen",
            "v0.161.0",
            "telemetrygen, the OpenTelemetry project's load generator (benchmarks)",
            {"telemetrygen": f"{_CONTRIB}/cmd/telemetrygen"},
            "≈1 min download + ≈2 min build on 2 cores",
        ),
        _go(
            "pint",
            "v0.87.0",
            "pint, Cloudflare's Prometheus rule linter (offline and against a live Prometheus)",
            {"pint": "github.com/cloudflare/pint/cmd/pint"},
            "≈1 min download + ≈3 min build on 2 cores",
        ),
        Component(
            name="dashboard-schema",
            version=f"v0.0.22-{_source_hash('dashboard-schema')}",
            description="Grafana's dashboard schema check (grafana-foundation-sdk/go Dashboard.UnmarshalJSONStrict)",
            kind="gosrc",
            binaries={"dashboard-schema": "dashboard-schema"},
            go_packages=("github.com/grafana/grafana-foundation-sdk/go@v0.0.22",),
            expected_time="≈10 s download + ≈30 s build",
        ),
        Component(
            name="otelcol",
            version=otelcol_version(),
            description="reference OpenTelemetry Collector (Collector Builder; benchmarks, Kafka interoperability)",
            kind="ocb",
            binaries={"otelcol": "otelcol-meshwatch-ref"},
            expected_time="≈1 min download + ≈4 min build on 2 cores",
        ),
        Component(
            name="otelcol-tailsampling",
            version=_build_key(_V0161_VERSION, OTELCOL_V0161_MODULES, OTELCOL_V0161_REPLACES),
            description=(
                "reference OpenTelemetry Collector v0.161.0: contrib's tail sampling processor and "
                "loadbalancing exporter (golden tests, interoperability test, bench)"
            ),
            kind="ocb",
            binaries={"otelcol-tailsampling": "otelcol-meshwatch-tailsampling"},
            expected_time="≈1 min download + ≈6 min build on 2 cores",
        ),
        Component(
            name="otel-js-client",
            version=f"sdk-2.12.1-{_js_source_hash('otel-js-client')}",
            description="the OpenTelemetry JS SDK (npm) as a client of the collector, for the interoperability test",
            kind="npm",
            binaries={"otel-js-client": "client.mjs"},
            expected_time="≈10 s download (63 npm packages)",
        ),
        Component(
            name="alertmanager",
            version="debian",
            description="Alertmanager and amtool (Debian package)",
            kind="apt",
            binaries={"alertmanager": "prometheus-alertmanager", "amtool": "amtool"},
            apt_packages=("prometheus-alertmanager",),
            expected_time="≈10 s",
        ),
        Component(
            name="elasticsearch",
            version=ES_VERSION,
            description="Elasticsearch (Maven Central integ-test-zip) on the JDK",
            kind="maven",
            binaries={"elasticsearch": f"elasticsearch-{ES_VERSION}/bin/elasticsearch"},
            expected_time="≈30 s download",
        ),
        Component(
            name="kafka",
            version=KAFKA_VERSION,
            description="Apache Kafka (KRaft; Maven Central jars) on the JDK",
            kind="maven-jars",
            binaries={"kafka": f"libs/kafka_2.13-{KAFKA_VERSION}.jar"},
            expected_time="≈45 s download (45 jars, 43 MB)",
        ),
        Component(
            name="wrk",
            version="debian",
            description="wrk HTTP load generator (Debian package), for benchmarks",
            kind="apt",
            binaries={"wrk": "wrk"},
            apt_packages=("wrk",),
            expected_time="≈5 s",
        ),
        Component(
            name="redis",
            version="debian",
            description="Redis server (Debian package), for the demo",
            kind="apt",
            binaries={"redis-server": "redis-server"},
            apt_packages=("redis-server",),
            expected_time="≈10 s",
        ),
        Component(
            name="chromium",
            version="debian",
            description="Chromium and its chromedriver (Debian packages), headless, for the console's browser tests",
            kind="apt",
            binaries={"chromium": "chromium", "chromedriver": "chromedriver"},
            apt_packages=("chromium", "chromium-driver"),
            expected_time="≈1 min",
        ),
        Component(
            name="nats",
            version="debian",
            description="NATS server (Debian package), the demo's message broker",
            kind="apt",
            binaries={"nats-server": "nats-server"},
            apt_packages=("nats-server",),
            expected_time="≈5 s",
        ),
    ]
}

#: What ``make test`` and ``make demo`` need; the rest is installed on demand (benchmarks).
DEFAULT_COMPONENTS = (
    "alertmanager",
    "elasticsearch",
    "jaeger",
    "prometheus",
    "redis",
    "nats",
    "chromium",
    "pint",
    "dashboard-schema",
    "otelcol-tailsampling",  # the golden test of the tail_sampling processor
    "kafka",  # ≈15-45 s: 45 jars from Maven Central
    "otel-js-client",  # ≈10 s: the OpenTelemetry JS SDK from npm, for the interoperability test
    "otelcol",  # ≈4 min of Go build on an idle 2-core machine: the Kafka interoperability tests
)


def binary(component: str, short: str | None = None) -> Path:
    """Path of an installed binary, or a ``BackendMissing`` that says how to install it."""
    comp = COMPONENTS[component]
    short = short or next(iter(comp.binaries))
    path = comp.path_of(short)
    if not path.exists():
        raise BackendMissing(
            f"{comp.description} is not installed ({path} missing). Install it with "
            f"`make backends` or `.venv/bin/meshwatch-stack install {component}` "
            f"(takes {comp.expected_time} the first time, then it is cached in {cache_dir()})."
        )
    return path


def es_home() -> Path:
    return binary("elasticsearch").parent.parent


def kafka_classpath() -> str:
    """The ``-cp`` of the installed Kafka broker (every jar of its folder)."""
    return str(binary("kafka").parent / "*")


def java_home() -> Path:
    """A JDK for Elasticsearch and Kafka: ``ES_JAVA_HOME`` if set, else the ``java`` on PATH."""
    explicit = os.environ.get("ES_JAVA_HOME")
    if explicit:
        return Path(explicit)
    java = shutil.which("java")
    if not java:
        raise BackendMissing(
            "No Java runtime found for Elasticsearch. Install one with "
            "`apt-get install -y openjdk-17-jre-headless`, or set ES_JAVA_HOME to a JDK 17+."
        )
    return Path(os.path.realpath(java)).parent.parent


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """One installer at a time per machine (two pytest sessions, make demo and make test)."""
    lock_path = cache_dir() / ".install.lock"
    with lock_path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another install is running; waiting for it to finish…")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(names: list[str] | None = None, *, force: bool = False) -> list[str]:
    """Install the named components (default: what the test suite needs); return what was installed."""
    wanted = list(names or DEFAULT_COMPONENTS)
    unknown = [n for n in wanted if n not in COMPONENTS]
    if unknown:
        raise InstallError(f"unknown component(s) {unknown}; choose from {sorted(COMPONENTS)}")
    done: list[str] = []
    with _install_lock():
        apt_needed = [
            COMPONENTS[n] for n in wanted if COMPONENTS[n].kind == "apt" and (force or not COMPONENTS[n].installed())
        ]
        if apt_needed:
            _install_apt(apt_needed)
            done += [c.name for c in apt_needed]
        for name in wanted:
            comp = COMPONENTS[name]
            if comp.kind == "apt":
                continue
            if comp.installed() and not force:
                continue
            started = time.monotonic()
            say(f"installing {comp.description} {comp.version} (first time only; {comp.expected_time})")
            if comp.kind == "go":
                _install_go(comp)
            elif comp.kind == "gosrc":
                _install_go_source(comp)
            elif comp.kind == "maven":
                _install_elasticsearch(comp)
            elif comp.kind == "maven-jars":
                _install_kafka(comp)
            elif comp.kind == "ocb":
                _install_otelcol(comp)
            elif comp.kind == "npm":
                _install_npm(comp)
            say(f"installed {comp.name} {comp.version} in {format_duration(time.monotonic() - started)}")
            done.append(name)
        if any(COMPONENTS[n].kind in ("go", "gosrc", "ocb") for n in done):
            _clean_go_caches()
        if "elasticsearch" in wanted or "kafka" in wanted:
            java_home()  # fail now, not at first start, if there is no JDK
        if "elasticsearch" in wanted:
            _ensure_es_user()
    for name in wanted:
        if not COMPONENTS[name].installed():
            raise InstallError(f"{name} still missing after install; see {cache_dir() / 'logs'}")
    return done


def _logs() -> Path:
    path = cache_dir() / "logs"
    path.mkdir(exist_ok=True)
    return path


# --- Go --------------------------------------------------------------------------------


def _go_env() -> dict[str, str]:
    """Build in a private Go module and build cache inside ours.

    Jaeger and Prometheus pull in ≈3 GB of modules and leave ≈3.5 GB of build
    cache; keeping them private lets us delete them once the binaries exist
    (``MESHWATCH_KEEP_GO_CACHE=1`` keeps them, e.g. to rebuild quickly).
    """
    go_dir = cache_dir() / "go"
    return {
        **os.environ,
        "GOFLAGS": "-buildvcs=false",
        "GOMODCACHE": str(go_dir / "mod"),
        "GOCACHE": str(go_dir / "build"),
    }


def _clean_go_caches() -> None:
    go = shutil.which("go")
    go_dir = cache_dir() / "go"
    if not go or not go_dir.exists() or os.environ.get("MESHWATCH_KEEP_GO_CACHE") == "1":
        return
    say(f"removing the Go build and module caches in {go_dir} (binaries stay; MESHWATCH_KEEP_GO_CACHE=1 keeps them)")
    subprocess.run([go, "clean", "-cache", "-modcache"], env=_go_env(), capture_output=True)
    shutil.rmtree(go_dir, ignore_errors=True)
    shutil.rmtree(cache_dir() / "src", ignore_errors=True)


def _install_go(comp: Component) -> None:
    go = shutil.which("go")
    if not go:
        raise InstallError(
            f"building {comp.name} needs the Go toolchain (1.24+): install it from https://go.dev/dl "
            "or `apt-get install golang`, then rerun `make backends`."
        )
    src = cache_dir() / "src" / f"{comp.name}-{comp.version}"
    src.mkdir(parents=True, exist_ok=True)
    log = _logs() / f"{comp.name}-{comp.version}.log"
    env = _go_env()
    if not (src / "go.mod").exists():
        run_with_heartbeat(
            [go, "mod", "init", f"meshwatch.local/{comp.name}-build"],
            what="go mod init",
            log_path=log,
            cwd=src,
            env=env,
        )
    for pkg in comp.go_packages:
        run_with_heartbeat(
            [go, "get", "-tool", pkg],
            what=f"download {pkg}",
            log_path=log,
            cwd=src,
            env=env,
            count_lines=lambda line: line.startswith("go: downloading"),
        )
    comp.folder.mkdir(parents=True, exist_ok=True)
    for short, pkg in zip(comp.binaries, comp.go_packages, strict=True):
        target = comp.folder / short
        tmp = target.with_suffix(".partial")
        run_with_heartbeat(
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), pkg.split("@")[0]],
            what=f"build {short}",
            log_path=log,
            cwd=src,
            env=env,
        )
        tmp.rename(target)  # atomic: a half-built binary never looks installed


def _install_go_source(comp: Component) -> None:
    """Build one of our own Go programs (``go/<name>/*.go``) against its pinned modules."""
    go = shutil.which("go")
    if not go:
        raise InstallError(f"building {comp.name} needs the Go toolchain (1.24+); install it, then rerun.")
    src = cache_dir() / "src" / f"{comp.name}-{comp.version}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for path in (GO_SOURCES / comp.name).glob("*.go"):
        shutil.copy(path, src / path.name)
    log = _logs() / f"{comp.name}-{comp.version}.log"
    env = _go_env()
    steps = [
        ([go, "mod", "init", f"meshwatch.local/{comp.name}"], "go mod init"),
        *(([go, "get", pkg], f"download {pkg}") for pkg in comp.go_packages),
    ]
    for command, what in steps:
        run_with_heartbeat(command, what=what, log_path=log, cwd=src, env=env)
    comp.folder.mkdir(parents=True, exist_ok=True)
    for short, target in comp.binaries.items():
        tmp = (comp.folder / target).with_suffix(".partial")
        run_with_heartbeat(
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), "."],
            what=f"build {short}",
            log_path=log,
            cwd=src,
            env=env,
        )
        tmp.rename(comp.folder / target)


def _install_npm(comp: Component) -> None:
    """``npm ci`` our own Node.js program's pinned packages, then put its script in place last,
    so a failed or interrupted install is not taken for an installed one."""
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        raise InstallError(f"{comp.name} needs Node.js 20+ with npm on PATH; install them, then rerun.")
    source = JS_SOURCES / comp.name
    shutil.rmtree(comp.folder, ignore_errors=True)
    comp.folder.mkdir(parents=True)
    scripts = [p for p in source.iterdir() if p.suffix == ".mjs"]
    for path in source.iterdir():
        if path.is_file() and path not in scripts:
            shutil.copy(path, comp.folder / path.name)
    run_with_heartbeat(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        what=f"npm ci ({comp.name})",
        log_path=_logs() / f"{comp.name}-{comp.version}.log",
        cwd=comp.folder,
    )
    for path in scripts:
        shutil.copy(path, comp.folder / path.name)


def _install_otelcol(comp: Component) -> None:
    go = shutil.which("go")
    if not go:
        raise InstallError("building the reference collector needs the Go toolchain (1.24+)")
    src = cache_dir() / "src" / f"{comp.name}-{comp.version}"
    src.mkdir(parents=True, exist_ok=True)
    log = _logs() / f"{comp.name}-{comp.version}.log"
    gobin = src / "bin"
    env = {**_go_env(), "GOBIN": str(gobin)}
    builder_version, modules_by_section, replaces = _OCB_BUILDS[comp.name]
    builder = gobin / "builder"
    if not builder.exists():
        run_with_heartbeat(
            [go, "install", f"{_CORE}/cmd/builder@{builder_version}"],
            what="install the OpenTelemetry Collector Builder",
            log_path=log,
            env=env,
            count_lines=lambda line: line.startswith("go: downloading"),
        )
    dist_name = next(iter(comp.binaries.values()))
    lines = [
        "dist:",
        f"  name: {dist_name}",
        "  description: reference OpenTelemetry Collector for meshwatch benchmarks",
        f"  output_path: {src / 'dist'}",
    ]
    for section, modules in modules_by_section.items():
        lines.append(f"{section}:")
        lines += [f"  - gomod: {module} {version}" for module, version in modules]
    if replaces:
        lines.append("replaces:")
        lines += [f"  - {replace}" for replace in replaces]
    manifest = src / "manifest.yaml"
    manifest.write_text("\n".join(lines) + "\n")
    run_with_heartbeat(
        [str(builder), f"--config={manifest}"],
        what="build the reference collector",
        log_path=log,
        env=env,
        count_lines=lambda line: "downloading" in line,
    )
    comp.folder.mkdir(parents=True, exist_ok=True)
    tmp = comp.folder / f"{dist_name}.partial"
    shutil.copy(src / "dist" / dist_name, tmp)
    tmp.rename(comp.folder / dist_name)


# --- apt -------------------------------------------------------------------------------


def _install_apt(comps: list[Component]) -> None:
    packages = sorted({p for c in comps for p in c.apt_packages})
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if is_root():
        prefix: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        raise InstallError(
            f"{', '.join(packages)} come from Debian's packages and need root: run "
            f"`sudo apt-get update && sudo {' '.join(command)}`, then rerun."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = _logs() / "apt.log"
    say(f"installing Debian packages: {', '.join(packages)}")
    run_with_heartbeat([*prefix, "apt-get", "update", "-q"], what="apt-get update", log_path=log, env=env)
    run_with_heartbeat([*prefix, *command], what="apt-get install", log_path=log, env=env)
    # Packages may start a system service with the distribution's config and ports;
    # the stack runs its own processes, so stop those.
    for pkg in packages:
        subprocess.run([*prefix, "service", pkg, "stop"], capture_output=True, env=env)


# --- Elasticsearch ------------------------------------------------------------------------


def _download(url: str, target: Path) -> None:
    tmp = target.with_suffix(target.suffix + ".partial")
    say(f"  downloading {url}")
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=60) as response, tmp.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        got, next_report = 0, 0.1
        while chunk := response.read(1 << 20):
            out.write(chunk)
            got += len(chunk)
            if total and got / total >= next_report:
                say(f"  … {got >> 20} of {total >> 20} MB ({format_duration(time.monotonic() - started)})")
                next_report += 0.1
    tmp.rename(target)


def _install_elasticsearch(comp: Component) -> None:
    base = f"{MAVEN_REPO}/org/elasticsearch/distribution/integ-test-zip/elasticsearch/{comp.version}"
    name = f"elasticsearch-{comp.version}.zip"
    downloads = cache_dir() / "downloads"
    downloads.mkdir(exist_ok=True)
    archive = downloads / name
    try:
        expected_sha1 = urllib.request.urlopen(f"{base}/{name}.sha1", timeout=30).read().decode().split()[0]
        if not archive.exists() or _sha1(archive) != expected_sha1:
            _download(f"{base}/{name}", archive)
    except OSError as exc:
        raise InstallError(
            f"could not download Elasticsearch {comp.version} from {base}: {exc}. "
            "Check access to Maven Central, or set MESHWATCH_MAVEN_REPO to a mirror."
        ) from exc
    actual = _sha1(archive)
    if actual != expected_sha1:
        archive.unlink()
        raise InstallError(
            f"{name}: SHA-1 {actual} does not match Maven Central's {expected_sha1}; rerun to download again"
        )
    staging = comp.folder.with_name(comp.folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            extracted = Path(zf.extract(info, staging))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                extracted.chmod(mode | stat.S_IRUSR | stat.S_IROTH | (stat.S_IXOTH if mode & 0o100 else 0))
    for path in staging.rglob("*"):  # readable by the unprivileged ES user
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    shutil.rmtree(comp.folder, ignore_errors=True)
    staging.rename(comp.folder)


def _sha1(path: Path) -> str:
    digest = hashlib.sha1(usedforsecurity=False)  # matches Maven Central's .sha1 file
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- Kafka -------------------------------------------------------------------------------


def _install_kafka(comp: Component) -> None:
    _maven.copy_runtime_jars(
        list(KAFKA_ARTIFACTS),
        comp.folder / "libs",
        work=cache_dir() / "src" / f"{comp.name}-{comp.version}",
        log_path=_logs() / f"{comp.name}-{comp.version}.log",
        repo=MAVEN_REPO,
    )


def _ensure_es_user() -> None:
    """Elasticsearch refuses to run as root: as root, run it as a system user of ours."""
    if not is_root():
        return
    try:
        pwd.getpwnam(ES_USER)
    except KeyError:
        say(f"creating system user {ES_USER} to run Elasticsearch (it refuses to run as root)")
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ES_USER],
            check=True,
        )
