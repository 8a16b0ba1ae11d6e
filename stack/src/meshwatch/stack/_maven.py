"""Resolve a Maven artifact and its runtime dependencies into one folder of jars.

Apache Kafka's tarball is not reachable from every machine, but Maven Central is: the
broker is the artifact ``org.apache.kafka:kafka_2.13`` and the ≈45 jars it depends on,
which run on the JDK without the tarball's scripts. Maven itself resolves the
dependency tree (``dependency:copy-dependencies`` on a generated POM), so version
mediation is Maven's, not a re-implementation of ours.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

from ._progress import InstallError, run_with_heartbeat

__all__ = ["copy_runtime_jars", "DEFAULT_REPO"]

DEFAULT_REPO = "https://repo1.maven.org/maven2"
#: The Maven plugin that copies the jars, pinned so two machines resolve the same way.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def _pom(artifacts: list[str]) -> str:
    deps = []
    for coordinate in artifacts:
        group, artifact, version = coordinate.split(":")
        deps.append(
            "    <dependency>"
            f"<groupId>{escape(group)}</groupId><artifactId>{escape(artifact)}</artifactId>"
            f"<version>{escape(version)}</version></dependency>"
        )
    return "\n".join(
        [
            '<project xmlns="http://maven.apache.org/POM/4.0.0">',
            "  <modelVersion>4.0.0</modelVersion>",
            "  <groupId>meshwatch.local</groupId><artifactId>runtime</artifactId><version>1</version>",
            "  <packaging>pom</packaging>",
            "  <dependencies>",
            *deps,
            "  </dependencies>",
            "</project>",
            "",
        ]
    )


def _settings(repo: str) -> str:
    """A settings.xml sending every request to ``repo`` (``MESHWATCH_MAVEN_REPO``, a mirror)."""
    return (
        "<settings><mirrors><mirror><id>meshwatch</id><mirrorOf>*</mirrorOf>"
        f"<url>{escape(repo)}</url></mirror></mirrors></settings>\n"
    )


def copy_runtime_jars(artifacts: list[str], target: Path, *, work: Path, log_path: Path, repo: str) -> None:
    """Put ``artifacts`` (``group:artifact:version``) and their runtime dependencies in ``target``.

    Maven downloads into a private local repository under ``work``, removed afterwards (the
    jars in ``target`` are all that is kept). ``target`` appears whole or not at all.
    """
    mvn = shutil.which("mvn")
    if not mvn:
        raise InstallError(
            "installing Kafka from Maven Central needs Maven: `apt-get install -y maven`, then rerun "
            "`meshwatch-stack install kafka`"
        )
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_pom(artifacts))
    command = [mvn, "-B", "-f", str(work / "pom.xml"), f"-Dmaven.repo.local={work / 'repository'}"]
    if repo.rstrip("/") != DEFAULT_REPO:
        (work / "settings.xml").write_text(_settings(repo))
        command += ["-s", str(work / "settings.xml")]
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    run_with_heartbeat(
        [
            *command,
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        what=f"resolve {', '.join(artifacts)} with Maven",
        log_path=log_path,
        env={**os.environ, "MAVEN_OPTS": os.environ.get("MAVEN_OPTS", "-Xmx256m")},
        count_lines=lambda line: line.startswith("Downloaded from"),
    )
    jars = sorted(staging.glob("*.jar"))
    if not jars:
        raise InstallError(f"Maven resolved no jars for {artifacts}; see {log_path}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    shutil.rmtree(work, ignore_errors=True)
