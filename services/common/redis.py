"""Redis connection for a service, with a health probe and a latency histogram per command."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import tracing
from services.common.metrics import BLOCKING_READS, RedisMetrics, command_label
from services.common.spans import StoreSpan

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


Command = tuple[str | bytes | int | float, ...]


def pack_command(command: Command) -> bytes:
    """A command in RESP, the way every client sends one: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(command)]
    for argument in command:
        data = argument if isinstance(argument, bytes) else str(argument).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _ReplyProtocol(asyncio.Protocol):
    """Hands each reply parsed off the socket (hiredis) to the oldest command still waiting.

    With `coalesce`, the commands sent during one turn of the event loop leave in one write at
    its end (`send_now` excepted): a loopback write costs tens of microseconds of the sender's
    CPU, and a busy sender (messaging's 64 sends in flight) issues many commands per turn.
    """

    def __init__(self, coalesce: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.lost = False
        self._coalesce = coalesce
        self._unsent: list[bytes] = []  # commands of this turn, in the order of their waiters

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter = self._waiting.popleft()
            if not waiter.done():  # its caller may have given up (deadline): the reply is dropped
                waiter.set_result(reply)

    def connection_lost(self, error: Exception | None) -> None:
        self.lost = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(RedisConnectionError(f"Connection to Redis lost: {error or 'closed'}"))

    def send(self, payload: bytes, replies: int) -> list[asyncio.Future[Any]]:
        if not self._coalesce:
            return self.send_now(payload, replies)
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unsent.append(payload)
        return self._wait_for(replies)

    def send_now(self, payload: bytes, replies: int) -> list[asyncio.Future[Any]]:
        """Writes the payload in this step, after what this turn sent before it (replies come in
        the order commands were written)."""
        assert self.transport is not None
        if self._unsent:  # one write, the turn's earlier commands first
            self._unsent.append(payload)
            payload = b"".join(self._unsent)
            self._unsent.clear()
        # Written first: no reply can be read before control returns to the event loop, and a
        # caller timing the write (`write_now`) has nothing run before it.
        self.transport.write(payload)
        return self._wait_for(replies)

    def _wait_for(self, replies: int) -> list[asyncio.Future[Any]]:
        """Futures for the next `replies` replies, queued after those already awaited."""
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(replies)]
        self._waiting.extend(waiters)
        return waiters

    def _flush(self) -> None:
        if not self._unsent:
            return
        payload = b"".join(self._unsent)
        self._unsent.clear()
        # Lost meanwhile: connection_lost has failed every waiter already.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)


class PipelinedConnection:
    """One Redis connection for a hot path's plain commands, pipelined: each call writes its
    command(s) at once and awaits the replies in order, parsed by hiredis.

    redis-py spends about 90 µs of CPU on a command (pool, retry wrapper, packing, parsing); this
    spends about 40, which is decision's profile read on every Decide. No pool is needed: calls
    from many requests share the one socket in flight. Replies are decoded as UTF-8 like the
    rest of the client; an error reply raises redis-py's ResponseError. A lost connection fails
    the commands in flight with redis-py's ConnectionError and the next call reconnects; a call
    that finds the connection already dead (Redis restarted) is retried once on a fresh one.
    Deadlines are the caller's (`asyncio.timeout`): a command given up on keeps its place in the
    pipeline, and its reply is dropped when it comes. Without one, a reply that takes longer than
    `reply_timeout_s` raises redis-py's TimeoutError, as redis-py's socket timeout does.
    """

    def __init__(
        self,
        url: str,
        metrics: RedisMetrics,
        connect_timeout_s: float = 1.0,
        reply_timeout_s: float = 2.0,
        coalesce_writes: bool = False,
    ) -> None:
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._host = str(options.get("host", "127.0.0.1"))
        self._port = int(options.get("port", 6379))
        self._unix_path = options.get("path")
        self._ssl = ssl.create_default_context() if options.get("connection_class") is SSLConnection else None
        self._setup: list[Command] = []
        if options.get("password"):
            user = (options["username"],) if options.get("username") else ()
            self._setup.append(("AUTH", *user, options["password"]))
        if int(options.get("db") or 0):
            self._setup.append(("SELECT", int(options["db"])))
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._metrics = metrics
        self._spans = tracing.span_export()
        # One write per event-loop turn for all its commands (see _ReplyProtocol): fewer system
        # calls for a throughput path, a wait until the end of the turn for a latency path.
        self._coalesce_writes = coalesce_writes
        self._protocol: _ReplyProtocol | None = None
        self._connecting: asyncio.Lock | None = None
        self.connections_opened = 0

    async def execute(self, *command: str | bytes | int | float) -> Any:
        """One command's reply."""
        return (await self._run([command], command_label(command[0])))[0]

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of several commands sent in one write (not a transaction). Error replies
        are returned in place, as ResponseError instances, like a redis-py pipeline's."""
        if not commands:
            return []
        return await self._run(commands, "PIPELINE", raise_errors=False)

    async def open(self) -> None:
        """Connect now unless connected: for a caller about to `write_now`, which cannot wait."""
        if self._protocol is None or self._protocol.lost:
            await self._connect()

    def write_now(self, packed: bytes, label: str) -> Awaitable[Any]:
        """Write one command, packed beforehand (`pack_command`), in this step and before anything
        else: the bytes reach the kernel's socket buffer before control goes back to the event loop
        (unless the socket's own buffer is full, when the transport keeps them, as any asyncio
        write). For a caller that needs a command written at a precise point, as soon as possible
        after another write (messaging's hand-over record); the reply is awaited later through
        what this returns. Raises ConnectionError when the connection is not open (`open` first):
        there is no time to connect."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            raise RedisConnectionError("the pipelined Redis connection is not open")
        waiters = protocol.send_now(packed, 1)
        return self._written_reply(waiters, label, perf_counter())

    async def _written_reply(self, waiters: list[asyncio.Future[Any]], label: str, started: float) -> Any:
        [reply] = await self._measured(label, started, self._replies(waiters))
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _run(self, commands: Sequence[Command], label: str, raise_errors: bool = True) -> list[Any]:
        span = self._spans.store_span("redis", label) if self._spans is not None else None
        replies = await self._measured(
            label, perf_counter(), self._send(b"".join(map(pack_command, commands)), len(commands)), span
        )
        if raise_errors:
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
        return replies

    async def _measured(
        self, label: str, started: float, replies: Awaitable[list[Any]], span: StoreSpan | None = None
    ) -> list[Any]:
        """The replies awaited, timed and counted under `label` (and ended in `span`), with Redis's
        error replies as redis-py's ResponseError instances, in place."""
        try:
            raw = await replies
        except BaseException as error:
            if not isinstance(error, asyncio.CancelledError):
                self._metrics.failed(label, error)
            if span is not None:
                span.end(error)
            raise
        finally:
            self._metrics.observe(label, perf_counter() - started)
        if span is not None:
            span.end()
        return [ResponseError(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply for reply in raw]

    async def _send(self, payload: bytes, replies: int) -> list[Any]:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
            return await self._replies(protocol.send(payload, replies))
        try:
            return await self._replies(protocol.send(payload, replies))
        except RedisConnectionError:
            if not protocol.lost:
                raise
        # The connection died under a command sent on it (Redis restarted): once more, afresh.
        return await self._replies((await self._connect()).send(payload, replies))

    async def _replies(self, waiters: list[asyncio.Future[Any]]) -> list[Any]:
        try:
            async with asyncio.timeout(self._reply_timeout_s):
                if len(waiters) == 1:
                    return [await waiters[0]]
                return list(await asyncio.gather(*waiters))
        except TimeoutError:
            raise RedisTimeoutError("Timeout reading from Redis") from None

    async def _connect(self) -> _ReplyProtocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol  # another call reconnected meanwhile
            loop = asyncio.get_running_loop()
            protocol: _ReplyProtocol | None = None
            try:
                async with asyncio.timeout(self._connect_timeout_s):

                    def made() -> _ReplyProtocol:
                        return _ReplyProtocol(self._coalesce_writes)

                    if self._unix_path:
                        _, protocol = await loop.create_unix_connection(made, str(self._unix_path))
                    else:
                        _, protocol = await loop.create_connection(made, self._host, self._port, ssl=self._ssl)
                    for setup in self._setup:
                        reply = await protocol.send(pack_command(setup), 1)[0]
                        if isinstance(reply, hiredis.ReplyError):
                            raise RedisConnectionError(f"Redis refused {setup[0]!s}: {reply}")
            except BaseException as error:
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.close()
                if isinstance(error, OSError | TimeoutError):
                    raise RedisConnectionError(f"Error connecting to Redis: {error}") from None
                raise
            self._protocol = protocol
            self.connections_opened += 1
            return protocol

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


class PipelinedScript:
    """A Lua script run with EVALSHA on a pipelined connection: the script's text crosses the
    socket only when Redis does not know it (first use, a restarted Redis, SCRIPT FLUSH), as
    redis-py's registered scripts do. A NOSCRIPT reply means the script did not run, so running it
    again after loading it is safe."""

    def __init__(self, connection: PipelinedConnection, source: str) -> None:
        self._connection = connection
        self._source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts so

    async def __call__(self, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> Any:
        try:
            return await self._connection.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        await self._connection.execute("SCRIPT", "LOAD", self._source)
        return await self._connection.execute("EVALSHA", self.sha, len(keys), *keys, *args)


class RedisClient:
    name = "redis"

    def __init__(
        self, url: str, prefix: str, max_connections: int = 64, coalesce_pipelined_writes: bool = False
    ) -> None:
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
        # The hot paths' commands and scripts (decision's profile read and write-behind, messaging's
        # send pipeline); `coalesce_pipelined_writes` for a throughput path (PipelinedConnection).
        self.pipelined = PipelinedConnection(url, self.metrics, coalesce_writes=coalesce_pipelined_writes)

    async def ping(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.redis.ping(), timeout_s)

    async def close(self) -> None:
        self.pipelined.close()
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
