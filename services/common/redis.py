"""Redis connection for a service, with a health probe and a latency histogram per command."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import tracing
from services.common.metrics import BLOCKING_READS, RedisMetrics, command_label

if TYPE_CHECKING:
    from services.common.spans import SpanExport


class _Connection(aioredis.Connection):
    """redis-py's connection, bounding a command's write with a timer instead of `wait_for`.

    redis-py wraps every write in `asyncio.wait_for`, which on Python 3.11 starts a task per
    command; on the decision hot path that was a tenth of the Redis client's CPU. The write keeps
    the same bound (`socket_timeout`), and reads keep redis-py's own timeout.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout, self.socket_timeout = self.socket_timeout, None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


class MeteredRedis(aioredis.Redis):
    """redis-py's client, timing every command, pipeline and transaction into `metrics`.

    The services call redis-py directly in many places; overriding its one entry point for
    commands (and `pipeline`) measures them all, for about a microsecond per command.
    """

    metrics: RedisMetrics

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        started = perf_counter()
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except Exception as error:
            self.metrics.failed(args[0], error)
            raise
        finally:  # a call cut short by its deadline counts too: it is time spent waiting on Redis
            if args[0] not in BLOCKING_READS or b"BLOCK" not in args:
                self.metrics.observe(args[0], perf_counter() - started)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = MeteredPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.metrics = self.metrics
        return pipe


class MeteredPipeline(Pipeline):
    """A pipeline timed as one `PIPELINE` (or `MULTI` for a transaction) round trip."""

    metrics: RedisMetrics

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        label = "MULTI" if self.is_transaction or self.explicit_transaction else "PIPELINE"
        started = perf_counter()
        try:
            replies: list[Any] = await super().execute(raise_on_error)
            return replies
        except Exception as error:
            self.metrics.failed(label, error)
            raise
        finally:
            self.metrics.observe(label, perf_counter() - started)


class TracedRedis(MeteredRedis):
    """The metered client that also makes a span of each command run inside a sampled span.

    Used only when spans are exported (services/common/tracing.py): without them the metered
    client runs alone and pays nothing for tracing.
    """

    spans: SpanExport

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        span = self.spans.store_span("redis", command_label(args[0]))
        if span is None:
            return await super().execute_command(*args, **options)
        try:
            reply = await super().execute_command(*args, **options)
        except BaseException as error:
            span.end(error)
            raise
        span.end()
        return reply

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = TracedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.metrics = self.metrics
        pipe.spans = self.spans
        return pipe


class TracedPipeline(MeteredPipeline):
    """A metered pipeline that is one span (`PIPELINE` or `MULTI`) inside a sampled span."""

    spans: SpanExport

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        label = "MULTI" if self.is_transaction or self.explicit_transaction else "PIPELINE"
        span = self.spans.store_span("redis", label, {"db.operation.batch.size": len(self.command_stack)})
        if span is None:
            return await super().execute(raise_on_error)
        try:
            replies = await super().execute(raise_on_error)
        except BaseException as error:
            span.end(error)
            raise
        span.end()
        return replies


class RedisClient:
    name = "redis"

    def __init__(self, url: str, prefix: str, max_connections: int = 64) -> None:
        self.prefix = prefix
        self.metrics = RedisMetrics()
        spans = tracing.span_export()
        client = (TracedRedis if spans is not None else MeteredRedis).from_url(
            url,
            max_connections=max_connections,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            health_check_interval=0,
            decode_responses=True,
            # A restarted Redis leaves dead connections in the pool: retry on a fresh one.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            connection_class=_Connection,
        )
        client = cast(MeteredRedis, client)
        client.metrics = self.metrics
        if isinstance(client, TracedRedis) and spans is not None:
            client.spans = spans
        self.redis: aioredis.Redis = client

    async def ping(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.redis.ping(), timeout_s)

    async def close(self) -> None:
        await self.redis.aclose()


def consumer_name() -> str:
    """This process's name in a stream's consumer groups: unique per start, so the entries a dead
    process held are claimed by others (or by its restart) once idle."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


StreamFields = dict[str, str]
_XRANGE_PAGE = 1000


async def delete_stream_entries(redis: aioredis.Redis, stream: str, doomed: Callable[[StreamFields], bool]) -> int:
    """Delete every entry of `stream` whose fields `doomed` accepts (GDPR erasure); how many."""
    erased = 0
    cursor = "-"
    while True:
        entries: list[tuple[str, StreamFields]] = await redis.xrange(  # type: ignore[assignment]
            stream, min=cursor, max="+", count=_XRANGE_PAGE
        )
        if not entries:
            return erased
        matching = [entry_id for entry_id, fields in entries if doomed(fields)]
        if matching:
            erased += await redis.xdel(stream, *matching)
        if len(entries) < _XRANGE_PAGE:
            return erased
        cursor = "(" + entries[-1][0]
