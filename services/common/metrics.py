"""Prometheus metrics that live outside the RPC interceptor: the latency and errors of Redis
commands and Cassandra statements (one definition for every service), and `MetricGroup`, the way
a component's metrics reach the registry that the service's /metrics endpoint serves.

A component (a store client, the decider, the senders) is built before `create_server` makes the
registry, so its metrics are created unregistered and grouped; `create_server` registers the
groups it is given (see `ServiceRegistration.collectors`). Labels are bounded by the code: a
command or statement kind, never a key, a person or a product.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import Counter
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# Redis answers in tens of microseconds on a LAN; a pipeline or script takes longer.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CASSANDRA_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Commands that wait for data when asked to (BLOCK): their time is the queue's idleness, not
# Redis's latency, so they are not timed (their errors are still counted).
BLOCKING_READS = frozenset({"XREAD", "XREADGROUP"})
_LABEL_VALUE = re.compile(r"[A-Z][A-Z0-9_]{0,47}")


def bounded_label(value: str, fallback: str = "OTHER") -> str:
    """`value` when it is an UPPER_SNAKE_CASE constant (a reason, a channel), else `fallback`:
    a label must never take a value from data (an id, an error message)."""
    return value if _LABEL_VALUE.fullmatch(value) else fallback


class MetricGroup:
    """Metrics created unregistered; a Prometheus collector that yields them all."""

    def __init__(self, *metrics: Any) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield from metric.collect()

    def describe(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield from metric.describe()


class LatencyTimer:
    """One label set of a `LatencyHistogram`: counts per bucket (not cumulative) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self._bounds, seconds)] += 1  # `le` is inclusive
        self.sum += seconds


class LatencyHistogram:
    """A labelled histogram for calls made many times per request (every Redis command).

    An observation is a bisect and two additions, about 0.3 µs, where prometheus_client's
    Histogram takes a lock per bucket and per sum (about 2 µs on the 2-core dev machine).
    Observations come from the event loop's thread; a scrape reads them from the metrics
    server's thread and at worst misses the one in flight. The exposition is the same.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(sorted(buckets))
        self._le = [floatToGoString(bound) for bound in (*self._bounds, math.inf)]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], LatencyTimer] = {}

    def labels(self, *values: str) -> LatencyTimer:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children.setdefault(values, LatencyTimer(self._bounds))
        return child

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            total = 0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, list(child.counts), strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class RedisMetrics(MetricGroup):
    """Latency of each Redis command, pipeline (`PIPELINE`) and transaction (`MULTI`), retries
    included, and errors by command and exception class."""

    def __init__(self) -> None:
        self._latency = LatencyHistogram(
            "rapport_redis_command_duration_seconds",
            "Redis command latency (a pipeline is PIPELINE, a transaction MULTI; blocking reads excluded)",
            ["command"],
            REDIS_BUCKETS,
        )
        self._errors = Counter(
            "rapport_redis_command_errors_total",
            "Redis commands that raised, by command and exception class",
            ["command", "error"],
            registry=None,
        )
        super().__init__(self._latency, self._errors)
        # Keyed by the command as redis-py passes it: one dict lookup per call, no string work.
        self._timers: dict[Any, LatencyTimer] = {}

    def observe(self, command: Any, seconds: float) -> None:
        timer = self._timers.get(command)
        if timer is None:
            timer = self._timers[command] = self._latency.labels(command_label(command))
        timer.observe(seconds)

    def failed(self, command: Any, error: BaseException) -> None:
        self._errors.labels(command_label(command), type(error).__name__).inc()


def command_label(command: Any) -> str:
    """A Redis command as a label (`GET`, `EVALSHA`): as redis-py passes it, upper-cased."""
    text = command.decode() if isinstance(command, bytes) else str(command)
    return text.upper()[:40]


StatementKind = tuple[str, str]  # (CQL verb, "yes"/"no" lightweight transaction): the label values
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
_CONDITION = re.compile(r"\bIF\b", re.IGNORECASE)
_VERBS = {"SELECT": "SELECT", "INSERT": "INSERT", "UPDATE": "UPDATE", "DELETE": "DELETE", "BEGIN": "BATCH"}


def statement_kind(cql: str) -> StatementKind:
    """The label values of a CQL statement: its verb (SELECT, INSERT, UPDATE, DELETE, BATCH or
    OTHER) and whether it is a lightweight transaction (a write with an IF condition)."""
    words = cql.split(None, 1)
    verb = _VERBS.get(words[0].upper(), "OTHER") if words else "OTHER"
    conditional = verb in ("INSERT", "UPDATE", "DELETE") and bool(_CONDITION.search(_STRING_LITERAL.sub("''", cql)))
    return verb, "yes" if conditional else "no"


def serial_kind(kind: StatementKind) -> StatementKind:
    """A read at SERIAL consistency runs a Paxos round like a lightweight transaction does."""
    return kind[0], "yes"


class CassandraMetrics(MetricGroup):
    """Latency of Cassandra statements and errors, by CQL verb and lightweight transaction."""

    def __init__(self) -> None:
        self._latency = LatencyHistogram(
            "rapport_cassandra_query_duration_seconds",
            "Cassandra statement latency by CQL verb and whether it is a lightweight transaction",
            ["statement", "lwt"],
            CASSANDRA_BUCKETS,
        )
        self._errors = Counter(
            "rapport_cassandra_query_errors_total",
            "Cassandra statements that failed, by CQL verb, lightweight transaction and exception class",
            ["statement", "lwt", "error"],
            registry=None,
        )
        super().__init__(self._latency, self._errors)
        self._timers: dict[StatementKind, LatencyTimer] = {}

    def observe(self, kind: StatementKind, seconds: float) -> None:
        timer = self._timers.get(kind)
        if timer is None:
            timer = self._timers[kind] = self._latency.labels(*kind)
        timer.observe(seconds)

    def failed(self, kind: StatementKind, error: BaseException) -> None:
        self._errors.labels(*kind, type(error).__name__).inc()
