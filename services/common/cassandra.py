"""Async access to Cassandra over cassandra-driver: awaitable execute, prepared statements once,
per-call timeouts from the request budget, latency per statement kind (and a span per statement
inside a sampled span, when spans are exported), idempotent schema application."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from cassandra import ConsistencyLevel, DriverException
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, dict_factory

from services.common import deadlines, tracing
from services.common.errors import Unavailable
from services.common.metrics import CassandraMetrics, StatementKind, serial_kind, statement_kind
from services.common.settings import CommonSettings

log = structlog.get_logger("rapport.cassandra")

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def _resolve_future(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail_future(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class CassandraClient:
    """One driver session for a keyspace; `execute` awaits without blocking the event loop."""

    name = "cassandra"

    def __init__(self, session: Session, cluster: Cluster, keyspace: str) -> None:
        self.session = session
        self.cluster = cluster
        self.keyspace = keyspace
        self._prepared: dict[str, PreparedStatement] = {}
        self._kinds: dict[str, StatementKind] = {}
        self.metrics = CassandraMetrics()
        self._spans = tracing.span_export()

    @classmethod
    def connect(
        cls, hosts: Sequence[str], port: int, keyspace: str, local_dc: str, connect_timeout_s: float = 10.0
    ) -> CassandraClient:
        """Blocking connect (call through `asyncio.to_thread`)."""
        if not _IDENTIFIER.match(keyspace):
            raise ValueError(f"keyspace name {keyspace!r} must match {_IDENTIFIER.pattern}")
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            row_factory=dict_factory,
            request_timeout=10.0,
        )
        cluster = Cluster(
            contact_points=list(hosts),
            port=port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            protocol_version=5,
            connect_timeout=connect_timeout_s,
            idle_heartbeat_interval=10,
            schema_metadata_enabled=False,
            token_metadata_enabled=True,
            # The driver leaves Nagle's algorithm on: a request written while an earlier one is
            # unacknowledged waits for that ACK, which the node may delay by 40 ms. With several
            # requests in flight on a connection (messaging's grouped reads and writes) that
            # was most of a statement's latency. Cassandra's own driver for Java sets it too.
            sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        session = cluster.connect()
        return cls(session, cluster, keyspace)

    def apply_schema(self, replication: str, cql_statements: str) -> None:
        """Blocking, idempotent: CREATE KEYSPACE/TABLE IF NOT EXISTS, with {keyspace} substituted."""
        self.session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = {replication}", timeout=60
        )
        # Comments go first: they may contain ';'.
        without_comments = "\n".join(line for line in cql_statements.splitlines() if not line.strip().startswith("--"))
        for statement in filter(None, (s.strip() for s in without_comments.split(";"))):
            self.session.execute(statement.format(keyspace=self.keyspace), timeout=60)
        self.cluster.control_connection.wait_for_schema_agreement(wait_time=30)

    def prepare(self, cql: str) -> PreparedStatement:
        statement = self._prepared.get(cql)
        if statement is None:
            statement = self.session.prepare(cql.format(keyspace=self.keyspace))
            self._prepared[cql] = statement
            self._kinds[cql] = statement_kind(cql)
        return statement

    async def execute(
        self,
        cql: str,
        parameters: Sequence[Any] | None = None,
        *,
        serial_read: bool = False,
        timeout_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """Run a prepared statement within the request budget; rows as dicts.

        `serial_read` reads at LOCAL_SERIAL, which also sees in-flight lightweight transactions.
        """
        statement = self.prepare(cql)
        kind = self._kinds[cql]
        if serial_read:
            statement = statement.bind(parameters or ())
            statement.consistency_level = ConsistencyLevel.LOCAL_SERIAL
            parameters = None
            kind = serial_kind(kind)
        return await self._run(statement, parameters, timeout_s, kind)

    async def _run(
        self,
        statement: Any,
        parameters: Sequence[Any] | None,
        timeout_s: float | None,
        kind: StatementKind | None,
    ) -> list[dict[str, Any]]:
        """Execute and await; timed under `kind` (None: not timed, e.g. the health probe)."""
        budget = timeout_s if timeout_s is not None else deadlines.remaining_s()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        span = (
            self._spans.store_span("cassandra", kind[0], self._span_attributes(statement, kind))
            if self._spans is not None and kind is not None
            else None
        )
        started = time.perf_counter()
        try:
            response = self.session.execute_async(statement, parameters, timeout=budget)
        except (NoHostAvailable, DriverException) as error:
            self._count_error(kind, error)
            if span is not None:
                span.end(error)
            raise Unavailable(f"Cassandra is unreachable: {type(error).__name__}") from error
        response.add_callbacks(
            lambda rows: loop.call_soon_threadsafe(_resolve_future, future, rows),
            lambda error: loop.call_soon_threadsafe(_fail_future, future, error),
        )
        failure: BaseException | None = None
        try:
            rows = await future
        except (NoHostAvailable, DriverException) as error:
            failure = error
            self._count_error(kind, error)
            raise Unavailable(f"Cassandra did not answer in time: {type(error).__name__}") from error
        except BaseException as error:
            failure = error
            if isinstance(error, Exception):
                self._count_error(kind, error)
            raise
        finally:  # failures and calls cut short by their deadline are timed too
            if kind is not None:
                self.metrics.observe(kind, time.perf_counter() - started)
            if span is not None:
                span.end(failure)
        return list(rows or ())

    def _span_attributes(self, statement: Any, kind: StatementKind) -> dict[str, str]:
        attributes = {"db.namespace": self.keyspace, "rapport.cassandra.lwt": kind[1]}
        # Prepared statements hold placeholders, never values.
        prepared = getattr(statement, "prepared_statement", statement)
        query = getattr(prepared, "query_string", None)
        if isinstance(query, str):
            attributes["db.query.text"] = query
        return attributes

    def _count_error(self, kind: StatementKind | None, error: BaseException) -> None:
        if kind is not None:
            self.metrics.failed(kind, error)

    async def execute_batch(
        self, statements: Sequence[tuple[str, Sequence[Any]]], timeout_s: float | None = None
    ) -> None:
        """Write several statements as one UNLOGGED batch: rows of one partition, which Cassandra
        applies as a single mutation, or a few small rows of several partitions written together
        only to pay one statement's fixed cost (messaging's grouped send outcomes; a cluster's
        batch warn thresholds must allow them, see README "Messaging")."""
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        conditional = False
        for cql, parameters in statements:
            batch.add(self.prepare(cql), parameters)
            conditional = conditional or self._kinds[cql][1] == "yes"
        await self._run(batch, None, timeout_s, ("BATCH", "yes" if conditional else "no"))

    async def execute_lwt(self, cql: str, parameters: Sequence[Any]) -> tuple[bool, dict[str, Any]]:
        """Run a lightweight transaction; (applied, current row as Cassandra returned it)."""
        rows = await self.execute(cql, parameters)
        row = rows[0] if rows else {"[applied]": False}
        return bool(row.get("[applied]")), row

    async def ping(self, timeout_s: float) -> None:
        # Not timed: probes every few seconds would drown the SELECTs the service makes.
        await self._run(self.prepare("SELECT release_version FROM system.local"), None, timeout_s, None)

    async def close(self) -> None:
        await asyncio.to_thread(self.cluster.shutdown)


async def open_service_keyspace(
    settings: CommonSettings, schema_cql: str | None, wait_s: float = 120.0
) -> CassandraClient:
    """A service's keyspace as its shared settings describe it (schema applied when given)."""
    return await open_cassandra(
        settings.cassandra_hosts.split(","),
        settings.cassandra_port,
        settings.cassandra_keyspace,
        settings.cassandra_local_dc,
        replication=settings.cassandra_replication,
        schema_cql=schema_cql,
        wait_s=wait_s,
    )


async def open_cassandra(
    hosts: Sequence[str],
    port: int,
    keyspace: str,
    local_dc: str,
    *,
    replication: str,
    schema_cql: str | None,
    wait_s: float = 120.0,
) -> CassandraClient:
    """Connect (waiting up to `wait_s` for the node to come up) and apply the schema if given."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + wait_s
    delay_s = 0.5
    while True:
        try:
            client = await asyncio.to_thread(CassandraClient.connect, hosts, port, keyspace, local_dc)
            break
        except NoHostAvailable:
            if loop.time() + delay_s > give_up_at:
                raise
            log.warning("cassandra_not_ready", hosts=list(hosts), port=port, retry_in_s=delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)
    if schema_cql is not None:
        await asyncio.to_thread(client.apply_schema, replication, schema_cql)
    return client


def to_datetime(ms: int) -> datetime:
    """Epoch milliseconds as the aware datetime a Cassandra `timestamp` column takes."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_datetime_or_none(ms: int) -> datetime | None:
    """Like `to_datetime`, with 0 (never) stored as null."""
    return to_datetime(ms) if ms > 0 else None


def to_ms(value: datetime | None) -> int:
    """A `timestamp` column read back (the driver returns naive UTC datetimes) as epoch ms; null is 0."""
    if value is None:
        return 0
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)
