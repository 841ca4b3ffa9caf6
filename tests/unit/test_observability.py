"""Metrics and the Grafana dashboard: every series a panel queries is one the code exports, with
the labels the panel uses; store latency helpers; the queue-depth collector."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.interceptors import RpcMetrics
from services.common.metrics import (
    CassandraMetrics,
    LatencyHistogram,
    MetricGroup,
    RedisMetrics,
    bounded_label,
    serial_kind,
    statement_kind,
)
from services.common.redis import MeteredPipeline, MeteredRedis
from services.common.server import ServiceRegistration
from services.decision.metrics import DecisionMetrics
from services.messaging.domain.delivery import Delivery, DeliveryStatus
from services.messaging.metrics import QUEUE_DEPTH, DeliveryMetrics, QueueDepths

DASHBOARD = Path(__file__).parents[2] / "deploy/k8s/components/monitoring/grafana-dashboard.json"
# Labels Prometheus adds to every scraped series (the ServiceMonitor's target labels).
TARGET_LABELS = {"namespace", "service", "pod", "instance", "job", "endpoint", "container"}
DEPTHS = {"scheduled": 3, "send_queued": 2, "send_in_flight": 1, "audience_pending": 0, "audience_in_flight": 0}


class FakeQueue:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    async def depths(self) -> dict[str, int]:
        await asyncio.sleep(self.delay_s)
        return DEPTHS


@pytest.fixture
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in another thread, as the service's loop is seen from the metrics server."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def delivery(status: DeliveryStatus, reason: str = "") -> Delivery:
    return Delivery("d_1", "p_1", "ABANDONED_CART", "EMAIL", status, "key", 0, 0, reason=reason)


def exported_series(loop: asyncio.AbstractEventLoop) -> dict[str, set[str]]:
    """Series name -> label names, from the metric objects the services build, each used once."""
    registry = CollectorRegistry()
    RpcMetrics("decision", registry).observe("/rapport.decision.v1.DecisionService/Decide", "OK", 0.002)
    redis_metrics, cassandra_metrics = RedisMetrics(), CassandraMetrics()
    decision_metrics, delivery_metrics = DecisionMetrics(), DeliveryMetrics()
    redis_metrics.observe("GET", 0.0002)
    redis_metrics.failed("GET", RedisConnectionError())
    cassandra_metrics.observe(("SELECT", "no"), 0.001)
    cassandra_metrics.failed(("INSERT", "yes"), TimeoutError())
    decision_metrics.decided("HOME", ["profile_timeout"])
    decision_metrics.feedback("CLICK", "TRENDING")
    delivery_metrics.finished(delivery(DeliveryStatus.SKIPPED, "NO_CONSENT"))
    for group in (redis_metrics, cassandra_metrics, decision_metrics, delivery_metrics):
        registry.register(group)
    registry.register(QueueDepths(FakeQueue(), loop))  # type: ignore[arg-type]
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []) if "expr" in target
    ]
    queries += [
        variable["definition"] for variable in dashboard["templating"]["list"] if variable.get("type") == "query"
    ]
    return queries


def test_dashboard_is_a_grafana_dashboard_with_its_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "service"} <= set(variables)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_series_the_dashboard_queries_is_exported_with_its_labels(
    loop_in_thread: asyncio.AbstractEventLoop,
) -> None:
    series = exported_series(loop_in_thread)
    for query in dashboard_queries():
        names = set(re.findall(r"\b(rapport_[a-z0-9_]+)", query))
        assert names, f"a query without a Rapport metric: {query}"
        unknown = names - set(series)
        assert not unknown, f"{sorted(unknown)} not exported (exported: {sorted(series)})"
        labels = set().union(*(series[name] for name in names)) | TARGET_LABELS
        for name, matchers in re.findall(r"\b(rapport_[a-z0-9_]+)\{([^}]*)\}", query):
            used = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers))
            assert used <= series[name] | TARGET_LABELS, (
                f"{name} has no label {used - series[name] - TARGET_LABELS}: {query}"
            )
        for grouping in re.findall(r"\bby \(([^)]*)\)", query):
            used = {label.strip() for label in grouping.split(",")}
            assert used <= labels | {"le"}, f"grouping by unknown labels {used - labels}: {query}"


def test_the_panels_rely_on_the_labels_that_carry_meaning() -> None:
    queries = "\n".join(dashboard_queries())
    assert 'rapport_decision_decisions_total{namespace=~"$namespace", service=~"$service", degraded="yes"}' in queries
    assert 'kind="CLICK"' in queries and 'kind="IMPRESSION"' in queries
    assert "max by (queue) (rapport_messaging_queue_depth" in queries  # replicas report the same queues


@pytest.mark.parametrize(
    ("cql", "kind"),
    [
        ("SELECT person_id FROM {keyspace}.identifier WHERE kind = ? AND value = ?", ("SELECT", "no")),
        ("  select * from t where a = ?", ("SELECT", "no")),
        ("INSERT INTO {keyspace}.identifier (kind, value) VALUES (?, ?) IF NOT EXISTS", ("INSERT", "yes")),
        ("INSERT INTO t (a, b) VALUES (?, ?) USING TTL ?", ("INSERT", "no")),
        ("INSERT INTO t (a, b) VALUES (?, 'what if')", ("INSERT", "no")),
        ("UPDATE {keyspace}.identifier SET person_id = ? WHERE k = ? IF person_id = ?", ("UPDATE", "yes")),
        ("UPDATE t SET modified_if = ? WHERE k = ?", ("UPDATE", "no")),
        ("DELETE FROM t WHERE k = ? IF EXISTS", ("DELETE", "yes")),
        ("DELETE FROM t WHERE k = ?", ("DELETE", "no")),
        ("BEGIN UNLOGGED BATCH INSERT INTO t (a) VALUES (?); APPLY BATCH", ("BATCH", "no")),
        ("TRUNCATE t", ("OTHER", "no")),
        ("", ("OTHER", "no")),
    ],
)
def test_statement_kind_is_the_verb_and_whether_it_is_a_lightweight_transaction(
    cql: str, kind: tuple[str, str]
) -> None:
    assert statement_kind(cql) == kind


def test_a_serial_read_counts_as_a_lightweight_transaction() -> None:
    assert serial_kind(statement_kind("SELECT * FROM t WHERE k = ?")) == ("SELECT", "yes")


@pytest.mark.parametrize(
    ("value", "label"),
    [("NO_CONSENT", "NO_CONSENT"), ("EMAIL", "EMAIL"), ("smtp 550 user unknown", "OTHER"), ("", "OTHER")],
)
def test_labels_take_constants_never_data(value: str, label: str) -> None:
    assert bounded_label(value) == label


def test_latency_histogram_exposes_what_prometheus_client_would() -> None:
    buckets = (0.001, 0.01, 0.1)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = LatencyHistogram("store_seconds", "latency", ["command"], buckets)
    ours.register(histogram)
    reference = Histogram("store_seconds", "latency", ["command"], buckets=buckets, registry=theirs)
    for value in (0.0005, 0.001, 0.002, 0.01, 0.5, 0.05):  # bounds themselves included: `le` is inclusive
        histogram.labels("GET").observe(value)
        reference.labels("GET").observe(value)

    def samples(registry: CollectorRegistry) -> list[str]:
        return [
            line
            for line in generate_latest(registry).decode().splitlines()
            if not line.startswith(("#", "store_seconds_created"))
        ]

    assert samples(ours) == samples(theirs)
    assert 'store_seconds_bucket{command="GET",le="0.001"} 2.0' in samples(ours)


class _AnswersAtOnce(aioredis.Redis):
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] == "FAIL":
            raise RedisConnectionError("down")
        return "OK"


class _TimedFake(MeteredRedis, _AnswersAtOnce):  # type: ignore[misc]  # redis-py mixins disagree on command_info
    pass


class _PipelineAnswersAtOnce(Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return []


class _TimedFakePipeline(MeteredPipeline, _PipelineAnswersAtOnce):  # type: ignore[misc]
    pass


def _count(registry_text: str, series: str) -> float:
    match = re.search(re.escape(series) + r" (\S+)", registry_text)
    return float(match.group(1)) if match else 0.0


async def test_redis_commands_are_timed_but_not_blocking_reads() -> None:
    client = _TimedFake()
    client.metrics = RedisMetrics()
    await client.execute_command("GET", "k")
    await client.execute_command("XREADGROUP", b"GROUP", "g", "c", b"BLOCK", 1000, b"STREAMS", "s", ">")
    await client.execute_command("XREADGROUP", b"GROUP", "g", "c", b"STREAMS", "s", ">")
    with pytest.raises(RedisConnectionError):
        await client.execute_command("FAIL")
    pipe = _TimedFakePipeline(client.connection_pool, client.response_callbacks, True, None)
    pipe.metrics = client.metrics
    await pipe.execute()
    registry = CollectorRegistry()
    registry.register(client.metrics)
    text = generate_latest(registry).decode()
    assert _count(text, 'rapport_redis_command_duration_seconds_count{command="GET"}') == 1
    assert _count(text, 'rapport_redis_command_duration_seconds_count{command="XREADGROUP"}') == 1
    assert _count(text, 'rapport_redis_command_duration_seconds_count{command="MULTI"}') == 1
    assert _count(text, 'rapport_redis_command_errors_total{command="FAIL",error="ConnectionError"}') == 1
    await client.aclose()


def test_the_store_clients_among_the_probes_bring_their_metrics() -> None:
    class Store:
        name = "store"
        metrics = RedisMetrics()

        async def ping(self, timeout_s: float) -> None:
            return None

    class Peer:
        name = "peer"

        async def ping(self, timeout_s: float) -> None:
            return None

    store, extra = Store(), DecisionMetrics()
    registration = ServiceRegistration(
        full_name="x",
        add_to_server=lambda server: None,
        method_scopes={},
        error_domain="rapport.x",
        probes=[store, Peer()],
        collectors=[extra, store.metrics],
    )
    collectors = registration.metric_collectors()
    assert collectors == [extra, store.metrics]
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)  # no duplicate series
    assert isinstance(store.metrics, MetricGroup)


def test_deliveries_are_counted_by_outcome_with_bounded_reasons() -> None:
    metrics = DeliveryMetrics()
    metrics.finished(delivery(DeliveryStatus.SENT, reason="QUIET_HOURS"))  # a past deferral is no reason to send
    metrics.finished(delivery(DeliveryStatus.DEAD, reason="smtp said: 550 <x@y> unknown"))
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    sent = 'rapport_messaging_deliveries_total{channel="EMAIL",reason="",status="SENT",trigger="ABANDONED_CART"}'
    dead = 'rapport_messaging_deliveries_total{channel="EMAIL",reason="OTHER",status="DEAD",trigger="ABANDONED_CART"}'
    assert _count(text, sent) == 1 and _count(text, dead) == 1


def test_queue_depths_are_read_on_the_service_loop_at_scrape_time(
    loop_in_thread: asyncio.AbstractEventLoop,
) -> None:
    families = list(QueueDepths(FakeQueue(), loop_in_thread).collect())  # type: ignore[arg-type]
    assert [family.name for family in families] == [QUEUE_DEPTH]
    assert {sample.labels["queue"]: sample.value for sample in families[0].samples} == DEPTHS


def test_a_slow_or_stopped_loop_gives_no_depths_rather_than_a_stuck_scrape(
    loop_in_thread: asyncio.AbstractEventLoop,
) -> None:
    assert list(QueueDepths(FakeQueue(delay_s=5), loop_in_thread, timeout_s=0.05).collect()) == []  # type: ignore[arg-type]
    stopped = asyncio.new_event_loop()
    stopped.close()
    assert list(QueueDepths(FakeQueue(), stopped).collect()) == []  # type: ignore[arg-type]
