"""Issue 13 item 7 at the real backends: agents → loadbalancing → gateways → Prometheus and Elasticsearch.

The load-balancing test (``test_two_tier_loadbalancing``) counts spans at sinks; this one checks
what a user looks at. Two agents route traces and logs by trace id to two gateways; each gateway
keeps a span sink (for the accounting), derives ``spanmetrics``/``servicegraph`` and remote-writes
them to the session's Prometheus (each gateway's series labelled ``collector_gateway`` and
``collector_run``, its process incarnation, so a double count or a counter reset is visible), and
writes the logs to its own Elasticsearch indices. Prometheus also scrapes every collector's self-metrics.
Under load one gateway is SIGKILLed, left down past ``failover.unhealthy_after`` and restarted;
the two halves of each trace are named after the kill with services of their own ("after"), so
the RED metrics of the spans sent while and after the gateway was down can be counted exactly.

Checked at the backends:
* every log record acknowledged to the agents is in Elasticsearch once (counted by its unique
  message, after a refresh);
* the SERVER-span call counts in Prometheus, summed over the gateways, equal the server spans
  acknowledged after the kill (plus any copy the sinks show was delivered twice); each gateway's
  series equals what its sink received, also before the kill on the gateway that stayed up; the
  killed gateway's counts short of what it had received are what it had not flushed (reported);
* a servicegraph edge frontend → backend in Prometheus from each gateway, one per trace whose
  halves met there;
* the kill as Prometheus shows it: the killed gateway's ``up`` went to 0, both agents' ``backend_up``
  for it went to 0 and back to 1, and they rerouted its data.
Positive controls: a document planted twice and one deleted in Elasticsearch, one gateway left
out of the sum, and spans planted twice at a gateway each put the counts off by what was planted.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from elasticsearch import Elasticsearch

from meshwatch.collector.otlp_sink import OtlpSink, otlp_sink
from meshwatch.stack.testing import eventually

from .test_loadbalancing import EXPORT, balancer
from .test_two_tier_loadbalancing import _PLACEHOLDER, HalfTraceLoad, _span_id, accounting, tally
from .test_two_tier_loadbalancing import gateway as lb_gateway

pytestmark = pytest.mark.integration

SERVER, CLIENT = 2, 3
T = TypeVar("T")
RUN = "MW_TEST_GATEWAY_RUN"  # the gateway's incarnation, a label on its series


def gateway(sink: OtlpSink, name: str, prometheus: Any, elasticsearch: Any, prefix: str) -> dict[str, Any]:
    """The load-balancing test's gateway (sink, spanmetrics, servicegraph), its metrics remote-written
    to Prometheus with its name and incarnation as labels, and logs into Elasticsearch."""
    config = lb_gateway(sink)
    config["processors"] = {
        "resource/gateway": {
            "attributes": [
                {"key": "collector.gateway", "value": name, "action": "upsert"},
                {"key": "collector.run", "value": f"${{env:{RUN}}}", "action": "upsert"},
            ]
        }
    }
    config["exporters"]["prometheusremotewrite"] = {
        "endpoint": f"{prometheus.url}/api/v1/write",
        "resource_to_telemetry_conversion": {"enabled": True},
    }
    config["exporters"]["elasticsearch"] = {"endpoints": [elasticsearch.url], "index_prefix": prefix}
    pipelines = config["service"]["pipelines"]
    pipelines["metrics"] = {
        "receivers": ["spanmetrics", "servicegraph"],
        "processors": ["resource/gateway"],
        "exporters": ["prometheusremotewrite"],
    }
    pipelines["logs"] = {"receivers": ["otlp"], "exporters": ["elasticsearch", "otlphttp/sink"]}
    return config


def agent(endpoints: list[str]) -> dict[str, Any]:
    """The load-balancing test's agent, with logs routed by trace id too."""
    config = balancer(endpoints)
    config["service"]["pipelines"]["logs"] = {"receivers": ["otlp"], "exporters": ["loadbalancing"]}
    return config


# --- Prometheus -----------------------------------------------------------------------------------


def query(prometheus: Any, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def by_gateway(prometheus: Any, selector: str) -> dict[tuple[str, str], float]:
    """The last value of ``selector``'s series, summed per (gateway, incarnation)."""
    out: Counter[tuple[str, str]] = Counter()
    for series in query(prometheus, f"last_over_time({selector}[10m])"):
        labels = series["metric"]
        out[labels.get("collector_gateway", ""), labels.get("collector_run", "")] += float(series["value"][1])
    return dict(out)


def server_calls(prometheus: Any, service: str) -> dict[tuple[str, str], float]:
    return by_gateway(
        prometheus, f'traces_span_metrics_calls_total{{service_name="{service}",span_kind="SPAN_KIND_SERVER"}}'
    )


def edges(prometheus: Any, client: str, server: str) -> dict[tuple[str, str], float]:
    return by_gateway(prometheus, f'traces_service_graph_request_total{{client="{client}",server="{server}"}}')


def settles_at(fetch: Callable[[], T], want: T, what: str, timeout: float = 30) -> T:
    """Wait until ``fetch()`` equals ``want`` (Prometheus receives a gateway's flush every second);
    on a timeout, fail with what it last returned."""
    last: list[T] = []

    def check() -> bool:
        last[:] = [fetch()]
        return last[0] == want

    try:
        eventually(check, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {last!r} instead of {want!r}") from exc
    return last[0]


def per_gateway(values: dict[tuple[str, str], float]) -> dict[str, float]:
    out: Counter[str] = Counter()
    for (name, _), value in values.items():
        out[name] += value
    return dict(out)


def server_copies(sink: OtlpSink, service: str) -> Counter[tuple[str, str]]:
    """Every copy of the SERVER spans of ``service`` the sink received."""
    with sink.lock:
        return Counter(
            (s.trace_id, s.span_id) for s in sink.spans if s.kind == SERVER and s.resource["service.name"] == service
        )


def halves_met(sink: OtlpSink, services: tuple[str, str]) -> tuple[set[str], int]:
    """Traces of ``services`` whose CLIENT and SERVER spans both reached this sink (an edge each), and
    the pairs among them that arrived twice (which servicegraph may pair twice)."""
    with sink.lock:
        copies = Counter(
            (s.trace_id, s.span_id)
            for s in sink.spans
            if s.kind in (SERVER, CLIENT) and s.resource["service.name"] in services
        )
    c, s = _span_id(0, 0).hex(), _span_id(1, 0).hex()
    whole = {t for t, sid in copies if sid == c} & {t for t, sid in copies if sid == s}
    return whole, sum(min(copies[(t, c)], copies[(t, s)]) - 1 for t in whole)


def logs_at(sink: OtlpSink) -> list[Any]:
    with sink.lock:
        return [record.body for record in sink.logs]


# --- Elasticsearch --------------------------------------------------------------------------------


def copies_in_es(es: Elasticsearch, index: str) -> tuple[Counter[str], int]:
    """How many documents each record id (the message) has in ``index``, and how many documents it
    holds in all, both read from one point in time after a refresh."""
    es.indices.refresh(index=index)
    pit = {"id": es.open_point_in_time(index=index, keep_alive="1m")["id"], "keep_alive": "1m"}
    copies: Counter[str] = Counter()
    after: dict[str, Any] | None = None
    try:
        while True:
            composite: dict[str, Any] = {"size": 5000, "sources": [{"id": {"terms": {"field": "message.keyword"}}}]}
            if after:
                composite["after"] = after
            answer = es.search(pit=pit, size=0, track_total_hits=True, aggs={"ids": {"composite": composite}})
            documents = answer["hits"]["total"]["value"]
            page = answer["aggregations"]["ids"]
            copies.update({bucket["key"]["id"]: bucket["doc_count"] for bucket in page["buckets"]})
            after = page.get("after_key")
            if not page["buckets"] or not after:
                return copies, documents
    finally:
        es.close_point_in_time(id=pit["id"])


def es_accounting(es: Elasticsearch, index: str, acked: set[str]) -> dict[str, int]:
    """``tally`` of the acknowledged record ids over every document in ``index``."""
    copies, documents = copies_in_es(es, index)
    return {**tally(acked, copies.elements()), "without_id": documents - copies.total()}


def one_doc(es: Elasticsearch, index: str, record_id: str) -> dict[str, Any]:
    hits = es.search(index=index, query={"term": {"message.keyword": record_id}})["hits"]["hits"]
    assert len(hits) == 1, hits
    return hits[0]


# --- the test -------------------------------------------------------------------------------------


def test_through_loadbalancing_a_gateway_sigkilled_logs_in_elasticsearch_and_red_metrics_in_prometheus_add_up(
    collector_factory: Any, prometheus: Any, elasticsearch: Any
) -> None:
    uid = uuid.uuid4().hex[:8]
    prefix, index = f"mwtest-{uid}", f"mwtest-{uid}-*"
    before = (f"frontend-{uid}", f"backend-{uid}")
    after = (f"frontend-{uid}-after", f"backend-{uid}-after")
    es = Elasticsearch(elasticsearch.url, request_timeout=30)
    targets = []
    try:
        with otlp_sink() as s0, otlp_sink() as s1:
            sinks = [s0, s1]
            gateways = [
                collector_factory(
                    gateway(s, f"gateway-{i}", prometheus, elasticsearch, prefix), name=f"gateway-{i}", env={RUN: "0"}
                )
                for i, s in enumerate(sinks)
            ]
            endpoints = [g.grpc_endpoint for g in gateways]
            victim = endpoints[1]
            agents = [collector_factory(agent(endpoints), name=f"agent-{i}") for i in range(2)]
            for name, collector in [
                *((f"gateway-{i}", g) for i, g in enumerate(gateways)),
                *((f"agent-{i}", a) for i, a in enumerate(agents)),
            ]:
                target = f"tiers-{uid}-{name}"
                address = collector.metrics_url.removeprefix("http://").removesuffix("/metrics")
                prometheus.add_scrape_target(target, address, {"tiers_test": uid, "collector": name})
                targets.append(target)
            started = time.monotonic()
            load = HalfTraceLoad([a.grpc_endpoint for a in agents], services=before, logs=True).start()
            time.sleep(4)
            gateways[1].kill()
            load.switch_services(after)  # traces started from now on: none reached the killed process
            time.sleep(5)
            gateways[1].env[RUN] = "1"
            gateways[1].restart()
            eventually(
                lambda: all(
                    a.metric("meshwatch_loadbalancer_backend_up", backend=victim, signal=signal) == 1
                    for a in agents
                    for signal in ("traces", "logs")
                ),
                timeout=30,
                what="the gateway back in both agents' rings",
            )
            time.sleep(3)
            load.stop()
            load_s = time.monotonic() - started

            # spans at the sinks (the load-balancing test's accounting): nothing lost
            acked = load.acked_span_ids()
            eventually(lambda: accounting(sinks, acked)["lost"] == 0, timeout=60, what="every span at a sink")
            spans = accounting(sinks, acked)

            # logs in Elasticsearch: each acknowledged record once
            logs_acked = set(load.logs_acked)
            eventually(
                lambda: es_accounting(es, index, logs_acked)["lost"] == 0, timeout=60, what="every log record in ES"
            )
            in_es = es_accounting(es, index, logs_acked)
            at_sinks = tally(logs_acked, (body for sink in sinks for body in logs_at(sink)))

            # RED metrics in Prometheus, "after" phase: summed over gateways = server spans sent (+ copies)
            server_after = load.acked_by_service[after[1]]
            copies_after = [server_copies(s, after[1]) for s in sinks]
            both = copies_after[0] + copies_after[1]
            doubled_after = both.total() - len(both)  # copies delivered twice, to one gateway or to both
            want = {f"gateway-{i}": float(c.total()) for i, c in enumerate(copies_after)}
            settles_at(
                lambda: per_gateway(server_calls(prometheus, after[1])),
                want,
                f"spanmetrics SERVER calls of {after[1]} per gateway in Prometheus, against its sink's",
            )
            calls_after = server_calls(prometheus, after[1])
            # "before" phase: exact on the gateway that stayed up; the killed one short by what it had not flushed
            copies_before = [server_copies(s, before[1]) for s in sinks]
            settles_at(
                lambda: per_gateway(server_calls(prometheus, before[1])).get("gateway-0"),
                float(copies_before[0].total()),
                "gateway-0's SERVER calls of the first phase in Prometheus, against its sink's",
            )
            calls_before = server_calls(prometheus, before[1])
            unflushed = copies_before[1].total() - per_gateway(calls_before).get("gateway-1", 0)

            # servicegraph: an edge per trace whose two halves met on a gateway
            met = [halves_met(s, after) for s in sinks]
            graph = eventually(
                lambda: (e := edges(prometheus, *after)) and sum(e.values()) >= sum(len(w) for w, _ in met) and e,
                timeout=30,
                what="servicegraph edges in Prometheus",
            )

            # the kill as Prometheus saw it (self-metrics scraped every second)
            failed_scrapes = Counter(
                series["metric"]["collector"]
                for series in query(prometheus, f'up{{tiers_test="{uid}"}}[5m]')
                for _, value in series["values"]
                if value == "0"
            )
            seen_down = {
                (r["metric"]["collector"], r["metric"]["backend"]): float(r["value"][1])
                for r in query(
                    prometheus, f'min_over_time(meshwatch_loadbalancer_backend_up{{tiers_test="{uid}"}}[5m])'
                )
            }
            now_up = query(
                prometheus,
                f'min by (collector) (meshwatch_loadbalancer_backend_up{{tiers_test="{uid}",backend="{victim}"}})',
            )
            rerouted = query(
                prometheus, f'sum(meshwatch_loadbalancer_rerouted_items_total{{tiers_test="{uid}",backend="{victim}"}})'
            )
            print(
                f"\nitem 7 at the backends (loadbalancing), {load_s:.0f}s of load: spans {spans}; "
                f"logs in Elasticsearch {in_es}, at the sinks {at_sinks}; "
                f"SERVER calls in Prometheus after the kill {calls_after} for "
                f"{server_after} server spans acknowledged ({doubled_after} delivered twice); before the kill "
                f"{calls_before} for sinks {[c.total() for c in copies_before]} (gateway-1 short by {unflushed}, "
                f"counted but not flushed when it was killed); servicegraph edges {graph} for "
                f"{[len(w) for w, _ in met]} traces met; failed scrapes {dict(failed_scrapes)}; "
                f"backend_up min {seen_down}; "
                f"rerouted {rerouted}; refused answers {load.refused}"
            )
            assert spans["lost"] == 0 and spans["acknowledged"] > 1500, spans
            assert in_es == {**in_es, "lost": 0, "duplicates": 0, "without_id": 0}, in_es
            assert in_es["acknowledged"] > 1500, "too few log records to mean anything"
            assert sum(calls_after.values()) == server_after + doubled_after
            assert set(per_gateway(calls_after)) == {"gateway-0", "gateway-1"}, "each gateway's own series"
            assert ("gateway-1", "1") in calls_after, "the restarted gateway's series is its second incarnation's"
            assert 0 <= unflushed < copies_before[1].total(), "gateway-1 counted more than it got, or flushed nothing"
            assert set(per_gateway(graph)) == {"gateway-0", "gateway-1"}, graph
            assert edges(prometheus, before[0], after[1]) == {}, "an edge between services that never called"
            whole, twice = sum(len(w) for w, _ in met), sum(t for _, t in met)
            assert whole <= sum(graph.values()) <= whole + twice, (graph, whole, twice)
            assert failed_scrapes["gateway-1"] >= 3 and failed_scrapes["gateway-1"] > failed_scrapes["gateway-0"]
            for i in range(2):
                assert seen_down[f"agent-{i}", victim] == 0 and seen_down[f"agent-{i}", endpoints[0]] == 1
            assert [float(r["value"][1]) for r in now_up] == [1.0, 1.0], now_up
            assert float(rerouted[0]["value"][1]) > 0, rerouted

            # --- positive controls: each check is off by what is planted ---------------------------
            kept, dropped = sorted(logs_acked)[:2]
            doc = one_doc(es, index, kept)
            es.index(index=doc["_index"], document=doc["_source"], refresh=True)  # the same record, stored twice
            es.delete(index=doc["_index"], id=one_doc(es, index, dropped)["_id"], refresh=True)  # one lost
            planted = es_accounting(es, index, logs_acked)
            assert planted["duplicates"] == 1 and planted["lost"] == 1, planted
            # the sum without one gateway is short; spans delivered twice to a gateway count twice
            assert per_gateway(calls_after)["gateway-0"] < server_after
            twice_sent = sorted({t for t, _ in copies_after[0]})[:5]
            template = load.templates[1][1]
            with grpc.insecure_channel(endpoints[0]) as channel:
                export = channel.unary_unary(EXPORT)
                for trace_hex in twice_sent:
                    export(template.replace(_PLACEHOLDER, bytes.fromhex(trace_hex)), timeout=10)
            settles_at(
                lambda: sum(server_calls(prometheus, after[1]).values()),
                float(server_after + doubled_after + 5),
                "the 5 planted copies counted in Prometheus",
            )
    finally:
        for target in targets:
            prometheus.remove_scrape_target(target)
        es.indices.delete(index=index, ignore_unavailable=True)
        es.options(ignore_status=404).indices.delete_index_template(name=prefix)
        es.close()
