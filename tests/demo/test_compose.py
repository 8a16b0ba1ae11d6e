"""docker-compose.yml, checked as far as a machine without a Docker engine allows.

Each test is a way the compose stack would fail for a user: a file Compose rejects,
a mount or build context that does not exist, a port published on every interface
or twice, a service of the local demo missing, a URL that points nowhere, a
Prometheus or Alertmanager config its own tool rejects.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from meshwatch.demo.config import DEFAULT_PORTS, SERVICES, env_name
from meshwatch.demo.platform import DEMO_SERVICES
from meshwatch.stack import binary

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = REPO / "deploy" / "compose-spec.schema.json"
#: Everything `meshwatch-demo up` runs on this machine, by the name it has in compose.
LOCAL_PLATFORM = {
    *DEMO_SERVICES,
    "collector",
    "oncall",
    "loadgen",
    "jaeger",
    "prometheus",
    "alertmanager",
    "elasticsearch",
    "redis",
    "nats",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_compose_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_the_schema_rejects_what_compose_rejects() -> None:
    """The vendored schema really is strict: a misspelt key and a wrong type fail."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors({"services": {"a": {"image": "x", "prots": ["1:1"]}}}))
    assert list(validator.iter_errors({"services": {"a": {"image": "x", "environment": 5}}}))


def test_every_mounted_path_exists(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in _services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source in named:
                continue
            assert source.startswith("."), f"{name}: mount {source!r} is neither relative nor a named volume"
            assert (REPO / source).exists(), f"{name}: mounted path {source} does not exist"


def test_every_image_is_pinned_and_every_build_context_exists(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: pin a version, not {image!r}"
        if "build" in service:
            context = REPO / service["build"]["context"]
            dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
            assert context.is_dir() and dockerfile.is_file(), f"{name}: build {context} / {dockerfile} missing"


def test_dockerfile_copies_only_what_exists() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    sources = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    installed = re.search(r"pip install (.+)", dockerfile)
    assert installed
    for dist in installed.group(1).split():
        assert (REPO / dist / "pyproject.toml").is_file(), f"Dockerfile installs {dist}, which is no distribution"


def test_ports_are_published_on_loopback_only_and_never_twice(compose: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, service in _services(compose).items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: write ports as 'HOST_IP:HOST:CONTAINER'"
            host_ip, host_port, _container = port.split(":")
            assert host_ip == "127.0.0.1", f"{name}: {port} is published beyond loopback"
            assert int(host_port) not in seen, f"{name} and {seen.get(int(host_port))} both publish {host_port}"
            seen[int(host_port)] = name


def test_every_process_of_the_local_demo_has_a_compose_service(compose: dict[str, Any]) -> None:
    missing = LOCAL_PLATFORM - set(_services(compose))
    assert not missing, f"the local demo runs {sorted(missing)} but docker-compose.yml does not"
    assert "grafana" in _services(compose)


def test_demo_services_run_on_their_usual_ports_and_find_their_peers(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in SERVICES:
        command = services[name]["command"]
        assert command[command.index("serve") + 1] == name
        port = int(command[command.index("--port") + 1])
        assert port == DEFAULT_PORTS[name]
        assert f"127.0.0.1:{port}:{port}" in services[name]["ports"]
        env = services[name]["environment"]
        assert env["OTEL_SERVICE_NAME"] == name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4317"
        for peer in SERVICES:
            assert env[env_name(peer)] == f"http://{peer}:{DEFAULT_PORTS[peer]}"
    assert services["fraud"]["environment"]["OTEL_PROPAGATORS"] == "jaeger"
    assert "jaeger" in services["payments"]["environment"]["OTEL_PROPAGATORS"].split(",")


@pytest.mark.integration  # runs the installed promtool
def test_prometheus_config_is_valid_and_scrapes_the_collector(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    exporter = jobs["meshwatch-collector-exporter"]
    assert exporter["honor_labels"] is True
    assert exporter["static_configs"][0]["targets"] == ["collector:8889"]
    assert jobs["meshwatch-collector"]["static_configs"][0]["targets"] == ["collector:8888"]
    # promtool checks the config and every rule file, with the rules where compose mounts them.
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "alerts" / "rules", rules)
    config["rule_files"] = [str(rules / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    promtool = binary("prometheus", "promtool")
    result = subprocess.run([str(promtool), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"SUCCESS" in result.stdout + result.stderr


@pytest.mark.integration  # runs the installed amtool
def test_alertmanager_config_is_the_projects_with_the_compose_webhook() -> None:
    def body(path: Path) -> str:
        return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))

    deployed = body(REPO / "deploy" / "alertmanager.yml")
    assert deployed == body(REPO / "alerts" / "alertmanager.yml").replace("http://127.0.0.1:9095", "http://oncall:9095")
    amtool = binary("alertmanager", "amtool")
    result = subprocess.run(
        [str(amtool), "check-config", str(REPO / "deploy" / "alertmanager.yml")], capture_output=True
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_grafana_finds_its_dashboards_and_datasources(compose: dict[str, Any]) -> None:
    """Provisioning in the container points at the mounted JSON and at compose services that exist."""
    grafana = _services(compose)["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    for provider_file in (REPO / "dashboards" / "provisioning" / "dashboards").glob("*.y*ml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            path = provider["options"]["path"]
            source = next((src for dst, src in mounts.items() if path == dst or path.startswith(f"{dst}/")), None)
            assert source, f"{provider_file.name}: Grafana reads dashboards from {path}, which nothing mounts"
            assert list((REPO / source).glob("*.json")), f"no dashboards in {source}"
    services = _services(compose)
    for source_file in (REPO / "dashboards" / "provisioning" / "datasources").glob("*.y*ml"):
        for datasource in yaml.safe_load(source_file.read_text())["datasources"]:
            url = urllib.parse.urlsplit(datasource["url"])
            assert url.hostname in services, f"datasource {datasource['name']} points at {url.hostname}"


#: Jaeger tags each release twice: the Go module's v1 tag and the v2 binary's (the image tag).
JAEGER_IMAGE_OF_MODULE = {"v1.75.0": "2.12.0"}


def test_jaeger_keeps_traces_in_the_compose_elasticsearch_as_the_stack_does(compose: dict[str, Any]) -> None:
    """The compose Jaeger is the release meshwatch-stack builds, on Elasticsearch with the stack's storage keys."""
    from meshwatch.stack.backends import SPECS, jaeger_config
    from meshwatch.stack.installer import COMPONENTS

    services = _services(compose)
    jaeger = services["jaeger"]
    assert jaeger["image"] == f"jaegertracing/jaeger:{JAEGER_IMAGE_OF_MODULE[COMPONENTS['jaeger'].version]}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in jaeger["volumes"]}
    config_path = jaeger["command"][jaeger["command"].index("--config") + 1].removeprefix("file:")
    deployed = yaml.safe_load((REPO / mounts[config_path]).read_text())
    stack = jaeger_config(
        dict.fromkeys(SPECS["jaeger"].ports, 0), {"storage": "elasticsearch", "elasticsearch_url": "http://x:9200"}
    )
    backend = deployed["extensions"]["jaeger_storage"]["backends"]["traces"]["elasticsearch"]
    assert backend["server_urls"] == ["http://elasticsearch:9200"]
    expected = stack["extensions"]["jaeger_storage"]["backends"]["traces"]["elasticsearch"]
    assert {**backend, "server_urls": expected["server_urls"]} == expected
    assert deployed["exporters"] == stack["exporters"]
    assert deployed["extensions"]["jaeger_query"]["storage"] == stack["extensions"]["jaeger_query"]["storage"]
    # Jaeger gives up when Elasticsearch does not answer at its start: compose waits for it to be healthy.
    assert jaeger["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    assert "healthcheck" in services["elasticsearch"]
    # What the collector sends to (jaeger:4317) is what Jaeger listens on inside the network.
    grpc = deployed["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert services["collector"]["environment"]["MESHWATCH_JAEGER_OTLP_ENDPOINT"] == f"jaeger:{grpc.rsplit(':')[-1]}"
    assert "127.0.0.1:16686:16686" in jaeger["ports"]
    assert deployed["extensions"]["jaeger_query"]["http"]["endpoint"] == "0.0.0.0:16686"


@pytest.mark.integration
def test_jaeger_itself_accepts_the_compose_and_the_stack_configs(tmp_path: Path) -> None:
    """`jaeger validate` (the release the stack builds) on both configs; a misspelt key is its positive control."""
    from meshwatch.stack.backends import SPECS, jaeger_config

    jaeger = str(binary("jaeger"))

    def validate(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([jaeger, "validate", "--config", f"file:{path}"], capture_output=True, text=True)

    stack_config = tmp_path / "stack-jaeger.yaml"
    ports = {name: 20000 + i for i, name in enumerate(SPECS["jaeger"].ports)}
    options = {"storage": "elasticsearch", "elasticsearch_url": "http://127.0.0.1:9200"}
    stack_config.write_text(json.dumps(jaeger_config(ports, options)))
    for path in (REPO / "deploy" / "jaeger.yaml", stack_config):
        result = validate(path)
        assert result.returncode == 0, f"{path.name}: {result.stdout}{result.stderr}"
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "deploy" / "jaeger.yaml").read_text().replace("index_prefix:", "index_prefx:"))
    result = validate(bad)
    assert result.returncode != 0 and "index_prefx" in result.stdout + result.stderr
