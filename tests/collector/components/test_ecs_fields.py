"""The Elasticsearch log documents follow the Elastic Common Schema: ECS's names and types.

Checked against ECS's own field reference (``data/ecs-8.17.0-fields.tsv``, every field of
ECS 8.17.0's ``generated/ecs/ecs_flat.yml``), not against a list of our own: every leaf of
the index template is either an ECS field with a type of the same family, or one of the few
fields ECS has no name for, listed here with why. Before this, documents carried
``log.severity_number``, ``service.instance.id`` and ``deployment.environment``, which
Kibana's and Elastic's log views do not know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshwatch.collector.exporters._es_docs import ECS_VERSION, index_template

REFERENCE = Path(__file__).parent / "data" / f"ecs-{ECS_VERSION}-fields.tsv"
#: Leaves ECS has no field for, kept on purpose.
OWN = {
    "service.namespace": "OTel's service.namespace; ECS has no namespace for a service (it is part of Prometheus' job)",
    "attributes": "the record's other attributes, flattened (ECS would put them under labels, keyword-only)",
    "resource": "every resource attribute, flattened, so nothing the SDK sent is lost",
    "scope.name": "the OTel instrumentation scope",
    "scope.version": "the OTel instrumentation scope",
    "message.keyword": "a keyword sub-field of message, for exact matches and aggregations",
}
#: Mapping types that ECS's type may be served by (same family in Elasticsearch).
FAMILIES = {
    "date": {"date", "date_nanos"},
    "keyword": {"keyword"},
    "long": {"long"},
    "match_only_text": {"text", "match_only_text"},
    "wildcard": {"text", "wildcard", "keyword"},
    "text": {"text"},
}


def _ecs() -> dict[str, str]:
    lines = REFERENCE.read_text().splitlines()
    return dict(line.split("\t") for line in lines if line and not line.startswith("#"))


def _leaves(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    leaves: dict[str, str] = {}
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if "properties" in spec:
            leaves.update(_leaves(spec["properties"], f"{path}."))
            continue
        leaves[path] = spec["type"]
        for sub, sub_spec in spec.get("fields", {}).items():
            leaves[f"{path}.{sub}"] = sub_spec["type"]
    return leaves


def _problems(leaves: dict[str, str], ecs: dict[str, str]) -> list[str]:
    problems = []
    for field, mapped in sorted(leaves.items()):
        if field in OWN:
            continue
        if field not in ecs:
            problems.append(f"{field}: not an ECS {ECS_VERSION} field (use ECS's name, or list it in OWN with why)")
        elif mapped not in FAMILIES.get(ecs[field], {ecs[field]}):
            problems.append(f"{field}: mapped as {mapped}, ECS says {ecs[field]}")
    return problems


def test_every_template_field_is_ecs_or_listed_as_our_own() -> None:
    template = index_template("meshwatch-logs", 1, 0)
    leaves = _leaves(template["template"]["mappings"]["properties"])
    assert "ecs.version" in leaves and "event.severity" in leaves and "service.node.name" in leaves
    assert _problems(leaves, _ecs()) == []


def test_a_non_ecs_name_or_type_is_reported() -> None:
    """Positive control: the field names this schema used before, and a wrong type, are caught."""
    ecs = _ecs()
    assert len(ecs) > 1500 and ecs["event.severity"] == "long"
    planted = {"log.severity_number": "byte", "service.instance.id": "keyword", "event.severity": "keyword"}
    problems = _problems(planted, ecs)
    assert len(problems) == 3, problems
    assert any("log.severity_number: not an ECS" in p for p in problems)
    assert any("event.severity: mapped as keyword, ECS says long" in p for p in problems)
