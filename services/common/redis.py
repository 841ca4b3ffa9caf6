"""Redis connection for a service, with a health probe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class RedisClient:
    name = "redis"

    def __init__(self, url: str, prefix: str, max_connections: int = 64) -> None:
        self.prefix = prefix
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            max_connections=max_connections,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            health_check_interval=0,
            decode_responses=True,
            # A restarted Redis leaves dead connections in the pool: retry on a fresh one.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )

    async def ping(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.redis.ping(), timeout_s)

    async def close(self) -> None:
        await self.redis.aclose()


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
